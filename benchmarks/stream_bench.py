"""Peak memory and samples/s of `robeflow train` reading the model-ready training split as a
stream (``train.stream=true``) against reading it whole (``train.stream=false``).

Writes a planted model-ready dir (:func:`dlrm.synthetic.planted_frame`: 2 dense, 2 single-hot
and 1 multi-hot feature, the label, event_id / event_timestamp) with the training split as a
folder of Parquet parts, written part by part (never the whole split in memory), then runs
one epoch of `robeflow train` per (rows, mode) in a child process whose peak RSS a small
measuring process reads (``wait4``'s ``ru_maxrss``). The rest of the ``train`` section comes
from ``--params`` (batch 1024, one thread in the repo's params.yaml), but for ROBE at 4x
(the planted tables hold 460 ids).

    PYTHONPATH=. .venv/bin/python benchmarks/stream_bench.py                      # 2M rows, both modes
    PYTHONPATH=. .venv/bin/python benchmarks/stream_bench.py --rows 2000000 20000000 \\
        --modes stream memory --skip-memory-above 5000000

Prints one line per run (peak RSS, training samples/s, validation AUC, wall time) and, per
size, streaming's RSS and samples/s as ratios of in-memory's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Runs a command and prints its peak RSS (KiB) last; small, so its own pages do not count.
_MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
            "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss); "
            "sys.exit(os.waitstatus_to_exitcode(status))")


def write_dir(root: Path, rows: int, valid_rows: int, part_rows: int) -> None:
    """A planted model-ready dir: ``train.parquet/part-*.parquet`` (``rows``) and
    ``valid.parquet`` (``valid_rows``), written one part at a time."""
    from contract.model_input import write_model_input
    from dlrm.synthetic import PLANTED_SPEC, planted_frame

    root.mkdir(parents=True)
    write_model_input(root, {"valid": planted_frame(valid_rows, seed=1).drop(columns="_prob")}, PLANTED_SPEC)
    (root / "train.parquet").mkdir()
    for k, start in enumerate(range(0, rows, part_rows)):
        part = planted_frame(min(part_rows, rows - start), seed=1000 + k).drop(columns="_prob")
        part.to_parquet(root / "train.parquet" / f"part-{k:04d}.parquet", index=False, row_group_size=65536)


def run_train(data: Path, out: Path, params: Path, mode: str, overrides: list[str]) -> dict:
    """One epoch of `robeflow train` in a measured child: its metrics and peak RSS."""
    sets = [f"train.stream={'true' if mode == 'stream' else 'false'}", "train.epochs=1", "train.eval_every=0",
            "train.patience=0", "train.checkpoint_every=0", "train.progress=false",
            "train.embedding.compression=4", *overrides]  # the planted tables hold 460 rows: 1000x is < one block
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "pipelines.cli", "train", "--input", str(data),
           "--model-out", str(out / "model"), "--checkpoints", str(out / "ck"), "--reports", str(out / "reports"),
           "--params", str(params), *[a for s in sets for a in ("-S", s)]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"train ({mode}) failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "reports" / "train_metrics.json").read_text())
    mode_line = next((ln for ln in proc.stderr.splitlines() if "training rows" in ln), "")
    return {"mode": mode, "rows": metrics["train_rows"], "streamed": metrics["streamed"],
            "peak_rss_gb": int(proc.stdout.split()[-1]) / 2**20, "samples_per_s": metrics["train_samples_per_s"],
            "valid_auc": metrics["valid_auc"], "wall_s": time.perf_counter() - t0, "log": mode_line.strip()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[2_000_000], help="training rows per run")
    ap.add_argument("--modes", nargs="+", default=["stream", "memory"], choices=["stream", "memory"])
    ap.add_argument("--skip-memory-above", type=int, default=0,
                    help="no in-memory run above this many rows (0 = never skip)")
    ap.add_argument("--valid-rows", type=int, default=50_000)
    ap.add_argument("--part-rows", type=int, default=1_000_000, help="rows per Parquet part written")
    ap.add_argument("--work", type=Path, default=Path("stream_bench"), help="scratch directory (removed after)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="train.KEY=VALUE")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    results = []
    try:
        for rows in args.rows:
            data = args.work / f"rows-{rows}"
            t0 = time.perf_counter()
            write_dir(data, rows, args.valid_rows, args.part_rows)
            print(f"wrote {rows:,} planted rows in {time.perf_counter() - t0:.0f}s", flush=True)
            for mode in args.modes:
                if mode == "memory" and args.skip_memory_above and rows > args.skip_memory_above:
                    continue
                r = run_train(data, args.work / f"out-{rows}-{mode}", args.params, mode, args.overrides)
                results.append(r)
                print(f"{rows:>11,} {mode:<7} peak RSS {r['peak_rss_gb']:6.2f} GB  {r['samples_per_s']:9,.0f} "
                      f"samples/s  valid AUC {r['valid_auc']:.4f}  wall {r['wall_s']:6.1f}s\n    {r['log']}",
                      flush=True)
            shutil.rmtree(data)
    finally:
        if args.work.exists():
            shutil.rmtree(args.work)
    for rows in args.rows:
        by = {r["mode"]: r for r in results if r["rows"] == rows}
        if {"stream", "memory"} <= set(by):
            s, m = by["stream"], by["memory"]
            print(f"{rows:,} rows: streaming / in-memory peak RSS {s['peak_rss_gb'] / m['peak_rss_gb']:.2f}x, "
                  f"samples/s {s['samples_per_s'] / m['samples_per_s']:.2f}x, "
                  f"AUC {s['valid_auc'] - m['valid_auc']:+.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
