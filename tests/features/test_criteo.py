from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.criteo import CAT_COLUMNS, COLUMNS, INT_COLUMNS, iter_criteo, read_criteo, sniff_criteo, write_criteo

SAMPLE = Path(__file__).parents[1] / "data" / "criteo_sample_200.csv"


@pytest.fixture
def sample() -> pd.DataFrame:
    return read_criteo(SAMPLE)


def test_reads_the_real_sample(sample):
    assert sniff_criteo(SAMPLE) == "csv"
    assert list(sample.columns) == list(COLUMNS) and len(sample) == 200
    assert sample["label"].dtype == np.int64 and set(sample["label"]) <= {0, 1}
    assert all(sample[c].dtype == np.float64 for c in INT_COLUMNS)
    assert all(str(sample[c].dtype) == "string" for c in CAT_COLUMNS)
    assert sample["I1"].isna().any() and (sample["I2"] < 0).any()  # missing and negative dense values
    assert sample["C20"].isna().any() and sample["C1"].str.fullmatch(r"[0-9a-f]{8}").all()
    assert sample.loc[0, "I3"] == 260.0 and sample.loc[0, "C1"] == "05db9164"


def test_tsv_round_trip(sample, tmp_path):
    path = write_criteo(sample, tmp_path / "day_0.tsv")
    line = path.read_text().splitlines()[0].split("\t")
    assert len(line) == 40 and line[1] == "" and line[3] == "260"  # no header, empty = missing
    assert sniff_criteo(path) == "tsv"
    pd.testing.assert_frame_equal(read_criteo(path), sample)


def test_chunks_add_up_to_the_whole(sample, tmp_path):
    path = write_criteo(sample, tmp_path / "day_0.tsv")
    chunks = list(iter_criteo(path, chunk_rows=64))
    assert [len(c) for c in chunks] == [64, 64, 64, 8]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), sample)


def test_malformed_files_are_errors_naming_file_and_column(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("\t".join(["1", "x"] + ["1"] * 12 + ["abcd1234"] * 26) + "\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: column I1 has 'x'"):
        read_criteo(bad)
    label = tmp_path / "label.tsv"
    label.write_text("\t".join(["1"] + ["1"] * 13 + ["abcd1234"] * 26) + "\n"
                     + "\t".join(["3"] + ["1"] * 13 + ["abcd1234"] * 26) + "\n")
    with pytest.raises(ValueError, match=r"label\.tsv: column label has '3'"):
        read_criteo(label)
    short = tmp_path / "short.tsv"
    short.write_text("\t".join(["1"] + ["1"] * 13 + ["abcd1234"] * 26) + "\n"
                     + "\t".join(["0"] + ["1"] * 13 + ["abcd1234"] * 26 + ["extra"]) + "\n")
    with pytest.raises(ValueError, match=r"short\.tsv: expected 40 tab-separated fields"):
        read_criteo(short)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"other\.csv: not a Criteo file"):
        read_criteo(other)
    with pytest.raises(ValueError, match="missing column"):
        write_criteo(pd.DataFrame({"label": [1]}), tmp_path / "x.tsv")
