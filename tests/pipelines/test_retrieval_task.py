"""The compiled pipeline runs the retrieval step after the features, beside the ranker."""

from pathlib import Path

import yaml

from pipelines.commands import COMPILED, pipeline_arguments

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
