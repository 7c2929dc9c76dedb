"""`robeflow train --workers 2`, and the same command as the workers of a torchrun-style world."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlrm import load_model
from dlrm.synthetic import write_planted_dir
from pipelines.cli import main
from tests.components.conftest import train_args, train_metrics

CRITEO_SAMPLE = Path(__file__).parents[1] / "data" / "criteo_sample_200.csv"
TRAIN = {
    "model": {"embedding": {"backend": "robe", "dim": 8, "compression": 4, "block": 4},
              "bottom_mlp": [16], "top_mlp": [32]},
    "optim": {"dense_lr": 0.003, "embedding_lr": 0.1},
    "batch_size": 128, "epochs": 2, "eval_every": 10, "checkpoint_every": 10, "progress": False,
    "threads": 1, "device": "cpu",
    "criteo": {"table_size": 1000, "valid_fraction": 0.25},
}


@pytest.fixture
def project(tmp_path):
    write_planted_dir(tmp_path / "data/model_input", tmp_path / "data/truth")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": TRAIN}))
    return tmp_path


def _steps(root: Path, out: str) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader((root / out / "reports/auc_steps.csv").open())]


@pytest.mark.slow
def test_train_cli_with_two_workers_matches_one_and_resumes(project):
    assert main(train_args(project, "one")) == 0
    assert main(train_args(project, "two", "--workers", "2", "-S", "train.epochs=1")) == 0
    # rank 0 wrote everything once: the bundle, the reports, its checkpoints
    assert sorted(p.name for p in (project / "two/checkpoints").glob("*.pt")) == [
        "step-000000030.pt", "step-000000032.pt"]
    assert _steps(project, "two") == [10, 20, 30, 32]
    # a second epoch, resumed with 2 workers from the first's last checkpoint
    assert main(train_args(project, "two", "--workers", "2", "--resume", "-S", "train.epochs=2")) == 0
    one, two = train_metrics(project, "one"), train_metrics(project, "two")
    assert two["workers"] == 2 and one["workers"] == 1
    assert (two["steps"], two["samples"]) == (one["steps"], one["samples"]) == (64, 8000)
    # the first run's end added an evaluation at 32 (its last step), as one process does
    assert _steps(project, "two") == [10, 20, 30, 32, 40, 50, 60, 64]
    assert _steps(project, "one") == [10, 20, 30, 40, 50, 60, 64]
    assert abs(two["valid_auc"] - one["valid_auc"]) < 0.003 and one["valid_auc"] > 0.7
    model, doc = load_model(project / "two/model")
    assert doc["config"]["workers"] == 2 and model.embedding.size == load_model(project / "one/model")[0].embedding.size


@pytest.mark.slow
def test_a_streamed_criteo_folder_is_sharded_over_two_workers(tmp_path):
    from features.criteo import read_criteo, write_criteo

    parts = tmp_path / "criteo"
    parts.mkdir()
    rows = read_criteo(CRITEO_SAMPLE)
    write_criteo(rows.iloc[:100], parts / "part-0.tsv")
    write_criteo(rows.iloc[100:], parts / "part-1.tsv")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {**TRAIN, "batch_size": 32, "epochs": 1}}))
    args = ["train", "--criteo", str(parts), "--model-out", str(tmp_path / "model"), "--checkpoints",
            str(tmp_path / "ck"), "--reports", str(tmp_path / "reports"), "--params", str(tmp_path / "params.yaml")]
    assert main(args + ["--workers", "2"]) == 0
    two = json.loads((tmp_path / "reports/train_metrics.json").read_text())
    assert main(args) == 0
    one = json.loads((tmp_path / "reports/train_metrics.json").read_text())
    # every training row once: rank r reads rows i % 2 == r; the held-out rows (every 4th) are
    # all odd, so rank 0 trains on 100 rows (7 parts of <= 16) and rank 1 on 50 (4 parts,
    # then empty parts while rank 0 has rows left)
    assert one["samples"] == 150 and one["steps"] == 5
    assert two["workers"] == 2 and two["samples"] == 150 and two["steps"] == 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_same_command_runs_as_each_worker_of_a_torchrun_style_world(project):
    """RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, as torchrun, a Kubeflow TrainJob or a
    PyTorchJob set them: each process joins the world and rank 0 writes the outputs."""
    port = str(_free_port())
    code = "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-c", code, *train_args(project, "env", "-S", "train.epochs=1")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    metrics = train_metrics(project, "env")
    assert metrics["workers"] == 2 and metrics["steps"] == 32 and metrics["samples"] == 4000
    assert "data-parallel workers" in outs[0] and "training rows" not in outs[1]  # rank 0 logs


@pytest.mark.slow
def test_a_streamed_model_ready_split_is_sharded_over_two_workers(project):
    """train.stream with 2 workers: rank r reads rows i % 2 == r of train.parquet, in its
    half of each global batch; together they train on every row once per epoch."""
    assert main(train_args(project, "two", "--workers", "2", "-S", "train.epochs=1", "-S", "train.stream=true",
                           "-S", "train.stream_buffer=1000")) == 0
    two = train_metrics(project, "two")
    # 2000 rows a rank in parts of 64: 31 full parts and one of 16
    assert two["workers"] == 2 and two["streamed"] and (two["samples"], two["steps"]) == (4000, 32)
    assert two["valid_auc"] > 0.7
