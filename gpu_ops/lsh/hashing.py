"""Hash families for the LSH output layer: each maps vectors to L bucket codes of K bits.

- :class:`SimHash`: signed random projections (Charikar, STOC 2002); collisions follow the
  angle between vectors, so with :func:`mips_augment` they follow the inner product.
- :class:`DWTAHash`: densified winner-take-all (Chen & Shrivastava, UAI 2018,
  https://arxiv.org/abs/1612.07545), the family SLIDE uses for sparse inputs
  (Chen et al., MLSys 2020, https://arxiv.org/abs/1903.03129): each hash is the position
  of the largest coordinate in a random bin; a bin with no non-zero coordinate borrows
  the hash of another bin picked by a fixed random probe sequence.

Both are plain tensor ops on CPU or GPU; ``codes`` works in row chunks (4,096: a chunk's
projections stay in cache), so hashing a million weight rows never materialises more than
``chunk`` rows of intermediates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gpu_ops.lsh.config import LSHConfig

# ---------------------------------------------------------------------------------------
# MIPS -> cosine (Neyshabur & Srebro, ICML 2015, https://arxiv.org/abs/1410.5518)
# ---------------------------------------------------------------------------------------


def mips_augment(weight: Tensor, max_norm: float | None = None) -> tuple[Tensor, float]:
    """Rows ``w`` -> ``[w / M, sqrt(1 - |w|^2 / M^2)]``, all of norm 1.

    A query ``[q, 0]`` then has cosine ``q.w / (M |q|)`` with every row: the angle order is
    the inner-product order, which is what a softmax layer ranks by.

    Returns:
        ``(N, d + 1)`` augmented rows and the M used (the largest row norm unless given).
    """
    norms = weight.norm(dim=1)                                     # (N,)
    m = float(norms.max()) if max_norm is None else float(max_norm)
    m = m if m > 0 else 1.0
    scaled = weight / m
    extra = (1.0 - (norms / m).square()).clamp_min(0.0).sqrt()     # (N,) rows past M get 0
    return torch.cat([scaled, extra.unsqueeze(1)], dim=1), m


def query_augment(query: Tensor) -> Tensor:
    """Queries ``q`` -> ``[q, 0]`` (the query side of :func:`mips_augment`)."""
    return torch.cat([query, query.new_zeros(query.shape[0], 1)], dim=1)


# ---------------------------------------------------------------------------------------
# Hash families
# ---------------------------------------------------------------------------------------


def sign_codes(proj: Tensor, tables: int, bits: int) -> Tensor:
    """``(N, L*K)`` float projections -> ``(N, L)`` int64 codes: bit k of table l is
    ``proj[:, l*K + k] > 0``. Overwrites ``proj`` (a temporary of the caller's).

    Up to 24 bits the signs are packed by one float32 product with the powers of two (its
    sums are exact integers below 2^24): ~4x faster on a million rows than int64 bit
    arithmetic, which serves wider codes.
    """
    n = proj.shape[0]
    if bits > 24 or not proj.dtype.is_floating_point:
        powers = 2 ** torch.arange(bits, dtype=torch.int64, device=proj.device)
        return ((proj > 0).view(n, tables, bits).to(torch.int64) * powers).sum(dim=2)
    signs = proj.gt_(0)                        # 0/1 in proj's own dtype (no bool tensor to convert)
    signs = signs if signs.dtype == torch.float32 else signs.float()
    powers = 2.0 ** torch.arange(bits, dtype=torch.float32, device=proj.device)
    return (signs.view(n * tables, bits) @ powers).view(n, tables).to(torch.int64)


class HashFamily:
    """L hash functions of K bits each over ``dim``-dimensional vectors."""

    def __init__(self, dim: int, bits: int, tables: int, seed: int):
        if dim < 1:
            raise ValueError(f"dim={dim}: expected an int >= 1")
        self.dim, self.bits, self.tables, self.seed = int(dim), int(bits), int(tables), int(seed)

    def _codes(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def codes(self, x: Tensor, chunk: int = 4096) -> Tensor:
        """``(N, dim)`` vectors -> ``(N, L)`` int64 bucket codes in ``[0, 2^K)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {tuple(x.shape)}: expected (N, {self.dim})")
        if x.shape[0] <= chunk:
            return self._codes(x)
        return torch.cat([self._codes(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


class SimHash(HashFamily):
    """Signed random projections: bit k of table l is ``sign(x . r_{l,k}) > 0``."""

    def __init__(self, dim: int, bits: int, tables: int, seed: int = 0):
        super().__init__(dim, bits, tables, seed)
        g = torch.Generator().manual_seed(seed)
        self.projections = torch.randn(dim, tables * bits, generator=g)   # (d, L*K)

    def _codes(self, x: Tensor) -> Tensor:
        proj = self.projections.to(device=x.device, dtype=x.dtype)
        return sign_codes(x @ proj, self.tables, self.bits)                # (N, L)


class DWTAHash(HashFamily):
    """Densified winner-take-all: K bits of table l pack the winners of ceil(K / log2 bin) bins.

    A bin of ``bin_size`` random coordinates hashes to the position of its largest non-zero
    coordinate (log2 bin_size bits); the bins of one table are concatenated and cut to K bits.
    """

    def __init__(self, dim: int, bits: int, tables: int, bin_size: int = 8, seed: int = 0,
                 probes: int = 64):
        super().__init__(dim, bits, tables, seed)
        if bin_size < 2 or bin_size & (bin_size - 1):
            raise ValueError(f"bin_size={bin_size}: expected a power of 2 >= 2")
        self.bin_size = int(bin_size)
        self.bin_bits = int(math.log2(bin_size))
        self.per_table = math.ceil(bits / self.bin_bits)
        n_bins = tables * self.per_table
        g = torch.Generator().manual_seed(seed)
        # Concatenated random permutations of the coordinates, cut into bins (as SLIDE does).
        perms = torch.cat([torch.randperm(dim, generator=g)
                           for _ in range(math.ceil(n_bins * bin_size / dim))])
        self.bins = perms[:n_bins * bin_size].view(n_bins, bin_size)       # (H, bin)
        # The densification probe sequence: empty bin h borrows from probe[h, 0], else [h, 1], ...
        self.probe = torch.randint(0, n_bins, (n_bins, probes), generator=g)  # (H, A)
        self.shifts = (torch.arange(self.per_table, dtype=torch.int64) * self.bin_bits)  # (per_table,)

    def _codes(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        bins, probe = self.bins.to(x.device), self.probe.to(x.device)
        vals = x[:, bins]                                                  # (N, H, bin)
        nonzero = vals != 0
        winner = vals.masked_fill(~nonzero, float("-inf")).argmax(dim=2)   # (N, H)
        empty = ~nonzero.any(dim=2)                                        # (N, H)
        if bool(empty.any()):
            filled = ~empty[:, probe]                                      # (N, H, A)
            first = filled.to(torch.int8).argmax(dim=2, keepdim=True)      # (N, H, 1) first non-empty probe
            donor = probe.expand(n, -1, -1).gather(2, first).squeeze(2)    # (N, H)
            borrowed = winner.gather(1, donor)
            # Which probe was taken goes into the hash, so two empty bins rarely agree by chance.
            borrowed = (borrowed + first.squeeze(2)) % self.bin_size
            winner = torch.where(empty, borrowed, winner)                  # all-zero rows: whatever came
        winner = winner.view(n, self.tables, self.per_table)
        code = (winner << self.shifts.to(x.device)).sum(dim=2)             # (N, L)
        return code & ((1 << self.bits) - 1)


def make_hash(cfg: LSHConfig, dim: int, seed: int) -> HashFamily:
    """The hash family ``cfg.hash`` over ``dim``-dimensional vectors."""
    if cfg.hash == "simhash":
        return SimHash(dim, cfg.bits, cfg.tables, seed=seed)
    return DWTAHash(dim, cfg.bits, cfg.tables, bin_size=cfg.bin_size, seed=seed)
