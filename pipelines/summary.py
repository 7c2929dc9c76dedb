"""`robeflow summary`: where the last local run put its outputs, and its headline figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (path, what it is) in pipeline order; only those that exist are shown.
OUTPUTS: tuple[tuple[str, str], ...] = (
    ("data/raw", "generated transactions"),
    ("data/ingested", "ingested Parquet, partitioned by day"),
    ("data/validated", "validated transactions"),
    ("data/quarantine", "quarantined rows with the expectations they failed"),
    ("reports/validation/validation.json", "validation accounting"),
    ("reports/validation/report.md", "validation report"),
    ("data/features", "Feast repo data: offline tables, registry, online store"),
    ("data/model_input", "model-ready train/valid/test tables and feature_spec.json"),
    ("models/model", "trained model"),
    ("reports/metrics.json", "evaluation metrics and gate"),
    ("models/retrieval", "whole-catalogue retrieval model"),
    ("reports/retrieval_metrics.json", "retrieval metrics (Recall@K, P@1, the oracle's)"),
    ("registry", "model registry (bundles v1, v2, ... and the production pointer)"),
    ("reports/drift.json", "drift summary"),
    ("reports/drift.html", "drift report"),
)

HEADLINES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reports/validation/validation.json", ("rows_in", "rows_valid", "rows_quarantined")),
    ("reports/metrics.json", ("auc", "auc_lo", "auc_hi", "target_auc", "passed", "compression", "embedding_bytes")),
    ("reports/retrieval_metrics.json", ("method", "items", "recall_at_10", "recall_at_100", "p_at_1",
                                        "oracle_recall_at_100")),
    ("reports/drift.json", ("drift_detected", "drift_share")),
)


def summary(root: Path) -> str:
    lines = ["robeflow outputs:"]
    for rel, what in OUTPUTS:
        if (root / rel).exists():
            lines.append(f"  {rel:<40} {what}")
    for rel, keys in HEADLINES:
        path = root / rel
        if path.exists():
            data = json.loads(path.read_text())
            figures = ", ".join(f"{k}={data[k]}" for k in keys if k in data)
            lines.append(f"  {Path(rel).name}: {figures}")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    print(summary(args.root))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="show where the pipeline's outputs are")
    p.add_argument("--root", type=Path, default=Path("."), help="project directory")
    p.set_defaults(func=_main)
