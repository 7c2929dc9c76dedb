"""A static multi-probe SimHash index over a fixed matrix: candidates for maximum inner product.

:class:`LSHIndex` (SLIDE's tables) keeps at most ``bucket_size`` ids per bucket, which suits
a layer being trained (buckets are refilled at every rehash) but not a catalogue of a
million fixed item vectors: with 2^8 buckets of 256 ids a table holds 65,536 of the
1,000,000 items, and an item missing from a bucket can never be found through it.
:class:`ProbeIndex` is built once, for serving:

- every row sits in every table: per table the row ids sorted by bucket code, with the
  ``2^K + 1`` bucket offsets (CSR), so a bucket is one slice;
- rows ``[w, b]`` are hashed through the MIPS-to-cosine transform (Neyshabur & Srebro,
  ICML 2015, https://arxiv.org/abs/1410.5518) applied per norm range (norm-ranging LSH,
  Yan et al., NeurIPS 2018, https://arxiv.org/abs/1809.08782): the rows are cut into
  ``ranges`` groups of similar norm and each group is scaled by its own largest norm M_r,
  ``[w, b] / M_r, sqrt(1 - |[w, b]|^2 / M_r^2)``; a query ``[h, 1, 0]`` then has cosine
  ``(h.w + b) / (M_r |[h, 1]|)`` with each row of group r, so inside a group the angle
  order is the score order, and no group's extra coordinate swamps its angles as one
  global M does when norms spread;
- a query probes, besides its own bucket in each table, the buckets reached by flipping
  the bits whose projections were closest to zero (query-directed multi-probe, Lv et al.,
  VLDB 2007): every (table, flip set) over the ``flip_bits`` least certain bits of each
  table is scored by the sum of the flipped projections' squares, and buckets are taken in
  that order, across tables, until ``budget`` row ids were gathered;
- the distinct gathered rows are scored exactly by the caller.

Memory: ``tables * N`` int32 ids plus ``tables * 2^K`` offsets (32 tables over 1M rows:
128 MB).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor


def norm_ranged_augment(rows: Tensor, ranges: int) -> tuple[Tensor, Tensor]:
    """Rows ``x`` -> ``[x / M_r, sqrt(1 - |x|^2 / M_r^2)]`` with M_r the largest norm of the
    row's norm range (``ranges`` groups of equal count by norm).

    Returns:
        ``(N, d + 1)`` augmented rows (norm 1 where ``x`` is non-zero) and ``(N,)`` range of each row.
    """
    if ranges < 0:
        raise ValueError(f"ranges={ranges}: expected an int >= 0")
    if ranges == 0:   # no transform: the rows' own directions (angle only, norms ignored)
        return torch.cat([rows, rows.new_zeros(rows.shape[0], 1)], dim=1), rows.new_zeros(rows.shape[0], dtype=torch.int64)
    norms = rows.norm(dim=1)                                              # (N,)
    n = rows.shape[0]
    order = torch.argsort(norms)
    group = torch.empty(n, dtype=torch.int64)
    group[order] = torch.arange(n) * ranges // max(n, 1)                  # equal-count ranges
    top = torch.zeros(ranges).scatter_reduce(0, group, norms, "amax")    # (R,) M_r
    m = top[group].clamp_min(1e-12)                                       # (N,)
    extra = (1.0 - (norms / m).square()).clamp_min(0.0).sqrt()
    return torch.cat([rows / m.unsqueeze(1), extra.unsqueeze(1)], dim=1), group


class ProbeIndex:
    """Multi-probe SimHash tables holding every row of a fixed ``(N, d)`` matrix (see the module doc).

    Args:
        dim: d, the width of the rows and queries.
        bits: K, bits per table (2^K buckets).
        tables: L, independent tables.
        ranges: norm ranges of the MIPS transform (1: one global M).
        flip_bits: per table, how many of the least certain bits a probe may flip (<= K).
        seed: seed of the random projections.
    """

    def __init__(self, dim: int, bits: int = 12, tables: int = 32, ranges: int = 8, flip_bits: int = 6,
                 seed: int = 0):
        for name, v in (("dim", dim), ("tables", tables), ("ranges", ranges + 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected an int >= 1")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 24:
            raise ValueError(f"bits={bits!r}: expected an int in [1, 24]")
        if isinstance(flip_bits, bool) or not isinstance(flip_bits, int) or not 0 <= flip_bits <= bits:
            raise ValueError(f"flip_bits={flip_bits!r}: expected an int in [0, bits={bits}]")
        self.dim, self.bits, self.tables, self.ranges, self.flip_bits = dim, bits, tables, ranges, flip_bits
        g = torch.Generator().manual_seed(seed)
        self.projections = torch.randn(dim + 2, tables * bits, generator=g)   # (d + 2, L*K): [w, b, extra]
        self.powers = 2 ** torch.arange(bits, dtype=torch.int64)              # (K,)
        # every flip set over flip_bits positions, as a (P, flip_bits) 0/1 matrix, fewest flips first
        sets = sorted(itertools.product((0, 1), repeat=flip_bits), key=sum)
        self.flip_sets = torch.tensor(sets, dtype=torch.float32).view(len(sets), flip_bits)  # (P, F)
        self.num_items = 0
        self.ids: Tensor | None = None        # (L, N) int32 row ids, sorted by code per table
        self.offsets: Tensor | None = None    # (L, 2^K + 1) int64 bucket starts

    def _codes(self, x: Tensor) -> Tensor:
        """``(n, d + 2)`` -> ``(n, L)`` bucket codes."""
        bits = (x @ self.projections > 0).view(x.shape[0], self.tables, self.bits)     # (n, L, K)
        return (bits.to(torch.int64) * self.powers).sum(dim=2)

    @torch.no_grad()
    def build(self, weight: Tensor, bias: Tensor | None = None, chunk: int = 65536) -> None:
        """Hashes every row ``[weight_i, bias_i]`` into every table (replacing what was there).

        Args:
            weight: ``(N, d)`` item vectors.
            bias: ``(N,)`` item biases (None: zeros).
        """
        if weight.dim() != 2 or weight.shape[1] != self.dim or weight.shape[0] < 1:
            raise ValueError(f"weight of shape {tuple(weight.shape)}: expected (N >= 1, {self.dim})")
        n = weight.shape[0]
        if bias is not None and bias.shape != (n,):
            raise ValueError(f"bias of shape {tuple(bias.shape)}: expected ({n},)")
        b = torch.zeros(n) if bias is None else bias.detach().float().cpu()
        rows = torch.cat([weight.detach().float().cpu(), b.unsqueeze(1)], dim=1)       # (N, d + 1)
        aug, _ = norm_ranged_augment(rows, self.ranges)                                # (N, d + 2)
        codes = torch.cat([self._codes(aug[i:i + chunk]) for i in range(0, n, chunk)])  # (N, L)
        ids = torch.empty(self.tables, n, dtype=torch.int32)
        offsets = torch.zeros(self.tables, (1 << self.bits) + 1, dtype=torch.int64)
        for t in range(self.tables):
            order = torch.argsort(codes[:, t], stable=True)
            ids[t] = order.to(torch.int32)
            offsets[t, 1:] = torch.cumsum(torch.bincount(codes[:, t], minlength=1 << self.bits), 0)
        self.ids, self.offsets, self.num_items = ids, offsets, n

    @property
    def built(self) -> bool:
        return self.ids is not None

    @torch.no_grad()
    def probe_order(self, query: Tensor, limit: int = 0) -> tuple[Tensor, Tensor]:
        """The buckets one query ``(d,)`` probes, best first: ``(T,)`` tables and ``(T,)`` codes
        (``limit`` > 0: the best ``limit`` only)."""
        q = torch.cat([query.detach().float().cpu().view(-1), torch.ones(1), torch.zeros(1)])   # [h, 1, 0]
        proj = (q @ self.projections).view(self.tables, self.bits)                  # (L, K)
        home = ((proj > 0).to(torch.int64) * self.powers).sum(dim=1)                # (L,)
        if self.flip_bits == 0:
            return torch.arange(self.tables), home
        weak = proj.abs().topk(self.flip_bits, dim=1, largest=False)                # (L, F) least certain bits
        cost = (weak.values.square() @ self.flip_sets.t()).view(-1)                 # (L*P,) flip costs
        P = self.flip_sets.shape[0]
        if 0 < limit < cost.numel():
            order = cost.topk(limit, largest=False, sorted=True).indices            # across tables
        else:
            order = torch.argsort(cost, stable=True)
        table, flip = order // P, order % P
        # index_select, not advanced indexing: one gather kernel per step, no index checks in Python
        weak_bits = weak.indices.index_select(0, table)                             # (T, F)
        mask = (self.flip_sets.index_select(0, flip).to(torch.int64) * self.powers[weak_bits]).sum(dim=1)  # (T,)
        return table, home.index_select(0, table) ^ mask

    @torch.no_grad()
    def query(self, query: Tensor, budget: int) -> Tensor:
        """``(d,)`` query -> ``(M,)`` distinct row ids from the best buckets, M <= ``budget``,
        gathered bucket by bucket in probe order (the last bucket cut to fit)."""
        if self.ids is None or self.offsets is None:
            raise ValueError("the index is empty: call build(weight, bias) before query")
        if query.numel() != self.dim:
            raise ValueError(f"query of {query.numel()} values: expected {self.dim}")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget={budget!r}: expected an int >= 1")
        # enough probes to fill the budget with buckets of average size, twice over
        limit = self.tables + 2 * budget * (1 << self.bits) // self.num_items
        table, code = self.probe_order(query, limit)
        flat = self.offsets.view(-1)                                               # (L * (2^K + 1),)
        at = table * self.offsets.shape[1] + code                                  # (T,) flat bucket starts
        start = flat.index_select(0, at)                                           # (T,)
        size = flat.index_select(0, at + 1) - start
        size = torch.minimum(size, (budget - (torch.cumsum(size, 0) - size)).clamp(min=0))
        keep = size > 0
        table, start, size = table[keep], start[keep], size[keep]
        total = int(size.sum())
        if total == 0:
            return torch.zeros(0, dtype=torch.int64)
        # flat positions into ids: bucket j contributes table_j * N + start_j + [0, size_j)
        base = table * self.num_items + start - (torch.cumsum(size, 0) - size)
        pos = torch.repeat_interleave(base, size, output_size=total) + torch.arange(total)
        return _sorted_distinct(self.ids.view(-1).index_select(0, pos))


def _sorted_distinct(ids: Tensor) -> Tensor:
    """``(M,)`` int32 ids -> their distinct values ascending, int64 (``torch.unique``'s answer;
    numpy's in-place sort of a few thousand int32 is ~6x faster than torch.unique's on one core)."""
    got = np.sort(ids.numpy())                                                  # (M,)
    keep = np.empty(got.shape[0], dtype=bool)
    keep[:1] = True
    np.not_equal(got[1:], got[:-1], out=keep[1:])
    return torch.from_numpy(got[keep].astype(np.int64))
