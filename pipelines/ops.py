"""Kubeflow Pipelines (v2) wrappers around the steps' core functions.

Each wrapper only maps typed artifact paths to the step's core function and records
``.metadata``; every one takes its ``params.yaml`` section as a dict, so pipeline
arguments mirror the parameters file. They run in the component image (built by
``docker/Dockerfile``), which has robeflow and kfp installed, so nothing is
pip-installed at run time.

This module imports kfp at import time (the `robeflow` CLI never imports it) and has no
`from __future__ import annotations`: kfp reads the annotations as real types.
"""


import os
from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

DEFAULT_IMAGE = "robeflow/components:0.1.0"
# The one place the image name comes from (read when the pipeline is compiled).
IMAGE = os.environ.get("ROBEFLOW_IMAGE", DEFAULT_IMAGE)


def _component(func):
    return dsl.component(base_image=IMAGE, install_kfp_package=False)(func)


@_component
def generate_op(params: dict, raw: Output[Dataset], truth: Output[Dataset]):
    """Synthetic transactions and their planted purchase probabilities."""
    from pathlib import Path

    from components.generate import GenerateConfig, generate
    from contract.params import from_dict

    res = generate(from_dict(GenerateConfig, params, "generate"), Path(raw.path), Path(truth.path))
    raw.metadata.update({"rows": res.rows, "positive_rate": res.positive_rate,
                         "window": list(res.window), "corrupted": res.corrupted})
    truth.metadata["rows"] = res.rows


@_component
def ingest_op(params: dict, raw: Input[Dataset], ingested: Output[Dataset]):
    """Raw CSV/Parquet/Criteo files -> canonical Parquet partitioned by day."""
    from pathlib import Path

    from components.ingest import IngestConfig, ingest
    from contract.params import from_dict

    res = ingest(from_dict(IngestConfig, params, "ingest"), Path(raw.path), Path(ingested.path))
    ingested.metadata.update({"rows": res.rows, "format": res.format, "days": len(res.days),
                              "coerced": res.coerced})


@_component
def validate_op(params: dict, ingested: Input[Dataset], validated: Output[Dataset],
                quarantine: Output[Dataset], accounting: Output[Metrics], report: Output[Markdown]):
    """Great Expectations suite; bad rows to quarantine; fails above max_bad_fraction."""
    import shutil
    import tempfile
    from pathlib import Path

    from contract.io import StepError
    from contract.params import from_dict
    from components.validate import ValidateConfig, validate

    cfg = from_dict(ValidateConfig, params, "validate")
    reports = Path(tempfile.mkdtemp(prefix="validation-"))
    res = validate(cfg, Path(ingested.path), Path(validated.path), Path(quarantine.path), reports)
    for key in ("rows_in", "rows_valid", "rows_quarantined", "bad_fraction"):
        accounting.log_metric(key, float(getattr(res, key)))
    shutil.copyfile(reports / "report.md", report.path)
    validated.metadata["rows"] = res.rows_valid
    quarantine.metadata.update({"rows": res.rows_quarantined,
                                "failed_by_expectation": res.failed_by_expectation})
    if not res.passed:
        raise StepError(res.reason(cfg.max_bad_fraction))


@_component
def features_op(params: dict, validated: Input[Dataset], feature_repo: Output[Dataset],
                model_input: Output[Dataset]):
    """Feast repo, point-in-time training frame, online store, model-ready tables."""
    from pathlib import Path

    from components.features import FeaturesConfig, features
    from contract.params import from_dict

    res = features(from_dict(FeaturesConfig, params, "features"), Path(validated.path),
                   Path(feature_repo.path), Path(model_input.path))
    model_input.metadata.update({"rows": res.rows, "split_rows": res.split_rows,
                                 "split_days": res.split_days})
    feature_repo.metadata.update({"online_entities": res.online_entities, "snapshot": res.snapshot})


