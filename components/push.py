"""`robeflow push`: publish the evaluated model to the registry, and `--rollback`.

Publishes only when both gates pass:

- the absolute gate of ``robeflow evaluate`` (``reports/metrics.json`` key ``passed``);
- champion/challenger: the candidate's test AUC is not worse than production's **on the
  same test rows**. Push scores both bundles on the test split of ``data/model_input``
  (``--input``) and takes the paired bootstrap interval of AUC(candidate) - AUC(production)
  (:func:`dlrm.metrics.paired_auc_difference`); the candidate passes when the interval's
  lower bound is at least ``-push.min_delta`` (non-inferiority with a margin: a candidate
  that is worse by more than the margin, beyond the resampling noise, never moves
  production). Both are scored here, by the same code on the same rows, rather than read
  from evaluate's predictions: the pairing is exact by construction and production's
  bundle has to be scored on this window anyway.

``push.force: true`` publishes whatever the gates say (the decision records that it was
forced). The decision and its numbers go to ``reports/push.json`` (``--report``) and, for
a published model, to its config.json (``release``) and MODEL_CARD.md. A refused push
changes nothing and exits 0 so the local DVC pipeline goes on (monitoring still runs);
with ``push.fail_on_gate: true`` it exits 3, as ``robeflow evaluate`` does.

Provenance: metrics.json names the model it measured (``model_sha256``, the sha256 of
``model.safetensors``, written by ``robeflow evaluate``); push refuses metrics of another
model, or metrics that name none.

The bundle it publishes (see :mod:`model_registry.registry` for the layout):

- ``model.safetensors``: the ROBE array and the MLP weights (no pickle);
- ``config.json``: the training bundle's config (model config, hash constants, feature
  spec with table sizes, training metrics) plus ``evaluation`` (metrics.json),
  ``provenance`` (the md5 of ``data/model_input`` and the ``train`` params that
  ``dvc.lock`` records; null without a dvc.lock) and ``registry`` (version, time,
  weights sha256);
- ``MODEL_CARD.md``: what it was trained on, metrics against the target, size against
  the full tables, and the retrieval model's metrics when one is pushed with it;
- ``retrieval/`` (with ``--retrieval models/retrieval``): the retrieval bundle of
  ``robeflow retrieval`` as it is (``model.safetensors``, ``items.json``, ``config.json``;
  no pickle, LSH tables rebuilt at load), so the server answers "what should this user
  see?" from the same version. It is published in the same version as the ranker, never
  alone: the registry writes the version whole before the pointer moves. The gates judge
  the ranker only; the retrieval model's own metrics are recorded (config.json
  ``retrieval``, the card).

A model whose weights equal the current production bundle's (and pushed with the same
retrieval bundle, or with none as production) is not published again.
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
RETRIEVAL_DIR = "retrieval"   # the retrieval bundle's folder inside a published version
# the headline figures of the retrieval metrics copied into config.json and the card
RETRIEVAL_METRICS = ("recall_at_10", "recall_at_100", "p_at_1", "oracle_recall_at_100", "popular_recall_at_100",
                     "lsh_recall_vs_exact_at_100", "items", "method")
DATA_DEP = "data/model_input"


@dataclass(frozen=True)
class PushConfig:
    """The ``push`` section of params.yaml."""

    registry: str = "registry"   # directory or fsspec URL (s3://bucket/robeflow, gs://...); --registry overrides
    fail_on_gate: bool = False   # true: exit 3 when a gate refused the push; false: log it, exit 0
    min_delta: float = 0.002     # champion/challenger margin: publish when the 95% lower bound of
                                 # AUC(candidate) - AUC(production) on the same test rows >= -min_delta
    n_boot: int = 1000           # paired bootstrap resamples of that difference
    seed: int = 0                # bootstrap seed (the same rows and models: the same decision)
    force: bool = False          # publish even when a gate refuses (recorded as forced)
    batch_size: int = 8192       # rows per forward pass when scoring the test window


@dataclass
class PushResult:
    """What a push (or rollback) did; ``pushed`` is false when it changed nothing."""

    pushed: bool
    registry: str
    version: str | None          # the version published (or rolled back from)
    production: str | None       # the version ``production`` names afterwards
    reason: str                  # one line: why it did or did not publish
    gate_passed: bool | None = None  # the evaluate gate's outcome (None for a rollback)
    challenger: dict[str, Any] | None = None  # the champion/challenger comparison (None: not run)
    forced: bool = False         # published by push.force although a gate refused
    retrieval: dict[str, Any] | None = None  # the retrieval bundle pushed with it (None: none given)

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


def retrieval_summary(retrieval_dir: Path, ranker_doc: dict[str, Any]) -> dict[str, Any]:
    """Checks a retrieval bundle (``robeflow retrieval --model-out``) for publishing with the
    ranker whose config.json is ``ranker_doc``, and sums it up.

    The tower's context features are computed at serving time by the ranker's feature
    transform, so each must be a feature the ranker's spec knows how to compute.

    Returns:
        ``{"format", "method", "items", "context", "sha256", "metrics"}``: ``sha256`` of the
        bundle's files together, ``metrics`` its headline test metrics.

    Raises:
        FileNotFoundError: a bundle file is missing.
        ValueError: not a retrieval bundle, or its features are not the ranker's.
    """
    from dlrm.bundle import CONFIG, ITEMS, RETRIEVAL_FORMAT, WEIGHTS

    retrieval_dir = Path(retrieval_dir)
    for name in (WEIGHTS, ITEMS, CONFIG):
        if not (retrieval_dir / name).is_file():
            raise FileNotFoundError(f"retrieval bundle {retrieval_dir} lacks {name}; run `robeflow retrieval` first")
    doc = json.loads((retrieval_dir / CONFIG).read_text())
    if doc.get("format") != RETRIEVAL_FORMAT:
        raise ValueError(f"{retrieval_dir / CONFIG} has format {doc.get('format')!r}; expected {RETRIEVAL_FORMAT!r} "
                         "(give --retrieval the folder `robeflow retrieval --model-out` wrote)")
    context = [f["name"] for f in doc["feature_spec"]["sparse"]]
    sources = ranker_doc["feature_spec"].get("extra", {}).get("sources", {})
    unknown = [c for c in context if c not in sources]
    if unknown:
        raise ValueError(f"the retrieval model reads context feature(s) {unknown} that the ranker's feature spec "
                         f"({ranker_doc['feature_spec'].get('version')}) cannot compute (it computes "
                         f"{sorted(sources)}): train both on the same model-ready data")
    h = hashlib.sha256()
    for name in (WEIGHTS, ITEMS, CONFIG):
        h.update(sha256_file(retrieval_dir / name).encode())
    metrics = doc.get("metrics", {})
    return {"format": RETRIEVAL_FORMAT, "method": doc["model"]["method"], "items": int(doc["num_items"]),
            "context": context, "sha256": h.hexdigest(),
            "metrics": {k: metrics[k] for k in RETRIEVAL_METRICS if k in metrics}}


# ---- the model card --------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".5f") -> str:
    return "n/a" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def _release_lines(release: dict[str, Any] | None) -> list[str]:
    """The card's release decision: the champion/challenger numbers, forced or not."""
    if not release:
        return []
    ch = release.get("challenger")
    lines = ["## Release decision"]
    if ch is None:
        lines.append("- no production model to compare with: the evaluate gate decided")
    else:
        lines += [
            f"- against production {ch['champion']} on the same {ch.get('rows', 'n/a')} test rows "
            f"(paired bootstrap, {ch.get('n_boot', 'n/a')} resamples)",
            "",
            "| | value |",
            "|---|---|",
            f"| candidate AUC | {_fmt(ch.get('candidate_auc'))} |",
            f"| production AUC | {_fmt(ch.get('champion_auc'))} |",
            f"| difference | {_fmt(ch.get('diff'), '+.5f')} |",
            f"| 95% interval | [{_fmt(ch.get('lo'), '+.5f')}, {_fmt(ch.get('hi'), '+.5f')}] |",
            f"| margin (push.min_delta) | {_fmt(ch.get('min_delta'))} |",
            f"| not worse | {ch.get('passed')} |",
            "",
            f"- {ch.get('reason', '')}",
        ]
    if release.get("forced"):
        lines.append("- **forced by push.force** although: " + "; ".join(release.get("refusals", [])))
    lines.append("")
    return lines


