"""A static multi-probe SimHash index over a fixed matrix: the rows of largest inner product.

:class:`LSHIndex` (SLIDE's tables) keeps at most ``bucket_size`` ids per bucket, which suits
a layer being trained (buckets are refilled at every rehash) but not a catalogue of a
million fixed item vectors: with 2^8 buckets of 256 ids a table holds 65,536 of the
1,000,000 items, and an item missing from a bucket can never be found through it.
:class:`ProbeIndex` is built once, for serving, and answers "the n rows x with the largest
``q . x``" for a query q (rows ``x = [w, b]``, queries ``q = [h, 1]``: item vector and bias).

Tables
    Every row sits in every one of L tables of 2^K SimHash buckets (signed random
    projections, Charikar, STOC 2002: the code of the angle of ``[w, b]``), stored per
    table as the row ids sorted by (norm range, code) with the bucket offsets (CSR), so a
    bucket is one slice.

The hashed space: the bias balanced, hyperplanes in the rows' span
    Scores are invariant to scaling the bias coordinate of the rows by c and the query's by
    1/c. The index takes c so that the bias spreads like a typical direction of w
    (``E[b^2] c^2 = sum lambda^2 / sum lambda``, lambda: the eigenvalues of w's second
    moment): the bias, whose spread is small next to that of w, would otherwise barely move
    a row's angle even where it decides the score (an untrained user tower's vector is
    mostly such a query, ``[h, 1]`` with a short h). The rows are then hashed in the
    principal directions that hold ``energy`` (99%) of their squared norms (x', q': row and
    query so scaled and projected, ``x' . q' = x . q`` inside the span): a query's part
    outside them changes every score by little (``|q_out|`` times the rows' small spread
    there, allowed for in the bounds below), but a hyperplane drawn across it would split
    the query from the rows it scores highest as often as from any other. (Whitening the
    rows instead, every principal direction to unit spread, also fixes the bias, but on a
    catalogue with a decaying spectrum it spreads the rows over their weak directions and
    hashes worse: measured 0.90 of the exact top 100 scoring 35K of 300K items, against
    0.96 scoring 13K.)

Norm ranges (norm-ranging LSH, Yan et al., NeurIPS 2018, https://arxiv.org/abs/1809.08782)
    The rows are cut by their norm in that space (x') into ``ranges`` ranges, each holding
    half of the rows not in a higher one (the top two hold the last 2^-(R-1) share each),
    with M_r the largest norm of range r. A row of range r scores at most
    ``M_r |q'| + slack`` (slack: the most the parts outside the span add), and it beats a
    score tau only if its angle with q' is at most ``arccos((tau - slack) / (M_r |q'|))``:
    the top ranges hold few rows that may lie at wide angles, the bottom ones many rows that
    must lie close. One global MIPS transform (Neyshabur & Srebro, ICML 2015) instead
    squeezes every angle towards 90 degrees, and hashing the angle alone fills the budget
    with short rows that cannot win.

Search, range by range from the largest norm down (:meth:`ProbeIndex.search`)
    With tau the n-th best exact score so far (none yet: 90 degrees), a range whose bound
    cannot reach tau ends the search (no row below can enter the top n). Otherwise the
    range is probed where a row at the threshold angle theta would fall: a row at angle
    theta from q', uniform around it in the span's s dims, lands on the other side of
    hyperplane k with probability about ``Phi(-|m_k| cot theta)``, with
    ``m_k = (r_k . u) sqrt(s - 1) / |r_k - (r_k . u) u|`` (r_k: the hyperplane's normal,
    u = q' / |q'|; the bits are treated as independent), so the bucket that flips the set
    S of a table's ``flip_bits`` least certain bits holds it with probability
    ``prod_{k in S} Phi(-|m_k| cot theta) prod_{k not in S} Phi(|m_k| cot theta)``
    (query-directed multi-probe, Lv et al., VLDB 2007, with the likelihood for the angle
    the range needs). The most likely buckets over all tables are taken, the fewest that
    leave ``prod_t (1 - P(found in table t)) <= miss``; their rows are scored exactly and
    tau rises. ``budget`` caps the rows scored (a latency guard).

Measured at 1M planted item vectors (``benchmarks/retrieve_bench.py``): see the README.

Memory: ``tables * N`` int32 ids plus ``tables * ranges * 2^K`` int64 offsets (32 tables of
14 bits over 1M rows, 9 ranges: 128 + 38 MB) and a copy of the rows (256 MB at 1M x 64; the
server's retriever reads that copy instead of its own), all in transparent huge pages where
the OS offers them: a search reads them at random, and with 4 KB pages nearly every row it
scores misses the TLB (measured at 1M items: a search 7.65 -> 7.01 ms p50, load ~3).
"""

