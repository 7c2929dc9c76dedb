"""history_bench's training part: the tower's training throughput, checkout against checkout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from tests.components.test_train_history import SPEC, TRAIN, _frame

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(tmp_path):
    data = tmp_path / "model_input"
    data.mkdir()
    _frame(600, 0).to_parquet(data / "train.parquet", index=False)
    _frame(300, 1).to_parquet(data / "valid.parquet", index=False)
    SPEC.save(data / "feature_spec.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": TRAIN}))
    return tmp_path


def _args(world, **kw):
    return argparse.Namespace(**{"data": world / "model_input", "params": world / "params.yaml", "set": [],
                                 "threads": 1, "train_rows": 500, "rounds": 1, "timeout": 300.0, "base": None, **kw})


def test_training_part_times_each_checkout_in_turn(world, benchmark_module, capsys):
    bench = benchmark_module("history_bench")
    out = bench.training(_args(world, base=ROOT, rounds=2))   # this checkout as its own baseline
    assert set(out["runs"]) == {"base", "current"}
    for rows in out["runs"].values():
        assert len(rows) == 2
        # 500 rows in batches of 100, one epoch, no evaluation
        assert all(r["steps"] == 5 and r["samples_per_s"] > 0 for r in rows)
        assert all(r["score_rows"] == 300 and r["score_rows_per_s"] > 0 for r in rows)
    assert len(out["training_ratio_per_round"]) == len(out["scoring_ratio_per_round"]) == 2
    printed = capsys.readouterr().out
    assert "training, current / base per round" in printed and "scoring, current / base" in printed
    json.dumps(out)


def test_training_part_names_a_bad_base(world, benchmark_module):
    bench = benchmark_module("history_bench")
    with pytest.raises(FileNotFoundError, match="not a checkout"):
        bench.training(_args(world, base=world))
