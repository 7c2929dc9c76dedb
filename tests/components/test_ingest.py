from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from components.generate import GenerateConfig, generate
from components.ingest import IngestConfig, ingest
from contract.transactions import partitions, read_dataset
from contract.schema import COLUMNS, UNKNOWN_DAY
from features.criteo import COLUMNS as CRITEO_COLUMNS

CFG = IngestConfig()


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))


def test_partitions_by_day_with_canonical_dtypes(chain):
    df = read_dataset(chain.ingested)
    assert len(df) == chain.gen.rows
    assert {c: str(t) for c, t in df.dtypes.items()} == COLUMNS
    for day, files in partitions(chain.ingested):
        part = pd.concat([pd.read_parquet(f) for f in files])
        if day == UNKNOWN_DAY:
            assert part["event_timestamp"].isna().all()
        else:
            assert (part["event_timestamp"].dt.strftime("%Y-%m-%d") == day).all()
    # unparseable and missing timestamps are kept (as nulls) for validation to quarantine
    n_unknown = sum(len(pd.read_parquet(f)) for d, fs in partitions(chain.ingested) if d == UNKNOWN_DAY for f in fs)
    assert n_unknown >= chain.generated.corrupted["bad_timestamp"] > 0


def test_same_file_twice_gives_the_same_dataset(tmp_path, make_frame):
    make_frame(20).to_parquet(tmp_path / "a.parquet")
    r1 = ingest(CFG, tmp_path / "a.parquet", tmp_path / "out")
    first = read_dataset(tmp_path / "out")
    files = _files(tmp_path / "out")
    r2 = ingest(CFG, tmp_path / "a.parquet", tmp_path / "out")
    pd.testing.assert_frame_equal(read_dataset(tmp_path / "out"), first)
    assert _files(tmp_path / "out") == files and r1.rows == r2.rows == 20
    # the same content under another name is the same source: still no duplicates
    (tmp_path / "copy.parquet").write_bytes((tmp_path / "a.parquet").read_bytes())
    ingest(CFG, tmp_path / "copy.parquet", tmp_path / "out")
    assert len(read_dataset(tmp_path / "out")) == 20


def test_another_file_is_added_and_kept(tmp_path, make_frame):
    a, b = make_frame(10), make_frame(6, start="2026-10-09")
    b["event_id"] = [f"b{k}" for k in range(6)]
    a.to_parquet(tmp_path / "a.parquet")
    b.to_csv(tmp_path / "b.csv", index=False)
    ingest(CFG, tmp_path / "a.parquet", tmp_path / "out")
    res = ingest(CFG, tmp_path / "b.csv", tmp_path / "out")
    assert res.kept_sources == 1
    ingest(CFG, tmp_path / "b.csv", tmp_path / "out")
    got = read_dataset(tmp_path / "out")
    assert sorted(got["event_id"]) == sorted(list(a["event_id"]) + list(b["event_id"]))


def test_csv_and_parquet_inputs_ingest_alike(tmp_path, make_frame):
    df = make_frame(15)
    df.loc[3, "query"] = None
    df.to_parquet(tmp_path / "x.parquet")
    df.to_csv(tmp_path / "x.csv", index=False)
    ingest(CFG, tmp_path / "x.parquet", tmp_path / "p")
    ingest(CFG, tmp_path / "x.csv", tmp_path / "c")
    pd.testing.assert_frame_equal(read_dataset(tmp_path / "p"), read_dataset(tmp_path / "c"))


def test_bad_values_become_nulls_and_rows_are_kept(tmp_path, make_frame):
    df = make_frame(8).astype({"price": object, "position": object, "purchased": object})
    df.loc[0, "event_timestamp"] = "not-a-timestamp"
    df.loc[1, "price"] = "abc"
    df.loc[2, "position"] = 1.5
    df.loc[3, "purchased"] = "yes"
    df.loc[4, "event_timestamp"] = "2026-10-05T12:00:00+02:00"  # converted to UTC
    df.loc[5, "event_timestamp"] = "2026-10-05 13:30:00"        # naive: taken as UTC
    df.to_csv(tmp_path / "x.csv", index=False)
    res = ingest(CFG, tmp_path / "x.csv", tmp_path / "out")
    assert res.rows == 8
    assert res.coerced == {"event_timestamp": 1, "price": 1, "position": 1, "purchased": 1}
    got = read_dataset(tmp_path / "out").set_index("event_id")
    assert len(got) == 8
    assert pd.isna(got.loc["e0", "event_timestamp"]) and pd.isna(got.loc["e1", "price"])
    assert pd.isna(got.loc["e2", "position"]) and pd.isna(got.loc["e3", "purchased"])
    assert got.loc["e4", "event_timestamp"] == pd.Timestamp("2026-10-05T10:00:00Z")
    assert got.loc["e5", "event_timestamp"] == pd.Timestamp("2026-10-05T13:30:00Z")
    assert (tmp_path / "out" / f"day={UNKNOWN_DAY}").is_dir()


