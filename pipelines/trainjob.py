"""The Kubeflow pipeline's data-parallel train step: a Kubeflow Trainer TrainJob.

When ``train.workers > 1`` the pipeline's train step (``train_job_op``) does not train in its
own pod: it stages the model-ready tables, creates a **Kubeflow Trainer v2 TrainJob**
(``trainer.kubeflow.org/v1alpha1``, runtime ``torch-distributed``) of ``workers`` nodes that
run this module's worker entry under torchrun, waits for it, and hands the bundle, reports
and metrics back to KFP as the step's outputs, so evaluate/push/monitor read them as from
the single-process step.

Why a TrainJob created with the Kubernetes API, rather than the alternatives:

- The Training Operator's PyTorchJob is the v1 API that Kubeflow Trainer v2's TrainJob +
  TrainingRuntime replace; new clusters install Trainer v2.
- The ``kubeflow`` SDK's ``TrainerClient().train(trainer=CustomTrainer(func, num_nodes))``
  ships the source of a self-contained Python function to the runtime's image. Our workers
  run a command of our own image (robeflow is installed there), which the TrainJob's
  ``spec.trainer`` (image, command, numNodes, resourcesPerNode, env) states directly; one
  ``create_namespaced_custom_object`` call and a status poll are all the launcher needs, and
  the ``kubernetes`` client already comes with kfp. So no new dependency, and compiling the
  pipeline needs neither a cluster nor any Kubeflow package beyond kfp.
- KFP has no TrainJob op (as of kfp 2.17): launching from inside a component is the
  documented way; the component's own pod stays small (it only waits).

Data: the TrainJob's pods cannot see the KFP step's local artifact paths, so the step copies
the model-ready dir to ``<staging>/<job>/model_input`` (``pipeline.train_staging``: an
fsspec URL such as ``s3://bucket/robeflow/train-jobs`` or a path on a shared volume, read
and written with the pods' own credentials, as the registry is), the pods copy it to local
disk, train data-parallel (:mod:`dlrm.distributed`: torchrun sets RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT from the runtime's PET_* variables), and rank 0 writes the bundle and
reports to ``<staging>/<job>/out``, which the step copies into its output artifacts.

RBAC: the pipeline's service account needs ``create``/``get``/``delete`` on
``trainjobs.trainer.kubeflow.org`` in its namespace.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "torch-distributed"        # Kubeflow Trainer's ClusterTrainingRuntime for PyTorch
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# ---------------------------------------------------------------------------- the manifest

def train_job_manifest(name: str, *, image: str, workers: int, params: dict[str, Any], staging: str,
                       device: str = "cpu", runtime: str = RUNTIME,
                       resources: dict[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob of ``workers`` nodes, one training process each, running
    ``torchrun -m pipelines.trainjob worker`` in ``image``.

    Args:
        name: the TrainJob's name (DNS-1035: lower case, digits, '-').
        image: the component image (robeflow installed).
        workers: nodes (= data-parallel processes; ``train.workers``).
        params: the ``train`` section of params.yaml (``workers`` is set to ``workers``).
        staging: the job's staging URL (``model_input`` in, ``out`` written by rank 0).
        device: ``cpu`` or ``cuda`` (cuda: one ``nvidia.com/gpu`` per node, NCCL).
        runtime: the ClusterTrainingRuntime (``torch-distributed`` sets torchrun's PET_* env).
        resources: requests per node (``cpu``, ``memory``; limits = requests).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"train.workers = {workers!r}; expected an int >= 1")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device = {device!r}; expected 'cpu' or 'cuda'")
    per_node = dict(resources or {"cpu": "4", "memory": "8Gi"})
    if device == "cuda":
        per_node["nvidia.com/gpu"] = "1"
    train = {**params, "workers": workers, "device": device, "progress": False}
    command = ["torchrun", "--nproc-per-node=1", "-m", "pipelines.trainjob", "worker",
               "--staging", staging, "--train-params", json.dumps(train, sort_keys=True)]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "robeflow"}},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
            "trainer": {"image": image, "command": command, "numNodes": workers,
                        "resourcesPerNode": {"requests": per_node, "limits": per_node}},
        },
    }


def job_state(job: dict[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` once the TrainJob has finished (its status condition of that
    type is True), else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and str(cond.get("status")) == "True":
            return cond["type"]
    return None


def run_train_job(api: Any, namespace: str, manifest: dict[str, Any], *, poll_s: float = 15.0,
                  timeout_s: float = 7 * 24 * 3600, say: Callable[[str], None] = print,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Creates the TrainJob with ``api`` (a ``kubernetes.client.CustomObjectsApi``) and waits
    until it completes; returns its last state. Raises RuntimeError when it failed or ran
    past ``timeout_s`` (the job is deleted then, so no pods linger)."""
    name = manifest["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    say(f"created TrainJob {namespace}/{name} ({manifest['spec']['trainer']['numNodes']} nodes)")
    waited = 0.0
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state = job_state(job)
        if state == "Complete":
            say(f"TrainJob {name} completed")
            return job
        if state == "Failed" or waited >= timeout_s:
            reason = "failed" if state else f"did not finish within {timeout_s:.0f} s"
            conds = (job.get("status") or {}).get("conditions")
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            raise RuntimeError(f"TrainJob {namespace}/{name} {reason}: {conds}")
        sleep(poll_s)
        waited += poll_s


def current_namespace(default: str = "kubeflow") -> str:
    """The namespace this pod runs in (its service account's), else ``default``."""
    return _NAMESPACE_FILE.read_text().strip() if _NAMESPACE_FILE.exists() else default


# ---------------------------------------------------------------------------- staging

def copy_tree(src: str, dst: str) -> None:
    """Copies the directory ``src`` to ``dst``; either may be a local path or an fsspec URL."""
    import fsspec

    sfs, spath = fsspec.core.url_to_fs(src)
    dfs, dpath = fsspec.core.url_to_fs(dst)
    dpath = dpath.rstrip("/")
    spath = spath.rstrip("/")
    for f in sfs.find(spath):
        target = f"{dpath}/{f[len(spath):].lstrip('/')}"
        dfs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with sfs.open(f, "rb") as r, dfs.open(target, "wb") as w:
            shutil.copyfileobj(r, w)


# ---------------------------------------------------------------------------- the worker

def worker(staging: str, train_params: dict[str, Any]) -> int:
    """One node of the TrainJob: copies ``<staging>/model_input`` to local disk, trains
    data-parallel (the world torchrun set up), and on rank 0 writes the bundle, reports and
    metrics to ``<staging>/out``."""
    from components.train import train
    from contract.params import from_dict
    from dlrm.configs import TrainConfig

    cfg = from_dict(TrainConfig, train_params, "train")
    staging = staging.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="robeflow-trainjob-") as tmp:
        local = Path(tmp)
        copy_tree(f"{staging}/model_input", str(local / "model_input"))
        res = train(cfg, local / "model_input", local / "out/model", local / "checkpoints", local / "out/reports")
        if res is not None:  # rank 0
            copy_tree(str(local / "out"), f"{staging}/out")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.trainjob",
                                description="a node of the robeflow TrainJob (run by torchrun)")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="train data-parallel from <staging>/model_input; rank 0 writes <staging>/out")
    w.add_argument("--staging", required=True, help="the job's staging URL or directory")
    w.add_argument("--train-params", required=True, help="the train section of params.yaml as JSON")
    args = p.parse_args(argv)
    return worker(args.staging, json.loads(args.train_params))


if __name__ == "__main__":
    raise SystemExit(main())
