"""`robeflow evaluate`: metrics of the trained model on the test window, and the quality gate.

Writes ``reports/metrics.json`` (AUC with its bootstrap 95% interval ``auc_lo``/``auc_hi``,
log loss, NE, calibration, the oracle AUC when the planted probabilities are known, the
gate's target and ``passed``, the embedding size), the ROC curve for a DVC plot, and the
test-window predictions for monitoring.

The step exits 0 when it ran, whatever the gate says (a failed gate is ``passed: false``
for the pipeline to act on), unless ``evaluate.fail_on_gate`` is true.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.io import StepError, atomic_dir, log, write_json
from contract.params import add_params_args, load_config
from dlrm.threads import torch_threads
from dlrm.configs import EvaluateConfig

STEP = "evaluate"
GATE_FAILED_EXIT = 3
AUC_BOOTSTRAP = 1000  # resamples of the test AUC's 95% interval (seeded: the same run, the same interval)


@dataclass
class EvaluateResult:
    """The metrics written to metrics.json; ``passed`` is the gate's outcome."""

    metrics: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.metrics["passed"])


def _weights_sha256(model_dir: Path) -> str:
    """sha256 of the bundle's weights file: the model's content hash."""
    import hashlib

    from dlrm.bundle import WEIGHTS

    h = hashlib.sha256()
    with (Path(model_dir) / WEIGHTS).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gate_target(cfg: EvaluateConfig, oracle_auc: float | None) -> float:
    """The AUC the model must reach under ``cfg.gate``."""
    from dlrm.metrics import MLPERF_TARGETS

    if cfg.gate == "target_auc":
        return cfg.target_auc
    if cfg.gate in MLPERF_TARGETS:
        return MLPERF_TARGETS[cfg.gate]
    if cfg.gate == "oracle_gap":
        if oracle_auc is None:
            raise StepError("evaluate.gate = oracle_gap needs the planted probabilities (--truth DIR with "
                            "event_id, purchase_prob covering the test rows)")
        return oracle_auc - cfg.oracle_gap
    raise ValueError(f"evaluate.gate = {cfg.gate!r}; expected target_auc, oracle_gap, "
                     f"{', '.join(MLPERF_TARGETS)}")


def _oracle(event_ids, labels, truth_dir: Path) -> tuple[float | None, int]:
    """(AUC of the planted probabilities on the test rows they cover, rows covered). The
    truth files are read a row group at a time and only the test rows' probabilities kept."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dlrm.metrics import auc

    files = sorted(Path(truth_dir).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"truth dir {truth_dir} holds no .parquet files (event_id, purchase_prob)")
    if event_ids is None:
        raise ValueError("the test table has no event_id column to join the planted probabilities on")
    wanted = pa.array(np.asarray(event_ids, dtype=object), type=pa.string())
    found = []
    for path in files:
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            part = pf.read_row_group(g, columns=["event_id", "purchase_prob"])
            ids = part.column("event_id").cast(pa.string())
            found.append(pa.table({"event_id": ids, "purchase_prob": part.column("purchase_prob")})
                         .filter(pc.is_in(ids, value_set=wanted)))
    truth = pa.concat_tables(found).to_pandas().drop_duplicates("event_id").set_index("event_id")["purchase_prob"]
    prob = pd.Series(np.asarray(event_ids, dtype=object)).map(truth).to_numpy(dtype=np.float64, na_value=np.nan)
    known = ~np.isnan(prob)
    if not known.any():
        return None, 0
    return auc(labels[known], prob[known]), int(known.sum())


def _test_frames(input_dir: Path, batch_rows: int):
    """The model-ready test window ``batch_rows`` rows at a time (DataFrames as ``read_frame`` gives)."""
    import pyarrow as pa

    from contract.model_input import iter_split_batches

    for batch in iter_split_batches(input_dir, "test", None, batch_rows):
        yield pa.Table.from_batches([batch]).to_pandas()


@dataclass
class _Scored:
    """The test window's scores and what the outputs need of its rows."""

    probs: Any
    labels: Any
    event_ids: Any          # str per row, or None without an event_id column
    timestamps: Any         # per row, or None without event_timestamp