@_component
def train_op(params: dict, device: str, model_input: Input[Dataset], model: Output[Model],
             train_metrics: Output[Metrics]):
    """DLRM with compressed embeddings, trained MLPerf-style to the target AUC."""
    import tempfile
    from pathlib import Path

    from contract.params import from_dict
    from components.train import train
    from dlrm.configs import TrainConfig

    cfg = from_dict(TrainConfig, {**params, "device": device, "progress": False}, "train")
    scratch = Path(tempfile.mkdtemp(prefix="train-"))
    res = train(cfg, Path(model_input.path), Path(model.path), scratch / "checkpoints", scratch / "reports")
    for key, value in res.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            train_metrics.log_metric(key, float(value))
    model.metadata.update({k: v for k, v in res.metrics.items() if isinstance(v, (int, float, str))})
    model.metadata["framework"] = "pytorch"


@_component
def train_job_op(params: dict, device: str, workers: int, staging: str, image: str, model_input: Input[Dataset],
                 model: Output[Model], train_metrics: Output[Metrics]):
    """The train step as a Kubeflow Trainer TrainJob of ``workers`` nodes, data-parallel
    (``train.workers > 1``): stages the model-ready tables under ``staging``
    (``pipeline.train_staging``), creates the job, waits, and returns its bundle and metrics
    as ``train_op`` does. Why a TrainJob and how: ``pipelines/trainjob.py``."""
    import json
    import uuid

    import fsspec
    from kubernetes import client, config

    from pipelines.trainjob import copy_tree, current_namespace, run_train_job, train_job_manifest

    if not staging:
        raise ValueError("train.workers > 1 runs a TrainJob, which needs pipeline.train_staging: an fsspec URL "
                         "(s3://..., gs://...) or shared-volume path that the job's pods can read and write")
    name = f"robeflow-train-{uuid.uuid4().hex[:10]}"
    job_dir = f"{staging.rstrip('/')}/{name}"
    copy_tree(model_input.path, f"{job_dir}/model_input")
    config.load_incluster_config()
    manifest = train_job_manifest(name, image=image, workers=workers, params=params, staging=job_dir,
                                  device=device)
    run_train_job(client.CustomObjectsApi(), current_namespace(), manifest)
    copy_tree(f"{job_dir}/out/model", model.path)
    with fsspec.open(f"{job_dir}/out/reports/train_metrics.json") as fh:
        metrics = json.load(fh)
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            train_metrics.log_metric(key, float(value))
    model.metadata.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
    model.metadata.update({"framework": "pytorch", "train_job": name})


