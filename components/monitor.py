"""`robeflow monitor`: drift of the newest data and of the model's predictions against a reference.

Compares the **current window** (the model-ready test window: the newest days) with the
**reference window** (``monitor.reference``: by default the validation window, the days
just before the current window that the model did not train on; ``train`` compares with
the training window) using an Evidently report of

- data drift of every model input (tests per feature kind: see :mod:`drift.columns`),
  with the share of drifted features against ``monitor.max_drift_share``;
- prediction drift: the production model's purchase probabilities on both windows
  (distribution test and mean);
- target drift and quality, where the current window's labels have arrived: the label's
  distribution, ROC AUC and log loss (Evidently), plus AUC and log loss per day of the
  current window.

Why the validation window is the default reference: the history features (7/30-day offer
and purchase counts, rates, days since purchase, first-seen item attributes) are empty in
the first days of any dataset and fill up over its first month. Against the whole training
window they read as drift on data with no drift at all (16 of 27 tested features on the
default 200k-row, 28-day generated data with ``drift: 0``, seed 100); against the validation
window none do (``benchmarks/monitor_drift.py --scale default --reference train valid``). When the shift may have started before the current window (generator ``drift_days`` >
features ``test_days``), the validation window is partly shifted too and ``train`` is the
safer reference.

Outputs: the Evidently HTML report (for people), its full JSON (for machines), a compact
summary JSON (``reports/drift.json``: ``drift_detected``, share and names of drifted features,
prediction/label drift, AUC, log loss), the details (``reports/drift_details.json``: each
feature's test, score and verdict, quality per day, the windows), and one snapshot per run in a local
Evidently workspace (project ``monitor.project``) whose dashboard plots the share of drifted
features, the prediction mean and the AUC over runs. ``robeflow monitor --dashboard``
serves Evidently's UI over that workspace on 127.0.0.1.

With ``--retrieval-metrics reports/retrieval_metrics.json`` (the retrieval step's
evaluation on the test window) the run also records the retrieval model's
``recall_at_10``, ``recall_at_100``, ``p_at_1`` and ``oracle_recall_at_100``: in the
summary (``retrieval_*`` keys), and in the snapshot as the mean of a constant column
``retrieval_<key>`` of the current window (Evidently's own ``MeanValue``, so the UI plots
them without any code of ours), which the dashboard's "Retrieval" panels follow over runs.

With ``monitor.fail_on_drift: true`` the step exits with :data:`DRIFT_EXIT` when drift is
detected, so a scheduled pipeline can alert.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contract.io import StepError, atomic_file, log, write_json
from contract.params import add_params_args, as_dict, load_config
from drift.workspace import PREDICTION, RETRIEVAL_COLUMNS, RETRIEVAL_KEYS, add_run, serve_dashboard

STEP = "monitor"
DRIFT_EXIT = 4
# Up to this many reference rows Evidently tests categories with a chi-squared goodness of fit
# against the reference's counts, as if the reference had no sampling noise of its own; on a
# few hundred rows that flags unshifted hours, countries and positions. The monitor then uses
# two-sample tests: Kolmogorov-Smirnov for numbers, total variation distance with a
# permutation p-value for categories. Above it, Evidently's distances (Wasserstein, Jensen-Shannon).
SMALL_REFERENCE = 1_000


@dataclass(frozen=True)
class MonitorConfig:
    """The ``monitor`` section of params.yaml."""

    reference: Literal["valid", "train", "train+valid"] = "valid"  # split(s) of data/model_input compared with test
    max_rows: int = 20_000           # rows sampled from each window (bounds time; seeded)
    max_ranking_rows: int = 1_000_000  # at most this many other reference rows rank the ids (bounds memory)
    seed: int = 0                    # sampling seed
    max_drift_share: float = 0.15    # drift_detected when this share of tested features drifted (>=, as Evidently)
    max_categories: int = 100        # sparse features with more distinct ids are tested by popularity bucket
    min_category_rows: int = 5       # categories with fewer reference rows are pooled as "rare"
    exclude: tuple[str, ...] = ("day_of_week",)  # features not tested (a < 7-day window has no full week)
    fail_on_drift: bool = False      # exit DRIFT_EXIT (4) on drift, so a schedule can alert
    project: str = "robeflow"        # Evidently workspace project of the runs
    batch_size: int = 8192           # rows per model forward pass

    def __post_init__(self) -> None:
        if self.max_rows < 2:
            raise ValueError(f"monitor.max_rows = {self.max_rows}; expected >= 2")
        if self.max_ranking_rows < 1:
            raise ValueError(f"monitor.max_ranking_rows = {self.max_ranking_rows}; expected >= 1")
        if not 0.0 < self.max_drift_share <= 1.0:
            raise ValueError(f"monitor.max_drift_share = {self.max_drift_share}; expected in (0, 1]")
        if self.min_category_rows < 1:
            raise ValueError(f"monitor.min_category_rows = {self.min_category_rows}; expected >= 1")
        if self.max_categories < 1:
            raise ValueError(f"monitor.max_categories = {self.max_categories}; expected >= 1")
        if self.batch_size < 1:
            raise ValueError(f"monitor.batch_size = {self.batch_size}; expected >= 1")
        if not self.project.strip():
            raise ValueError("monitor.project is empty; expected a project name")


@dataclass
class MonitorResult:
    """The drift summary and details (``reports/drift.json``, ``drift_details.json``) and where the
    outputs went."""

    summary: dict[str, Any]          # reports/drift.json: the verdict and headline figures
    details: dict[str, Any]          # reports/drift_details.json: per feature, per day, windows, config
    html: Path
    report_json: Path | None = None
    snapshot_id: str | None = None   # the run's snapshot in the workspace
    seconds: float = 0.0

    @property
    def drift_detected(self) -> bool:
        return bool(self.summary["drift_detected"])


# ---------------------------------------------------------------------------- windows


def _sample_windows(input_dir: Path, cfg: "MonitorConfig", spec: Any, rng: Any) -> tuple[Any, dict, dict]:
    """Draws the windows' samples (:func:`drift.columns.sample_positions`) from the
    model-ready Parquet files a row group at a time: the reference is the ``+``-joined
    splits ``cfg.reference`` names, the current window the test split. Memory follows the
    sample sizes and a row group, not the windows (a 100M-event reference does not fit).

    Returns (the :class:`drift.columns.WindowSample`, reference info, current info); an
    info holds the window's ``rows`` and first and last ``days``.
    """
    from contract.model_input import split_files
    from drift.columns import WindowSample, check_exclude, sample_positions

    ref_files = [f for split in cfg.reference.split("+") for f in split_files(input_dir, split)]
    cur_files = split_files(input_dir, "test")
    ref_info, cur_info = _window_info(ref_files, spec.label), _window_info(cur_files, spec.label)
    check_exclude(spec, tuple(cfg.exclude))
    picked, ranking, current = sample_positions(ref_info["rows"], cur_info["rows"], cfg.max_rows, rng,
                                                cfg.max_ranking_rows)
    sparse = [f.name for f in spec.sparse if f.name not in cfg.exclude]
    labels = ref_info.pop("labels_complete") and cur_info.pop("labels_complete")
    sample = WindowSample(_take_rows(ref_files, picked), _take_rows(ref_files, ranking, sparse),
                          _take_rows(cur_files, current), labels)
    return sample, ref_info, cur_info


def _row_groups(files: list[Path]):
    """(ParquetFile, row group index, first row's position in the window, rows) of each
    row group of ``files`` in order."""
    import pyarrow.parquet as pq

    offset = 0
    for path in files:
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            yield pf, g, offset, n
            offset += n


def _take_rows(files: list[Path], positions: Any, columns: list[str] | None = None) -> Any:
    """The rows at the sorted window ``positions`` of ``files`` as a DataFrame (the columns
    and dtypes :func:`contract.model_input.read_frame` gives), reading only the row groups
    that hold some of them."""
    import numpy as np
    import pyarrow as pa

    parts = []
    for pf, g, offset, n in _row_groups(files):
        lo, hi = np.searchsorted(positions, [offset, offset + n])
        if hi > lo:
            group = pf.read_row_group(g, columns=columns)
            parts.append(group.take(pa.array(positions[lo:hi] - offset)))
    if not parts:   # sample_positions draws at least one row of each
        raise ValueError(f"no rows at the sampled positions of {[str(f) for f in files]}")
    return pa.concat_tables([t.cast(parts[0].schema) for t in parts]).to_pandas()


def _window_info(files: list[Path], label: str) -> dict[str, Any]:
    """Rows, first and last day (YYYY-MM-DD; [] without timestamps) and whether every row
    has a label, of a window, read a row group and two columns at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows, nulls, first, last, has_label = 0, 0, None, None, True
    for pf, g, _, n in _row_groups(files):
        names = pf.schema_arrow.names
        rows += n
        has_label = has_label and label in names
        columns = [c for c in ("event_timestamp", label) if c in names]
        group = pf.read_row_group(g, columns=columns) if columns else None
        if group is not None and label in names:
            values = group.column(label)
            nulls += values.null_count
            if pa.types.is_floating(values.type):
                nulls += int(pc.sum(pc.is_nan(values)).as_py() or 0)
        if group is not None and "event_timestamp" in names and n:
            lo, hi = pc.min_max(group.column("event_timestamp")).values()
            first = lo.as_py() if first is None or lo.as_py() < first else first
            last = hi.as_py() if last is None or hi.as_py() > last else last
    days = [] if first is None else [first.strftime("%Y-%m-%d"), last.strftime("%Y-%m-%d")]
    return {"rows": rows, "days": days, "labels_complete": has_label and nulls == 0}


def _load_model(model_dir: Path, spec: Any) -> Any:
    """The bundle's model, after checking it was trained on ``spec``'s inputs."""
    from contract.spec import FeatureSpec
    from dlrm.bundle import load_model

    model, doc = load_model(Path(model_dir))
    try:
        FeatureSpec.from_dict(doc["feature_spec"]).check_compatible(spec, "the model-ready data")
    except ValueError as err:
        raise ValueError(f"{err} (the model in {model_dir} was trained on another feature spec)") from None
    return model


def _quality(labels, probs) -> dict[str, Any]:
    import numpy as np

    from drift.columns import json_float
    from dlrm.metrics import auc, log_loss

    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    one_class = labels.min() == labels.max() if len(labels) else True
    return {"rows": int(len(labels)), "positives": int(labels.sum()),
            "auc": None if one_class else json_float(auc(labels, probs)),
            "logloss": json_float(log_loss(labels, probs)) if len(labels) else None}


def _quality_by_day(rows, labels, probs) -> list[dict[str, Any]]:
    import numpy as np
    import pandas as pd

    if "event_timestamp" not in rows.columns:
        return []
    day = pd.to_datetime(rows["event_timestamp"], utc=True).dt.strftime("%Y-%m-%d").to_numpy()
    return [{"day": d, **_quality(labels[day == d], probs[day == d])} for d in np.unique(day)]


# ---------------------------------------------------------------------------- core


def monitor(cfg: MonitorConfig, input_dir: Path, model_dir: Path | None, html_out: Path,
            summary_out: Path, *, details_out: Path | None = None, report_json_out: Path | None = None,
            workspace: Path | None = None, model_name: str | None = None,
            retrieval_metrics: Path | None = None) -> MonitorResult:
    """Runs the drift report of the current window against the reference window.

    Args:
        cfg: the ``monitor`` section of params.yaml.
        input_dir: the model-ready dir (``data/model_input``: ``test.parquet`` is the current
            window, ``cfg.reference`` names the reference) with ``feature_spec.json``.
        model_dir: the production model bundle (``models/model``, or a registry bundle); None
            skips prediction drift and quality.
        html_out: the Evidently HTML report (``reports/drift.html``).
        summary_out: the compact summary (``reports/drift.json``): verdict, share and names of
            the drifted features, prediction/label drift, AUC and log loss.
        details_out: per-feature method, score, threshold and verdict, quality per day, the
            windows and the config (``reports/drift_details.json``), or None.
        report_json_out: Evidently's full JSON of the run, or None.
        workspace: the Evidently workspace that gets this run's snapshot
            (``monitoring/workspace``), or None.
        model_name: what to call the model in the summary and the snapshot's metadata
            (default: ``model_dir``), e.g. the registry version it came from.
        retrieval_metrics: the retrieval step's metrics (``reports/retrieval_metrics.json``),
            added to the summary and the snapshot; None: none.

    Returns:
        The summary and details (as written) and the output paths.
    """
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import numpy as np

    from contract.model_input import read_spec
    from drift.columns import tables_from_sample

    t0 = time.perf_counter()
    retrieval = read_retrieval_metrics(Path(retrieval_metrics)) if retrieval_metrics is not None else None
    spec = read_spec(Path(input_dir))
    model = _load_model(Path(model_dir), spec) if model_dir is not None else None
    if model_name is None and model_dir is not None:
        model_name = str(model_dir)

    rng = np.random.default_rng(cfg.seed)
    sample, reference, current = _sample_windows(Path(input_dir), cfg, spec, rng)
    ref_table, cur_table, cols, ref_rows, cur_rows = tables_from_sample(
        sample, spec, max_categories=cfg.max_categories, exclude=tuple(cfg.exclude),
        min_category_rows=cfg.min_category_rows)
    has_labels = spec.label in cur_table.columns and spec.label in ref_table.columns
    log(STEP, f"reference {cfg.reference} {reference['days']}: {len(ref_rows):,} of {reference['rows']:,} rows "
              f"({len(sample.ranking_rows):,} rank the ids); "
              f"current test {current['days']}: {len(cur_rows):,} of {current['rows']:,} rows; "
              f"{len(cols.features)} features ({len(cols.popularity)} by popularity bucket)")

    quality = (_score_windows(model, spec, ref_table, cur_table, ref_rows, cur_rows, cfg.batch_size, has_labels)
               if model is not None else None)
    if retrieval is not None:
        # one value per metric, as a constant column of both windows (not a tested feature)
        for key, column in RETRIEVAL_COLUMNS.items():
            cur_table[column] = float(retrieval[key])
            ref_table[column] = float(retrieval[key])

    snapshot = _run_report(cfg, ref_table, cur_table, cols, spec.label if has_labels else None,
                           with_prediction=model is not None, retrieval=retrieval is not None,
                           metadata={"model": model_name or "",
                                     "reference": cfg.reference,
                                     "current_days": " .. ".join(current["days"])})
    details, drifted, share = _details(cfg, snapshot, cols, spec, ref_table, cur_table, quality,
                                       windows={"reference": (reference, ref_rows), "current": (current, cur_rows)},
                                       with_prediction=model is not None, has_labels=has_labels)
    _save(snapshot, Path(html_out), "save_html")
    if report_json_out is not None:
        _save(snapshot, Path(report_json_out), "save_json")
    snapshot_id = None
    if workspace is not None:
        snapshot_id = add_run(Path(workspace), cfg.project, snapshot)
        details["workspace"] = {"path": str(workspace), "project": cfg.project, "snapshot_id": snapshot_id}

    summary = _summary(cfg, details, drifted, share, len(cols.features), current, model_name,
                       html_out=html_out, details_out=details_out, snapshot_id=snapshot_id)
    if retrieval is not None:
        summary.update({f"retrieval_{key}": retrieval[key] for key in RETRIEVAL_KEYS})
        summary["retrieval_items"], summary["retrieval_method"] = retrieval.get("items"), retrieval.get("method")
        details["retrieval"] = {"metrics": str(retrieval_metrics), **retrieval}
    if details_out is not None:
        write_json(details_out, details)
    write_json(summary_out, summary)
    seconds = time.perf_counter() - t0
    log(STEP, f"{len(drifted)} of {len(cols.features)} features drifted (share {share:.3f}, "
              f"threshold {cfg.max_drift_share}) in {seconds:.1f} s -> {summary_out}")
    return MonitorResult(summary=summary, details=details, html=Path(html_out), report_json=report_json_out,
                         snapshot_id=snapshot_id, seconds=seconds)


def _score_windows(model: Any, spec: Any, ref_table: Any, cur_table: Any, ref_rows: Any, cur_rows: Any,
                   batch_size: int, has_labels: bool) -> dict[str, Any] | None:
    """Adds the model's purchase probabilities to both tables as :data:`PREDICTION`; returns
    the quality on both windows and per current day (None without labels)."""
    import numpy as np

    from contract.spec import ModelInput
    from dlrm.bundle import predict

    ref_pred = predict(model, ModelInput.from_frame(ref_rows, spec), batch_size=batch_size)
    cur_pred = predict(model, ModelInput.from_frame(cur_rows, spec), batch_size=batch_size)
    ref_table[PREDICTION] = ref_pred.astype(np.float64)
    cur_table[PREDICTION] = cur_pred.astype(np.float64)
    if not has_labels:
        return None
    cur_labels = cur_table[spec.label].to_numpy()
    return {"reference": _quality(ref_table[spec.label].to_numpy(), ref_pred),
            "current": _quality(cur_labels, cur_pred),
            "by_day": _quality_by_day(cur_rows, cur_labels, cur_pred)}


def _details(cfg: MonitorConfig, snapshot: Any, cols: Any, spec: Any, ref_table: Any, cur_table: Any,
             quality: dict[str, Any] | None, *, windows: dict[str, tuple[Any, Any]], with_prediction: bool,
             has_labels: bool) -> tuple[dict[str, Any], list[str], float]:
    """(details, drifted feature names, drifted share) of an Evidently run; the per-column
    verdicts must add up to Evidently's own count."""
    from drift.columns import column_drift, json_float, metric_value

    (reference, ref_rows), (current, cur_rows) = windows["reference"], windows["current"]
    doc = snapshot.dict()
    per_column = column_drift(doc)
    features = {name: {"kind": cols.kind(name), **per_column[name]} for name in cols.features}
    drifted = [n for n in cols.features if features[n]["drifted"]]
    counted = metric_value(doc, "DriftedColumnsCount")
    if counted is None or int(round(counted["count"])) != len(drifted):
        raise StepError(f"Evidently counted {counted} drifted columns but its per-column tests name "
                        f"{len(drifted)}: {drifted}")
    share = float(counted["share"])

    details: dict[str, Any] = {
        "features": features,
        "excluded_features": list(cols.excluded),
        "prediction": None,
        "target": None,
        "quality": quality,
        "windows": {
            "reference": {"splits": cfg.reference.split("+"), "days": reference["days"],
                          "rows": reference["rows"], "sampled": len(ref_rows)},
            "current": {"splits": ["test"], "days": current["days"], "rows": current["rows"],
                        "sampled": len(cur_rows)},
        },
        "config": as_dict(cfg),
    }
    if with_prediction:
        details["prediction"] = {**per_column[PREDICTION],
                                 "mean_reference": json_float(ref_table[PREDICTION].mean()),
                                 "mean_current": json_float(cur_table[PREDICTION].mean())}
    if has_labels:
        details["target"] = {**per_column[spec.label],
                             "rate_reference": json_float(ref_table[spec.label].mean()),
                             "rate_current": json_float(cur_table[spec.label].mean())}
    return details, drifted, share


def _summary(cfg: MonitorConfig, details: dict[str, Any], drifted: list[str], share: float, tested: int,
             current: Any, model_name: str | None, *, html_out: Path, details_out: Path | None,
             snapshot_id: str | None) -> dict[str, Any]:
    """The flat summary (``reports/drift.json``, readable in ``dvc metrics show``)."""
    quality = details["quality"]
    pred, target = details["prediction"] or {}, details["target"] or {}
    q_cur, q_ref = (quality or {}).get("current", {}), (quality or {}).get("reference", {})
    summary: dict[str, Any] = {     # flat, so that `dvc metrics show` stays readable
        "drift_detected": bool(share >= cfg.max_drift_share),
        "drift_share": share,
        "drifted_count": len(drifted),
        "features_tested": tested,
        "max_drift_share": cfg.max_drift_share,
        "drifted_features": drifted,
        "prediction_drift": pred.get("drifted"),
        "prediction_mean": pred.get("mean_current"),
        "prediction_mean_reference": pred.get("mean_reference"),
        "target_drift": target.get("drifted"),
        "auc": q_cur.get("auc"),
        "auc_reference": q_ref.get("auc"),
        "logloss": q_cur.get("logloss"),
        "logloss_reference": q_ref.get("logloss"),
        "reference": cfg.reference,
        "current_days": " .. ".join(current["days"]),
        "model": model_name,
        "html": str(html_out),
        "details": str(details_out) if details_out is not None else None,
        "snapshot_id": snapshot_id,
    }
    return summary


def read_retrieval_metrics(path: Path) -> dict[str, Any]:
    """The retrieval step's metrics: ``recall_at_10``, ``recall_at_100``, ``p_at_1``,
    ``oracle_recall_at_100`` (numbers in [0, 1]), plus whatever else the file holds."""
    import json
    import math

    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StepError(f"retrieval metrics {path} do not exist: run the retrieval step first, "
                        "or leave out --retrieval-metrics", exit_code=2) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"retrieval metrics {path} are not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"retrieval metrics {path} hold a {type(doc).__name__}; expected a JSON object")
    missing = [k for k in RETRIEVAL_KEYS if k not in doc]
    if missing:
        raise ValueError(f"retrieval metrics {path} lack {missing}; expected the keys {list(RETRIEVAL_KEYS)}")
    for k in RETRIEVAL_KEYS:
        v = doc[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ValueError(f"retrieval metrics {path}: {k} = {v!r}; expected a number in [0, 1]")
    return doc


def _run_report(cfg: MonitorConfig, ref_table, cur_table, cols, label: str | None, *,
                with_prediction: bool, metadata: dict[str, str], retrieval: bool = False):
    """The Evidently snapshot: data drift of the features, prediction and target drift, quality,
    and the retrieval metrics (their constant columns) when ``retrieval``."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import LogLoss, MeanValue, RocAuc, ValueDrift
    from evidently.presets import DataDriftPreset

    numerical = list(cols.numerical) + ([PREDICTION] if with_prediction else [])
    numerical += list(RETRIEVAL_COLUMNS.values()) if retrieval else []
    categorical = list(cols.categorical) + list(cols.popularity) + ([label] if label else [])
    classification = None
    if with_prediction and label:
        classification = [BinaryClassification(target=label, prediction_probas=PREDICTION, pos_label=1)]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical,
                                classification=classification)
    small = len(ref_table) <= SMALL_REFERENCE
    metrics: list = [DataDriftPreset(columns=cols.features, drift_share=cfg.max_drift_share,
                                     num_method="ks" if small else None, cat_method="TVD" if small else None,
                                     cat_threshold=0.05 if small else None)]  # TVD's default is p < 0.1
    if with_prediction:
        metrics += [ValueDrift(column=PREDICTION), MeanValue(column=PREDICTION)]
    if label:
        metrics += [ValueDrift(column=label), MeanValue(column=label)]
    if classification:
        metrics += [RocAuc(), LogLoss()]
    if retrieval:
        metrics += [MeanValue(column=c) for c in RETRIEVAL_COLUMNS.values()]
    report = Report(metrics, include_tests=True, tags=["robeflow", STEP], metadata=metadata)
    with warnings.catch_warnings():
        # Evidently's classification widgets also compute precision at a 0.5 cut-off, which
        # no purchase probability of a few percent reaches; the warning says nothing here
        warnings.filterwarnings("ignore", message="Precision is ill-defined")
        return report.run(current_data=Dataset.from_pandas(cur_table, data_definition=definition),
                          reference_data=Dataset.from_pandas(ref_table, data_definition=definition))


def _save(snapshot, path: Path, method: str) -> None:
    """Writes an Evidently output atomically (temporary file, then rename)."""
    with atomic_file(path) as tmp:
        getattr(snapshot, method)(str(tmp))


# ---------------------------------------------------------------------------- CLI


def format_summary(summary: dict[str, Any], details: dict[str, Any]) -> str:
    """The lines the CLI prints: verdict, drifted features, prediction/label drift, quality."""
    verdict = "DRIFT DETECTED" if summary["drift_detected"] else "no drift"
    lines = [f"drift: {verdict}: {summary['drifted_count']} of {summary['features_tested']} features drifted "
             f"(share {summary['drift_share']:.3f}, threshold {summary['max_drift_share']})"]
    if summary["drifted_features"]:
        feats = details["features"]
        lines.append("  drifted: " + ", ".join(f"{n} ({feats[n]['score']:.3g})" for n in summary["drifted_features"]))
    for key, what in (("prediction", "prediction"), ("target", "label")):
        part = details.get(key)
        if part:
            lines.append(f"  {what} drift: {'yes' if part['drifted'] else 'no'} "
                         f"({part['method']} {part['score']:.3g}, threshold {part['threshold']})")
    if summary.get("auc") is not None or summary.get("logloss") is not None:
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"  AUC {fmt(summary['auc'])} (reference {fmt(summary['auc_reference'])}), "
                     f"log loss {fmt(summary['logloss'])} (reference {fmt(summary['logloss_reference'])})")
    if summary.get("retrieval_recall_at_100") is not None:
        lines.append(f"  retrieval: Recall@10 {summary['retrieval_recall_at_10']:.4f}, Recall@100 "
                     f"{summary['retrieval_recall_at_100']:.4f} (oracle {summary['retrieval_oracle_recall_at_100']:.4f}), "
                     f"P@1 {summary['retrieval_p_at_1']:.4f}")
    lines.append(f"  report: {summary['html']}")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    if args.dashboard:
        return serve_dashboard(args.workspace, args.port)
    missing = [opt for opt, v in (("--input", args.input), ("--html", args.html), ("--summary", args.summary))
               if v is None]
    if missing:
        raise StepError(f"robeflow monitor needs {', '.join(missing)} (or --dashboard)", exit_code=2)
    if args.model is not None and args.registry is not None:
        raise StepError("give the model as --model DIR or --registry URL, not both", exit_code=2)
    cfg = load_config(MonitorConfig, STEP, args.params, args.overrides)
    with tempfile.TemporaryDirectory(prefix="robeflow-monitor-") as tmp:
        model_dir, model_name = args.model, None
        if args.registry is not None:
            from model_registry.registry import Registry

            version, model_dir = Registry(args.registry).fetch(None, Path(tmp) / "model")
            model_name = f"{args.registry} production ({version})"
        result = monitor(cfg, args.input, model_dir, args.html, args.summary, details_out=args.details,
                         report_json_out=args.report_json, workspace=args.workspace, model_name=model_name,
                         retrieval_metrics=args.retrieval_metrics)
    print(format_summary(result.summary, result.details))
    if result.drift_detected and cfg.fail_on_drift:
        raise StepError(f"drift detected: {result.summary['drifted_count']} of {result.summary['features_tested']} "
                        f"features drifted (share {result.summary['drift_share']:.3f} >= {cfg.max_drift_share}); "
                        f"see {result.html}", exit_code=DRIFT_EXIT)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="drift report of the newest data and predictions; workspace dashboard")
    p.add_argument("--input", type=Path, help="model-ready dir: test window and reference (data/model_input)")
    p.add_argument("--model", type=Path,
                   help="production model bundle dir (models/model, or the registry's production bundle); "
                        "without it no prediction drift or quality")
    p.add_argument("--registry", help="model registry (dir or fsspec URL): monitor its production bundle "
                                      "instead of --model")
    p.add_argument("--html", type=Path, help="Evidently HTML report (reports/drift.html)")
    p.add_argument("--summary", type=Path, help="compact drift summary JSON (reports/drift.json)")
    p.add_argument("--details", type=Path,
                   help="per-feature results, quality per day, windows (reports/drift_details.json)")
    p.add_argument("--report-json", type=Path, help="Evidently's full JSON of the run (reports/drift_report.json)")
    p.add_argument("--workspace", type=Path, default=Path("monitoring/workspace"),
                   help="Evidently workspace that keeps one snapshot per run (default monitoring/workspace)")
    p.add_argument("--retrieval-metrics", type=Path,
                   help="the retrieval step's metrics (reports/retrieval_metrics.json): Recall@10/@100, P@1 and "
                        "the oracle's Recall@100 join the summary and the dashboard")
    p.add_argument("--dashboard", action="store_true",
                   help="serve Evidently's UI over --workspace on 127.0.0.1 instead of running the report")
    p.add_argument("--port", type=int, default=8000, help="port of the --dashboard UI (default 8000)")
    add_params_args(p)
    p.set_defaults(func=_main)
