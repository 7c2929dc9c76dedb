"""Test AUC against embedding compression for ROBE, the hashing trick and QR embeddings,
with the same data, model and training budget (the ROBE paper's central claim, on our data).

Reads a model-ready dir (``data/model_input``: train/valid/test parquet + feature_spec.json,
written by ``dvc repro features``) and, when present, the planted probabilities
(``data/truth``) for the oracle AUC. The model and optimizer settings come from the
``train`` section of params.yaml; only the backend, the compression and the budget change.

    .venv/bin/python benchmarks/compression_sweep.py                # 50k train rows, 2 epochs
    .venv/bin/python benchmarks/compression_sweep.py --rows 0       # every train row
    .venv/bin/python benchmarks/compression_sweep.py --compressions 1,100,1000 --backends robe

The 1x points of robe, hashing and qr are the slow ones (a dense gradient and optimizer
pass over a full-size array every step).

Writes ``<out>/compression_sweep.{csv,md,png}`` and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from contract.params import load_config
from dlrm.bundle import predict
from dlrm.configs import TrainConfig
from contract.model_input import read_split, read_spec
from dlrm.metrics import auc
from dlrm.train import train_model
from contract.spec import ModelInput


def oracle_auc(frame: pd.DataFrame, labels: np.ndarray, truth_dir: Path) -> float | None:
    """AUC of the planted probabilities on the rows of ``frame`` (None without truth files)."""
    files = sorted(Path(truth_dir).rglob("*.parquet")) if truth_dir.exists() else []
    if not files or "event_id" not in frame.columns:
        return None
    truth = pd.concat([pd.read_parquet(f, columns=["event_id", "purchase_prob"]) for f in files])
    prob = frame["event_id"].astype(str).map(truth.drop_duplicates("event_id").set_index("event_id")
                                             ["purchase_prob"].rename(index=str)).to_numpy(np.float64)
    known = ~np.isnan(prob)
    return auc(labels[known], prob[known]) if known.any() else None


def run_one(base: TrainConfig, backend: str, compression: float, spec, train, valid, test) -> dict:
    emb = replace(base.model.embedding, backend=backend, compression=compression, size=0)
    cfg = replace(base, model=replace(base.model, embedding=emb))
    t0 = time.perf_counter()
    result = train_model(cfg, spec, train, valid)
    wall = time.perf_counter() - t0
    test_auc = auc(test.labels, predict(result.model, test))
    return {
        "backend": backend, "nominal_compression": compression,
        "compression": round(result.model.compression, 2), "embedding_bytes": result.model.embedding_bytes,
        "test_auc": round(test_auc, 5), "valid_auc": round(result.last_auc, 5) if result.last_auc else None,
        "train_samples_per_s": round(result.samples_per_s), "wall_s": round(wall, 1),
    }


def write_outputs(rows: list[dict], out: Path, full_auc: float | None, oracle: float | None,
                  title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with (out / "compression_sweep.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*keys, "auc_minus_full"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "auc_minus_full": None if full_auc is None else round(r["test_auc"] - full_auc, 5)})
    lines = [f"# {title}", "",
             f"full tables: test AUC {full_auc}" + (f"; oracle (planted) AUC {oracle:.5f}" if oracle else ""), "",
             "| backend | nominal | actual compression | embedding bytes | test AUC | AUC - full | samples/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = "" if full_auc is None else f"{r['test_auc'] - full_auc:+.4f}"
        lines.append(f"| {r['backend']} | {r['nominal_compression']:g}x | {r['compression']:g}x | "
                     f"{r['embedding_bytes']:,} | {r['test_auc']:.4f} | {d} | {r['train_samples_per_s']:,} |")
    (out / "compression_sweep.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        pts = sorted((r["compression"], r["test_auc"]) for r in rows if r["backend"] == backend)
        if backend != "full":
            ax.plot(*zip(*pts), marker="o", label=backend)
    if full_auc is not None:
        ax.axhline(full_auc, color="k", ls="--", lw=1, label="full tables")
    if oracle is not None:
        ax.axhline(oracle, color="g", ls=":", lw=1, label="oracle (planted)")
    ax.set_xscale("log")
    ax.set_xlabel("compression (full-table bytes / embedding bytes)")
    ax.set_ylabel("test AUC")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compression_sweep.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=Path("data/model_input"))
    p.add_argument("--truth", type=Path, default=Path("data/truth"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--rows", type=int, default=50_000, help="training rows used (0 = all)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--backends", default="robe,hashing,qr")
    p.add_argument("--compressions", default="1,10,100,1000,10000")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a shared box)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    base = load_config(TrainConfig, "train", args.params)
    base = replace(base, epochs=args.epochs, eval_every=0, target_auc=None, checkpoint_every=0,
                   progress=False, device="cpu")
    spec = read_spec(args.input)
    T = len(spec.sparse)
    _, train = read_split(args.input, "train", spec)
    if args.rows and args.rows < train.num_rows:
        train = train.slice(0, args.rows, T)
    _, valid = read_split(args.input, "valid", spec)
    test_frame, test = read_split(args.input, "test", spec)
    oracle = oracle_auc(test_frame, test.labels, args.truth)
    title = (f"{train.num_rows:,} train rows, {args.epochs} epoch(s), batch {base.batch_size}, "
             f"dim {base.model.embedding.dim}, ROBE Z={base.model.embedding.block}")
    print(f"# {title}; test {test.num_rows:,} rows" + (f"; oracle AUC {oracle:.5f}" if oracle else ""), flush=True)

    rows = [run_one(base, "full", 1.0, spec, train, valid, test)]
    print(rows[0], flush=True)
    full_auc = rows[0]["test_auc"]
    for backend in args.backends.split(","):
        for c in (float(x) for x in args.compressions.split(",")):
            rows.append(run_one(base, backend, c, spec, train, valid, test))
            print(rows[-1], flush=True)
    write_outputs(rows, args.out, full_auc, oracle, title)
    print((args.out / "compression_sweep.md").read_text())


if __name__ == "__main__":
    main()
