import json

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from components.ingest import IngestConfig, ingest
from contract.transactions import read_dataset
from contract.schema import COUNTRIES, DEVICES
from components.validate import FAILED_COLUMN, UNIQUE, ValidateConfig, _repeated_ids, validate

KIND_TO_EXPECTATION = {
    "negative_price": "expect_column_values_to_be_between(price)",
    "bad_position": "expect_column_values_to_be_between(position)",
    "bad_label": "expect_column_values_to_be_in_set(purchased)",
    "unknown_device": "expect_column_values_to_be_in_set(device)",
    "unknown_country": "expect_column_values_to_be_in_set(country)",
    "timestamp_out_of_window": "expect_column_values_to_be_between(event_timestamp)",
    "duplicate_event_id": UNIQUE,
}
KEY_NOT_NULL = [f"expect_column_values_to_not_be_null({c})"
                for c in ("event_id", "event_timestamp", "user_id", "item_id", "purchased")]


def _ingested(tmp_path, df, name="in"):
    df.to_parquet(tmp_path / f"{name}.parquet")
    ingest(IngestConfig(), tmp_path / f"{name}.parquet", tmp_path / name)
    return tmp_path / name


def _run(tmp_path, dataset, **cfg):
    cfg = {"window_start": "2026-10-05", "window_end": "2026-10-12", **cfg}
    return validate(ValidateConfig(**cfg), dataset, tmp_path / "valid", tmp_path / "quarantine", tmp_path / "reports")


def _obeys_the_rules(df, window):
    start, end = (pd.Timestamp(w) for w in window)
    return bool(df.drop(columns="query").notna().all().all() and df["event_id"].is_unique
                and (df["price"] >= 0).all() and (df["position"] >= 1).all() and df["purchased"].isin([0, 1]).all()
                and df["device"].isin(DEVICES).all() and df["country"].isin(COUNTRIES).all()
                and df["event_timestamp"].between(start, end, inclusive="left").all())


def test_every_corruption_kind_is_caught(chain):
    res, corrupted = chain.validated, chain.generated.corrupted
    assert res.rows_quarantined == sum(corrupted.values())
    for kind, expectation in KIND_TO_EXPECTATION.items():
        assert res.failed_by_expectation[expectation] == corrupted[kind], kind
    # unparseable timestamps arrive as nulls; each null-key row nulls one key column
    assert sum(res.failed_by_expectation.get(e, 0) for e in KEY_NOT_NULL) == \
        corrupted["null_key"] + corrupted["bad_timestamp"]
    quarantine = pd.read_parquet(chain.quarantine)
    assert len(quarantine) == res.rows_quarantined and (quarantine[FAILED_COLUMN] != "").all()
    assert set(quarantine[FAILED_COLUMN].str.split(";").explode()) == set(res.failed_by_expectation)
    valid = read_dataset(chain.out)
    assert len(valid) == res.rows_valid and _obeys_the_rules(valid, res.window)


def test_reports_are_written(chain):
    summary = json.loads((chain.reports / "validation.json").read_text())
    assert {k: summary[k] for k in ("rows_in", "rows_valid", "rows_quarantined")} == {
        "rows_in": chain.gen.rows, "rows_valid": chain.validated.rows_valid,
        "rows_quarantined": chain.validated.rows_quarantined}
    assert summary["failed_by_expectation"] == chain.validated.failed_by_expectation and summary["passed"]
    assert all(not isinstance(v, list) for v in summary.values()), "the DVC metric stays flat"
    details = json.loads((chain.reports / "validation_details.json").read_text())
    assert sum(d["rows_in"] for d in details["per_day"].values()) == chain.gen.rows
    assert details["window"] == list(chain.validated.window)
    gx = json.loads((chain.reports / "gx_result.json").read_text())
    types = {r["expectation_config"]["type"] for b in gx["batches"] for r in b["result"]["results"]}
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_not_be_null",
            "expect_column_values_to_be_in_set", "expect_column_values_to_be_between"} <= types
    report = (chain.reports / "report.md").read_text()
    assert "PASSED" in report and f"{chain.validated.rows_quarantined} of {chain.gen.rows}" in report


