import hashlib

import numpy as np
import pandas as pd
import pytest

from dlrm.data import CRITEO_DENSE, CRITEO_SPARSE, criteo_model_frame, read_criteo_frame, stable_hash64
from features.spec import ModelInput

CRITEO_SAMPLE = "/work/shared/data/criteo_sample_200.csv"


def test_stable_hash_is_blake2b_64():
    want = int.from_bytes(hashlib.blake2b(b"05db9164", digest_size=8).digest(), "little")
    assert stable_hash64("05db9164") == want


def test_criteo_sample_becomes_a_model_ready_frame():
    frame, spec = read_criteo_frame(CRITEO_SAMPLE, table_size=5000)
    raw = pd.read_csv(CRITEO_SAMPLE, dtype=str, keep_default_na=False)
    assert len(frame) == len(raw) == 200
    assert spec.label == "label" and [f.name for f in spec.dense] == list(CRITEO_DENSE)
    assert [f.name for f in spec.sparse] == list(CRITEO_SPARSE) and spec.table_sizes == [5000] * 26
    # dense: log1p(max(x, 0)), missing as 0
    i2 = pd.to_numeric(raw["I2"].replace("", np.nan)).to_numpy(dtype=float)
    np.testing.assert_allclose(frame["I2"], np.log1p(np.maximum(np.nan_to_num(i2), 0)), rtol=1e-6)
    assert (raw["I1"] == "").any() and frame.loc[raw["I1"] == "", "I1"].eq(0).all()
    # categoricals: the hex string's stable hash mod the table size
    for r in (0, 17, 199):
        v = raw["C1"][r]
        assert frame["C1"][r] == stable_hash64(v) % 5000
    assert frame["label"].tolist() == raw["label"].astype(float).tolist()
    inputs = ModelInput.from_frame(frame, spec)
    assert inputs.dense.shape == (200, 13) and inputs.sparse_offsets.shape == (200 * 26 + 1,)


def test_criteo_missing_columns_are_named():
    with pytest.raises(ValueError, match="C26"):
        criteo_model_frame(pd.DataFrame({"label": [0]}), 10)
