"""The compiled pipeline runs the retrieval step after the features, beside the ranker."""

from pathlib import Path

import yaml

from pipelines.commands import COMPILED, pipeline_arguments
from pipelines.summary import summary

ROOT = Path(__file__).resolve().parents[2]


def test_compiled_pipeline_holds_the_retrieval_task():
    doc = yaml.safe_load((ROOT / COMPILED).read_text())
    task = doc["root"]["dag"]["tasks"]["retrieval-op"]
    assert task["dependentTasks"] == ["features-op", "validate-op"]
    arts = task["inputs"]["artifacts"]
    assert arts["model_input"]["taskOutputArtifact"] == {"outputArtifactKey": "model_input",
                                                         "producerTask": "features-op"}
    assert arts["validated"]["taskOutputArtifact"]["producerTask"] == "validate-op"
    params = task["inputs"]["parameters"]
    assert params["params"]["componentInputParameter"] == "retrieval"
    assert params["generate"]["componentInputParameter"] == "generate"
    outputs = doc["components"]["comp-retrieval-op"]["outputDefinitions"]["artifacts"]
    assert outputs["model"]["artifactType"]["schemaTitle"] == "system.Model"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    res = doc["deploymentSpec"]["executors"]["exec-retrieval-op"]["container"]["resources"]
    assert res.get("cpuRequest") and res.get("memoryRequest") and not res.get("accelerator")


def test_submit_passes_the_retrieval_section():
    args = pipeline_arguments(ROOT / "params.yaml", ["retrieval.method=lsh"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert args["retrieval"] == {**params["retrieval"], "method": "lsh"}
    assert args["generate"] == params["generate"]


def test_summary_shows_the_retrieval_outputs(tmp_path):
    (tmp_path / "models" / "retrieval").mkdir(parents=True)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "retrieval_metrics.json").write_text(
        '{"method": "full", "items": 5000, "recall_at_10": 0.48, "recall_at_100": 0.77, "p_at_1": 0.2, '
        '"oracle_recall_at_100": 0.92}')
    out = summary(tmp_path)
    assert "models/retrieval" in out
    assert "retrieval_metrics.json: method=full, items=5000, recall_at_10=0.48, recall_at_100=0.77" in out
