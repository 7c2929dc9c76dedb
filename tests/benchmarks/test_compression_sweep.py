"""The compression sweep's Criteo world: time-ordered split, exact vocabulary, oracle rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dlrm.metrics import auc
from features.criteo import CAT_COLUMNS, INT_COLUMNS, write_criteo


def criteo_rows(n: int, first: int, rng: np.random.Generator) -> pd.DataFrame:
    cols = {"label": rng.integers(0, 2, n)}
    cols.update({c: rng.integers(0, 9, n).astype(float) for c in INT_COLUMNS})
    # C1 grows with the row number, so later rows bring values the earlier ones never had
    cols.update({c: [f"{(first + i) // 3 if c == 'C1' else rng.integers(0, 4):08x}" for i in range(n)]
                 for c in CAT_COLUMNS})
    frame = pd.DataFrame(cols)
    frame.loc[::7, "C2"] = None
    return frame


def test_criteo_world_splits_in_time_order_with_the_training_vocabulary(tmp_path, benchmark_module):
    sweep = benchmark_module("compression_sweep")
    rng = np.random.default_rng(0)
    parts = [criteo_rows(60, 0, rng), criteo_rows(60, 60, rng)]
    data, truth = tmp_path / "raw", tmp_path / "truth"
    data.mkdir()
    truth.mkdir()
    prob = rng.random(120)
    for k, part in enumerate(parts):
        write_criteo(part, data / f"part-{k:05d}.tsv")
        pd.DataFrame({"event_id": [f"e{k}-{i}" for i in range(60)], "purchase_prob": prob[60 * k:60 * (k + 1)]}
                     ).to_parquet(truth / f"part-{k:05d}.parquet")
    (data / "_generate.json").write_text("{}")
    whole = pd.concat(parts, ignore_index=True)

    spec, (train, valid, test), oracle = sweep.criteo_world(data, truth, test_fraction=0.1)
    assert (len(train), len(valid), len(test)) == (96, 12, 12)
    np.testing.assert_array_equal(np.concatenate([train["label"], valid["label"], test["label"]]),
                                  whole["label"].to_numpy(np.float32))
    assert oracle == pytest.approx(auc(whole["label"].to_numpy(np.float64)[-12:], prob[-12:]))
    sizes = {f.name: f.table_size for f in spec.sparse}
    assert sizes["C1"] == 32 + 1                         # 96 training rows, 3 a value, + the unseen row
    assert sizes["C2"] == whole["C2"][:96].nunique(dropna=False) + 1   # missing is a value of its own
    # training ids are distinct per value and never the unseen row; later values are unseen
    assert train["C1"].min() == 1 and train["C1"].nunique() == 32
    assert (test["C1"] == 0).all()
    for f in CAT_COLUMNS:
        for part in (train, valid, test):
            assert part[f].between(0, sizes[f] - 1).all()


def test_criteo_world_refuses_a_truth_of_other_rows(tmp_path, benchmark_module):
    sweep = benchmark_module("compression_sweep")
    rng = np.random.default_rng(1)
    write_criteo(criteo_rows(50, 0, rng), tmp_path / "one.tsv")
    (tmp_path / "truth").mkdir()
    pd.DataFrame({"event_id": ["a"], "purchase_prob": [0.5]}).to_parquet(tmp_path / "truth" / "t.parquet")
    with pytest.raises(ValueError, match="1 truth rows for 50 Criteo rows"):
        sweep.criteo_world(tmp_path / "one.tsv", tmp_path / "truth", test_fraction=0.1)
    with pytest.raises(ValueError, match="test-fraction"):
        sweep.criteo_world(tmp_path / "one.tsv", tmp_path / "truth", test_fraction=0.6)
