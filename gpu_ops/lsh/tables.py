"""Fixed-size LSH bucket tables over neuron ids, and the index that hashes a weight matrix into them.

As in SLIDE (Chen et al., MLSys 2020, https://arxiv.org/abs/1903.03129), each of the L
tables has 2^K buckets of ``bucket_size`` neuron ids; a full bucket gives up an id by
FIFO (the oldest) or by reservoir sampling (Vitter's algorithm R: the i-th id offered
takes a uniform slot with probability bucket_size / (i + 1)). Here the tables are one
dense ``(L, 2^K, bucket_size)`` int tensor, so inserting a million ids and querying a batch
are a handful of sorts, gathers and scatters rather than per-id loops.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gpu_ops.lsh.config import LSHConfig
from gpu_ops.lsh.hashing import HashFamily, make_hash, mips_augment, query_augment

# ---------------------------------------------------------------------------------------
# Bucket tables
# ---------------------------------------------------------------------------------------


class BucketTables:
    """L tables of 2^K buckets holding up to ``bucket_size`` ids each (-1 = empty slot)."""

    def __init__(self, tables: int, bits: int, bucket_size: int, policy: str = "fifo", seed: int = 0):
        if policy not in ("fifo", "reservoir"):
            raise ValueError(f"policy={policy!r}: expected 'fifo' or 'reservoir'")
        for name, v in (("tables", tables), ("bits", bits), ("bucket_size", bucket_size)):
            if v < 1:
                raise ValueError(f"{name}={v}: expected an int >= 1")
        self.tables, self.bits, self.bucket_size, self.policy = int(tables), int(bits), int(bucket_size), policy
        self.num_buckets = 1 << self.bits
        self.generator = torch.Generator().manual_seed(seed)
        self.buckets = torch.full((self.tables, self.num_buckets, self.bucket_size), -1,
                                  dtype=torch.int64)                      # (L, 2^K, S)
        self.offered = torch.zeros(self.tables, self.num_buckets, dtype=torch.int64)  # ids ever offered

    def clear(self) -> None:
        """Empties every bucket."""
        self.buckets.fill_(-1)
        self.offered.zero_()

    def insert(self, ids: Tensor, codes: Tensor) -> None:
        """Offers id ``ids[i]`` to bucket ``codes[i, l]`` of every table l, in order of i.

        The result equals offering the ids one at a time (later ids count as newer).

        Args:
            ids: ``(N,)`` int64 neuron ids.
            codes: ``(N, L)`` int64 bucket codes in ``[0, 2^K)``.
        """
        if codes.shape != (ids.shape[0], self.tables):
            raise ValueError(f"codes of shape {tuple(codes.shape)}: expected ({ids.shape[0]}, {self.tables})")
        if ids.numel() == 0:
            return
        n, S = ids.shape[0], self.bucket_size
        table = torch.arange(self.tables).expand(n, -1)
        key = (table * self.num_buckets + codes).reshape(-1)               # (N*L,) flat bucket
        item = ids.unsqueeze(1).expand(-1, self.tables).reshape(-1)        # (N*L,)
        key, order = torch.sort(key, stable=True)                          # stable: keeps id order
        item = item[order]
        uniq, counts = torch.unique_consecutive(key, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(key.numel()) - torch.repeat_interleave(starts, counts)  # order within the bucket
        offered = self.offered.view(-1)
        seq = offered[key] + rank                                          # i: how many came before
        if self.policy == "fifo":
            total = torch.repeat_interleave(offered[uniq] + counts, counts)
            keep = seq >= total - S                                        # only the newest S survive
            slot = seq % S
        else:
            draw = (torch.rand(seq.shape, generator=self.generator) * (seq + 1).to(torch.float64)).long()
            slot = torch.where(seq < S, seq, draw.clamp_max(seq))
            keep = slot < S
        target = key[keep] * S + slot[keep]
        item, seq = item[keep], seq[keep]
        # Two ids drawn into one slot: the later offer wins (sorted stably by target, take the last).
        target, order = torch.sort(target, stable=True)
        item = item[order]
        last = torch.ones_like(target, dtype=torch.bool)
        last[:-1] = target[1:] != target[:-1]
        self.buckets.view(-1)[target[last]] = item[last]
        offered.index_add_(0, uniq, counts)

    def fill(self, ids: Tensor, codes: Tensor) -> None:
        """Empties the tables, then offers ``ids`` as :meth:`insert` does (the same buckets).

        FIFO tables are filled one table at a time: a stable sort of that table's codes
        (int16/int32 keys, numpy's radix sort) gives each id its place among the ids of its
        bucket, and the newest ``bucket_size`` stay. ~5x faster than the general insert for
        a million ids in 24 tables, whose sort runs over all N*L (bucket, id) pairs at once.
        """
        if codes.shape != (ids.shape[0], self.tables):
            raise ValueError(f"codes of shape {tuple(codes.shape)}: expected ({ids.shape[0]}, {self.tables})")
        self.clear()
        if self.policy != "fifo" or ids.numel() == 0 or codes.is_cuda:
            self.insert(ids, codes)
            return
        S, n = self.bucket_size, ids.shape[0]
        keys = np.ascontiguousarray(codes.numpy().T.astype(np.int16 if self.bits <= 15 else np.int32))  # (L, N)
        ids_np, position = ids.numpy(), np.arange(n)
        buckets, offered = self.buckets.numpy(), self.offered.numpy()
        for t in range(self.tables):
            order = np.argsort(keys[t], kind="stable")                    # stable: keeps id order
            code = keys[t][order].astype(np.int64)                        # (N,) sorted bucket codes
            counts = np.bincount(keys[t], minlength=self.num_buckets)
            rank = position - (np.cumsum(counts) - counts)[code]          # place within the bucket
            keep = np.flatnonzero(rank >= counts[code] - S)               # only the newest S survive
            buckets[t].reshape(-1)[code[keep] * S + rank[keep] % S] = ids_np[order[keep]]
            offered[t] = counts

    def lookup(self, codes: Tensor) -> Tensor:
        """``(B, L)`` codes -> ``(B, L * bucket_size)`` ids of the hit buckets (-1 = empty slot)."""
        key = torch.arange(self.tables, device=codes.device) * self.num_buckets + codes  # (B, L)
        return self.buckets.view(-1, self.bucket_size)[key.cpu()].view(codes.shape[0], -1)

    def occupancy(self) -> float:
        """Share of slots holding an id."""
        return float((self.buckets >= 0).float().mean())


def dedup_by_votes(candidates: Tensor, num_items: int, budget: int = 0) -> Tensor:
    """Per row, the distinct ids among ``candidates``, most frequent first.

    Args:
        candidates: ``(B, C)`` ids, -1 = none.
        num_items: ids are in ``[0, num_items)``.
        budget: keep at most this many ids per row (0 = all).

    Returns:
        ``(B, M)`` ids, -1 padded; ties in frequency go to the smaller id.
    """
    B, C = candidates.shape
    rows = torch.arange(B).unsqueeze(1).expand(-1, C)
    valid = candidates >= 0
    key = rows[valid] * num_items + candidates[valid]
    uniq, votes = torch.unique(key, return_counts=True)                   # sorted by (row, id)
    row, ids = uniq // num_items, uniq % num_items
    # Order each row by votes (desc), keeping the id order among ties.
    order = torch.sort(row * (C + 1) + (C - votes), stable=True).indices
    row, ids = row[order], ids[order]
    per_row = torch.bincount(row, minlength=B)
    pos = torch.arange(row.numel()) - torch.repeat_interleave(torch.cumsum(per_row, 0) - per_row, per_row)
    if budget:
        keep = pos < budget
        row, ids, pos = row[keep], ids[keep], pos[keep]
    width = int(pos.max()) + 1 if pos.numel() else 0
    out = torch.full((B, max(width, 1)), -1, dtype=torch.int64)
    out[row, pos] = ids
    return out


# ---------------------------------------------------------------------------------------
# The index: hash family + tables over the rows of a weight matrix
# ---------------------------------------------------------------------------------------


class LSHIndex:
    """Hashes the rows of a ``(N, d)`` weight matrix into tables; answers which rows a query hits.

    ``build`` (SLIDE's rehash) re-hashes every row with the current hash functions;
    ``redraw`` draws fresh functions first (SLIDE's rebuild). With ``cfg.hash_bias`` a row
    is hashed as ``[w, b]`` and a query as ``[h, 1]``, so the tables follow the full logit
    ``h.w + b`` rather than ``h.w`` alone. With ``cfg.center`` a row is hashed minus the mean
    row of the last build, which changes no query's ranking of the rows.
    """

    def __init__(self, dim: int, num_items: int, cfg: LSHConfig):
        if num_items < 1:
            raise ValueError(f"num_items={num_items}: expected an int >= 1")
        self.cfg, self.dim, self.num_items = cfg, int(dim), int(num_items)
        self.hash_dim = self.dim + int(cfg.hash_bias) + int(cfg.mips)
        self.draws = 0
        self.hash: HashFamily = make_hash(cfg, self.hash_dim, seed=cfg.seed)
        self.tables = BucketTables(cfg.tables, cfg.bits, cfg.bucket_size, cfg.policy, seed=cfg.seed)
        self.built = False
        self.center: Tensor | None = None   # (d,) mean row at the last build, taken off every row hashed

    def item_codes(self, weight: Tensor, bias: Tensor | None = None, *, rows_of: int | None = None) -> Tensor:
        """``(N, L)`` codes of the rows ``weight`` ``(N, d)`` (and ``bias`` ``(N,)``).

        ``rows_of`` = n checks for n rows instead of all N (a subset being re-inserted).
        """
        n = self.num_items if rows_of is None else rows_of
        if weight.shape != (n, self.dim):
            raise ValueError(f"weight of shape {tuple(weight.shape)}: expected ({n}, {self.dim})")
        rows = weight.detach().float().cpu()
        if self.center is not None:
            rows = rows - self.center
        if self.cfg.hash_bias:
            b = torch.zeros(n) if bias is None else bias.detach().float().cpu()
            rows = torch.cat([rows, b.view(-1, 1)], dim=1)
        if self.cfg.mips:
            rows = mips_augment(rows)[0]
        return self.hash.codes(rows)

    def build(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Empties the tables and inserts every row of ``weight`` ``(N, d)`` (ids in row order)."""
        with torch.no_grad():
            # h.(w - mu) + b differs from h.w + b by h.mu, the same for every row: a query ranks
            # the rows alike. Rows that training moved together (every row a negative pushed
            # away from the mean query) would otherwise crowd a few buckets of every table.
            self.center = weight.detach().float().cpu().mean(dim=0) if self.cfg.center else None
            codes = self.item_codes(weight, bias)                          # (N, L)
            # A random insertion order, so FIFO keeps a random sample of a crowded bucket, not the last ids.
            order = torch.randperm(self.num_items, generator=self.tables.generator)
            self.tables.fill(order, codes[order])
        self.built = True

    def reinsert(self, ids: Tensor, weight: Tensor, bias: Tensor | None = None) -> None:
        """Offers rows ``ids`` ``(U,)`` again, hashed from their current ``weight`` ``(U, d)`` (and bias).

        Their older entries stay until pushed out; between rehashes this keeps rows that just
        moved (a step's labels) findable where they now hash.
        """
        if not self.built:
            raise ValueError("the LSH index is empty: call build(weight) before reinsert")
        with torch.no_grad():
            self.tables.insert(ids.cpu(), self.item_codes(weight, bias, rows_of=ids.numel()))

    def redraw(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Draws new hash functions, then :meth:`build`."""
        self.draws += 1
        self.hash = make_hash(self.cfg, self.hash_dim, seed=self.cfg.seed + 7919 * self.draws)
        self.build(weight, bias)

    def query(self, hidden: Tensor, budget: int = 0) -> Tensor:
        """``(B, d)`` queries -> ``(B, M)`` ids of rows sharing a bucket with them (-1 padded).

        Rows hit in more tables come first; ``budget`` > 0 keeps at most that many per query.
        """
        if not self.built:
            raise ValueError("the LSH index is empty: call build(weight) before query")
        if hidden.dim() != 2 or hidden.shape[1] != self.dim:
            raise ValueError(f"queries of shape {tuple(hidden.shape)}: expected (B, {self.dim})")
        with torch.no_grad():
            q = hidden.detach().float().cpu()
            if self.cfg.hash_bias:
                q = torch.cat([q, torch.ones(q.shape[0], 1)], dim=1)
            if self.cfg.mips:
                q = query_augment(q)
            return dedup_by_votes(self.tables.lookup(self.hash.codes(q)), self.num_items, budget)