@pytest.mark.parametrize("seed, fraction, batch_rows", [(1, 0.0, 10_000), (2, 0.01, 350), (3, 0.06, 700)])
def test_accounting_adds_up(tmp_path, make_config, make_chain, seed, fraction, batch_rows):
    gen = make_config(rows=1400, chunk_rows=500, seed=seed, corrupt_fraction=fraction)
    run = make_chain(tmp_path, gen, batch_rows=batch_rows, max_bad_fraction=1.0)
    res = run.validated
    assert res.rows_in == gen.rows == res.rows_valid + res.rows_quarantined
    assert res.rows_quarantined == sum(run.generated.corrupted.values())
    assert sum(d["rows_in"] for d in res.per_day.values()) == res.rows_in
    assert all(d["rows_in"] == d["rows_valid"] + d["rows_quarantined"] for d in res.per_day.values())
    if batch_rows < gen.rows:
        assert res.batches > 1
    # no row lost or invented: the ids of both outputs are exactly the ingested ids
    ids = lambda df: sorted(df["event_id"].fillna("<null>"))  # noqa: E731
    both = pd.concat([read_dataset(run.out), pd.read_parquet(run.quarantine)])
    assert ids(both) == ids(read_dataset(run.ingested))


def test_duplicates_keep_the_first_good_row_across_batches(tmp_path, make_frame):
    df = make_frame(12)                  # rows 0..7 fall on 2026-10-05, 8..11 on 2026-10-06
    df.loc[2, "user_id"] = None          # bad first copy of e2 ...
    df.loc[9, "event_id"] = "e2"         # ... so this later copy is the one kept
    df.loc[7, "event_id"] = "e6"         # duplicate inside one batch
    df.loc[10, "event_id"] = "e1"        # duplicates of a row kept in an earlier batch
    df.loc[11, "event_id"] = "e1"
    dataset = _ingested(tmp_path, df)
    res = _run(tmp_path, dataset, batch_rows=1)  # one batch per part file: two batches
    assert res.batches == 2 and res.rows_quarantined == 4
    assert res.failed_by_expectation == {UNIQUE: 3, "expect_column_values_to_not_be_null(user_id)": 1}
    valid = read_dataset(tmp_path / "valid")
    assert valid["event_id"].is_unique
    kept = valid.set_index("event_id")["price"]
    assert kept["e2"] == df.loc[9, "price"] and kept["e1"] == df.loc[1, "price"] and kept["e6"] == df.loc[6, "price"]
    q = pd.read_parquet(tmp_path / "quarantine")
    assert sorted(q["price"]) == sorted(df.loc[[2, 7, 10, 11], "price"])


def test_only_repeated_ids_are_followed_across_batches(tmp_path, make_frame):
    df = make_frame(12)
    df.loc[[3, 9], "event_id"] = "e-twice"
    df.loc[5, "event_id"] = None
    dataset = _ingested(tmp_path, df)
    files = sorted(dataset.rglob("*.parquet"))
    repeated = _repeated_ids(files, "64MB")
    assert repeated.tolist() == pd.util.hash_array(np.array(["e-twice"], dtype=object)).tolist()
    with pytest.raises(ValueError, match="validate.memory_limit = 'lots'"):
        _repeated_ids(files, "lots")


def test_timestamp_window(tmp_path, make_frame):
    df = make_frame(6)
    df.loc[0, "event_timestamp"] = "2026-10-04T23:59:59Z"   # before the window
    df.loc[1, "event_timestamp"] = "2026-10-12T00:00:00Z"   # the end is exclusive
    df.loc[2, "event_timestamp"] = "2019-03-14T09:26:53Z"
    df.loc[3, "event_timestamp"] = "2031-01-01T00:00:00Z"
    dataset = _ingested(tmp_path, df)
    res = _run(tmp_path, dataset)
    assert res.failed_by_expectation == {"expect_column_values_to_be_between(event_timestamp)": 4}
    # without a configured window: 2000-01-01 .. a day after now, so only the future row fails
    res = _run(tmp_path, dataset, window_start=None, window_end=None)
    assert res.failed_by_expectation == {"expect_column_values_to_be_between(event_timestamp)": 1}
    assert pd.read_parquet(tmp_path / "quarantine")["event_id"].tolist() == ["e3"]