def test_timestamp_typed_parquet_is_converted_to_utc(tmp_path, make_frame):
    df = make_frame(4)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"]).dt.tz_convert("Europe/Berlin")
    df.to_parquet(tmp_path / "x.parquet")
    ingest(CFG, tmp_path / "x.parquet", tmp_path / "out")
    got = read_dataset(tmp_path / "out")
    assert str(got["event_timestamp"].dt.tz) == "UTC"
    assert got["event_timestamp"].iloc[0] == pd.Timestamp("2026-10-05T00:00:00Z")


def test_criteo_tsv_and_sample_csv(tmp_path, make_config):
    cfg = make_config(rows=500, chunk_rows=250)
    generate(GenerateConfig(**{**cfg.__dict__, "format": "criteo"}), tmp_path / "raw", tmp_path / "truth")
    res = ingest(IngestConfig(batch_rows=100), tmp_path / "raw", tmp_path / "out")
    assert res.format == "criteo" and res.rows == 500
    assert len(res.files) == 6  # two files of 250 rows, read 100 rows at a time
    df = pd.read_parquet(tmp_path / "out")
    assert list(df.columns) == list(CRITEO_COLUMNS) and len(df) == 500
    assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())  # no day partitions

    res = ingest(CFG, Path(__file__).parents[1] / "data" / "criteo_sample_200.csv", tmp_path / "sample")
    df = pd.read_parquet(tmp_path / "sample")
    assert res.rows == 200 and list(df.columns) == list(CRITEO_COLUMNS)
    assert df["I1"].isna().any() and df["label"].dtype == np.int64


def test_not_parquet_is_an_error_naming_the_file(tmp_path, make_frame):
    make_frame(5).to_parquet(tmp_path / "good.parquet")
    ingest(CFG, tmp_path / "good.parquet", tmp_path / "out")
    before = _files(tmp_path / "out")
    (tmp_path / "in").mkdir()
    make_frame(5).to_parquet(tmp_path / "in" / "a.parquet")
    (tmp_path / "in" / "b.parquet").write_text("event_id,price\ne1,3\n")
    with pytest.raises(ValueError, match=r"b\.parquet.*not a readable Parquet"):
        ingest(CFG, tmp_path / "in", tmp_path / "out")
    assert _files(tmp_path / "out") == before  # nothing half-written


def test_missing_column_is_an_error_naming_it(tmp_path, make_frame):
    make_frame(5).drop(columns=["device"]).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=r"x\.parquet: missing column\(s\) device"):
        ingest(CFG, tmp_path / "x.parquet", tmp_path / "out")
    make_frame(5).drop(columns=["price"]).to_csv(tmp_path / "y.csv", index=False)
    with pytest.raises(ValueError, match=r"y\.csv: missing column\(s\) price"):
        ingest(CFG, tmp_path / "y.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_type_is_an_error_naming_the_column(tmp_path, make_frame, capsys):
    df = make_frame(5)
    df["price"] = [[1.0, 2.0]] * 5  # a list per row cannot be a price
    df.to_parquet(tmp_path / "x.parquet")
    code = main(["ingest", "--input", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and "x.parquet: column price has type list<element: double>" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_mixing_criteo_and_transactions_is_refused(tmp_path, make_frame):
    (tmp_path / "in").mkdir()
    make_frame(5).to_parquet(tmp_path / "in" / "a.parquet")
    (tmp_path / "in" / "b.tsv").write_text("\t".join(["1"] + ["1"] * 13 + ["abcd1234"] * 26) + "\n")
    with pytest.raises(ValueError, match="mixes Criteo files"):
        ingest(CFG, tmp_path / "in", tmp_path / "out")


def test_empty_or_missing_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        ingest(CFG, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        ingest(CFG, tmp_path / "nope", tmp_path / "out")


def test_output_inside_the_input_is_refused(tmp_path, make_frame):
    (tmp_path / "raw").mkdir()
    make_frame(4).to_parquet(tmp_path / "raw" / "a.parquet")
    with pytest.raises(ValueError, match="contains the input"):
        ingest(CFG, tmp_path / "raw", tmp_path / "raw")
    assert (tmp_path / "raw" / "a.parquet").exists()
