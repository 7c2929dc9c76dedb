"""`robeflow retrieval` end to end on a tiny generated world: metrics, oracle, bundle round trip."""

from __future__ import annotations

import json
import pickle
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components.features import TableSizes
from components.retrieval import MODEL_KEYS, RetrievalStepConfig, retrieval
from contract.params import as_dict, load_config
from contract.schema import COLUMNS
from dlrm.bundle import load_retrieval
from dlrm.retrieval import RetrievalConfig
from generator.config import GenerateConfig
from generator.events import build_world, generate_chunk
from pipelines.cli import main

GEN = dict(rows=30_000, users=800, items=300, days=21, chunk_rows=30_000, corrupt_fraction=0.0,
           start_date="2026-10-05", seed=3)
TABLES = TableSizes(user=5_000, item=2_000, query=2_000, category_l1=100, category_l2=500, category_l3=2_000,
                    brand=2_000, fav_category_l1=100)
PARAMS = {
    "generate": GEN,
    "retrieval": {"method": "full", "epochs": 6, "batch_size": 128, "dim": 32, "tower": [64],
                  "embedding": {"backend": "robe", "dim": 8, "compression": 10, "block": 4},
                  "lsh": {"bits": 4, "tables": 8, "bucket_size": 32, "random_negatives": 16}},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A generated world's validated transactions (by day) and model-ready tables."""
    from features.compute import StatsParams
    from features.transform import feature_spec
    from features.windows import model_ready_windows

    root = tmp_path_factory.mktemp("retrieval")
    cfg = GenerateConfig(**GEN)
    events, _ = generate_chunk(cfg, build_world(cfg), 0)
    events = events.astype(COLUMNS)
    for day, rows in events.groupby(events["event_timestamp"].dt.strftime("%Y-%m-%d")):
        (root / "validated" / f"day={day}").mkdir(parents=True)
        rows.to_parquet(root / "validated" / f"day={day}" / "part-00000.parquet", index=False)
    stats = StatsParams()
    spec = feature_spec(as_dict(TABLES), stats)
    (root / "model_input").mkdir()
    for name, frame in model_ready_windows(events, spec, stats, test_days=3, valid_days=3).items():
        frame.to_parquet(root / "model_input" / f"{name}.parquet", index=False)
    spec.save(root / "model_input" / "feature_spec.json")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def run(root: Path, out: str, *overrides: str, oracle: bool = True) -> tuple[int, dict]:
    args = ["retrieval", "--input", str(root / "model_input"), "--model-out", str(root / out / "model"),
            "--metrics", str(root / out / "metrics.json"), "--params", str(root / "params.yaml")]
    if oracle:
        args += ["--validated", str(root / "validated")]
    for o in overrides:
        args += ["-S", o]
    code = main(args)
    return code, json.loads((root / out / "metrics.json").read_text()) if code == 0 else {}


@pytest.fixture(scope="module")
def full_run(world):
    return run(world, "full")


def test_step_writes_metrics_that_beat_random_and_stay_below_the_oracle(full_run):
    code, m = full_run
    assert code == 0
    for key in ("recall_at_10", "recall_at_100", "p_at_1", "oracle_recall_at_100", "items", "method"):
        assert key in m, key
    assert m["method"] == "full" and m["items"] == 300
    for key in ("recall_at_10", "recall_at_100", "p_at_1", "oracle_recall_at_100", "oracle_recall_at_10"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["p_at_1"] <= m["recall_at_10"] <= m["recall_at_100"]
    assert m["recall_at_100_lo"] <= m["recall_at_100"] <= m["recall_at_100_hi"]
    # a random ranking finds the item in the top 100 of 300 a third of the time
    assert m["random_recall_at_100"] == pytest.approx(100 / 300)
    assert m["recall_at_100_lo"] > m["random_recall_at_100"] + 0.1
    assert m["recall_at_10"] > 3 * 10 / 300
    # the planted posterior ranks better than a model trained on a few thousand purchases
    assert m["oracle_recall_at_100"] >= m["recall_at_100"] - 0.02
    assert m["oracle_recall_at_10"] > m["popular_recall_at_10"]


def test_bundle_round_trip_gives_the_same_scores_without_pickle(world, full_run, monkeypatch):
    bundle = world / "full" / "model"
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json", "items.json", "model.safetensors"]

    def refuse(*a, **k):
        raise AssertionError("the bundle loader unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, items, doc = load_retrieval(bundle)
    monkeypatch.undo()
    assert len(items) == 300 and doc["config"]["method"] == "full"
    spec_names = [f["name"] for f in doc["feature_spec"]["sparse"]]
    assert spec_names == list(RetrievalStepConfig().context)
    # the same scores as the trained model: retrain in memory with the same config and seed
    cfg = load_config(RetrievalStepConfig, "retrieval", world / "params.yaml")
    again = retrieval(cfg, world / "model_input", world / "again" / "model", world / "again" / "metrics.json")
    from contract.spec import FeatureSpec
    from components.retrieval import _purchases, _to_data

    spec = FeatureSpec.from_dict(doc["feature_spec"])
    test = _to_data(_purchases(world / "model_input", "test", ["item_id", *spec_names]), spec,
                    {item: k for k, item in enumerate(items)})
    with torch.no_grad():
        ours = model.head.scores(model.hidden(test))
        theirs = again.model.head.scores(again.model.hidden(test))
    torch.testing.assert_close(ours, theirs)
    assert json.loads((world / "again" / "metrics.json").read_text())["recall_at_100"] == full_run[1]["recall_at_100"]


def test_lsh_method_trains_and_reports_its_tables(world):
    code, m = run(world, "lsh", "retrieval.method=lsh", "retrieval.epochs=3", oracle=False)
    assert code == 0 and m["method"] == "lsh" and m["oracle_recall_at_100"] is None
    assert 0.0 < m["lsh_recall_vs_exact_at_100"] <= 1.0
    assert m["recall_at_100_lo"] > m["random_recall_at_100"]
    model, _, _ = load_retrieval(world / "lsh" / "model")
    assert model.head.layer.index is not None


def test_oracle_refuses_the_world_of_other_generate_params(world, full_run, capsys):
    assert full_run[0] == 0          # the data's own generate params: accepted
    params = yaml.safe_load((world / "params.yaml").read_text())
    params["generate"]["seed"] = 4
    (world / "other.yaml").write_text(yaml.safe_dump(params))
    code = main(["retrieval", "--input", str(world / "model_input"), "--model-out", str(world / "x" / "model"),
                 "--metrics", str(world / "x" / "metrics.json"), "--params", str(world / "other.yaml"),
                 "--validated", str(world / "validated"), "-S", "retrieval.epochs=1"])
    assert code != 0 and not (world / "x" / "metrics.json").exists()
    assert "not the data's world" in capsys.readouterr().err


def test_config_keeps_item_features_out_of_the_tower_and_names_every_model_field():
    assert set(MODEL_KEYS) == {f.name for f in fields(RetrievalConfig)}
    with pytest.raises(ValueError, match="category_l3"):
        RetrievalStepConfig(context=("user", "category_l3"))
    cfg = load_config(RetrievalStepConfig, "retrieval", None, ["retrieval.method=lsh", "retrieval.lsh.bits=5"])
    assert cfg.model.method == "lsh" and cfg.model.lsh.bits == 5
    assert cfg.model.epochs == RetrievalStepConfig().model.epochs   # the rest keeps the step's defaults
    with pytest.raises(ValueError, match="retrieval"):
        load_config(RetrievalStepConfig, "retrieval", None, ["retrieval.method=nope"])


def test_params_yaml_section_loads():
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(RetrievalStepConfig, "retrieval", root / "params.yaml")
    assert cfg.model.method in ("lsh", "full", "sampled", "inbatch") and cfg.fit_splits
    assert pd.Series(cfg.context).isin([f.name for f in fields(TableSizes)]).all()
    assert np.isfinite(cfg.model.item_lr)