def _retrieval_lines(summary: dict[str, Any] | None) -> list[str]:
    """The card's retrieval section (none without a retrieval bundle)."""
    if not summary:
        return []
    m = summary.get("metrics", {})
    return [
        "## Retrieval (served when a request sends no item_ids)",
        f"- {summary['method']} output layer over {summary['items']:,} items; the tower reads "
        f"{', '.join(summary['context'])}",
        "",
        "| metric (test window, all items ranked) | value |",
        "|---|---|",
        f"| Recall@10 | {_fmt(m.get('recall_at_10'))} |",
        f"| Recall@100 | {_fmt(m.get('recall_at_100'))} |",
        f"| P@1 | {_fmt(m.get('p_at_1'))} |",
        f"| oracle Recall@100 | {_fmt(m.get('oracle_recall_at_100'))} |",
        f"| popularity Recall@100 | {_fmt(m.get('popular_recall_at_100'))} |",
        f"| LSH tables' share of the exact top 100 | {_fmt(m.get('lsh_recall_vs_exact_at_100'))} |",
        "",
        f"Load it with `dlrm.bundle.load_retrieval(dir/{RETRIEVAL_DIR})` (safetensors + JSON, no pickle).",
        "",
    ]


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
        *_release_lines(doc.get("release")),
        *_retrieval_lines(doc.get("retrieval")),
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


