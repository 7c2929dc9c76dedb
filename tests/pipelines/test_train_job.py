"""The distributed train step: the compiled pipeline holds it, its TrainJob manifest, the
launcher's wait on the job, and the worker entry the job's pods run (here as 2 local ranks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.commands import COMPILED, pipeline_arguments
from pipelines.trainjob import job_state, run_train_job, train_job_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_the_compiled_pipeline_runs_train_as_a_trainjob_when_workers_exceed_one():
    doc = yaml.safe_load((ROOT / COMPILED).read_text())
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert params["workers"]["defaultValue"] == 1 and params["train_staging"]["defaultValue"] == ""
    branches = [c["dag"]["tasks"] for c in doc["components"].values() if "dag" in c]
    on_workers = [tasks for tasks in branches
                  if any("pipelinechannel--workers']) > 1" in t.get("triggerPolicy", {}).get("condition", "")
                         for t in tasks.values())]
    assert len(on_workers) == 2  # under each device branch
    for tasks in on_workers:
        job, pod = sorted(tasks.values(), key=lambda t: t["triggerPolicy"]["condition"].startswith("!"))
        job_dag = doc["components"][job["componentRef"]["name"]]["dag"]["tasks"]
        pod_dag = doc["components"][pod["componentRef"]["name"]]["dag"]["tasks"]
        assert any(t.startswith("train-job-op") for t in job_dag) and not any(t.startswith("train-op") for t in job_dag)
        assert any(t.startswith("train-op") for t in pod_dag) and not any(t.startswith("train-job") for t in pod_dag)
        launcher = next(v for k, v in job_dag.items() if k.startswith("train-job-op"))
        given = launcher["inputs"]["parameters"]
        assert given["workers"]["componentInputParameter"].endswith("workers")
        assert given["image"]["runtimeValue"]["constant"] == "robeflow/components:0.1.0"
        evaluate = next(v for k, v in job_dag.items() if k.startswith("evaluate-op"))
        assert evaluate["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"].startswith("train-job-op")
    executor = next(e for n, e in doc["deploymentSpec"]["executors"].items() if n.startswith("exec-train-job-op"))
    assert "accelerator" not in executor["container"]["resources"]  # the launcher only waits


def test_the_manifest_is_a_torch_trainjob_of_workers_nodes():
    m = train_job_manifest("robeflow-train-x", image="img:1", workers=3, params={"batch_size": 512, "workers": 1},
                           staging="s3://b/jobs/robeflow-train-x", device="cuda")
    assert (m["apiVersion"], m["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    spec = m["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 3 and trainer["image"] == "img:1"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    cmd = trainer["command"]
    assert cmd[:5] == ["torchrun", "--nproc-per-node=1", "-m", "pipelines.trainjob", "worker"]
    assert cmd[cmd.index("--staging") + 1] == "s3://b/jobs/robeflow-train-x"
    train = json.loads(cmd[cmd.index("--train-params") + 1])
    assert train == {"batch_size": 512, "workers": 3, "device": "cuda", "progress": False}
    cpu = train_job_manifest("j", image="i", workers=2, params={}, staging="/s")["spec"]["trainer"]
    assert "nvidia.com/gpu" not in cpu["resourcesPerNode"]["requests"]
    with pytest.raises(ValueError, match="train.workers"):
        train_job_manifest("j", image="i", workers=0, params={}, staging="/s")


class _Jobs:
    """A stand-in for kubernetes' CustomObjectsApi: the TrainJob's conditions over polls."""

    def __init__(self, states: list[list[dict]]):
        self.states, self.created, self.deleted, self.polls = states, [], [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body["metadata"]["name"]))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        conds = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return {"metadata": {"name": name}, "status": {"conditions": conds}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


def test_the_launcher_waits_for_the_job_and_fails_with_it():
    manifest = train_job_manifest("robeflow-train-y", image="i", workers=2, params={}, staging="/s")
    running = [{"type": "Created", "status": "True"}]
    done = running + [{"type": "Complete", "status": "True"}]
    api = _Jobs([running, running, done])
    job = run_train_job(api, "team", manifest, poll_s=1, say=lambda _m: None, sleep=lambda _s: None)
    assert job_state(job) == "Complete" and api.polls == 3 and not api.deleted
    assert api.created == [("trainer.kubeflow.org", "v1alpha1", "team", "trainjobs", "robeflow-train-y")]
    failed = _Jobs([running, running + [{"type": "Failed", "status": "True", "message": "OOMKilled"}]])
    with pytest.raises(RuntimeError, match="failed.*OOMKilled"):
        run_train_job(failed, "team", manifest, poll_s=1, say=lambda _m: None, sleep=lambda _s: None)
    assert failed.deleted == ["robeflow-train-y"]
    stuck = _Jobs([running])
    with pytest.raises(RuntimeError, match="within 3 s"):
        run_train_job(stuck, "team", manifest, poll_s=1, timeout_s=3, say=lambda _m: None, sleep=lambda _s: None)
    assert stuck.polls == 4 and stuck.deleted == ["robeflow-train-y"]


def test_pipeline_arguments_carry_workers_and_need_staging_for_a_cluster(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"workers": 2}}))
    with pytest.raises(ValueError, match="pipeline.train_staging"):
        pipeline_arguments(params, [])
    args = pipeline_arguments(params, ["pipeline.train_staging=s3://b/jobs"])
    assert (args["workers"], args["train_staging"], args["train"]["workers"]) == (2, "s3://b/jobs", 2)
    assert pipeline_arguments(params, [], cluster=False)["workers"] == 2  # run-local: one pod, 2 processes
    assert pipeline_arguments(None, [])["workers"] == 1
    with pytest.raises(ValueError, match="train.workers"):
        pipeline_arguments(params, ["train.workers=0"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_job_worker_entry_trains_from_staging_and_rank0_writes_back(tmp_path):
    """What each TrainJob pod runs (torchrun's env, here set by hand for 2 local ranks)."""
    from dlrm.synthetic import write_planted_dir
    from pipelines.trainjob import copy_tree

    write_planted_dir(tmp_path / "model_input", tmp_path / "truth", sizes={"train": 1000, "valid": 500})
    staging = tmp_path / "staging" / "robeflow-train-z"
    copy_tree(str(tmp_path / "model_input"), str(staging / "model_input"))
    manifest = train_job_manifest("robeflow-train-z", image="i", workers=2, staging=str(staging), params={
        "model": {"embedding": {"backend": "robe", "dim": 8, "compression": 4, "block": 4},
                  "bottom_mlp": [16], "top_mlp": [32]},
        "batch_size": 128, "epochs": 1, "eval_every": 4, "threads": 1})
    cmd = manifest["spec"]["trainer"]["command"]
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, *cmd[2:]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "RANK": str(r), "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                                              "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    metrics = json.loads((staging / "out/reports/train_metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["steps"] == 8 and metrics["samples"] == 1000
    assert (staging / "out/model/model.safetensors").exists() and (staging / "out/model/config.json").exists()