def _score(model, spec, frames, cfg: EvaluateConfig) -> _Scored:
    """Scores ``frames`` (the test window in parts) batch by batch: memory follows a part,
    and the kept columns (score, label, event id, time) the window."""
    import numpy as np

    from contract.spec import ModelInput
    from dlrm.bundle import predict

    probs, labels, ids, times = [], [], [], []
    with torch_threads(cfg.threads):
        for frame in frames:
            if spec.label not in frame.columns:
                raise ValueError(f"the test window has no label column {spec.label!r}")
            if len(frame) == 0:
                continue
            inputs = ModelInput.from_frame(frame, spec)
            probs.append(predict(model, inputs, batch_size=cfg.batch_size))
            labels.append(inputs.labels.astype(np.float64))
            ids.append(frame["event_id"].astype(str).to_numpy() if "event_id" in frame.columns else None)
            times.append(frame["event_timestamp"].to_numpy() if "event_timestamp" in frame.columns else None)
    if not probs:
        raise ValueError("the test window has no rows")
    return _Scored(np.concatenate(probs), np.concatenate(labels),
                   None if any(i is None for i in ids) else np.concatenate(ids),
                   None if any(t is None for t in times) else np.concatenate(times))


def evaluate(cfg: EvaluateConfig, model_dir: Path, input_dir: Path | None, metrics_out: Path,
             plots_dir: Path, predictions_dir: Path, *, truth_dir: Path | None = None,
             criteo: Path | None = None) -> EvaluateResult:
    """Scores the test window with the bundle in ``model_dir`` and applies the gate.

    Args:
        cfg: the ``evaluate`` section of params.yaml.
        model_dir: the bundle written by ``robeflow train``.
        input_dir: the model-ready dir (``test.parquet``); ignored when ``criteo`` is given.
        metrics_out: the metrics JSON (reports/metrics.json).
        plots_dir: gets ``roc.csv`` (fpr, tpr, threshold).
        predictions_dir: gets ``test.parquet`` (event_id, score, label; event_timestamp when known).
        truth_dir: the planted probabilities (data/truth) for the oracle AUC, or None.
        criteo: a Criteo file to use as the test window instead of ``input_dir``.
    """
    import numpy as np
    import pandas as pd

    from contract.model_input import SPEC_FILE
    from contract.spec import FeatureSpec
    from dlrm.bundle import load_model
    from dlrm.metrics import bootstrap_auc, classification_metrics, roc_curve

    model, doc = load_model(model_dir)
    spec = FeatureSpec.from_dict(doc["feature_spec"])
    if criteo is not None:
        from features.criteo import criteo_model_frame, read_criteo

        if not Path(criteo).exists():
            raise FileNotFoundError(f"Criteo file {criteo} does not exist")
        frame, data_spec = criteo_model_frame(read_criteo(criteo), [f.table_size for f in spec.sparse])
    else:
        if input_dir is None:
            raise ValueError("give the model-ready dir (--input) or a Criteo file (--criteo)")
        spec_path = Path(input_dir) / SPEC_FILE
        data_spec = FeatureSpec.load(spec_path) if spec_path.exists() else spec
    try:
        spec.check_compatible(data_spec, "the test data")
    except ValueError as err:
        raise ValueError(f"{err} ({model_dir} was trained on another feature spec)") from None
    scored = _score(model, spec, [frame] if criteo is not None else _test_frames(Path(input_dir), cfg.batch_size), cfg)
    probs, labels = scored.probs, scored.labels
    m = classification_metrics(labels, probs)
    # stratified bootstrap 95% interval of the test AUC (None when the window has one class)
    ci = bootstrap_auc(labels, probs, n_boot=AUC_BOOTSTRAP) if np.isfinite(m["auc"]) else None
    m["auc_lo"], m["auc_hi"] = (ci["lo"], ci["hi"]) if ci else (None, None)

    oracle_auc, oracle_rows = (None, 0)
    if truth_dir is not None and Path(truth_dir).exists():
        oracle_auc, oracle_rows = _oracle(scored.event_ids, labels, truth_dir)
    target = gate_target(cfg, oracle_auc)
    passed = bool(np.isfinite(m["auc"]) and m["auc"] >= target)
    train_metrics = doc.get("metrics", {})
    emb = doc["embedding"]
    metrics = {
        **m,
        "oracle_auc": oracle_auc, "oracle_rows": oracle_rows,
        "gap_to_oracle": None if oracle_auc is None else oracle_auc - m["auc"],
        "gate": cfg.gate, "target_auc": target, "passed": passed,
        "model_sha256": _weights_sha256(model_dir),   # which model these metrics measured (push checks it)
        "backend": emb["backend"], "embedding_bytes": emb["bytes"],
        "full_embedding_bytes": emb["full_bytes"], "compression": emb["compression"],
        "train_samples_per_s": train_metrics.get("train_samples_per_s"),
        "time_to_target_s": train_metrics.get("time_to_target_s"),
        "train_valid_auc": train_metrics.get("valid_auc"),
    }
    write_json(metrics_out, metrics)

    fpr, tpr, thresholds = roc_curve(labels, probs, max_points=cfg.roc_points)
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    with (plots_dir / "roc.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["fpr", "tpr", "threshold"])
        w.writerows(zip(fpr.tolist(), tpr.tolist(), thresholds.tolist()))

    pred = pd.DataFrame({
        "event_id": scored.event_ids if scored.event_ids is not None else np.arange(len(probs)).astype(str),
        "score": probs, "label": labels.astype(np.int64)})
    if scored.timestamps is not None:
        pred.insert(1, "event_timestamp", scored.timestamps)
    with atomic_dir(predictions_dir) as tmp:
        pred.to_parquet(tmp / "test.parquet", index=False)

    oracle = f", oracle {oracle_auc:.5f}" if oracle_auc is not None else ""
    interval = f" [{m['auc_lo']:.5f}, {m['auc_hi']:.5f}]" if ci else ""
    log(STEP, f"test AUC {m['auc']:.5f}{interval}{oracle}, NE {m['ne']:.4f}, target {target:.5f} ({cfg.gate}): "
              f"{'passed' if passed else 'FAILED'} -> {metrics_out}")
    return EvaluateResult(metrics)


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(EvaluateConfig, STEP, args.params, args.overrides)
    if args.input is None and args.criteo is None:
        raise StepError("give the model-ready dir (--input) or a Criteo file (--criteo)", exit_code=2)
    result = evaluate(cfg, args.model, args.input, args.metrics, args.plots, args.predictions,
                      truth_dir=args.truth, criteo=args.criteo)
    if not result.passed and cfg.fail_on_gate:
        raise StepError(f"quality gate failed: test AUC {result.metrics['auc']:.5f} < target "
                        f"{result.metrics['target_auc']:.5f}", exit_code=GATE_FAILED_EXIT)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="test-window metrics and the quality gate")
    p.add_argument("--model", type=Path, required=True, help="model bundle dir (models/model)")
    p.add_argument("--input", type=Path, help="model-ready dir with test.parquet (data/model_input)")
    p.add_argument("--criteo", type=Path, help="a Criteo TSV/CSV as the test window instead of --input")
    p.add_argument("--truth", type=Path, help="planted probabilities (data/truth) for the oracle AUC")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON (reports/metrics.json)")
    p.add_argument("--plots", type=Path, required=True, help="plot data dir (reports/plots)")
    p.add_argument("--predictions", type=Path, required=True, help="test predictions dir (data/predictions)")
    add_params_args(p)
    p.set_defaults(func=_main)