# ---- champion/challenger ---------------------------------------------------------------

def bundle_scores(model_dir: Path, frame: Any, data_spec: Any, batch_size: int = 8192) -> Any:
    """(N,) float probabilities of the bundle in ``model_dir`` on the rows of ``frame``.

    Raises:
        ValueError: the bundle was trained on a feature spec these rows do not fit.
    """
    from contract.spec import FeatureSpec, ModelInput
    from dlrm.bundle import load_model, predict

    model, doc = load_model(model_dir)
    spec = FeatureSpec.from_dict(doc["feature_spec"])
    spec.check_compatible(data_spec, "the test data")
    return predict(model, ModelInput.from_frame(frame, spec), batch_size=batch_size)


def champion_challenger(cfg: PushConfig, model_dir: Path, registry: Any, champion: str,
                        input_dir: Path) -> dict[str, Any]:
    """Compares the candidate in ``model_dir`` with the registry's ``champion`` version on
    the test split of ``input_dir``: both scored on the same rows, the paired bootstrap
    interval of AUC(candidate) - AUC(champion).

    Returns:
        ``{"champion", "rows", "candidate_auc", "champion_auc", "diff", "lo", "hi", "level",
        "n_boot", "seed", "min_delta", "passed", "reason"}``; ``passed`` when ``lo >=
        -min_delta``. A champion that cannot score these rows (another feature spec)
        gives ``passed: false`` with the reason and null numbers.
    """
    import numpy as np

    from contract.model_input import SPEC_FILE, read_frame
    from contract.spec import FeatureSpec
    from dlrm.metrics import auc, paired_auc_difference

    spec_path = Path(input_dir) / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{input_dir} has no {SPEC_FILE}; give the model-ready dir (data/model_input)")
    data_spec = FeatureSpec.load(spec_path)
    frame = read_frame(input_dir, "test")
    if len(frame) == 0 or data_spec.label not in frame.columns:
        raise ValueError(f"the test split of {input_dir} has no rows or no label column {data_spec.label!r}")
    labels = frame[data_spec.label].to_numpy(dtype=np.float64)   # (N,)
    out: dict[str, Any] = {"champion": champion, "rows": int(len(frame)), "candidate_auc": None,
                           "champion_auc": None, "diff": None, "lo": None, "hi": None, "level": 0.95,
                           "n_boot": int(cfg.n_boot), "seed": int(cfg.seed), "min_delta": float(cfg.min_delta)}
    try:
        cand = bundle_scores(model_dir, frame, data_spec, cfg.batch_size)   # (N,)
    except ValueError as e:
        raise ValueError(f"the candidate {model_dir} cannot score the test rows of {input_dir}: {e}") from None
    out["candidate_auc"] = auc(labels, cand)
    local = registry.local_dir(champion)
    try:
        if local is not None:
            prod = bundle_scores(local, frame, data_spec, cfg.batch_size)
        else:
            with tempfile.TemporaryDirectory(prefix="robeflow-champion-") as tmp:
                _, path = registry.fetch(champion, Path(tmp))
                prod = bundle_scores(path, frame, data_spec, cfg.batch_size)
    except ValueError as e:
        out.update(passed=False, reason=f"production {champion} cannot score these test rows ({e}); "
                                        "not comparable, so not replaced (push.force overrides)")
        return out
    d = paired_auc_difference(labels, cand, prod, n_boot=cfg.n_boot, seed=cfg.seed, level=out["level"])
    out.update(champion_auc=auc(labels, prod), diff=d["diff"], lo=d["lo"], hi=d["hi"])
    out["passed"] = bool(d["lo"] >= -cfg.min_delta)
    verdict = "not worse" if out["passed"] else "worse"
    out["reason"] = (f"candidate AUC {out['candidate_auc']:.5f} vs production {champion} "
                     f"{out['champion_auc']:.5f} on the same {out['rows']} test rows: difference "
                     f"{d['diff']:+.5f}, 95% interval [{d['lo']:+.5f}, {d['hi']:+.5f}], margin "
                     f"{-cfg.min_delta:+.5f}: {verdict}")
    return out


