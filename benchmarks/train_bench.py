"""Training (and inference) samples/s of the Criteo-Kaggle-shaped DLRM: full tables
against ROBE at 1000x, in the same run, on the same random skewed ids.

Model: dim 16, bottom MLP 13-512-256-64-16, dot interaction, top MLP 512-256-1, batch
2048, the 26 Criteo Kaggle table sizes (33.8M rows; ~2.2 GB as full float32 tables).
Ids per table follow a power law (a few hot rows, a long tail) scattered over the table
by a multiplicative hash, as hashed categorical ids are.

    .venv/bin/python benchmarks/train_bench.py                 # defaults: 30 timed steps
    .venv/bin/python benchmarks/train_bench.py --steps 100 --threads 2
    .venv/bin/python benchmarks/train_bench.py --compression 100 --robe-floats 250000 25000000 \
        --embedding-optimizer adagrad --threads 1

Prints one line per model (training and inference samples/s, ms per training step, ms
of the embedding part alone: lookup + backward + embedding optimizer step) and the
ROBE/full ratios. ``--robe-floats N ...`` adds ROBE models with arrays of exactly N floats
(250000 = 1 MB, 25000000 = 100 MB) and prints the step time of the largest against the
smallest: with sparse updates a step costs what the batch reads, not what the array holds
(target: within 1.1x). ``--dense-robe`` adds the same ROBE models trained the old way (a
dense ``(num_floats,)`` gradient and a dense optimizer step) for comparison. The models run
interleaved in rounds, so load from other processes affects all alike.
"""

from __future__ import annotations

import argparse
import time

import torch

from dlrm.configs import EmbeddingConfig, ModelConfig, OptimConfig
from dlrm.model import DLRM
from dlrm.train import build_optimizers

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter

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


