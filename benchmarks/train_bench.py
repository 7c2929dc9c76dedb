"""Training (and inference) samples/s of the Criteo-Kaggle-shaped DLRM: full tables
against ROBE at 1000x, in the same run, on the same random skewed ids.

Model: dim 16, bottom MLP 13-512-256-64-16, dot interaction, top MLP 512-256-1, batch
2048, the 26 Criteo Kaggle table sizes (33.8M rows; ~2.2 GB as full float32 tables).
Ids per table follow a power law (a few hot rows, a long tail) scattered over the table
by a multiplicative hash, as hashed categorical ids are.

    .venv/bin/python benchmarks/train_bench.py                 # defaults: 30 timed steps
    .venv/bin/python benchmarks/train_bench.py --steps 100 --threads 2

Prints one line per backend and the ROBE/full ratio (target on CPU: >= 3x training).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from dlrm.configs import EmbeddingConfig, ModelConfig, OptimConfig
from dlrm.model import DLRM
from dlrm.train import build_optimizers

KAGGLE_TABLES = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
                 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def skewed_batches(num: int, batch: int, tables: list[int], seed: int, alpha: float) -> list[tuple]:
    """``num`` batches (dense (B, 13), values (B*T,), offsets (B*T + 1,), labels (B,))."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor(tables, dtype=torch.float64)
    out = []
    for _ in range(num):
        u = torch.rand(batch, len(tables), generator=g, dtype=torch.float64)
        rank = torch.floor(sizes * u.pow(alpha)).long()            # (B, T) power law over ranks
        ids = (rank * 2654435761) % torch.tensor(tables)           # scatter hot ranks over the table
        dense = torch.rand(batch, 13, generator=g) * 5
        labels = (torch.rand(batch, generator=g) < 0.25).float()
        out.append((dense, ids.reshape(-1), torch.arange(batch * len(tables) + 1), labels))
    return out


def bench(backend: str, args: argparse.Namespace, batches: list[tuple]) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = ModelConfig(
        embedding=EmbeddingConfig(backend=backend, dim=16, compression=args.compression, block=args.block),
        bottom_mlp=(512, 256, 64), top_mlp=(512, 256), interaction="dot")
    t0 = time.perf_counter()
    model = DLRM(cfg, 13, KAGGLE_TABLES)
    build_s = time.perf_counter() - t0
    opts = build_optimizers(model, OptimConfig(dense="adam", embedding=args.embedding_optimizer,
                                               embedding_lr=0.01))
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(b):
        dense, values, offsets, labels = b
        loss = loss_fn(model(dense, values, offsets), labels)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()

    n = len(batches)
    for i in range(args.warmup):
        step(batches[i % n])
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(batches[(args.warmup + i) % n])
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        for i in range(args.warmup):
            model(*batches[i % n][:3])
        t0 = time.perf_counter()
        for i in range(args.steps):
            model(*batches[i % n][:3])
        infer_s = time.perf_counter() - t0
    result = {
        "embedding_mb": model.embedding_bytes / 1e6, "compression": model.compression, "build_s": build_s,
        "train_samples_per_s": args.steps * args.batch / train_s,
        "infer_samples_per_s": args.steps * args.batch / infer_s,
    }
    del model, opts
    gc.collect()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per backend")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--compression", type=float, default=1000.0, help="ROBE compression")
    p.add_argument("--block", type=int, default=32, help="ROBE Z")
    p.add_argument("--alpha", type=float, default=4.0, help="id skew: rank = n * u^alpha")
    p.add_argument("--embedding-optimizer", choices=("sgd", "adagrad"), default="sgd")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--backends", default="full,robe")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = skewed_batches(min(args.steps + args.warmup, 20), args.batch, KAGGLE_TABLES, 0, args.alpha)
    print(f"# Criteo-Kaggle DLRM, batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"embedding optimizer {args.embedding_optimizer}, torch {torch.__version__}")
    print(f"{'backend':<8} {'emb MB':>10} {'compr':>8} {'train samples/s':>16} {'infer samples/s':>16}")
    res = {}
    for backend in args.backends.split(","):
        r = res[backend] = bench(backend, args, batches)
        print(f"{backend:<8} {r['embedding_mb']:>10.1f} {r['compression']:>8.0f} "
              f"{r['train_samples_per_s']:>16.0f} {r['infer_samples_per_s']:>16.0f}", flush=True)
    if "full" in res and "robe" in res:
        print(f"robe/full: training {res['robe']['train_samples_per_s'] / res['full']['train_samples_per_s']:.2f}x, "
              f"inference {res['robe']['infer_samples_per_s'] / res['full']['infer_samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
