"""The compiled pipeline: up to date, complete, GPU request on the cuda branch only."""

from pathlib import Path

import pytest
import yaml

from pipelines.commands import COMPILED, compile_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.delenv("ROBEFLOW_IMAGE", raising=False)
    out = compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")
    return out.read_text()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_committed_yaml_is_up_to_date(spec):
    committed = (ROOT / COMPILED).read_text()
    assert committed == spec, "pipelines/compiled/robe_dlrm_pipeline.yaml is stale: run `robeflow pipeline compile`"


def _executors(doc: dict) -> dict:
    return doc["deploymentSpec"]["executors"]


def test_every_step_is_in_the_pipeline(spec):
    doc = yaml.safe_load(spec)
    images = {e["container"]["image"] for e in _executors(doc).values()}
    assert images == {"robeflow/components:0.1.0"}
    tasks = set(doc["root"]["dag"]["tasks"])
    for step in ("generate-op", "ingest-op", "validate-op", "features-op"):
        assert step in tasks
    # the leaves of the branches on device (cuda, cpu) x workers (> 1: a TrainJob, else a pod)
    leaves = [c["dag"]["tasks"] for c in doc["components"].values()
              if any(t.startswith("evaluate-op") for t in c.get("dag", {}).get("tasks", {}))]
    assert len(leaves) == 4
    assert sorted(t.split("-op")[0] for tasks in leaves for t in tasks if t.startswith("train")) == [
        "train", "train", "train-job", "train-job"]
    for tasks in leaves:
        gate = [t for t in tasks.values() if t.get("triggerPolicy")]
        assert len(gate) == 1 and "evaluate-op" in gate[0]["triggerPolicy"]["condition"]
        assert "evaluate-op" in gate[0]["triggerPolicy"]["condition"].split("==")[0]
        gated = doc["components"][gate[0]["componentRef"]["name"]]["dag"]["tasks"]
        assert any(name.startswith("push-op") for name in gated)
        assert any(name.startswith("monitor-op") for name in tasks)
    # nothing is pip-installed at run time: the image carries everything
    assert "pip install" not in spec


def test_gpu_requested_only_on_the_cuda_branch(spec):
    doc = yaml.safe_load(spec)
    accel = {name: e["container"]["resources"].get("accelerator")
             for name, e in _executors(doc).items()}
    with_gpu = [name for name, a in accel.items() if a]
    assert len(with_gpu) == 1 and with_gpu[0].startswith("exec-train-op")
    assert accel[with_gpu[0]]["resourceType"] == "nvidia.com/gpu"
    assert accel[with_gpu[0]]["resourceCount"] == "1"
    branches = doc["root"]["dag"]["tasks"]["condition-branches-1"]
    assert "cuda" in yaml.safe_dump(doc["components"][branches["componentRef"]["name"]])


def test_every_step_has_cpu_and_memory_requests(spec):
    doc = yaml.safe_load(spec)
    for name, e in _executors(doc).items():
        res = e["container"]["resources"]
        assert res.get("cpuRequest") and res.get("memoryRequest"), name


def test_image_name_comes_from_the_environment(tmp_path):
    import subprocess
    import sys

    code = ("from pipelines.commands import compile_pipeline; import sys; "
            "compile_pipeline(__import__('pathlib').Path(sys.argv[1]))")
    env = {**__import__("os").environ, "ROBEFLOW_IMAGE": "example.org/rf:test"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.yaml")], check=True, env=env, cwd=ROOT)
    assert "example.org/rf:test" in (tmp_path / "p.yaml").read_text()
