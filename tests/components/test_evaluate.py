from pathlib import Path
import json

import pandas as pd
import pytest
import yaml

from pipelines.cli import main
from dlrm.metrics import auc, bootstrap_auc
from dlrm.synthetic import write_planted_dir

PARAMS = {
    "train": {
        "model": {"embedding": {"backend": "robe", "dim": 8, "compression": 4, "block": 4},
                  "bottom_mlp": [16], "top_mlp": [32]},
        "optim": {"dense_lr": 0.003, "embedding_lr": 0.1},
        "batch_size": 128, "epochs": 2, "progress": False, "threads": 1,
    },
    "evaluate": {"gate": "oracle_gap", "oracle_gap": 0.15, "threads": 1},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    write_planted_dir(root / "data/model_input", root / "data/truth")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    assert main(["train", "--input", str(root / "data/model_input"), "--model-out", str(root / "models/model"),
                 "--checkpoints", str(root / "models/checkpoints"), "--reports", str(root / "reports/train"),
                 "--params", str(root / "params.yaml")]) == 0
    return root


def run_eval(root, *overrides, truth=True):
    args = ["evaluate", "--model", str(root / "models/model"), "--input", str(root / "data/model_input"),
            "--metrics", str(root / "reports/metrics.json"), "--plots", str(root / "reports/plots"),
            "--predictions", str(root / "data/predictions"), "--params", str(root / "params.yaml")]
    if truth:
        args += ["--truth", str(root / "data/truth")]
    for o in overrides:
        args += ["-S", o]
    code = main(args)
    return code, json.loads((root / "reports/metrics.json").read_text())


def test_evaluate_writes_metrics_plots_and_predictions(trained):
    code, m = run_eval(trained)
    assert code == 0
    for key in ("auc", "auc_lo", "auc_hi", "logloss", "ne", "oracle_auc", "target_auc", "passed", "backend", "embedding_bytes",
                "compression", "train_samples_per_s", "time_to_target_s"):
        assert key in m, key
    test = pd.read_parquet(trained / "data/model_input/test.parquet")
    truth = pd.read_parquet(trained / "data/truth/test.parquet")
    assert m["oracle_auc"] == pytest.approx(auc(test["purchased"], truth["purchase_prob"]))
    assert m["target_auc"] == pytest.approx(m["oracle_auc"] - 0.15)
    assert m["passed"] is True and 0.7 < m["auc"] < m["oracle_auc"] + 0.01 and m["ne"] < 1
    pred = pd.read_parquet(trained / "data/predictions/test.parquet")
    assert list(pred.columns) == ["event_id", "event_timestamp", "score", "label"]
    assert pred["event_id"].tolist() == test["event_id"].tolist()
    assert auc(pred["label"], pred["score"]) == pytest.approx(m["auc"])
    ci = bootstrap_auc(pred["label"], pred["score"], n_boot=1000)
    assert m["auc_lo"] == pytest.approx(ci["lo"]) and m["auc_hi"] == pytest.approx(ci["hi"])
    assert m["auc_lo"] < m["auc"] < m["auc_hi"] and m["auc_hi"] - m["auc_lo"] < 0.2
    roc = pd.read_csv(trained / "reports/plots/roc.csv")
    assert roc["fpr"].iloc[0] == 0 and roc["tpr"].iloc[-1] == 1 and roc["fpr"].is_monotonic_increasing


def test_gate_fails_on_an_unreachable_target_without_crashing(trained):
    code, m = run_eval(trained, "evaluate.gate=target_auc", "evaluate.target_auc=0.999")
    assert code == 0 and m["passed"] is False and m["target_auc"] == 0.999
    code, m = run_eval(trained, "evaluate.gate=mlperf_dlrm_criteo_1tb")
    assert m["target_auc"] == 0.8025 and m["passed"] is (m["auc"] >= 0.8025)
    code, m = run_eval(trained, "evaluate.gate=target_auc", "evaluate.target_auc=0.6")
    assert code == 0 and m["passed"] is True


def test_fail_on_gate_makes_the_step_exit_non_zero(trained, capsys):
    code, m = run_eval(trained, "evaluate.gate=target_auc", "evaluate.target_auc=0.999",
                       "evaluate.fail_on_gate=true")
    assert code == 3 and m["passed"] is False
    assert "quality gate failed" in capsys.readouterr().err


def test_oracle_gap_without_truth_is_a_clear_error(trained, capsys):
    args = ["evaluate", "--model", str(trained / "models/model"), "--input", str(trained / "data/model_input"),
            "--metrics", str(trained / "reports/m2.json"), "--plots", str(trained / "reports/p2"),
            "--predictions", str(trained / "data/p2"), "--params", str(trained / "params.yaml")]
    assert main(args) == 1
    assert "oracle_gap needs the planted probabilities" in capsys.readouterr().err


def test_evaluate_a_criteo_model_on_a_criteo_file(tmp_path):
    sample = str(Path(__file__).parents[1] / "data" / "criteo_sample_200.csv")
    params = {"train": {**PARAMS["train"], "batch_size": 32, "criteo": {"table_size": 500}},
              "evaluate": {"gate": "mlperf_dlrm_criteo_1tb", "threads": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(tmp_path / "params.yaml")]
    assert main(["train", "--criteo", sample, "--model-out", str(tmp_path / "m"), "--checkpoints",
                 str(tmp_path / "c"), "--reports", str(tmp_path / "r"), *common]) == 0
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--criteo", sample, "--metrics",
                 str(tmp_path / "metrics.json"), "--plots", str(tmp_path / "p"), "--predictions",
                 str(tmp_path / "pred"), *common]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["rows"] == 200 and m["target_auc"] == 0.8025 and m["oracle_auc"] is None
    labels = pd.read_csv(sample, usecols=["label"])["label"]
    pred = pd.read_parquet(tmp_path / "pred/test.parquet")
    assert pred["label"].tolist() == labels.tolist()
    assert m["passed"] is (m["auc"] >= 0.8025)


def test_a_test_window_of_many_row_groups_scores_as_one_frame(trained, tmp_path):
    """Evaluate reads the test window in batches (the planted truth a row group at a time):
    the scores, metrics and oracle equal those of the whole frame scored at once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contract.spec import FeatureSpec, ModelInput
    from dlrm.bundle import load_model, predict

    _, whole = run_eval(trained)
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    for sub in ("model_input", "truth"):
        (root / "data" / sub).mkdir()
        for f in (trained / "data" / sub).iterdir():
            if f.suffix == ".parquet":
                pq.write_table(pq.read_table(f), root / "data" / sub / f.name, row_group_size=97)
            else:
                (root / "data" / sub / f.name).write_bytes(f.read_bytes())
    assert pq.ParquetFile(root / "data/model_input/test.parquet").num_row_groups > 5
    (root / "models").symlink_to(trained / "models")
    (root / "params.yaml").write_text((trained / "params.yaml").read_text())
    code, parts = run_eval(root, "evaluate.batch_size=97")   # parts of 97 rows
    assert code == 0
    for key in ("auc", "auc_lo", "auc_hi", "logloss", "oracle_auc", "oracle_rows"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key
    model, doc = load_model(trained / "models/model")
    frame = pd.read_parquet(trained / "data/model_input/test.parquet")
    want = predict(model, ModelInput.from_frame(frame, FeatureSpec.from_dict(doc["feature_spec"])), batch_size=4096)
    got = pd.read_parquet(root / "data/predictions/test.parquet")
    np.testing.assert_allclose(got["score"].to_numpy(), want, rtol=1e-5, atol=1e-7)
    assert got["event_id"].tolist() == frame["event_id"].astype(str).tolist()
    assert pa.types.is_timestamp(pa.Schema.from_pandas(got).field("event_timestamp").type)
