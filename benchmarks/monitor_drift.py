"""How often `robeflow monitor` flags drift, on generated data with and without a shift.

For every seed and drift strength: generate transactions, build the model-ready windows in
memory (features.windows.model_ready_windows, no Feast repo), run the monitor's core (no
model: data drift only) and print the verdict, the share of drifted features and their
names; then the flag rate per drift strength (at drift 0 that is the false-alarm rate).

    .venv/bin/python benchmarks/monitor_drift.py --seeds 10 --drift 0 0.8
    .venv/bin/python benchmarks/monitor_drift.py --scale default --seeds 2 --drift 0 --reference train valid

Scales: ``test`` is the tests' data (45k rows, 2k users, 500 items, 40 days, the shift on
the last 3 days = the test window); ``default`` is params.yaml's generate section (200k
rows, 28 days) with the shift on the last 3 days.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DO_NOT_TRACK", "1")

SCALES = {
    "test": dict(rows=45_000, users=2_000, items=500, days=40, drift_days=3, corrupt_fraction=0.0,
                 chunk_rows=45_000),
    "default": dict(drift_days=3, corrupt_fraction=0.0, chunk_rows=200_000),
}


def windows(scale: str, seed: int, drift: float, out: Path) -> Path:
    from contract.model_input import write_model_input
    from features.windows import model_ready_windows
    from components.features import TableSizes
    from generator.config import GenerateConfig
    from generator.events import build_world, generate_chunk
    from contract.params import as_dict
    from contract.schema import COLUMNS
    from features.compute import StatsParams
    from features.transform import feature_spec

    cfg = GenerateConfig(**SCALES[scale], seed=seed, drift=drift)
    events, _ = generate_chunk(cfg, build_world(cfg), 0)
    stats = StatsParams()
    spec = feature_spec(as_dict(TableSizes()), stats)
    out.mkdir(parents=True, exist_ok=True)
    write_model_input(out, model_ready_windows(events.astype(COLUMNS), spec, stats, 3, 3), spec)
    return out


def main() -> None:
    from components.monitor import MonitorConfig, monitor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="test")
    p.add_argument("--seeds", type=int, default=5, help="seeds 100, 101, ...")
    p.add_argument("--drift", type=float, nargs="+", default=[0.0, 0.8])
    p.add_argument("--reference", nargs="+", default=["valid"], choices=["valid", "train", "train+valid"])
    p.add_argument("--max-rows", type=int, default=20_000)
    args = p.parse_args()

    flagged: dict[tuple[float, str], list[bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for drift in args.drift:
            for seed in range(100, 100 + args.seeds):
                t0 = time.perf_counter()
                data = windows(args.scale, seed, drift, Path(tmp) / f"{seed}-{drift}")
                built = time.perf_counter() - t0
                for ref in args.reference:
                    t1 = time.perf_counter()
                    cfg = MonitorConfig(reference=ref, max_rows=args.max_rows)
                    s = monitor(cfg, data, None, data / "drift.html", data / "drift.json").summary
                    flagged.setdefault((drift, ref), []).append(s["drift_detected"])
                    print(f"drift {drift:.2f} seed {seed} reference {ref:<11} flagged {s['drift_detected']!s:<5} "
                          f"share {s['drift_share']:.3f} ({s['drifted_count']}/{s['features_tested']}) "
                          f"data {built:.0f}s monitor {time.perf_counter() - t1:.0f}s "
                          f"drifted: {', '.join(s['drifted_features']) or '-'}", flush=True)
    for (drift, ref), verdicts in flagged.items():
        print(f"scale {args.scale}, drift {drift:.2f}, reference {ref}: flagged {sum(verdicts)} of "
              f"{len(verdicts)} seeds")


if __name__ == "__main__":
    main()
