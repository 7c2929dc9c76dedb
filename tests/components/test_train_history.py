"""`robeflow train` on model-ready data with a user history: the history tower trains in
memory, streamed, with 2 workers and resumed, and the bundle carries it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from contract.spec import DenseFeature, FeatureSpec, HistoryColumn, HistorySpec, SparseFeature
from pipelines.cli import main
from tests.components.conftest import train_args, train_metrics

ITEMS, USERS = 40, 100
SPEC = FeatureSpec(
    dense=(DenseFeature("x"),),
    sparse=(SparseFeature("user", USERS), SparseFeature("item", ITEMS), SparseFeature("category_l1", 5)),
    extra={"sources": {"user": "user_id", "item": "item_id", "category_l1": "category_l1"}},
    history=HistorySpec(length=6, columns=(HistoryColumn("hist_item", "item"), HistoryColumn("hist_cat", "category_l1"),
                                           HistoryColumn("hist_action"), HistoryColumn("hist_days"))))
TRAIN = {
    "model": {"embedding": {"backend": "robe", "dim": 8, "compression": 4, "block": 4},
              "bottom_mlp": [8], "top_mlp": [16],
              "history": {"depth": 1, "heads": 1, "ff_mult": 2, "max_len": 6, "topk": 4}},
    "optim": {"dense_lr": 0.01},
    "batch_size": 100, "epochs": 1, "eval_every": 5, "checkpoint_every": 5, "progress": False,
    "threads": 1, "device": "cpu", "id_dropout": 0.05,
}


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Rows whose label depends on whether the user bought the candidate before (its history)."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, ITEMS, n)
    lens = rng.integers(0, 7, n)
    hist = [rng.integers(0, ITEMS, k) for k in lens]
    action = [rng.integers(0, 2, k) for k in lens]
    rebuy = np.array([((h == i) & (a == 1)).any() for h, i, a in zip(hist, item, action)])
    return pd.DataFrame({
        "x": rng.normal(size=n).astype(np.float32), "user": rng.integers(0, USERS, n), "item": item,
        "category_l1": item % 5, "hist_item": hist, "hist_cat": [h % 5 for h in hist], "hist_action": action,
        "hist_days": [np.sort(rng.integers(1, 30, len(h))) for h in hist],
        "purchased": (rng.random(n) < np.where(rebuy, 0.7, 0.15)).astype(np.float32)})


@pytest.fixture
def project(tmp_path):
    data = tmp_path / "data/model_input"
    data.mkdir(parents=True)
    for split, (n, seed) in {"train": (1000, 0), "valid": (300, 1)}.items():
        _frame(n, seed).to_parquet(data / f"{split}.parquet", index=False)
    SPEC.save(data / "feature_spec.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": TRAIN}))
    return tmp_path


@pytest.mark.slow
def test_two_workers_train_the_tower_resume_and_the_bundle_carries_it(project, capfd):
    from dlrm.bundle import load_model

    assert main(train_args(project, "two", "--workers", "2")) == 0
    assert "history tower over the last 6 events" in capfd.readouterr().err
    assert main(train_args(project, "two", "--workers", "2", "--resume", "-S", "train.epochs=2")) == 0
    m = train_metrics(project, "two")
    assert m["workers"] == 2 and m["steps"] == 20
    model, doc = load_model(project / "two/model")
    assert model.history is not None and doc["history"]["columns"] == list(SPEC.history.names)
    assert doc["model"]["history"]["depth"] == 1


def test_streamed_training_reads_the_history_and_off_ignores_it(project):
    from dlrm.bundle import load_model

    assert main(train_args(project, "stream", "-S", "train.stream=true")) == 0
    assert train_metrics(project, "stream")["streamed"] is True
    assert load_model(project / "stream/model")[0].history is not None
    assert main(train_args(project, "off", "-S", "train.model.history.enabled=false")) == 0
    model, doc = load_model(project / "off/model")
    assert model.history is None and doc["history"] is None
