"""Embedding backends: full tables, the hashing trick, QR embeddings and the ROBE-Z array.

Every backend maps T sparse features to one vector each per sample, from the jagged
sample-major input of :class:`contract.spec.ModelInput`:

    values  (nnz,)     int64 ids local to their table (0 <= id < table_size)
    offsets (B*T + 1,) int64; bag j = b*T + t holds values[offsets[j]:offsets[j+1]]

and returns ``(B, T, dim)`` with each bag summed (an empty bag is a zero vector).

- ``full``: one ``nn.EmbeddingBag`` per table (sparse gradients; the uncompressed baseline).
- ``hashing``: the hashing trick; every global row is hashed into ONE shared table of
  ``total_rows / compression`` rows (Weinberger et al., ICML 2009).
- ``qr``: quotient-remainder compositional embeddings (Shi et al., KDD 2020,
  https://arxiv.org/abs/1909.02107): row x of table t is ``Q_t[x // m_t] * R_t[x % m_t]``.
- ``robe``: the ROBE-Z array (Desai et al., MLSys 2022, https://arxiv.org/abs/2108.02191),
  one learned 1-D array read through the universal hash in :mod:`gpu_ops`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlrm.configs import EmbeddingConfig
from gpu_ops import P, RobeHash, robe_lookup

# The prime of the ROBE-Z hash (DESIGN.md); also used by the hashing trick.
PRIME = P


def bag_index(offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    """(nnz,) bag j of every value, from (B*T + 1,) offsets."""
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths,
                                   output_size=nnz)


class EmbeddingBackend(nn.Module):
    """Interface of all backends: ``forward(values, offsets) -> (B, T, dim)``."""

    sparse_grad: bool = False  # True when the parameters get sparse gradients

    def __init__(self, table_sizes: list[int], dim: int):
        super().__init__()
        if not table_sizes or min(table_sizes) < 1:
            raise ValueError(f"table sizes must be a non-empty list of positive ints, got {table_sizes}")
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.table_sizes = [int(n) for n in table_sizes]
        self.dim = int(dim)
        self.num_tables = len(table_sizes)
        # (T,) global row where each table starts; a buffer so it follows .to(device)
        starts = [0]
        for n in self.table_sizes[:-1]:
            starts.append(starts[-1] + n)
        self.register_buffer("table_offsets", torch.tensor(starts, dtype=torch.int64), persistent=False)

    @property
    def num_bytes(self) -> int:
        """Bytes of the backend's learned parameters."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    @property
    def full_bytes(self) -> int:
        """Bytes the uncompressed float32 tables would take."""
        return sum(self.table_sizes) * self.dim * 4

    @property
    def compression(self) -> float:
        """Full-table bytes / this backend's bytes."""
        return self.full_bytes / self.num_bytes

    def hash_constants(self) -> dict:
        """Hash constants needed to rebuild the lookup (empty when there are none)."""
        return {}

    def _global_rows(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(nnz,) global row n_0 + ... + n_{t-1} + x of every value."""
        t = bag_index(offsets, values.numel()) % self.num_tables
        return self.table_offsets[t] + values

    def _check(self, values: torch.Tensor, offsets: torch.Tensor) -> int:
        if (offsets.numel() - 1) % self.num_tables:
            raise ValueError(f"offsets have {offsets.numel()} entries; expected B*T + 1 with "
                             f"T = {self.num_tables}")
        return (offsets.numel() - 1) // self.num_tables


def _init_uniform(w: torch.Tensor, dim: int) -> None:
    # The same scale for every backend, so the compression sweep compares like with like.
    bound = 1.0 / math.sqrt(dim)
    nn.init.uniform_(w, -bound, bound)


class FullTables(EmbeddingBackend):
    """One ``nn.EmbeddingBag`` (sum, sparse gradients) per table: the uncompressed baseline."""

    sparse_grad = True

    def __init__(self, table_sizes: list[int], dim: int):
        super().__init__(table_sizes, dim)
        self.tables = nn.ModuleList(
            nn.EmbeddingBag(n, dim, mode="sum", sparse=True, include_last_offset=True)
            for n in self.table_sizes)
        for e in self.tables:
            _init_uniform(e.weight.data, dim)

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        B, T = self._check(values, offsets), self.num_tables
        lengths = offsets[1:] - offsets[:-1]                      # (B*T,)
        if values.numel() == B * T and bool((lengths == 1).all()):
            ids = values.view(B, T)                                # single-hot fast path
            return torch.stack([e(ids[:, t:t + 1]) for t, e in enumerate(self.tables)], dim=1)
        # Reorder the bags table-major (bag t*B + b) so each table sees one contiguous run.
        tm_len = lengths.view(B, T).t().reshape(-1)                # (T*B,)
        tm_off = torch.zeros(T * B + 1, dtype=torch.int64, device=values.device)
        torch.cumsum(tm_len, 0, out=tm_off[1:])
        bag = bag_index(offsets, values.numel())                   # (nnz,)
        dest = tm_off[(bag % T) * B + bag // T] + (torch.arange(values.numel(), device=values.device)
                                                    - offsets[bag])
        tm_values = torch.empty_like(values)
        tm_values[dest] = values
        outs = []
        for t, e in enumerate(self.tables):
            off = tm_off[t * B:(t + 1) * B + 1]
            outs.append(e(tm_values[off[0]:off[-1]], off - off[0]))  # (B, dim)
        return torch.stack(outs, dim=1)                            # (B, T, dim)


class HashedTable(EmbeddingBackend):
    """The hashing trick: all global rows hashed into one shared table of ``rows`` rows."""

    def __init__(self, table_sizes: list[int], dim: int, *, compression: float, seed: int = 0):
        super().__init__(table_sizes, dim)
        if compression <= 0:
            raise ValueError(f"compression must be > 0, got {compression}")
        self.rows = max(1, math.ceil(sum(self.table_sizes) / compression))
        h = RobeHash.from_seed(seed)
        self.hash_a, self.hash_b = int(h.A), int(h.B)
        self.weight = nn.Parameter(torch.empty(self.rows, dim))
        _init_uniform(self.weight.data, dim)

    def hash_constants(self) -> dict:
        return {"A": self.hash_a, "B": self.hash_b, "P": PRIME, "rows": self.rows}

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        B = self._check(values, offsets)
        g = self._global_rows(values, offsets) % PRIME
        rows = (g * self.hash_a + self.hash_b) % PRIME % self.rows  # int64: < 2^31 * 2^31
        out = nn.functional.embedding_bag(rows, self.weight, offsets, mode="sum",
                                          include_last_offset=True)  # (B*T, dim)
        return out.view(B, self.num_tables, self.dim)


def qr_split(n: int, target_rows: float) -> tuple[int, int]:
    """(quotient rows, remainder rows m) for a table of n rows and a budget of target_rows.

    Picks m so that ceil(n / m) + m is as close to the budget as possible; a table whose
    budget covers it stays whole (m = 1), and no table goes below 2*sqrt(n) rows (the
    least QR can store while keeping every row unique).
    """
    if target_rows >= n or n <= 4:
        return n, 1
    disc = target_rows * target_rows - 4 * n
    m = (target_rows - math.sqrt(disc)) / 2 if disc >= 0 else math.sqrt(n)
    m = max(1, math.ceil(m))
    return math.ceil(n / m), m


class QREmbedding(EmbeddingBackend):
    """Quotient-remainder embeddings: row x of table t = Q_t[x // m_t] (*|+) R_t[x % m_t]."""

    def __init__(self, table_sizes: list[int], dim: int, *, compression: float,
                 operation: str = "mult"):
        super().__init__(table_sizes, dim)
        if compression <= 0:
            raise ValueError(f"compression must be > 0, got {compression}")
        if operation not in ("mult", "add"):
            raise ValueError(f"qr operation must be 'mult' or 'add', got {operation!r}")
        self.operation = operation
        splits = [qr_split(n, n / compression) for n in self.table_sizes]
        self.splits = splits
        q_start, r_start = [0], [0]
        for q, m in splits[:-1]:
            q_start.append(q_start[-1] + q)
            r_start.append(r_start[-1] + m)
        self.register_buffer("q_offsets", torch.tensor(q_start), persistent=False)
        self.register_buffer("r_offsets", torch.tensor(r_start), persistent=False)
        self.register_buffer("m", torch.tensor([m for _, m in splits]), persistent=False)
        self.q = nn.Parameter(torch.empty(sum(q for q, _ in splits), dim))
        self.r = nn.Parameter(torch.empty(sum(m for _, m in splits), dim))
        _init_uniform(self.q.data, dim)
        if operation == "mult":
            # R near 1 so that Q * R starts at the same scale as the other backends.
            nn.init.uniform_(self.r.data, 0.9, 1.1)
        else:
            nn.init.zeros_(self.r.data)

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        B = self._check(values, offsets)
        bag = bag_index(offsets, values.numel())
        t = bag % self.num_tables
        m = self.m[t]
        qv = self.q[self.q_offsets[t] + values // m]               # (nnz, dim)
        rv = self.r[self.r_offsets[t] + values % m]                # (nnz, dim)
        rows = qv * rv if self.operation == "mult" else qv + rv
        out = torch.zeros(B * self.num_tables, self.dim, dtype=rows.dtype, device=rows.device)
        out.index_add_(0, bag, rows)                               # sum each bag
        return out.view(B, self.num_tables, self.dim)


class RobeArray(EmbeddingBackend):
    """All tables in one learned 1-D array of ``size`` floats, read in blocks of Z (ROBE-Z).

    The array's gradient is sparse (the distinct slots a batch read and their summed
    gradients); ``gpu_ops.SparseRobeOptimizer`` applies it touching only those slots, so a
    training step costs the same whatever the array's size.
    """

    sparse_grad = True

    def __init__(self, table_sizes: list[int], dim: int, *, size: int = 0,
                 compression: float = 1000.0, block: int = 32, seed: int = 0):
        super().__init__(table_sizes, dim)
        if block < 1:
            raise ValueError(f"robe block Z must be >= 1, got {block}")
        if size <= 0:
            if compression <= 0:
                raise ValueError(f"compression must be > 0, got {compression}")
            size = math.ceil(sum(self.table_sizes) * dim / compression)
        if size < block:
            raise ValueError(f"robe array size {size} is smaller than its block Z = {block}")
        self.size, self.block, self.seed = int(size), int(block), int(seed)
        h = RobeHash.from_seed(seed)
        self.hash_abc = (int(h.A), int(h.B), int(h.C))
        self.weight = nn.Parameter(torch.empty(self.size))
        _init_uniform(self.weight.data, dim)
        # The op's range checks cost a pass over the ids; ModelInput.from_frame has already
        # checked them, so the training and serving paths turn the checks off.
        self.validate_ids = False

    def hash_constants(self) -> dict:
        A, B, C = self.hash_abc
        return {"A": A, "B": B, "C": C, "P": PRIME, "seed": self.seed, "block": self.block,
                "size": self.size}

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        B = self._check(values, offsets)
        kw = dict(table_offsets=self.table_offsets, dim=self.dim, block=self.block, hash_abc=self.hash_abc,
                  validate=self.validate_ids, sparse_grad=self.sparse_grad)
        if values.numel() == B * self.num_tables and bool((offsets[1:] - offsets[:-1] == 1).all()):
            # single-hot: the (B, T) grid form skips the bag bookkeeping
            return robe_lookup(self.weight, values.view(B, self.num_tables), **kw)
        return robe_lookup(self.weight, values, offsets=offsets, **kw)


def make_embedding(cfg: EmbeddingConfig, table_sizes: list[int]) -> EmbeddingBackend:
    """The backend ``cfg.backend`` for tables of ``table_sizes`` rows."""
    if cfg.backend == "full":
        return FullTables(table_sizes, cfg.dim)
    if cfg.backend == "hashing":
        return HashedTable(table_sizes, cfg.dim, compression=cfg.compression, seed=cfg.seed)
    if cfg.backend == "qr":
        return QREmbedding(table_sizes, cfg.dim, compression=cfg.compression, operation=cfg.qr_operation)
    if cfg.backend == "robe":
        return RobeArray(table_sizes, cfg.dim, size=cfg.size, compression=cfg.compression,
                         block=cfg.block, seed=cfg.seed)
    raise ValueError(f"embedding backend {cfg.backend!r}; expected full, hashing, qr or robe")