@_component
def evaluate_op(params: dict, model: Input[Model], model_input: Input[Dataset], truth: Input[Dataset],
                metrics: Output[Metrics], roc: Output[ClassificationMetrics],
                predictions: Output[Dataset]) -> bool:
    """AUC, log loss, NE and calibration on the test window; returns the quality gate's outcome.

    (A plain bool rather than a named output: KFP's local runner cannot resolve a named
    output inside a condition.)
    """
    import csv
    import math
    import tempfile
    from pathlib import Path

    from components.evaluate import evaluate
    from contract.params import from_dict
    from dlrm.configs import EvaluateConfig

    cfg = from_dict(EvaluateConfig, {**params, "fail_on_gate": False}, "evaluate")
    scratch = Path(tempfile.mkdtemp(prefix="evaluate-"))
    # metrics.json is the Metrics artifact's file too, so push reads what DVC's push reads.
    res = evaluate(cfg, Path(model.path), Path(model_input.path), Path(metrics.path),
                   scratch / "plots", Path(predictions.path), truth_dir=Path(truth.path))
    for key, value in res.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(key, float(value))
    metrics.log_metric("passed", float(res.passed))
    with (scratch / "plots" / "roc.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # KFP metadata is JSON, which has no infinity: the (0, 0) point's threshold +inf becomes
    # the smallest float above 1, the same cut for probabilities.
    above_one = math.nextafter(1.0, 2.0)
    roc.log_roc_curve([float(r["fpr"]) for r in rows], [float(r["tpr"]) for r in rows],
                      [min(float(r["threshold"]), above_one) for r in rows])
    return res.passed



@_component
def retrieval_op(params: dict, generate: dict, model_input: Input[Dataset], validated: Input[Dataset],
                 model: Output[Model], metrics: Output[Metrics]):
    """Whole-catalogue retrieval (user/context tower -> softmax over every item, SLIDE's LSH
    softmax or a baseline) trained on the purchases; Recall@10/@100 and P@1 on the test window,
    and the oracle's, from the generator's world rebuilt with the ``generate`` section."""
    import json
    import math
    import tempfile
    from pathlib import Path

    from components.retrieval import RetrievalStepConfig, retrieval
    from contract.params import from_dict
    from generator.config import GenerateConfig

    scratch = Path(tempfile.mkdtemp(prefix="retrieval-"))
    res = retrieval(from_dict(RetrievalStepConfig, params, "retrieval"), Path(model_input.path), Path(model.path),
                    scratch / "retrieval_metrics.json", validated=Path(validated.path),
                    world=from_dict(GenerateConfig, generate, "generate"))
    for key, value in res.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(key, float(value))
    # the JSON also as the artifact's file: the monitor puts it on its dashboard
    Path(metrics.path).write_text(json.dumps(res.metrics, indent=2, default=str))
    model.metadata.update({k: res.metrics[k] for k in ("method", "items", "recall_at_100")})
    model.metadata["framework"] = "pytorch"

@_component
def push_op(params: dict, model: Input[Model], metrics: Input[Metrics], model_input: Input[Dataset],
            retrieval: Input[Model], bundle: Output[Model]) -> str:
    """Publishes the model, with the retrieval model (``retrieval``, published in the same
    version), to the registry (push.registry) and moves its production pointer, when it is
    not worse than production on the same test rows (``model_input``'s test split)."""
    import json
    from pathlib import Path

    from contract.params import from_dict
    from components.push import PushConfig, push

    res = push(from_dict(PushConfig, params, "push"), Path(model.path), Path(metrics.path),
               input_dir=Path(model_input.path), retrieval_dir=Path(retrieval.path))
    Path(bundle.path).write_text(json.dumps(res.as_dict(), indent=2))
    bundle.metadata.update({k: v for k, v in res.as_dict().items() if v is not None})
    return res.version or ""


@_component
def monitor_op(params: dict, model_input: Input[Dataset], model: Input[Model], retrieval_metrics: Input[Metrics],
               report: Output[HTML], drift: Output[Metrics]):
    """Evidently drift report of the newest window against the reference, with the retrieval
    model's metrics (``retrieval_metrics``: the retrieval step's JSON); fails on drift when
    monitor.fail_on_drift, so a scheduled run alerts."""
    import json
    import tempfile
    from pathlib import Path

    from contract.io import StepError
    from components.monitor import MonitorConfig, monitor
    from contract.params import from_dict

    cfg = from_dict(MonitorConfig, params, "monitor")
    scratch = Path(tempfile.mkdtemp(prefix="monitor-"))
    res = monitor(cfg, Path(model_input.path), Path(model.path), Path(report.path), scratch / "drift.json",
                  retrieval_metrics=Path(retrieval_metrics.path))
    summary = res.summary
    drift.log_metric("drift_detected", float(res.drift_detected))
    for key in ("drift_share", "drifted_count"):
        if isinstance(summary.get(key), (int, float)):
            drift.log_metric(key, float(summary[key]))
    drift.metadata["drifted_features"] = json.dumps(summary.get("drifted_features", []))
    if res.drift_detected and cfg.fail_on_drift:
        raise StepError(f"drift detected: {summary.get('drifted_features')}")
