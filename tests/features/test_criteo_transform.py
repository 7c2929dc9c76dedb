import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract.hashing import hash64
from features.criteo import CAT_COLUMNS, INT_COLUMNS, criteo_model_frame, read_criteo_frame
from contract.spec import ModelInput

CRITEO_SAMPLE = str(Path(__file__).parents[1] / "data" / "criteo_sample_200.csv")


def test_the_id_hash_is_blake2b_64():
    want = int.from_bytes(hashlib.blake2b(b"05db9164", digest_size=8).digest(), "little")
    assert hash64("05db9164") == want


def test_criteo_sample_becomes_a_model_ready_frame():
    frame, spec = read_criteo_frame(CRITEO_SAMPLE, table_size=5000)
    raw = pd.read_csv(CRITEO_SAMPLE, dtype=str, keep_default_na=False)
    assert len(frame) == len(raw) == 200
    assert spec.label == "label" and [f.name for f in spec.dense] == list(INT_COLUMNS)
    assert [f.name for f in spec.sparse] == list(CAT_COLUMNS) and spec.table_sizes == [5000] * 26
    # dense: log1p(max(x, 0)), missing as 0
    i2 = pd.to_numeric(raw["I2"].replace("", np.nan)).to_numpy(dtype=float)
    np.testing.assert_allclose(frame["I2"], np.log1p(np.maximum(np.nan_to_num(i2), 0)), rtol=1e-6)
    assert (raw["I1"] == "").any() and frame.loc[raw["I1"] == "", "I1"].eq(0).all()
    # categoricals: the hex string's stable hash mod the table size
    for r in (0, 17, 199):
        v = raw["C1"][r]
        assert frame["C1"][r] == hash64(v) % 5000
    assert frame["label"].tolist() == raw["label"].astype(float).tolist()
    inputs = ModelInput.from_frame(frame, spec)
    assert inputs.dense.shape == (200, 13) and inputs.sparse_offsets.shape == (200 * 26 + 1,)


def test_criteo_missing_columns_are_named():
    with pytest.raises(ValueError, match="C26"):
        criteo_model_frame(pd.DataFrame({"label": [0]}), 10)


def test_criteo_tables_sized_per_feature_or_from_counts():
    raw = pd.read_csv(CRITEO_SAMPLE, dtype=str, keep_default_na=False).replace("", np.nan)
    sizes = list(range(100, 126))
    frame, spec = criteo_model_frame(raw, sizes)
    assert spec.table_sizes == sizes
    for c, n in zip(CAT_COLUMNS, sizes):
        want = [hash64(v) % n for v in raw[c].fillna("")]
        assert frame[c].tolist() == want
    auto_frame, auto_spec = criteo_model_frame(raw, "auto")
    assert auto_spec.table_sizes == [raw[c].fillna("").nunique() for c in CAT_COLUMNS]
    assert min(auto_spec.table_sizes) >= 1 and max(auto_spec.table_sizes) <= 200
    # evaluation re-transforms other rows with the sizes the spec recorded: the same ids
    again, _ = criteo_model_frame(raw.iloc[50:], auto_spec.table_sizes)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), auto_frame.iloc[50:].reset_index(drop=True))
    for bad in ([5] * 25, [0] * 26, "big"):
        with pytest.raises(ValueError, match="table_size"):
            criteo_model_frame(raw, bad)


def test_criteo_table_size_params_take_an_int_a_list_or_auto():
    from contract.params import load_config
    from dlrm.configs import TrainConfig

    assert load_config(TrainConfig, "train", None, ["train.criteo.table_size=auto"]).criteo.table_size == "auto"
    listed = load_config(TrainConfig, "train", None, [f"train.criteo.table_size=[{', '.join(['7'] * 26)}]"])
    assert listed.criteo.table_size == (7,) * 26
    assert load_config(TrainConfig, "train", None, ["train.criteo.table_size=9"]).criteo.table_size == 9
