"""Data-parallel training: N processes, each holding the whole model.

ROBE makes the whole model small (one array of |M| floats replaces every table), so training
scales by pure data parallelism, with no model sharding: every process keeps a full replica,
trains on its part of each global batch, and the replicas take the same update every step.

Starting the processes (:func:`launch`)
    When the environment names a world (``WORLD_SIZE`` and ``RANK``, with ``MASTER_ADDR`` /
    ``MASTER_PORT``; ``LOCAL_RANK`` picks the GPU), as torchrun, a Kubeflow Trainer TrainJob
    or a PyTorchJob set them, this process joins that world and runs the function itself;
    the same ``robeflow train`` command is the entry point of every worker. Otherwise
    ``workers > 1`` spawns that many local processes (``torch.multiprocessing``, spawn) that
    meet on ``MASTER_ADDR`` (127.0.0.1) at ``MASTER_PORT`` (a free port) and returns rank 0's
    result. The backend is gloo on CPU and NCCL on GPU.

One step (:class:`DataParallel`)
    - Data: the global batch of ``train.batch_size`` rows (the rows one process would take
      at that step, cut from the same seeded permutation) is split into ``world_size``
      contiguous parts; rank r trains on part r. The loss is the sum of the part's row losses
      times ``world_size / global rows``, so averaging the ranks' gradients gives exactly
      the gradient of the global batch's mean loss (also when the parts differ in size).
    - Dense parameters (the MLPs, the interaction): DistributedDataParallel, whose bucketed
      all-reduce overlaps the backward pass.
    - Embedding parameters: DDP cannot all-reduce the ROBE array's sparse gradient (the
      distinct slots a batch read differ from rank to rank and from step to step). Two ways:

      * sparse (large arrays): the array stays out of DDP and
        :meth:`DataParallel.sync_embedding_grads` exchanges its gradient after the backward
        pass: all-gather every rank's (slot indices, values), padded to the largest; each
        rank merges them in rank order (:func:`merge_sorted_slots`: the slot lists are
        sorted runs of consecutive slots, so only the runs are sorted) and divides by
        ``world_size``. Bytes moved and work follow the batch, not |M|: two collectives
        (the sizes, then the packed entries), (N-1) x S x 12 bytes in.
      * dense (small arrays): the array takes a dense ``(|M|,)`` gradient and joins the MLPs
        in DDP's bucket, so a step costs one all-reduce in all. Chosen when |M| is at most
        the floats a global batch can read (rows x tables x dim): the pipeline's default
        15K-float array (batch 1024 reads ~245K floats, mostly the same slots): dense; a
        100 MB array (a 100 MB all-reduce a step): sparse. Measured on the default model, 2
        gloo ranks: 11.6 ms CPU a step this way, against 13.4 ms for the sparse gradient
        scattered into a zero array and all-reduced after the backward.
        ``ROBEFLOW_DDP_EXCHANGE=dense|sparse`` forces one (to measure).

      Other embedding backends with sparse gradients (full tables) go through the same
      exchange (all-gathered, or all-reduced dense when that is smaller, chosen per step from
      the gathered sizes). Every rank ends with the same gradient bit for bit (the same
      gathered inputs reduced in the same order; a ring all-reduce leaves one result on all
      ranks), and the optimizers are deterministic, so the replicas stay bitwise equal
      without ever broadcasting weights.
    - Evaluation, checkpoints, the bundle and the reports are rank 0's; decisions taken from
      rank 0's evaluations (target reached, early stop) are broadcast. A resumed run's
      checkpoint is read by rank 0 and broadcast (the ranks need no shared file system).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

# sync_embedding_grads: all-reduce a dense gradient while the parameter has at most this many
# floats per gathered sparse entry (an all-reduce of n floats, no sort, against an all-gather
# of n / DENSE_FACTOR (index, value) pairs and their sort).
DENSE_FACTOR = 4
EXCHANGE_ENV = "ROBEFLOW_DDP_EXCHANGE"
_ENV = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DataParallel:
    """This process's part in a data-parallel run; ``world_size == 1`` is a plain run (every
    method is then a no-op that costs nothing).

    Use :meth:`current` inside a process started by :func:`launch` (or torchrun).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # ids of the parameters DDP leaves to sync_embedding_grads (filled by wrap)
    exchanged: set[int] = field(default_factory=set, compare=False, repr=False)

    @classmethod
    def current(cls) -> "DataParallel":
        """The initialised process group's rank and size (a single process without one)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))

    @property
    def is_main(self) -> bool:
        """Rank 0: evaluates, checkpoints and writes the outputs."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ setup

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` -> this rank's GPU (``cuda:LOCAL_RANK``, made current); cpu unchanged."""
        if not self.parallel or device.type != "cuda":
            return device
        dev = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        return dev

    def wrap(self, model: nn.Module, embedding: nn.Module, batch_rows: int) -> nn.Module:
        """``model`` in DistributedDataParallel; ``model`` itself when single. Forward through
        the result; save and evaluate ``model``.

        DDP all-reduces the MLPs and every embedding parameter with a dense gradient,
        including a ROBE array small enough for the dense exchange (:func:`dense_exchange`,
        for global batches of ``batch_rows``: its lookup then gives a dense gradient);
        embeddings with sparse gradients are left to :meth:`sync_embedding_grads`.
        """
        if not self.parallel:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        if dense_exchange(embedding, batch_rows):
            embedding.sparse_grad = False  # a (|M|,) gradient, all-reduced in DDP's bucket
        sparse = {id(p) for p in embedding.parameters()} if getattr(embedding, "sparse_grad", False) else set()
        ignore = [n for n, p in model.named_parameters() if id(p) in sparse]
        self.exchanged.update(sparse)
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
        dev = next(model.parameters()).device
        # no buffers to keep in step (no batch norm): skip DDP's per-forward broadcast
        return DDP(model, device_ids=[dev] if dev.type == "cuda" else None, forward_sync_buffers=False,
                   gradient_as_bucket_view=True, static_graph=True)

    # ------------------------------------------------------------------ data

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch's row indices ``rows`` (b,)."""
        return rows if not self.parallel else rows.tensor_split(self.world_size)[self.rank]

    def part_start(self, global_rows: int) -> int:
        """The first row of this rank's part of a global batch of ``global_rows``."""
        q, r = divmod(global_rows, self.world_size)
        return self.rank * q + min(self.rank, r)

    def part_size(self, global_rows: int) -> int:
        """Rows of this rank's part of a global batch of ``global_rows``."""
        q, r = divmod(global_rows, self.world_size)
        return q + (self.rank < r)

    def gather_rows(self, local_rows: int) -> list[int]:
        """Every rank's row count of this step (rank order); ``[local_rows]`` when single.
        A stream's ranks end the epoch together when any of them has no batch left (0)."""
        if not self.parallel:
            return [local_rows]
        t = torch.tensor([local_rows], dtype=torch.int64, device=self._comm_device())
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [int(x) for x in out]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, global_rows: int,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The loss to back-propagate: ``loss_fn`` (the batch mean) when single; else the
        part's summed BCE loss x ``world_size / global_rows``, whose rank average is the
        global batch's mean loss (an empty part contributes 0)."""
        if not self.parallel:
            return loss_fn(logits, labels)
        total = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        return total * (self.world_size / global_rows)

    # ------------------------------------------------------------------ gradients

    @torch.no_grad()
    def sync_embedding_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Replaces each embedding parameter's gradient by the average of all ranks' (sparse
        stays sparse; see the module docstring for the sparse/dense choice)."""
        if not self.parallel:
            return
        for p in params:
            if not p.requires_grad or id(p) not in self.exchanged:
                continue
            g = p.grad
            if g is None:  # nothing read on this rank: an empty sparse gradient
                g = torch.sparse_coo_tensor(torch.empty((1, 0), dtype=torch.int64, device=p.device),
                                            p.new_empty((0, *p.shape[1:])), p.shape)
            if not g.is_sparse:
                dist.all_reduce(g)
                p.grad = g.div_(self.world_size)
                continue
            idx, val = g._indices(), g._values()  # (sparse_dim, n), (n, *dense)
            sizes = self.gather_rows(idx.shape[1])
            entries = sum(sizes)
            if p.numel() <= DENSE_FACTOR * entries * math.prod(val.shape[1:]):  # floats either way
                dense = torch.zeros_like(p).index_put_(tuple(idx), val, accumulate=True)
                dist.all_reduce(dense)
                p.grad = dense.div_(self.world_size)
            else:
                p.grad = self._gather_sparse(idx, val, sizes, p.shape)

    def _gather_sparse(self, idx: torch.Tensor, val: torch.Tensor, sizes: Sequence[int],
                       shape: torch.Size) -> torch.Tensor:
        """All ranks' (indices, values) summed slot by slot, / world_size, coalesced."""
        sd, m = idx.shape[0], max(sizes)
        row_shape = tuple(val.shape[1:])
        # one collective: indices and values packed as bytes, padded to the largest rank's
        pad_i = idx.new_zeros((sd, m))
        pad_i[:, :idx.shape[1]] = idx
        pad_v = val.new_zeros((m, *row_shape))
        pad_v[:idx.shape[1]] = val
        packed = torch.cat([pad_i.contiguous().view(torch.uint8).reshape(-1),
                            pad_v.contiguous().view(torch.uint8).reshape(-1)])
        out = [torch.empty_like(packed) for _ in range(self.world_size)]
        dist.all_gather(out, packed)
        n_idx = pad_i.numel() * pad_i.element_size()
        idxs, vals = [], []
        for buf, n in zip(out, sizes):
            idxs.append(buf[:n_idx].view(idx.dtype).view(sd, m)[:, :n])
            vals.append(buf[n_idx:].view(val.dtype).view(m, *row_shape)[:n])
        idx_all, val_all = torch.cat(idxs, 1), torch.cat(vals)
        if sd == 1 and not idx_all.is_cuda and all(_sorted_distinct(i[0]) for i in idxs):
            slots, summed = merge_sorted_slots([i[0] for i in idxs], vals)
            idx_all, val_all = slots.unsqueeze(0), summed
        else:  # coalesce: a sort of every entry (deterministic on CUDA, where index_add_ is not)
            total = torch.sparse_coo_tensor(idx_all, val_all, shape, check_invariants=False).coalesce()
            idx_all, val_all = total.indices(), total.values()
        return torch.sparse_coo_tensor(idx_all, val_all.div_(self.world_size), shape, is_coalesced=True,
                                       check_invariants=False)

    # ------------------------------------------------------------------ agreement

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for rare, small messages such as a
        resumed checkpoint or an early-stop decision)."""
        if not self.parallel:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _sorted_distinct(x: torch.Tensor) -> bool:
    return bool((x[1:] > x[:-1]).all())


def merge_sorted_slots(slots: Sequence[torch.Tensor], values: Sequence[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of several sorted, distinct slot lists ``slots[r]`` (S_r,) and the sum of
    their ``values[r]`` (S_r, ...) slot by slot: ``(union (U,), sums (U, ...))``, union sorted.

    A ROBE gradient's slots come in runs of consecutive slots (every id reads a window of Z
    floats), so the lists are cut into runs and only the runs are sorted (tens of times
    fewer keys than slots); merged runs give every slot's position in the union, and one
    ``index_add_`` (sequential on CPU: the same order, so the same bits, on every rank) sums.
    """
    starts, lens = [], []
    for s in slots:  # runs of consecutive slots: (start, length)
        cut = torch.nonzero(s[1:] - s[:-1] != 1).squeeze(1) + 1
        first = torch.cat([cut.new_zeros(1), cut]) if s.numel() else cut
        starts.append(s[first])
        lens.append(torch.diff(torch.cat([first, first.new_tensor([s.numel()])])))
    st, ln = torch.cat(starts), torch.cat(lens)                   # (R,) runs in value order
    order = torch.argsort(st, stable=True)
    s_st, s_en = st[order], (st + ln)[order]                      # (R,) sorted by start
    reach = torch.cummax(s_en, 0).values                          # furthest end so far
    new = torch.ones_like(s_st, dtype=torch.bool)
    new[1:] = s_st[1:] > reach[:-1]                               # a gap: a new merged interval
    group = torch.cumsum(new, 0) - 1                              # (R,) merged interval of each run
    g_start = s_st[new]                                           # (G,)
    g_end = torch.zeros_like(g_start).scatter_reduce_(0, group, s_en, "amax", include_self=False)
    g_len = g_end - g_start
    g_base = torch.cumsum(g_len, 0) - g_len                       # (G,) first position in the union
    total = int(g_len.sum())
    union = torch.repeat_interleave(g_start - g_base, g_len, output_size=total) + torch.arange(total)
    run_base = torch.empty_like(st)
    run_base[order] = g_base[group] + (s_st - g_start[group])     # (R,) position of each run's start
    n = int(ln.sum())
    run_off = torch.cumsum(ln, 0) - ln
    where = torch.repeat_interleave(run_base - run_off, ln, output_size=n) + torch.arange(n)  # (n,)
    val = torch.cat(list(values))
    sums = val.new_zeros((total, *val.shape[1:])).index_add_(0, where, val)
    return union, sums


def dense_exchange(embedding: nn.Module, batch_rows: int) -> bool:
    """Whether a ROBE array is exchanged dense (through DDP's all-reduce): when it holds at
    most the floats a global batch of ``batch_rows`` can read (rows x tables x dim), or as
    ``ROBEFLOW_DDP_EXCHANGE`` (``dense`` | ``sparse`` | ``auto``) forces."""
    from dlrm.embeddings import RobeArray

    if not isinstance(embedding, RobeArray):
        return False
    forced = os.environ.get(EXCHANGE_ENV, "auto")
    if forced not in ("auto", "dense", "sparse"):
        raise ValueError(f"{EXCHANGE_ENV}={forced!r}; expected auto, dense or sparse")
    if forced != "auto":
        return forced == "dense"
    return embedding.size <= batch_rows * embedding.num_tables * embedding.dim


# ---------------------------------------------------------------------------- launching

def env_world() -> tuple[int, int] | None:
    """(rank, world size) named by the environment (torchrun, TrainJob, PyTorchJob), or None."""
    if not all(os.environ.get(k) for k in _ENV):
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world


def backend_for(device: str) -> str:
    """gloo for CPU training, nccl for CUDA (``auto``: CUDA when available)."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda and dist.is_nccl_available() else "gloo"


def launch(fn: Callable[..., Any], args: tuple, workers: int, *, device: str = "cpu",
           threads: int = 0) -> Any:
    """Runs ``fn(*args)`` data-parallel; returns rank 0's result (None on other ranks of an
    environment-launched world).

    Args:
        fn: a module-level function (spawned processes import it); it finds its rank with
            :meth:`DataParallel.current`.
        args: its arguments (pickled to the spawned processes: paths and configs, not data).
        workers: processes to spawn when the environment names no world (1 = run here).
        device: ``cpu`` / ``cuda`` / ``auto``: picks gloo or nccl.
        threads: torch CPU threads per process (0 = the cores divided among the local
            processes, so N workers never oversubscribe the machine).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"train.workers = {workers!r}; expected an int >= 1")
    named = env_world()
    if named is not None and named[1] > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", named[1]))
        return _run_rank(fn, args, named[0], named[1], backend_for(device), _threads(threads, local))
    if workers == 1:
        return fn(*args)
    import tempfile

    import torch.multiprocessing as mp

    addr = os.environ.get("MASTER_ADDR") or "127.0.0.1"
    port = os.environ.get("MASTER_PORT") or str(_free_port())
    with tempfile.TemporaryDirectory(prefix="robeflow-ddp-") as tmp:
        result = os.path.join(tmp, "rank0.pt")  # a file, not a pipe: any size, no deadlock at join
        mp.start_processes(_spawned, args=(fn, args, workers, addr, port, backend_for(device),
                                           _threads(threads, workers), result),
                           nprocs=workers, join=True, start_method="spawn")
        return torch.load(result, weights_only=False) if os.path.exists(result) else None


def _spawned(rank: int, fn, args, world: int, addr: str, port: str, backend: str, threads: int,
             result: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR=addr, MASTER_PORT=port)
    out = _run_rank(fn, args, rank, world, backend, threads)
    if rank == 0:
        torch.save(out, result)


def _run_rank(fn, args, rank: int, world: int, backend: str, threads: int) -> Any:
    torch.set_num_threads(threads)
    joined = not dist.is_initialized()
    if joined:  # MASTER_ADDR / MASTER_PORT from the environment
        dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        return fn(*args)
    finally:
        if joined:
            dist.destroy_process_group()


def _threads(threads: int, local_workers: int) -> int:
    if threads:
        return threads
    return max(1, (os.cpu_count() or 1) // local_workers)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