from __future__ import annotations

import itertools
import math
import mmap
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gpu_ops.lsh.hashing import sign_codes

GRID_STEP = math.log(10.0) / 4   # probe probabilities are compared in quarter decades ...
SPREAD = 3.0                     # root-mean-squares of the rows along a direction outside their span
GRID = 48                        # ... down to 1e-12 (a bucket less likely than that is never probed)


def norm_ranges(norms: Tensor, ranges: int) -> tuple[Tensor, Tensor]:
    """Rows' norms -> ``(N,)`` range of each row (0 = smallest norms) and ``(R,)`` largest norm M_r
    of each range (0 for an empty range).

    Range r < R - 1 holds the rows whose norm rank lies in ``[1 - 2^-r, 1 - 2^-(r+1))`` of
    the rows (half of them, then a quarter, ...); the top range holds the rest, as many as
    the range below it. Ties in norm keep row order.
    """
    if isinstance(ranges, bool) or not isinstance(ranges, int) or ranges < 1:
        raise ValueError(f"ranges={ranges!r}: expected an int >= 1")
    n = norms.shape[0]
    order = torch.argsort(norms, stable=True)
    rank = torch.empty(n, dtype=torch.float64)
    rank[order] = (torch.arange(n, dtype=torch.float64) + 0.5) / max(n, 1)       # in (0, 1)
    upper = torch.tensor([1.0 - 2.0 ** -(r + 1) for r in range(ranges - 1)], dtype=torch.float64)
    group = torch.searchsorted(upper, rank, right=True)                          # (N,)
    top = torch.zeros(ranges, dtype=norms.dtype).scatter_reduce(0, group, norms, "amax")  # (R,)
    return group, top


def principal_span(rows: Tensor, energy: float) -> tuple[Tensor, Tensor, float]:
    """``(N, D)`` rows -> ``(D, s)`` orthonormal basis of the fewest principal directions (of the
    rows' second moment) that hold ``energy`` of the rows' squared norms, ``(s,)`` the rows'
    mean square along each, and the rows' spread outside the span: ``SPREAD`` root-mean-squares
    along the widest direction left out (0 when ``energy`` is 1: the whole space). A query's
    part q_out outside the span moves a row's score by ``q_out . x_out``, within ``|q_out|``
    times that spread for all but a few rows."""
    D = rows.shape[1]
    second = torch.zeros(D, D, dtype=torch.float64)                                 # (D, D), summed in slices
    for i in range(0, rows.shape[0], 65536):                                         # (no N x D float64 copy)
        part = rows[i:i + 65536].double()
        second += part.t() @ part
    second /= max(rows.shape[0], 1)
    values, vectors = torch.linalg.eigh(second)                                     # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    share = values.cumsum(0) / values.sum().clamp_min(1e-30)
    keep = D if energy >= 1.0 else min(int((share < energy).sum()) + 1, D)
    basis = vectors[:, :keep].float().contiguous()                                   # (D, s)
    return basis, values[:keep].float(), SPREAD * float(values[keep].sqrt()) if keep < D else 0.0


