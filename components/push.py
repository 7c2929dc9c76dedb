"""`robeflow push`: publish the evaluated model to the registry, and `--rollback`.

Runs only when the evaluate gate passed (``reports/metrics.json`` key ``passed``). A
failed gate is reported, changes nothing, and exits 0 so the local DVC pipeline goes on
(monitoring still runs); with ``push.fail_on_gate: true`` it exits 3, as
``robeflow evaluate`` does, so an automated pipeline stops there.

The bundle it publishes (see :mod:`model_registry.registry` for the layout):

- ``model.safetensors``: the ROBE array and the MLP weights (no pickle);
- ``config.json``: the training bundle's config (model config, hash constants, feature
  spec with table sizes, training metrics) plus ``evaluation`` (metrics.json),
  ``provenance`` (the md5 of ``data/model_input`` and the ``train`` params that
  ``dvc.lock`` records; null without a dvc.lock) and ``registry`` (version, time,
  weights sha256);
- ``MODEL_CARD.md``: what it was trained on, metrics against the target, size against
  the full tables.

A model whose weights equal the current production bundle's is not published again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from contract.io import StepError, log, write_json
from contract.params import add_params_args, load_config

STEP = "push"
GATE_FAILED_EXIT = 3
BUNDLE_FILES = ("model.safetensors", "config.json", "MODEL_CARD.md")
DATA_DEP = "data/model_input"


@dataclass(frozen=True)
class PushConfig:
    """The ``push`` section of params.yaml."""

    registry: str = "registry"   # directory or fsspec URL (s3://bucket/robeflow, gs://...); --registry overrides
    fail_on_gate: bool = False   # true: exit 3 when the evaluate gate failed; false: log it, exit 0


@dataclass
class PushResult:
    """What a push (or rollback) did; ``pushed`` is false when it changed nothing."""

    pushed: bool
    registry: str
    version: str | None          # the version published (or rolled back from)
    production: str | None       # the version ``production`` names afterwards
    reason: str                  # one line: why it did or did not publish
    gate_passed: bool | None = None  # the evaluate gate's outcome (None for a rollback)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- provenance ------------------------------------------------------------------------

def dvc_versions(dvc_lock: Path | None) -> dict[str, Any]:
    """The data and params versions ``dvc.lock`` records for the ``train`` stage.

    Returns:
        ``{"dvc_lock": path or None, "model_input_md5": str or None,
        "train_params": dict or None}`` (None where dvc.lock or the entry is absent).
    """
    import yaml

    out: dict[str, Any] = {"dvc_lock": None, "model_input_md5": None, "train_params": None}
    if dvc_lock is None or not Path(dvc_lock).is_file():
        return out
    doc = yaml.safe_load(Path(dvc_lock).read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{dvc_lock} is not a DVC lock file (expected a mapping with 'stages')")
    out["dvc_lock"] = str(dvc_lock)
    stage = (doc.get("stages") or {}).get("train") or {}
    for dep in stage.get("deps") or []:
        if str(dep.get("path", "")).rstrip("/") == DATA_DEP:
            out["model_input_md5"] = dep.get("md5")
    params = (stage.get("params") or {}).get("params.yaml") or {}
    if "train" in params:
        out["train_params"] = params["train"]
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- the model card --------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".5f") -> str:
    return "n/a" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def model_card(doc: dict[str, Any], version: str) -> str:
    """MODEL_CARD.md of a bundle from its config.json dict."""
    ev, train, emb = doc.get("evaluation", {}), doc.get("metrics", {}), doc["embedding"]
    spec, prov = doc["feature_spec"], doc.get("provenance", {})
    model = doc["model"]
    tables = ", ".join(f"{s['name']} {s['table_size']:,}" for s in spec["sparse"])
    weights = doc.get("registry", {}).get("weights_bytes")
    splits = spec.get("extra", {}).get("splits")  # {"train": [first day, last day], ...}
    lines = [
        f"# robeflow DLRM {version}",
        "",
        f"Pushed {doc.get('registry', {}).get('pushed_at', 'n/a')}. Purchase-probability model "
        f"(DLRM, {model['interaction']} interaction, {emb['backend']} embeddings).",
        "",
        "## Trained on",
        f"- source: {train.get('source', 'n/a')}; {train.get('train_rows', 'n/a')} training rows, "
        f"{train.get('valid_rows', 'n/a')} validation rows",
        f"- features: Feast service `{spec.get('extra', {}).get('feature_service', spec.get('version'))}`, "
        f"{len(spec['dense'])} dense and {len(spec['sparse'])} sparse features",
        f"- data version (md5 of {DATA_DEP} in dvc.lock): {_fmt(prov.get('model_input_md5'))}",
    ]
    if splits:
        lines.append("- days: " + "; ".join(f"{k} {v[0]}..{v[-1]}" for k, v in splits.items()))
    lines += [
        "",
        "## Metrics (test window) against the target",
        "| metric | value |",
        "|---|---|",
        f"| AUC | {_fmt(ev.get('auc'))} |",
        f"| target AUC ({ev.get('gate', 'n/a')}) | {_fmt(ev.get('target_auc'))} |",
        f"| passed | {ev.get('passed', 'n/a')} |",
        f"| oracle AUC | {_fmt(ev.get('oracle_auc'))} |",
        f"| log loss | {_fmt(ev.get('logloss', ev.get('log_loss')))} |",
        f"| normalised entropy | {_fmt(ev.get('ne'))} |",
        "",
        "## Size",
        f"- embedding: {emb['bytes']:,} bytes against {emb['full_bytes']:,} bytes of full float32 "
        f"tables ({_fmt(emb['compression'], '.1f')}x smaller)",
        f"- weights file: {_fmt(weights, ',')} bytes",
        f"- virtual tables (rows): {tables}",
        f"- hash constants: {json.dumps(emb.get('hash'))}",
        "",
        "Load it with `dlrm.load_model(dir)` (safetensors + JSON, no pickle).",
        "",
    ]
    return "\n".join(lines)


# ---- the core --------------------------------------------------------------------------

def push(cfg: PushConfig, model_dir: Path, metrics_path: Path, *, dvc_lock: Path | None = None,
         registry: str | None = None) -> PushResult:
    """Publishes the bundle in ``model_dir`` as the next version and moves ``production``
    to it, if the evaluate gate in ``metrics_path`` passed.

    Args:
        cfg: the ``push`` section of params.yaml.
        model_dir: the training bundle (``models/model``: model.safetensors + config.json).
        metrics_path: ``reports/metrics.json`` written by ``robeflow evaluate``.
        dvc_lock: ``dvc.lock``, for the data and params versions (None: recorded as null).
        registry: registry directory or URL; default ``cfg.registry``.

    Returns:
        a :class:`PushResult`; ``pushed`` is False (and nothing changed) when the gate
        failed or the model already is the production one.
    """
    from dlrm.bundle import CONFIG, WEIGHTS
    from model_registry.registry import Registry

    url = registry or cfg.registry
    model_dir, metrics_path = Path(model_dir), Path(metrics_path)
    for name in (WEIGHTS, CONFIG):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"model bundle {model_dir} lacks {name}; run `robeflow train` first")
    if not metrics_path.is_file():
        raise FileNotFoundError(f"metrics file {metrics_path} does not exist; run `robeflow evaluate` first")
    metrics = json.loads(metrics_path.read_text())
    if not isinstance(metrics, dict) or "passed" not in metrics:
        raise ValueError(f"{metrics_path} has no 'passed' key (the evaluate gate's outcome)")
    reg = Registry(url)
    if not metrics["passed"]:
        reason = (f"evaluate gate failed: test AUC {_fmt(metrics.get('auc'))} < target "
                  f"{_fmt(metrics.get('target_auc'))} ({metrics.get('gate', 'n/a')}); registry unchanged")
        return PushResult(False, url, None, reg.production(), reason, gate_passed=False)

    doc = json.loads((model_dir / CONFIG).read_text())
    if metrics.get("backend") not in (None, doc["embedding"]["backend"]):
        raise ValueError(f"{metrics_path} evaluated a {metrics['backend']!r} model but {model_dir} holds a "
                         f"{doc['embedding']['backend']!r} one; run `robeflow evaluate` on this model")
    sha = sha256_file(model_dir / WEIGHTS)
    current = reg.production()
    if current is not None:
        cur = json.loads(reg.read_text(current, CONFIG)).get("registry", {})
        if cur.get("weights_sha256") == sha:
            return PushResult(False, url, current, current, f"this model already is production ({current})",
                              gate_passed=True)

    # the number the bundle will most likely get (a concurrent push may take it first;
    # the registry then renames to the next free one and only the card's title is off)
    version = reg.next_version()
    doc["evaluation"] = metrics
    doc["provenance"] = dvc_versions(dvc_lock)
    doc["registry"] = {
        "version": version,
        "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights_sha256": sha,
        "weights_bytes": (model_dir / WEIGHTS).stat().st_size,
        "previous_production": current,
    }
    with tempfile.TemporaryDirectory(prefix="robeflow-push-") as tmp:
        staging = Path(tmp)
        shutil.copyfile(model_dir / WEIGHTS, staging / WEIGHTS)
        (staging / CONFIG).write_text(json.dumps(doc, indent=2, default=float) + "\n")
        (staging / "MODEL_CARD.md").write_text(model_card(doc, version))
        version = reg.publish(staging)
    reg.set_production(version)
    reason = (f"gate passed (AUC {_fmt(metrics.get('auc'))} >= {_fmt(metrics.get('target_auc'))}); "
              f"published {version}" + (f", was {current}" if current else ""))
    return PushResult(True, url, version, version, reason, gate_passed=True)


def rollback(cfg: PushConfig, registry: str | None = None) -> PushResult:
    """Moves the registry's ``production`` pointer back to the version before it."""
    from model_registry.registry import Registry

    url = registry or cfg.registry
    old, new = Registry(url).rollback()
    return PushResult(True, url, old, new, f"production rolled back from {old} to {new}")


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(PushConfig, STEP, args.params, args.overrides)
    if args.rollback:
        result = rollback(cfg, args.registry)
    else:
        if args.model is None or args.metrics is None:
            raise StepError("give the model bundle (--model) and the evaluation metrics (--metrics), "
                            "or --rollback", exit_code=2)
        result = push(cfg, args.model, args.metrics, dvc_lock=args.dvc_lock, registry=args.registry)
    log(STEP, f"{result.reason}; production = {result.production} in {result.registry}")
    if args.report is not None:
        write_json(args.report, result.as_dict())
    if result.gate_passed is False and cfg.fail_on_gate:
        raise StepError(f"not pushed: {result.reason}", exit_code=GATE_FAILED_EXIT)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="publish the evaluated model to the registry (or --rollback)")
    p.add_argument("--model", type=Path, help="model bundle dir (models/model)")
    p.add_argument("--metrics", type=Path, help="evaluation metrics with the gate (reports/metrics.json)")
    p.add_argument("--dvc-lock", type=Path, default=None,
                   help="dvc.lock, for the data and params versions (recorded as null when absent)")
    p.add_argument("--registry", help="registry directory or fsspec URL (default: push.registry)")
    p.add_argument("--report", type=Path, help="write what the step did as JSON here (reports/push.json)")
    p.add_argument("--rollback", action="store_true", help="move production back to the previous version")
    add_params_args(p)
    p.set_defaults(func=_main)