def test_too_many_bad_rows_fail_the_step_with_one_line(tmp_path, chain, capsys):
    params = tmp_path / "params.yaml"
    start, end = chain.gen.window
    params.write_text(f"validate:\n  window_start: '{start.isoformat()}'\n  window_end: '{end.isoformat()}'\n")
    code = main(["validate", "--input", str(chain.ingested), "--out", str(tmp_path / "v"),
                 "--quarantine", str(tmp_path / "q"), "--reports", str(tmp_path / "r"),
                 "--params", str(params), "-S", "validate.max_bad_fraction=0.001"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("robeflow validate: error: ") and "more than validate.max_bad_fraction = 0.10%" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert "FAILED" in (tmp_path / "r" / "report.md").read_text()
    assert json.loads((tmp_path / "r" / "validation.json").read_text())["passed"] is False


def _day_dir(dataset):
    return next(p for p in dataset.iterdir() if p.is_dir())


def _assert_nothing_written(tmp_path):
    for name in ("valid", "quarantine", "reports"):
        assert not (tmp_path / name).exists(), name


def test_not_parquet_is_an_error_naming_the_file(tmp_path, make_frame):
    dataset = _ingested(tmp_path, make_frame(6))
    bad = _day_dir(dataset) / "part-zz-00000.parquet"
    bad.write_text("this is not parquet")
    with pytest.raises(ValueError, match=r"part-zz-00000\.parquet: not a readable Parquet file"):
        _run(tmp_path, dataset)
    _assert_nothing_written(tmp_path)


def test_missing_column_is_an_error_naming_file_and_column(tmp_path, make_frame):
    dataset = _ingested(tmp_path, make_frame(6))
    victim = next(_day_dir(dataset).glob("*.parquet"))
    pd.read_parquet(victim).drop(columns="country").to_parquet(victim)
    with pytest.raises(ValueError, match=rf"{victim.name}: missing column country"):
        _run(tmp_path, dataset)
    _assert_nothing_written(tmp_path)


def test_wrong_type_is_an_error_naming_file_and_column(tmp_path, make_frame):
    dataset = _ingested(tmp_path, make_frame(6))
    victim = next(_day_dir(dataset).glob("*.parquet"))
    df = pd.read_parquet(victim)
    df["price"] = df["price"].astype(str)
    df.to_parquet(victim)
    with pytest.raises(ValueError, match=rf"{victim.name}: column price has type string; expected double"):
        _run(tmp_path, dataset)
    _assert_nothing_written(tmp_path)


def test_failed_run_leaves_earlier_outputs_untouched(tmp_path, make_frame):
    dataset = _ingested(tmp_path, make_frame(6))
    _run(tmp_path, dataset)
    before = (tmp_path / "reports" / "validation.json").read_text()
    (_day_dir(dataset) / "part-zz-00000.parquet").write_text("junk")
    with pytest.raises(ValueError):
        _run(tmp_path, dataset)
    assert (tmp_path / "reports" / "validation.json").read_text() == before
    assert len(read_dataset(tmp_path / "valid")) == 6


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="validate.window_start"):
        ValidateConfig(window_start="2026-10-10", window_end="2026-10-01")
    with pytest.raises(ValueError, match="validate.max_bad_fraction"):
        ValidateConfig(max_bad_fraction=2.0)
    with pytest.raises(ValueError, match="validate.window_end = 'soon'"):
        ValidateConfig(window_end="soon")
    assert np.isfinite(ValidateConfig().window()[1].timestamp())


def test_row_level_rules_flag_exactly_the_rows_gx_flags(chain):
    """The column-wise quarantine rules mark, row by row, what GX's own row-level result
    (``unexpected_index_list``) marks, for every expectation but keep-first uniqueness."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.validate import _Runner, _gx_frame, row_failures
    from contract.schema import arrow_schema

    start, end = chain.gen.window
    window = (pd.Timestamp(start), pd.Timestamp(end))
    files = sorted(chain.ingested.rglob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f).cast(arrow_schema()) for f in files]).combine_chunks()
    runner = _Runner(window)
    res = runner.definition.run(batch_parameters={"dataframe": _gx_frame(table)},
                                result_format={"result_format": "COMPLETE"})
    mine = row_failures(table, window)
    checked = 0
    for r in res.results:
        name = f"{r.expectation_config.type}({r.expectation_config.kwargs['column']})"
        if name == UNIQUE:
            continue
        want = np.zeros(table.num_rows, dtype=bool)
        want[np.asarray(r.result["unexpected_index_list"], dtype=np.int64)] = True
        np.testing.assert_array_equal(mine[name], want, err_msg=name)
        checked += int(want.sum())
    assert checked > 0 and set(mine) | {UNIQUE} == {n for n, _ in runner.expectations}
