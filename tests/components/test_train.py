from pathlib import Path
import csv
import json

import pytest
import yaml

from pipelines.cli import main
from dlrm import load_model
from dlrm.synthetic import write_planted_dir
from contract.spec import FeatureSpec

CRITEO_SAMPLE = str(Path(__file__).parents[1] / "data" / "criteo_sample_200.csv")

TRAIN = {
    "model": {"embedding": {"backend": "robe", "dim": 8, "compression": 4, "block": 4},
              "bottom_mlp": [16], "top_mlp": [32]},
    "optim": {"dense_lr": 0.003, "embedding_lr": 0.1},
    "batch_size": 128, "epochs": 2, "eval_every": 10, "checkpoint_every": 10, "progress": False,
    "threads": 1,
    "criteo": {"table_size": 1000, "valid_fraction": 0.25},
}


@pytest.fixture
def project(tmp_path):
    write_planted_dir(tmp_path / "data/model_input", tmp_path / "data/truth")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": TRAIN}))
    return tmp_path


def train_args(root, *extra):
    return ["train", "--input", str(root / "data/model_input"), "--model-out", str(root / "models/model"),
            "--checkpoints", str(root / "models/checkpoints"), "--reports", str(root / "reports/train"),
            "--params", str(root / "params.yaml"), *extra]


def test_train_cli_writes_bundle_checkpoints_and_reports(project):
    assert main(train_args(project)) == 0
    model, doc = load_model(project / "models/model")
    assert FeatureSpec.from_dict(doc["feature_spec"]).table_sizes == [300, 120, 40]
    assert doc["config"]["batch_size"] == 128 and doc["embedding"]["backend"] == "robe"
    assert set(doc["embedding"]["hash"]) >= {"A", "B", "C", "P", "block", "size"}
    metrics = json.loads((project / "reports/train/train_metrics.json").read_text())
    assert metrics["steps"] == 2 * 32 and metrics["valid_auc"] > 0.7
    assert metrics["train_samples_per_s"] > 0 and metrics["compression"] == pytest.approx(4, rel=0.01)
    rows = list(csv.DictReader((project / "reports/train/auc_steps.csv").open()))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40, 50, 60, 64]
    assert sorted(p.name for p in (project / "models/checkpoints").glob("*.pt")) == [
        "step-000000060.pt", "step-000000064.pt"]  # keep_checkpoints = 2


def test_train_cli_resume_and_overrides(project):
    assert main(train_args(project, "-S", "train.epochs=1")) == 0
    first = load_model(project / "models/model")[0].state_dict()
    # resuming a finished run with more epochs continues from its last checkpoint
    assert main(train_args(project, "--resume", "-S", "train.epochs=2")) == 0
    rows = list(csv.DictReader((project / "reports/train/auc_steps.csv").open()))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 32, 40, 50, 60, 64]
    second = load_model(project / "models/model")[0].state_dict()
    assert any((first[k] != second[k]).any() for k in first)
    # a changed model config cannot resume
    assert main(train_args(project, "--resume", "-S", "train.batch_size=64")) == 2


def test_train_cli_on_the_criteo_sample(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {**TRAIN, "batch_size": 32}}))
    args = ["train", "--criteo", CRITEO_SAMPLE, "--model-out", str(tmp_path / "m"),
            "--checkpoints", str(tmp_path / "c"), "--reports", str(tmp_path / "r"),
            "--params", str(tmp_path / "params.yaml")]
    assert main(args) == 0
    _, doc = load_model(tmp_path / "m")
    spec = FeatureSpec.from_dict(doc["feature_spec"])
    assert len(spec.dense) == 13 and len(spec.sparse) == 26 and set(spec.table_sizes) == {1000}
    metrics = json.loads((tmp_path / "r/train_metrics.json").read_text())
    assert metrics["train_rows"] == 150 and metrics["valid_rows"] == 50


def test_train_cli_errors_are_one_line(project, capsys):
    assert main(train_args(project, "-S", "train.model.embedding.backend=dense")) == 2
    assert "backend" in capsys.readouterr().err
    (project / "data/model_input/train.parquet").unlink()
    assert main(train_args(project)) == 2
    assert "train.parquet" in capsys.readouterr().err


def test_train_cli_streams_a_folder_of_criteo_parts(tmp_path):
    from features.criteo import read_criteo, write_criteo

    rows = read_criteo(CRITEO_SAMPLE)
    parts = tmp_path / "parts"
    write_criteo(rows.iloc[:120], parts / "part-0.tsv")
    write_criteo(rows.iloc[120:], parts / "part-1.tsv")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {**TRAIN, "batch_size": 32}}))
    args = ["train", "--criteo", str(parts), "--model-out", str(tmp_path / "m"),
            "--checkpoints", str(tmp_path / "c"), "--reports", str(tmp_path / "r"),
            "--params", str(tmp_path / "params.yaml")]
    assert main(args) == 0  # a folder streams (no IsADirectoryError)
    metrics = json.loads((tmp_path / "r/train_metrics.json").read_text())
    assert metrics["train_rows"] == 150 and metrics["valid_rows"] == 50  # every 4th row held out
    assert metrics["steps"] == 2 * 5 and metrics["rows_used"] > 0


def test_train_cli_streams_the_model_ready_split_when_asked_or_above_the_threshold(project, capsys):
    """train.stream: false reads the split whole, true streams it, auto streams above
    train.stream_above_rows (4000 planted training rows); streamed training learns as well."""
    def run(*overrides):
        assert main(train_args(project, *[a for o in overrides for a in ("-S", o)])) == 0
        err = capsys.readouterr().err
        return json.loads((project / "reports/train/train_metrics.json").read_text()), err

    memory, err = run("train.stream=false")
    assert not memory["streamed"] and "(in memory)" in err
    streamed, err = run("train.stream=true", "train.stream_buffer=1000")
    assert streamed["streamed"] and "4000 training rows (streamed, 1,000-row shuffle buffer)" in err
    assert streamed["train_rows"] == memory["train_rows"] == 4000 and streamed["steps"] == memory["steps"] == 64
    assert streamed["valid_auc"] > 0.7 and abs(streamed["valid_auc"] - memory["valid_auc"]) < 0.03
    assert run("train.stream=auto", "train.stream_above_rows=3999")[0]["streamed"]
    assert not run("train.stream=auto", "train.stream_above_rows=4000")[0]["streamed"]
    assert main(train_args(project, "-S", "train.stream=maybe")) == 2
    assert "train.stream" in capsys.readouterr().err