# ---- the core --------------------------------------------------------------------------

def push(cfg: PushConfig, model_dir: Path, metrics_path: Path, *, dvc_lock: Path | None = None,
         registry: str | None = None, input_dir: Path | None = None,
         retrieval_dir: Path | None = None) -> PushResult:
    """Publishes the bundle in ``model_dir`` as the next version and moves ``production``
    to it, if the evaluate gate in ``metrics_path`` passed and the candidate is not worse
    than production on the same test rows (or ``cfg.force``).

    Args:
        cfg: the ``push`` section of params.yaml.
        model_dir: the training bundle (``models/model``: model.safetensors + config.json).
        metrics_path: ``reports/metrics.json`` written by ``robeflow evaluate`` on this model.
        dvc_lock: ``dvc.lock``, for the data and params versions (None: recorded as null).
        registry: registry directory or URL; default ``cfg.registry``.
        input_dir: the model-ready dir (``data/model_input``) whose test split both the
            candidate and production are scored on; needed once a production model exists
            (without it the comparison cannot run and only ``cfg.force`` publishes).
        retrieval_dir: the retrieval bundle (``models/retrieval``), published inside the
            same version (``vN/retrieval/``); None publishes the ranker alone.

    Returns:
        a :class:`PushResult`; ``pushed`` is False (and nothing changed) when a gate
        refused or the model already is the production one.

    Raises:
        ValueError: the metrics belong to another model (or name none).
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
    if cfg.n_boot < 100 or cfg.min_delta < 0:
        raise ValueError(f"push.n_boot = {cfg.n_boot}, push.min_delta = {cfg.min_delta}; expected "
                         "n_boot >= 100 and min_delta >= 0")
    metrics = json.loads(metrics_path.read_text())
    if not isinstance(metrics, dict) or "passed" not in metrics:
        raise ValueError(f"{metrics_path} has no 'passed' key (the evaluate gate's outcome)")
    sha = sha256_file(model_dir / WEIGHTS)
    measured = metrics.get("model_sha256")
    if measured != sha:
        what = ("names no model (no 'model_sha256')" if measured is None
                else f"measured the model with weights sha256 {str(measured)[:12]}...")
        raise ValueError(f"{metrics_path} {what}, but {model_dir / WEIGHTS} has sha256 {sha[:12]}...: "
                         f"these are metrics of another model; run `robeflow evaluate --model {model_dir}`")
    doc = json.loads((model_dir / CONFIG).read_text())
    if metrics.get("backend") not in (None, doc["embedding"]["backend"]):
        raise ValueError(f"{metrics_path} evaluated a {metrics['backend']!r} model but {model_dir} holds a "
                         f"{doc['embedding']['backend']!r} one; run `robeflow evaluate` on this model")
    retrieval = None if retrieval_dir is None else retrieval_summary(Path(retrieval_dir), doc)
    reg = Registry(url)
    current = reg.production()
    gate_passed = bool(metrics["passed"])
    if current is not None:
        cur_doc = json.loads(reg.read_text(current, CONFIG))
        same_retrieval = (cur_doc.get("retrieval") or {}).get("sha256") == (retrieval or {}).get("sha256")
        if cur_doc.get("registry", {}).get("weights_sha256") == sha and same_retrieval:
            what = "this model" + (" and retrieval bundle" if retrieval else "")
            return PushResult(False, url, current, current, f"{what} already is production ({current})",
                              gate_passed=gate_passed, retrieval=retrieval)

    refusals = []
    if not gate_passed:
        refusals.append(f"evaluate gate failed: test AUC {_fmt(metrics.get('auc'))} < target "
                        f"{_fmt(metrics.get('target_auc'))} ({metrics.get('gate', 'n/a')})")
    challenger = None
    if current is not None:
        if input_dir is None:
            challenger = {"champion": current, "passed": False,
                          "reason": f"no test rows to compare with production {current} on "
                                    "(give --input data/model_input)"}
        else:
            challenger = champion_challenger(cfg, model_dir, reg, current, Path(input_dir))
        if not challenger["passed"]:
            refusals.append(challenger["reason"])
    if refusals and not cfg.force:
        return PushResult(False, url, None, current, "; ".join(refusals) + "; registry unchanged",
                          gate_passed=gate_passed, challenger=challenger, retrieval=retrieval)
    forced = bool(refusals)

    # the number the bundle will most likely get (a concurrent push may take it first;
    # the registry then renames to the next free one and only the card's title is off)
    version = reg.next_version()
    doc["evaluation"] = metrics
    doc["provenance"] = dvc_versions(dvc_lock)
    doc["release"] = {"gate_passed": gate_passed, "challenger": challenger, "forced": forced,
                      "refusals": refusals}
    doc["registry"] = {
        "version": version,
        "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights_sha256": sha,
        "weights_bytes": (model_dir / WEIGHTS).stat().st_size,
        "previous_production": current,
    }
    doc["retrieval"] = retrieval
    with tempfile.TemporaryDirectory(prefix="robeflow-push-") as tmp:
        staging = Path(tmp)
        if retrieval_dir is not None:
            # the retrieval bundle's files as they are, uploaded in the same version
            from dlrm.bundle import ITEMS

            (staging / RETRIEVAL_DIR).mkdir()
            for name in (WEIGHTS, ITEMS, CONFIG):
                shutil.copyfile(Path(retrieval_dir) / name, staging / RETRIEVAL_DIR / name)
        shutil.copyfile(model_dir / WEIGHTS, staging / WEIGHTS)
        (staging / CONFIG).write_text(json.dumps(doc, indent=2, default=float) + "\n")
        (staging / "MODEL_CARD.md").write_text(model_card(doc, version))
        version = reg.publish(staging)
    reg.set_production(version)
    if forced:
        why = "forced by push.force although: " + "; ".join(refusals)
    else:
        why = (f"gate passed (AUC {_fmt(metrics.get('auc'))} >= {_fmt(metrics.get('target_auc'))})"
               + (f"; {challenger['reason']}" if challenger else "; no production model to compare with"))
    reason = (f"{why}; published {version}" + (" with its retrieval model" if retrieval else "")
              + (f", was {current}" if current else ""))
    return PushResult(True, url, version, version, reason, gate_passed=gate_passed, challenger=challenger,
                      forced=forced, retrieval=retrieval)


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
        result = push(cfg, args.model, args.metrics, dvc_lock=args.dvc_lock, registry=args.registry,
                      input_dir=args.input, retrieval_dir=args.retrieval)
    log(STEP, f"{result.reason}; production = {result.production} in {result.registry}")
    if args.report is not None:
        write_json(args.report, result.as_dict())
    refused = not result.pushed and (result.gate_passed is False
                                     or (result.challenger is not None and not result.challenger["passed"]))
    if refused and cfg.fail_on_gate:
        raise StepError(f"not pushed: {result.reason}", exit_code=GATE_FAILED_EXIT)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="publish the evaluated model to the registry (or --rollback)")
    p.add_argument("--model", type=Path, help="model bundle dir (models/model)")
    p.add_argument("--metrics", type=Path, help="evaluation metrics with the gate (reports/metrics.json)")
    p.add_argument("--input", type=Path, default=None,
                   help="model-ready dir (data/model_input): candidate and production are compared on its "
                        "test split (needed once a production model exists)")
    p.add_argument("--retrieval", type=Path, default=None,
                   help="retrieval bundle dir (models/retrieval): published in the same version, so the server "
                        "can recommend from the whole catalogue (optional)")
    p.add_argument("--dvc-lock", type=Path, default=None,
                   help="dvc.lock, for the data and params versions (recorded as null when absent)")
    p.add_argument("--registry", help="registry directory or fsspec URL (default: push.registry)")
    p.add_argument("--report", type=Path, help="write what the step did as JSON here (reports/push.json)")
    p.add_argument("--rollback", action="store_true", help="move production back to the previous version")
    add_params_args(p)
    p.set_defaults(func=_main)