@dataclass(frozen=True)
class Found:
    """What :meth:`ProbeIndex.search` found for one query."""

    rows: Tensor      # (n',) int64 row ids, best exact score first (n' <= n)
    scores: Tensor    # (n',) their exact scores q . [w, b]
    scored: int       # distinct rows scored exactly
    probes: int       # buckets gathered


class ProbeIndex:
    """Multi-probe SimHash tables over norm ranges, holding every row of a fixed ``(N, d)`` matrix
    (see the module doc).

    Args:
        dim: d, the width of the rows and queries.
        bits: K, bits per table (2^K buckets per range).
        tables: L, independent tables.
        ranges: norm ranges (1: one range, bounded by the largest norm).
        flip_bits: per table, how many of the least certain bits a probe may flip (<= K).
        energy: the hyperplanes lie in the rows' principal directions holding this share of
            their squared norms (1: anywhere).
        balance: scale the bias coordinate to a typical direction's spread (see the module doc).
        seed: seed of the random projections.

    Example::

        index = ProbeIndex(64, bits=14, tables=32, ranges=9, flip_bits=8)
        index.build(weight, bias)                      # (N, 64), (N,)
        found = index.search(h, 200, miss=0.5)         # h: (64,)
    """

    def __init__(self, dim: int, bits: int = 14, tables: int = 32, ranges: int = 9, flip_bits: int = 8,
                 energy: float = 0.99, balance: bool = True, seed: int = 0):
        for name, v in (("dim", dim), ("tables", tables), ("ranges", ranges)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected an int >= 1")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 24:
            raise ValueError(f"bits={bits!r}: expected an int in [1, 24]")
        if isinstance(flip_bits, bool) or not isinstance(flip_bits, int) or not 0 <= flip_bits <= bits:
            raise ValueError(f"flip_bits={flip_bits!r}: expected an int in [0, bits={bits}]")
        if not 0.0 < energy <= 1.0:
            raise ValueError(f"energy={energy!r}: expected a share in (0, 1]")
        self.dim, self.bits, self.tables, self.ranges, self.flip_bits = dim, bits, tables, ranges, flip_bits
        self.energy, self.balance = float(energy), bool(balance)
        g = torch.Generator().manual_seed(seed)
        self.gaussian = torch.randn(dim + 1, tables * bits, generator=g)      # (d + 1, L*K)
        self.projections = self.gaussian                                      # (s, L*K) in the span (build)
        self.square_norms = self.gaussian.square().sum(dim=0)                 # (L*K,) |r_k|^2
        self.basis = torch.eye(dim + 1)                                       # (d + 1, s) the span kept
        self.pre = torch.ones(dim + 1)                                        # (d + 1,) the bias's scale last
        self.row_map = torch.eye(dim + 1)                                     # (d + 1, s) rows -> the span
        self.query_map = torch.eye(dim + 1)                                   # (d + 1, s) queries -> the span
        self.outside = 0.0                                                    # the rows' spread outside the span
        self.powers = 2 ** torch.arange(bits, dtype=torch.int64)              # (K,)
        # every flip set over flip_bits positions, as a (S, F) 0/1 matrix, fewest flips first
        sets = sorted(itertools.product((0, 1), repeat=flip_bits), key=sum)
        self.flip_sets = torch.tensor(sets, dtype=torch.float32).view(len(sets), flip_bits)  # (S, F)
        self._flips = np.array(sets, dtype=np.int64).reshape(len(sets), flip_bits).T          # (F, S)
        self.num_items = 0
        self.weight: Tensor | None = None     # (N, d) the rows, scored exactly (a copy in huge pages)
        self.bias: Tensor | None = None       # (N,)
        self.ids: Tensor | None = None        # (L, N) int32 row ids, sorted by (range, code) per table
        self.offsets: Tensor | None = None    # (L, R * 2^K + 1) int64 bucket starts
        self.max_norm: Tensor | None = None   # (R,) M_r
        self.sizes: Tensor | None = None      # (R,) rows per range

    def _codes(self, x: Tensor) -> Tensor:
        """``(n, d + 1)`` rows ``[w, b]`` -> ``(n, L)`` bucket codes."""
        return sign_codes(x @ self.row_map @ self.projections, self.tables, self.bits)

    @torch.no_grad()
    def build(self, weight: Tensor, bias: Tensor | None = None, chunk: int = 4096) -> None:
        """Hashes every row ``[weight_i, bias_i]`` into every table (replacing what was there).

        Args:
            weight: ``(N, d)`` item vectors, copied (as :attr:`weight`, which :meth:`search`
                scores) into memory backed by huge pages where the OS offers them.
            bias: ``(N,)`` item biases (None: zeros).
        """
        if weight.dim() != 2 or weight.shape[1] != self.dim or weight.shape[0] < 1:
            raise ValueError(f"weight of shape {tuple(weight.shape)}: expected (N >= 1, {self.dim})")
        n = weight.shape[0]
        if bias is not None and bias.shape != (n,):
            raise ValueError(f"bias of shape {tuple(bias.shape)}: expected ({n},)")
        w = weight.detach().float().cpu().contiguous()
        b = torch.zeros(n) if bias is None else bias.detach().float().cpu().contiguous()
        rows = torch.cat([w, b.unsqueeze(1)], dim=1)                                   # (N, d + 1)
        self.pre = torch.ones(self.dim + 1)                                             # (d + 1,) [1, .., 1, c]
        bias_square = float(b.square().mean())
        if self.balance and bias_square > 0:
            second = w.t() @ w / n                                                     # (d, d)
            typical = float(second.square().sum() / second.trace().clamp_min(1e-30))  # sum lambda^2 / sum lambda
            self.pre[-1] = math.sqrt(typical / bias_square) if typical > 0 else 1.0
        basis, _, self.outside = principal_span(rows * self.pre, self.energy)
        # rows x' = (x * pre) B, queries q' = (q / pre) B: x' . q' = x . q inside the span B
        self.basis = basis
        self.row_map = self.pre.unsqueeze(1) * basis                                    # (d + 1, s)
        self.query_map = basis / self.pre.unsqueeze(1)                                  # (d + 1, s)
        self.projections = self.gaussian[:basis.shape[1]]                               # (s, L*K)
        self.square_norms = self.projections.square().sum(dim=0)                        # (L*K,) |r_k|^2
        group, top = norm_ranges((rows @ self.row_map).norm(dim=1), self.ranges)
        width = 1 << self.bits
        keys = torch.cat([self._codes(rows[i:i + chunk]) for i in range(0, n, chunk)])  # (N, L)
        keys += (group * width).unsqueeze(1)                                           # range-major buckets
        # what a search reads at random (gathered rows, bucket ids and bounds) sits in huge pages:
        # fewer TLB misses over the 256 + 128 + 38 MB of a 1M-item index
        ids = huge_zeros((self.tables, n), torch.int32)
        offsets = huge_zeros((self.tables, self.ranges * width + 1), torch.int64)
        for t in range(self.tables):
            ids[t] = torch.argsort(keys[:, t], stable=True).to(torch.int32)
            offsets[t, 1:] = torch.cumsum(torch.bincount(keys[:, t], minlength=self.ranges * width), 0)
        self.weight = huge_zeros(tuple(w.shape), torch.float32).copy_(w)
        self.bias, self.ids, self.offsets, self.num_items = b, ids, offsets, n
        self.max_norm, self.sizes = top, torch.bincount(group, minlength=self.ranges)

    @property
    def built(self) -> bool:
        return self.ids is not None

    def _check(self, query: Tensor) -> None:
        if self.ids is None:
            raise ValueError("the index is empty: call build(weight, bias) before search")
        if query.numel() != self.dim:
            raise ValueError(f"query of {query.numel()} values: expected {self.dim}")

    # ---- probes ----------------------------------------------------------------------------

    @torch.inference_mode()
    def _margins(self, query: Tensor) -> tuple[Tensor, Tensor, Tensor, float, float]:
        """The projections of the query's unit part inside the rows' span: ``(L, F)`` |margins| of
        each table's least certain bits, ``(L, K)`` |margins| of all bits, ``(L * S,)`` bucket codes
        of every flip set; and the norms of the query's parts inside and outside the span."""
        q = torch.cat([query.detach().float().cpu().view(-1), torch.ones(1)])           # [h, 1]
        mapped = q @ self.query_map                                                      # (s,)
        inside = float(mapped.norm())
        qs = q / self.pre
        outside = math.sqrt(max(float(qs.square().sum()) - float((qs @ self.basis).square().sum()), 0.0))
        proj = mapped / max(inside, 1e-12) @ self.projections                           # (L*K,) r_k . q^
        home = ((proj > 0).view(self.tables, self.bits).to(torch.int64) * self.powers).sum(dim=1)  # (L,)
        # a row at angle t from q^, uniform around it in the span's s dims, is cut from q^ by
        # hyperplane k with probability ~ Phi(-cot t * |r_k . q^| sqrt(s - 1) / |r_k's part across q^|)
        across = (self.square_norms - proj.square()).clamp_min(1e-12).sqrt()            # (L*K,)
        margin = (proj.abs() * math.sqrt(max(self.projections.shape[0] - 1, 1)) / across).view(self.tables, self.bits)
        weak = margin.topk(self.flip_bits, dim=1, largest=False)                        # (L, F)
        mask = self.powers.numpy()[weak.indices.numpy()] @ self._flips                  # (L, S) bits flipped
        codes = torch.from_numpy((home.numpy()[:, None] ^ mask).reshape(-1))
        return weak.values, margin, codes, inside, outside

    def bucket_log_probs(self, weak: Tensor, margin: Tensor, cos: float) -> Tensor:
        """``(L, S)`` log-probability that a row at cosine ``cos`` with the query (uniform around
        it) sits in the bucket of each flip set of each table."""
        cot = max(cos, 1e-3) / math.sqrt(max(1.0 - cos * cos, 1e-12))
        keep = torch.special.log_ndtr(margin * cot).sum(dim=1, keepdim=True)            # (L, 1) no bit flipped
        a = weak * cot                                                                   # (L, F)
        flip = torch.special.log_ndtr(-a) - torch.special.log_ndtr(a)                   # (L, F) log-odds of a flip
        return torch.addmm(keep, flip, self.flip_sets.t())                              # (L, S)

    def plan(self, logp: Tensor, miss: float) -> Tensor:
        """``(L, S)`` bucket log-probabilities -> ``(M,)`` flat (table * S + flip set) probes: the
        most likely buckets over all tables (a common threshold, in quarter decades) that leave
        a row missed by every table with probability at most ``miss``."""
        L, S = logp.shape
        level = logp.div(-GRID_STEP).floor_().clamp_(0, GRID - 1).to(torch.int64)       # (L, S) 0 = likeliest
        mass = torch.zeros(L, GRID).scatter_add_(1, level, logp.exp()).cumsum_(dim=1)   # (L, G) found by level <= g
        missed = mass.clamp_(max=1 - 1e-7).neg_().log1p_().sum(dim=0)                   # (G,) log P(missed everywhere)
        last = min(int((missed > math.log(miss)).sum()), GRID - 1)                      # missed falls with the level
        return torch.from_numpy(np.flatnonzero(level.numpy().reshape(-1) <= last))

    def _gather(self, r: int, probes: Tensor, codes: Tensor, cap: int) -> tuple[Tensor, int]:
        """Distinct rows of range r in the buckets ``probes`` (flat table * S + flip set), at most
        ``cap`` gathered (probes in the order given, the last bucket cut), and the buckets used.

        Integer bookkeeping on a thousand-odd probes: numpy's calls cost a few microseconds
        where torch's cost 5-30 (nine ranges a request), with the same integers."""
        S = self.flip_sets.shape[0]
        probes_np = probes.numpy()
        table = probes_np // S                                                          # (P,)
        at = table * self.offsets.shape[1] + (r << self.bits) + codes.numpy()[probes_np]
        flat = self.offsets.view(-1).numpy()
        start = flat[at]
        size = flat[at + 1] - start                                                     # (P,) empty buckets too
        total = int(size.sum())
        if total > cap:   # the budget ends inside this range: keep the first buckets, cut the last
            size = np.minimum(size, np.maximum(cap - (np.cumsum(size) - size), 0))
            total = cap
        if total == 0:
            return torch.zeros(0, dtype=torch.int64), 0
        # flat positions into ids: bucket j contributes table_j * N + start_j + [0, size_j)
        base = table * self.num_items + start - (np.cumsum(size) - size)
        pos = np.repeat(base, size) + np.arange(total)
        return _distinct(self.ids.view(-1).numpy()[pos]), int(np.count_nonzero(size))

    @torch.inference_mode()   # no view or version bookkeeping: ~6% of a search's small ops
    def search(self, query: Tensor, n: int, miss: float = 0.3, budget: int = 100_000) -> Found:
        """The ``n`` rows of largest exact score ``query . w + b`` that the tables find, best first.

        Args:
            query: ``(d,)`` user vector h (scored as ``[h, 1] . [w, b]``).
            n: rows wanted (also the rank whose score tau sets each range's angle).
            miss: per range, the chance a row at the threshold angle is in no probed bucket.
            budget: stop once this many rows were scored (a latency guard).
        """
        self._check(query)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: expected an int >= 1")
        if not 0.0 < miss < 1.0:
            raise ValueError(f"miss={miss!r}: expected a probability in (0, 1)")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget={budget!r}: expected an int >= 1")
        h = query.detach().float().cpu().view(-1)
        weak, margin, codes, inside, outside = self._margins(h)
        slack = outside * self.outside          # the most a row's part outside the span adds to its score
        rows, scores = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        tau, scored, probes = -math.inf, 0, 0
        max_norm, sizes = self.max_norm.tolist(), self.sizes.tolist()
        for r in range(self.ranges - 1, -1, -1):
            reach = max_norm[r] * inside                         # the most q . x inside the span in range r
            if sizes[r] == 0:
                continue
            if tau >= reach + slack or scored >= budget:
                break
            cos = 0.0 if tau == -math.inf or reach <= 0 else max((tau - slack) / reach, 0.0)
            picked = self.plan(self.bucket_log_probs(weak, margin, cos), miss)
            cand, used = self._gather(r, picked, codes, budget - scored)
            if cand.numel() == 0:
                continue
            scored, probes = scored + cand.numel(), probes + used
            s = torch.mv(self.weight.index_select(0, cand), h) + self.bias.index_select(0, cand)
            rows, scores = torch.cat([rows, cand]), torch.cat([scores, s])
            if scores.numel() > n:
                scores, top = scores.topk(n)
                rows = rows.index_select(0, top)
            if scores.numel() == n:
                tau = float(scores.min())
        order = torch.argsort(scores, descending=True, stable=True)
        return Found(rows.index_select(0, order), scores.index_select(0, order), scored, probes)


def huge_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A zero tensor in an anonymous mapping advised for transparent huge pages (2 MB pages:
    a random read of a large table misses the TLB far less; 4 KB pages where the OS has no
    such advice). The tensor keeps the mapping alive."""
    numel = math.prod(shape)
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    if nbytes < (4 << 20) or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:   # advice refused (e.g. THP disabled): the same memory in 4 KB pages
        pass
    return torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)


def _distinct(ids: np.ndarray) -> Tensor:
    """``(M,)`` int32 ids (sorted in place) -> their distinct values ascending, int64
    (``torch.unique``'s answer; numpy's in-place sort of a few thousand int32 is ~6x faster
    than torch.unique's on one core)."""
    ids.sort()
    keep = np.empty(ids.shape[0], dtype=bool)
    keep[:1] = True
    np.not_equal(ids[1:], ids[:-1], out=keep[1:])
    return torch.from_numpy(ids[keep].astype(np.int64))