class Runner:
    """One backend's model and optimizers, with timed training and inference steps."""

    def __init__(self, backend: str, args: argparse.Namespace, size: int = 0, dense_robe: bool = False):
        torch.manual_seed(0)
        cfg = ModelConfig(
            embedding=EmbeddingConfig(backend=backend, dim=16, compression=args.compression, block=args.block,
                                      size=size),
            bottom_mlp=(512, 256, 64), top_mlp=(512, 256), interaction="dot")
        self.model = DLRM(cfg, 13, KAGGLE_TABLES)
        optim = OptimConfig(dense="adam", embedding=args.embedding_optimizer, embedding_lr=0.01)
        self.opts = build_optimizers(self.model, optim)
        if dense_robe:  # the dense path: a (num_floats,) gradient and a torch optimizer over it
            self.model.embedding.sparse_grad = False
            emb = list(self.model.embedding.parameters())
            self.opts[1] = (torch.optim.SGD(emb, lr=0.01) if args.embedding_optimizer == "sgd"
                            else torch.optim.Adagrad(emb, lr=0.01))
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.train_s = self.infer_s = self.emb_s = 0.0
        self.train_n = self.infer_n = self.emb_n = 0

    def embedding_steps(self, batches: list[tuple]) -> None:
        """The embedding part alone: lookup, backward, embedding optimizer step."""
        t0 = _clock()
        for _, values, offsets, _ in batches:
            self.opts[1].zero_grad(set_to_none=True)
            self.model.embedding(values, offsets).sum().backward()
            self.opts[1].step()
        self.emb_s += _clock() - t0
        self.emb_n += len(batches)

    def train_steps(self, batches: list[tuple], timed: bool) -> None:
        t0 = _clock()
        for dense, values, offsets, labels in batches:
            loss = self.loss_fn(self.model(dense, values, offsets), labels)
            for o in self.opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in self.opts:
                o.step()
        if timed:
            self.train_s += _clock() - t0
            self.train_n += sum(b[0].shape[0] for b in batches)

    @torch.no_grad()
    def infer_steps(self, batches: list[tuple], timed: bool) -> None:
        t0 = _clock()
        for dense, values, offsets, _ in batches:
            self.model(dense, values, offsets)
        if timed:
            self.infer_s += _clock() - t0
            self.infer_n += sum(b[0].shape[0] for b in batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per backend")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds, backends interleaved")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--compression", type=float, default=1000.0, help="ROBE compression")
    p.add_argument("--block", type=int, default=32, help="ROBE Z")
    p.add_argument("--alpha", type=float, default=4.0, help="id skew: rank = n * u^alpha")
    p.add_argument("--embedding-optimizer", choices=("sgd", "adagrad", "rowwise_adagrad"), default="sgd")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--backends", default="full,robe")
    p.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                   help="wall time, or this process's CPU time (steadier on a shared machine; with "
                        "--threads 1 it is the single-core time)")
    p.add_argument("--robe-floats", type=int, nargs="*", default=[],
                   help="also ROBE models with arrays of exactly these many floats")
    p.add_argument("--dense-robe", action="store_true",
                   help="also each ROBE model trained with a dense array gradient (the old path)")
    args = p.parse_args()
    global _clock
    _clock = CLOCK[args.clock]
    if args.embedding_optimizer == "rowwise_adagrad" and "full" in args.backends.split(","):
        p.error("rowwise_adagrad is a ROBE optimizer; run it with --backends robe")
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = skewed_batches(min(args.steps + args.warmup, 20), args.batch, KAGGLE_TABLES, 0, args.alpha)
    print(f"# Criteo-Kaggle DLRM, batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"embedding optimizer {args.embedding_optimizer}, {args.clock} clock, torch {torch.__version__}")
    print(f"{'model':<22} {'emb MB':>10} {'compr':>8} {'train samples/s':>16} {'infer samples/s':>16} "
          f"{'step ms':>12} {'emb part ms':>12}")
    runners = {b: Runner(b, args) for b in args.backends.split(",")}
    for n in args.robe_floats:
        runners[f"robe[{n}]"] = Runner("robe", args, size=n)
    if args.dense_robe:
        for name in [k for k in runners if k.startswith("robe")]:
            size = int(name[5:-1]) if "[" in name else 0
            runners[f"{name}-dense"] = Runner("robe", args, size=size, dense_robe=True)
    for r in runners.values():
        r.train_steps(batches[:args.warmup], timed=False)
        r.infer_steps(batches[:args.warmup], timed=False)
    # Interleave the backends in rounds so that load from other processes hits both alike.
    per_round = max(1, args.steps // args.rounds)
    for k in range(args.rounds):
        chunk = [batches[(k * per_round + i) % len(batches)] for i in range(per_round)]
        for r in runners.values():
            r.train_steps(chunk, timed=True)
            r.infer_steps(chunk, timed=True)
            r.embedding_steps(chunk)
    res = {}
    for backend, r in runners.items():
        m = r.model
        step_ms = 1000 * r.train_s / (r.train_n / args.batch)
        emb_ms = 1000 * r.emb_s / r.emb_n
        res[backend] = {"train": r.train_n / r.train_s, "infer": r.infer_n / r.infer_s, "step_ms": step_ms,
                        "emb_ms": emb_ms}
        print(f"{backend:<22} {m.embedding_bytes / 1e6:>10.1f} {m.compression:>8.0f} "
              f"{res[backend]['train']:>16.0f} {res[backend]['infer']:>16.0f} {step_ms:>12.1f} {emb_ms:>12.1f}",
              flush=True)
    if "full" in res and "robe" in res:
        print(f"robe ({args.compression:g}x)/full: training {res['robe']['train'] / res['full']['train']:.2f}x, "
              f"inference {res['robe']['infer'] / res['full']['infer']:.2f}x")
    for suffix in ("", "-dense"):
        sized = sorted((n, res[f"robe[{n}]{suffix}"]) for n in args.robe_floats if f"robe[{n}]{suffix}" in res)
        if len(sized) >= 2:
            (n0, small), (n1, large) = sized[0], sized[-1]
            print(f"robe{suffix or ' (sparse)'} {n1 * 4 / 1e6:g} MB vs {n0 * 4 / 1e6:g} MB array: step time "
                  f"{large['step_ms'] / small['step_ms']:.2f}x, embedding part "
                  f"{large['emb_ms'] / small['emb_ms']:.2f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()
