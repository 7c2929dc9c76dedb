"""Scale of the data path: generate -> ingest -> validate -> features at several sizes.

Usage:
    .venv/bin/python benchmarks/scale_bench.py --rows 1000000 5000000 20000000 \\
        [--work DIR] [--json PATH] [--steps generate ingest validate features] [-S section.key=value]
        [--keep] [--resume]

Each step runs as a child process through the ``robeflow`` CLI, exactly as DVC runs it.
For every (size, step) the benchmark records the wall time, rows per second, the CPU
seconds (user + system) and the peak resident memory of that child and its descendants
(``os.wait4``), and the load average around it. Then, per step, the memory slope: the
least-squares GB of peak RSS per million events across the sizes, and each size's rows/s
as a ratio to the smallest size's (the baseline measured in the same run).

The figures of a shared machine are noisy: rows per CPU second is the steadier one
when other jobs compete for the cores. Outputs of a size are removed after it unless
``--keep`` is given.
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

STEPS = ("generate", "ingest", "validate", "features")


def robeflow_cmd() -> list[str]:
    """The robeflow CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("robeflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipelines.cli"]


def step_args(step: str, d: Path, rows: int) -> list[str]:
    """The CLI arguments of one step working in directory ``d``."""
    if step == "generate":
        return ["generate", "--out", str(d / "raw"), "--truth", str(d / "truth"), "-S", f"generate.rows={rows}"]
    if step == "ingest":
        return ["ingest", "--input", str(d / "raw"), "--out", str(d / "ingested")]
    if step == "validate":
        return ["validate", "--input", str(d / "ingested"), "--out", str(d / "validated"),
                "--quarantine", str(d / "quarantine"), "--reports", str(d / "reports")]
    if step == "features":
        return ["features", "--input", str(d / "validated"), "--out", str(d / "features"),
                "--model-input", str(d / "model_input")]
    raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")


def run_child(cmd: list[str], log_path: Path) -> dict:
    """Runs ``cmd``; returns wall seconds, CPU seconds and peak RSS (GB) of it and its
    descendants, and the exit status."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),   # ru_maxrss is in KiB on Linux
            "exit": proc.returncode, "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}


def step_rows(step: str, d: Path, rows: int) -> int:
    """Rows the step processed: events generated / ingested / validated (in), valid
    events for the features step."""
    if step == "features":
        summary = json.loads((d / "reports" / "validation.json").read_text())
        return int(summary["rows_valid"])
    return rows


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000],
                    help="sizes (generated transactions)")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--work", type=Path, default=Path("scale_bench"), help="scratch directory")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml of the steps")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                    help="extra override for every step of its section (section.key=value)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep each size's outputs")
    ap.add_argument("--resume", action="store_true",
                    help="keep what a size's directory already holds (earlier steps run by a previous "
                         "--keep run) and run only --steps on it")
    args = ap.parse_args(argv)
    if any(r < 1 for r in args.rows):
        raise SystemExit(f"--rows must be >= 1, got {args.rows}")

    base = robeflow_cmd()
    results: list[dict] = []
    print(f"{'rows':>11} {'step':<9} {'wall s':>8} {'rows/s':>10} {'rows/cpu-s':>11} {'cpu s':>8} "
          f"{'peak GB':>8} {'load':>5}", flush=True)
    for rows in sorted(args.rows):
        d = args.work / f"rows-{rows}"
        if not args.resume:
            shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
        for step in args.steps:
            cmd = [*base, *step_args(step, d, rows), "--params", str(args.params)]
            cmd += [x for o in args.overrides if o.startswith(step + ".") for x in ("-S", o)]
            m = run_child(cmd, d / f"{step}.log")
            if m["exit"] != 0:
                tail = (d / f"{step}.log").read_text()[-2000:]
                raise SystemExit(f"{step} at {rows} rows exited with {m['exit']}:\n{tail}")
            n = step_rows(step, d, rows)
            m.update(rows=rows, step=step, step_rows=n, rows_per_s=round(n / m["wall_s"]),
                     rows_per_cpu_s=round(n / max(m["cpu_s"], 1e-9)))
            results.append(m)
            print(f"{rows:>11,} {step:<9} {m['wall_s']:>8.1f} {m['rows_per_s']:>10,} {m['rows_per_cpu_s']:>11,} "
                  f"{m['cpu_s']:>8.1f} {m['peak_rss_gb']:>8.2f} {m['load_before']:>5.1f}", flush=True)
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)

    summary = {}
    print("\nper step: memory slope (GB of peak RSS per million rows) and rows/s against the smallest size")
    for step in args.steps:
        ms = [m for m in results if m["step"] == step]
        s = slope([(m["step_rows"] / 1e6, m["peak_rss_gb"]) for m in ms])
        first = ms[0]
        ratios = {m["rows"]: round(m["rows_per_s"] / first["rows_per_s"], 2) for m in ms}
        summary[step] = {"memory_slope_gb_per_million": None if s is None else round(s, 4),
                         "rows_per_s_vs_smallest": ratios,
                         "max_peak_rss_gb": max(m["peak_rss_gb"] for m in ms)}
        print(f"  {step:<9} slope {'n/a' if s is None else f'{s:.4f}':>8} GB/M   max peak "
              f"{summary[step]['max_peak_rss_gb']:.2f} GB   rows/s ratios {ratios}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": results, "steps": summary, "cpus": os.cpu_count(),
                                         "params": str(args.params), "overrides": args.overrides},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
