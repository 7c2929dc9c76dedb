"""Embedding-layer throughput on the Criteo-Kaggle shape: ROBE-Z against full tables and
the hashing trick, in the same run, on the same ids.

Three ways to hold the 26 Criteo Kaggle tables (33.8M rows):
- ``robe``:  one ROBE-Z array of ``rows * dim / compression`` floats (default 1000x),
             ``robe_lookup`` + autograd + dense SGD on the array;
- ``robe-fused``: the same forward, then ``robe_sgd_update_`` (backward and SGD in one
             pass, no gradient array);
- ``robe-sparse``: ``robe_lookup(..., sparse_grad=True)``: a sparse gradient (the distinct
             slots read and their sums) and ``SparseRobeOptimizer`` SGD on those slots only
             (what training uses; it also runs exact Adagrad this way);
- ``full``:  one ``nn.EmbeddingBag`` over all rows (global ids, one call for all tables,
             as fused table-batched embeddings do), sparse gradients, ``torch.optim.SGD``;
- ``hash``:  the hashing trick at ROBE's memory: a ``(floats / dim, dim)`` EmbeddingBag
             indexed by ``(g * A + C) mod P mod rows``, dense SGD.

Ids: one id per table and sample (Criteo Kaggle is single-hot), drawn per table from a
power law over ranks (``rank = floor(n * u**alpha)``, alpha = 4: a few hot rows, a long
tail), scattered over the table by a multiplicative hash, as hashed categorical ids are.

Figures: ms per call and lookups/s (B*T per second) for forward (no autograd), backward
(the gradient, or the fused backward+update) and a full step forward+backward+update;
effective GB/s = the bytes the step must move (below) / time. On a GPU it also prints the
memory-bandwidth bound of each step (those bytes / a measured device-to-device copy rate).

Bytes a step must move, per lookup of ``dim`` float32 (ids 8 B):
- forward: ids + dim floats read + dim floats written;
- backward: output grad read + dim floats read-modify-written in the gradient (ROBE, hash:
  plus zeroing and the dense SGD pass over the small array); full tables: grad rows
  read, rows read-modify-written by the sparse SGD update.

    .venv/bin/python benchmarks/embedding_bench.py --dims 16 --batches 2048,16384 --iters 5
    .venv/bin/python benchmarks/embedding_bench.py --threads 1 --clock cpu   # shared machine
    .venv/bin/python benchmarks/embedding_bench.py            # dims 16,128; batches 2048..65536

A full-table config that would not fit in available RAM (psutil) is skipped with a reason.

CPU note: with glibc's default malloc every large temporary is a fresh mmap whose page
faults are paid on each call, for all layouts alike; ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000`` (or jemalloc/tcmalloc) keeps freed memory for reuse.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Callable

import psutil
import torch

from gpu_ops import RobeHash, robe_lookup, robe_sgd_update_
from gpu_ops.robe.optim import SparseRobeOptimizer

KAGGLE_TABLES = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
                 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
P = RobeHash.P


def skewed_ids(batch: int, tables: list[int], seed: int, alpha: float = 4.0) -> torch.Tensor:
    """``(B, T)`` int64 local ids: power law over ranks, scattered by a multiplicative hash."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor(tables, dtype=torch.float64)
    u = torch.rand(batch, len(tables), generator=g, dtype=torch.float64)
    rank = torch.floor(sizes * u.pow(alpha)).long()  # (B, T)
    return (rank * 2654435761) % torch.tensor(tables)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _time(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Median seconds per call after one warm-up call (``--clock``; wall on a GPU)."""
    clock = _clock if device.type == "cpu" else time.perf_counter
    fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = clock()
        fn()
        _sync(device)
        times.append(clock() - t0)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28) -> float:
    """Measured bytes/s of a large copy (read + write counted)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    y = torch.empty_like(x)
    t = _time(lambda: y.copy_(x), 5, device)
    return 2 * nbytes / t


class Setup:
    """One embedding layout: forward, backward and step closures on fixed ids."""

    def __init__(self, name: str, forward, backward, step, bytes_fwd: float, bytes_bwd: float,
                 mem_bytes: int) -> None:
        self.name, self.forward, self.backward, self.step = name, forward, backward, step
        self.bytes_fwd, self.bytes_bwd, self.mem_bytes = bytes_fwd, bytes_bwd, mem_bytes


def robe_setup(ids: torch.Tensor, dim: int, block: int, compression: float, lr: float,
               fused: bool, device: torch.device, sparse: bool = False) -> Setup:
    rows = sum(KAGGLE_TABLES)
    num_floats = math.ceil(rows * dim / compression)
    weight = torch.nn.Parameter(torch.empty(num_floats, device=device).uniform_(-0.01, 0.01))
    table_offsets = torch.tensor([0, *KAGGLE_TABLES[:-1]], device=device).cumsum(0)
    abc = RobeHash.from_seed(0).abc
    opt = (SparseRobeOptimizer([weight], lr=lr, mode="sgd") if sparse
           else torch.optim.SGD([weight], lr=lr))
    kw = dict(table_offsets=table_offsets, dim=dim, block=block, hash_abc=abc, validate=False,
              sparse_grad=sparse)
    grad_out = torch.randn(*ids.shape, dim, device=device) * 1e-3  # (B, T, dim)
    state: dict = {}

    def forward():
        with torch.no_grad():
            return robe_lookup(weight, ids, **kw)

    def backward():  # the gradient of the array from a fixed output gradient
        if fused:
            robe_sgd_update_(weight.data, grad_out, ids, lr=lr, **{k: v for k, v in kw.items() if k not in ("validate", "sparse_grad")})
            return
        out = state.get("out")
        if out is None:
            out = robe_lookup(weight, ids, **kw)
        weight.grad = None
        out.backward(grad_out, retain_graph=True)
        state["out"] = out

    def step():
        if fused:
            with torch.no_grad():
                out = robe_lookup(weight, ids, **kw)
            robe_sgd_update_(weight.data, out * 1e-3, ids, lr=lr,
                             **{k: v for k, v in kw.items() if k not in ("validate", "sparse_grad")})
            return
        opt.zero_grad(set_to_none=True)
        out = robe_lookup(weight, ids, **kw)
        out.backward(out.detach() * 1e-3)
        opt.step()

    n = ids.numel()
    bytes_fwd = n * (8 + 2 * dim * 4)
    extra = 0 if fused or sparse else 4 * num_floats + 12 * num_floats  # zero the gradient, dense SGD
    bytes_bwd = n * (8 + dim * 4 + 2 * dim * 4) + extra
    name = "robe-fused" if fused else "robe-sparse" if sparse else "robe"
    return Setup(name, forward, backward, step, bytes_fwd, bytes_bwd, 4 * num_floats)


def bag_setup(name: str, num_rows: int, ids_fn, n: int, dim: int, lr: float, sparse: bool,
              device: torch.device) -> Setup:
    """An EmbeddingBag over ``num_rows`` rows, one id per bag; ``ids_fn()`` gives the flat ids."""
    emb = torch.nn.EmbeddingBag(num_rows, dim, mode="sum", sparse=sparse, include_last_offset=True,
                                device=device, _weight=torch.empty(num_rows, dim, device=device))
    with torch.no_grad():
        emb.weight.uniform_(-0.01, 0.01)
    offsets = torch.arange(n + 1, device=device)
    opt = torch.optim.SGD(emb.parameters(), lr=lr)
    grad_out = torch.randn(n, dim, device=device) * 1e-3
    state: dict = {}

    def forward():
        with torch.no_grad():
            return emb(ids_fn(), offsets)

    def backward():
        out = state.get("out")
        if out is None:
            out = emb(ids_fn(), offsets)
        emb.weight.grad = None
        out.backward(grad_out, retain_graph=True)
        state["out"] = out

    def step():
        opt.zero_grad(set_to_none=True)
        out = emb(ids_fn(), offsets)
        out.backward(out.detach() * 1e-3)
        opt.step()

    bytes_fwd = n * (8 + 2 * dim * 4)
    if sparse:
        bytes_bwd = n * (8 + dim * 4 + 2 * dim * 4)
    else:
        bytes_bwd = n * (8 + dim * 4 + 2 * dim * 4) + 16 * num_rows * dim
    return Setup(name, forward, backward, step, bytes_fwd, bytes_bwd, 4 * num_rows * dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="16,128", help="comma-separated embedding sizes")
    ap.add_argument("--batches", default="2048,16384,65536", help="comma-separated batch sizes")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per figure (median)")
    ap.add_argument("--block", type=int, default=32, help="ROBE Z (capped at dim for reads)")
    ap.add_argument("--compression", type=float, default=1000.0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--devices", default="cpu,cuda", help="cuda is used only when available")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="CPU timings: wall time, or this process's CPU time (steadier on a "
                         "shared machine; with --threads 1 it equals the single-core time)")
    ap.add_argument("--skip", default="", help="comma-separated layouts to skip (robe,robe-fused,robe-sparse,full,hash)")
    args = ap.parse_args()
    global _clock
    _clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    dims = [int(x) for x in args.dims.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    devices = [torch.device(d) for d in args.devices.split(",")
               if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    rows = sum(KAGGLE_TABLES)
    print(f"# {len(KAGGLE_TABLES)} Criteo Kaggle tables, {rows:,} rows; ROBE Z={args.block}, "
          f"{args.compression:g}x; ids: power law (alpha 4) per table, single-hot; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.clock} clock on CPU")
    for device in devices:
        bw = copy_bandwidth(device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"# device {name}: measured copy bandwidth {bw / 1e9:.1f} GB/s")
        for dim in dims:
            for batch in batches:
                ids = skewed_ids(batch, KAGGLE_TABLES, seed=batch).to(device)  # (B, T)
                n = ids.numel()
                table_offsets = torch.tensor([0, *KAGGLE_TABLES[:-1]], device=device).cumsum(0)
                g = (ids + table_offsets).reshape(-1)  # (B*T,) global rows
                num_floats = math.ceil(rows * dim / args.compression)
                hash_rows = max(1, num_floats // dim)
                a, _, c = RobeHash.from_seed(1).abc
                setups: list[Callable[[], Setup]] = []
                if "robe" not in skip:
                    setups.append(lambda: robe_setup(ids, dim, args.block, args.compression, args.lr, False, device))
                if "robe-fused" not in skip:
                    setups.append(lambda: robe_setup(ids, dim, args.block, args.compression, args.lr, True, device))
                if "robe-sparse" not in skip:
                    setups.append(lambda: robe_setup(ids, dim, args.block, args.compression, args.lr, False, device,
                                                     sparse=True))
                full_bytes = 4 * rows * dim
                avail = (psutil.virtual_memory().available if device.type == "cpu"
                         else torch.cuda.mem_get_info(device)[0])
                if "full" in skip:
                    pass
                elif full_bytes * 1.5 > avail:
                    print(f"  skip full dim={dim}: tables need {full_bytes / 1e9:.1f} GB (+50% for "
                          f"the update), {avail / 1e9:.1f} GB available on {device.type}")
                else:
                    setups.append(lambda: bag_setup("full", rows, lambda: g, n, dim, args.lr, True, device))
                if "hash" not in skip:
                    setups.append(lambda: bag_setup(
                        "hash", hash_rows, lambda: (g % P * a + c) % P % hash_rows, n, dim, args.lr,
                        False, device))
                results = {}
                for make in setups:
                    s = make()
                    t_f = _time(s.forward, args.iters, device)
                    t_b = _time(s.backward, args.iters, device)
                    t_s = _time(s.step, args.iters, device)
                    results[s.name] = t_s
                    gbs = (s.bytes_fwd + s.bytes_bwd) / t_s / 1e9
                    line = (f"{device.type} dim={dim:<4d} B={batch:<6d} {s.name:<10s} "
                            f"mem={s.mem_bytes / 1e6:9.1f}MB  fwd {t_f * 1e3:8.2f}ms "
                            f"{n / t_f / 1e6:7.1f}M/s  bwd {t_b * 1e3:8.2f}ms  "
                            f"step {t_s * 1e3:8.2f}ms {n / t_s / 1e6:7.1f}M/s {gbs:6.1f}GB/s")
                    if device.type == "cuda":
                        bound = (s.bytes_fwd + s.bytes_bwd) / bw
                        line += f"  bound {bound * 1e3:.2f}ms ({t_s / bound:.1f}x)"
                    print(line, flush=True)
                    del s
                    gc.collect()
                if "full" in results:
                    for k in ("robe", "robe-fused", "robe-sparse", "hash"):
                        if k in results:
                            print(f"  {k}/full step speed-up: {results['full'] / results[k]:.2f}x")


if __name__ == "__main__":
    main()
