"""The configuration of the LSH-sampled output layer (a dataclass only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LSHConfig:
    """Hash family, tables, sampling, sparse optimizer and rehash schedule of :class:`LSHSoftmax`.

    The SLIDE reference configuration for Amazon-670K is ``hash="dwta", bits=6, tables=50,
    bucket_size=128, policy="fifo"``; with a million neurons, more bits keep the buckets
    from overflowing (2^bits * bucket_size slots per table).
    """

    hash: Literal["simhash", "dwta"] = "simhash"
    bits: int = 8                 # K: bits per table (2^K buckets per table)
    tables: int = 32              # L: independent hash tables
    bucket_size: int = 64         # neuron ids kept per bucket (older ones replaced)
    policy: Literal["fifo", "reservoir"] = "fifo"  # which id a full bucket gives up
    bin_size: int = 8             # dwta: coordinates per winner-take-all bin (a power of 2)
    mips: bool = False            # hash the weights through the MIPS-to-cosine transform
    hash_bias: bool = True        # hash rows as [w, b] and queries as [h, 1] (the whole logit)
    center: bool = True           # hash rows minus their mean at the last build (a query's ranking is the same)
    max_active: int = 0           # per-sample budget of active neurons, most table hits first; 0 = all
    random_negatives: int = 16    # uniform random neurons added to every sample's set
    optimizer: Literal["adagrad", "adam"] = "adagrad"
    lr: float = 0.05
    eps: float = 1e-8             # optimizer denominator guard
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    rehash_first: int = 50        # steps before the first rehash (SLIDE: 50)
    rehash_growth: float = 0.1    # the t-th interval is rehash_first * exp(growth * t) ...
    rehash_max: int = 1000        # ... capped at this many steps (SLIDE: rebuild every 1000)
    reinsert_labels: bool = True  # after each step, re-offer the batch's labels where they now hash
    redraw_every: int = 0         # draw fresh hash functions every this many rehashes; 0 = never
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hash not in ("simhash", "dwta"):
            raise ValueError(f"hash={self.hash!r}: expected 'simhash' or 'dwta'")
        if self.policy not in ("fifo", "reservoir"):
            raise ValueError(f"policy={self.policy!r}: expected 'fifo' or 'reservoir'")
        if self.optimizer not in ("adagrad", "adam"):
            raise ValueError(f"optimizer={self.optimizer!r}: expected 'adagrad' or 'adam'")
        if not 1 <= self.bits <= 30:
            raise ValueError(f"bits={self.bits}: expected 1 <= bits <= 30")
        for name in ("tables", "bucket_size", "rehash_first", "rehash_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an int >= 1")
        for name in ("max_active", "random_negatives", "redraw_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected an int >= 0")
        if self.bin_size < 2 or self.bin_size & (self.bin_size - 1):
            raise ValueError(f"bin_size={self.bin_size}: expected a power of 2 >= 2")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: expected > 0")
        if self.rehash_growth < 0:
            raise ValueError(f"rehash_growth={self.rehash_growth}: expected >= 0")
