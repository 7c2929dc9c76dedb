"""Throughput and peak memory of the data steps: generate, ingest and validate N rows.

Each step runs in its own process (so its peak resident memory is its own) on the
default parameters except the sizes given here, in a scratch directory.

    .venv/bin/python benchmarks/generate_bench.py                 # 10M rows
    .venv/bin/python benchmarks/generate_bench.py --rows 200000   # quick

Prints one line per step: rows, seconds, rows/s, peak RSS (MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("generate", "ingest", "validate")


def _run_step(step: str, work: Path, rows: int, chunk_rows: int) -> dict:
    """Runs one step in this process; returns its figures."""
    t0 = time.perf_counter()
    if step == "generate":
        from components.generate import GenerateConfig, generate

        res = generate(GenerateConfig(rows=rows, chunk_rows=chunk_rows), work / "raw", work / "truth")
        n = res.rows
    elif step == "ingest":
        from components.ingest import IngestConfig, ingest

        n = ingest(IngestConfig(), work / "raw", work / "ingested").rows
    else:
        from components.generate import GenerateConfig
        from components.validate import ValidateConfig, validate

        start, end = GenerateConfig().window
        res = validate(ValidateConfig(window_start=start.isoformat(), window_end=end.isoformat(), max_bad_fraction=1.0),
                       work / "ingested", work / "validated", work / "quarantine", work / "reports")
        n = res.rows_in
        assert res.rows_in == res.rows_valid + res.rows_quarantined
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"step": step, "rows": n, "seconds": seconds, "rows_per_s": n / seconds, "peak_rss_mb": peak_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--chunk-rows", type=int, default=100_000, help="generate.chunk_rows")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of generate,ingest,validate")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()

    if args.step:
        print(json.dumps(_run_step(args.step, args.workdir, args.rows, args.chunk_rows)))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="robeflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"rows={args.rows} chunk_rows={args.chunk_rows} workdir={work}")
        for step in args.steps.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--step", step, "--workdir", str(work),
                 "--rows", str(args.rows), "--chunk-rows", str(args.chunk_rows)],
                check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['step']:<9} rows={r['rows']:>10}  {r['seconds']:8.1f} s  {r['rows_per_s']:>10.0f} rows/s  "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
        size = sum(f.stat().st_size for f in (work / "raw").rglob("*") if f.is_file()) / 2**20
        print(f"raw data on disk: {size:.0f} MB")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
