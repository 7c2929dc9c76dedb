"""Categorisation: raw categorical values -> ids, by a stable 64-bit hash.

The id of value ``v`` of feature ``f`` is ``blake2b_64("f=v") mod table_size``: the same on
every machine and Python version (unlike ``hash()``), needs no vocabulary, and gives
values never seen in training a valid id at serving time. Missing values hash as the
token :data:`MISSING`.

Example:
    >>> hash_ids(["mobile", "desktop", None], "device", 64).tolist()  # doctest: +SKIP
    [..., ..., ...]
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pandas as pd

MISSING = "<missing>"  # the value hashed for a missing categorical value


def stable_hash64(strings: Iterable[str]) -> np.ndarray:
    """(n,) uint64: the first 8 bytes of blake2b of each UTF-8 string, little-endian."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
         for s in strings),
        dtype=np.uint64,
    )


def _as_text(values: pd.Series | np.ndarray | list) -> pd.Series:
    s = pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values.astype(object)
    return s.where(s.notna(), MISSING).astype(str)


def hash_ids(values: pd.Series | np.ndarray | list, feature: str, table_size: int) -> np.ndarray:
    """(n,) int64 ids in [0, table_size) of ``values`` as categories of ``feature``.

    Hashes each distinct value once (vectorised over the rows by factorising).
    """
    if table_size < 1:
        raise ValueError(f"table size of feature {feature!r} must be >= 1, got {table_size}")
    text = _as_text(values)
    codes, uniques = pd.factorize(text, sort=False)
    h = stable_hash64(f"{feature}={u}" for u in uniques)
    ids = (h % np.uint64(table_size)).astype(np.int64)
    return ids[codes] if len(codes) else np.zeros(0, dtype=np.int64)


def hash_bags(bags: pd.Series, feature: str, table_size: int) -> pd.Series:
    """A list-of-strings column -> a column of int64 id arrays (one bag per row, same index).

    Each bag keeps its order; hashing happens once per distinct term over the whole column.
    """
    lengths = bags.map(len).to_numpy(dtype=np.int64)
    flat = [t for bag in bags for t in bag]
    ids = hash_ids(flat, feature, table_size)
    parts = np.split(ids, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return pd.Series(parts, index=bags.index, dtype=object)
