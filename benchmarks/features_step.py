"""Throughput of `robeflow features`, phase by phase, on a directory of transactions.

Usage:
    .venv/bin/python benchmarks/features_step.py --input data/validated [--rows N]

Prints the seconds of each phase and events/s of the whole step (the same work as
``components.features.features``, in a temporary directory).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FEAST_USAGE", "False")


def main() -> None:
    from components.features import FeaturesConfig, read_validated
    from contract.params import as_dict
    from features.compute import StatsParams, compute_feature_tables
    from features.repo import (apply_repo, historical_rows, install_repo, materialize_latest,
                               write_offline_tables)
    from features.transform import build_model_frame, feature_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, required=True, help="day-partitioned Parquet transactions")
    ap.add_argument("--rows", type=int, default=0, help="use only the first N events (0: all)")
    args = ap.parse_args()

    times: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name], t = now - t, now

    events = read_validated(args.input)
    if args.rows:
        events = events.iloc[: args.rows]
    lap("read")
    cfg = FeaturesConfig()
    stats = StatsParams(cfg.rate_prior, cfg.rate_prior_weight, cfg.days_since_cap)
    tables = compute_feature_tables(events, stats)
    lap("compute tables")
    with tempfile.TemporaryDirectory() as tmp:
        repo = install_repo(Path(tmp) / "repo")
        write_offline_tables(tables, repo)
        store = apply_repo(repo)
        lap("feast apply (incl. import)")
        cols = ["event_id", "event_timestamp", "user_id", "item_id", "query", "device", "country",
                "position", "price", "purchased"]
        rows = historical_rows(store, events[cols], as_of_floor="D")
        lap("point-in-time join")
        materialize_latest(store, tables)
        lap("materialize")
        frame = build_model_frame(rows, feature_spec(as_dict(cfg.tables), stats))
        lap("transform to model input")
        frame.to_parquet(Path(tmp) / "all.parquet", index=False)
        lap("write parquet")
    total = sum(times.values())
    for name, sec in times.items():
        print(f"{name:<28} {sec:8.1f} s")
    print(f"{'total':<28} {total:8.1f} s   {len(events):,} events   {len(events) / total:,.0f} events/s")


if __name__ == "__main__":
    main()
