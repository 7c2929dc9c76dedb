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

import numpy as np
import pandas as pd

from contract.hashing import hash64, stable_hash64

MISSING = "<missing>"  # the value hashed for a missing categorical value
SMALL_INPUT = 65_536    # inputs up to this many values take the cached path (serving batches)
SMALL_LIST = 256        # ... and up to this many, without factorising (one request)
CACHE_SIZE = 1 << 18    # hashes remembered per feature; the cache is emptied when full

# feature -> {value: 64-bit hash}: hot values (devices, hours, popular items) are hashed once
_HASHES: dict[str, dict[str, int]] = {}


def _hash_cached(feature: str, texts: list[str]) -> np.ndarray:
    """(n,) uint64 :func:`stable_hash64` of ``feature=text`` for each text, through the cache."""
    cache = _HASHES.setdefault(feature, {})
    hashes = list(map(cache.get, texts))
    if None not in hashes:
        return np.array(hashes, dtype=np.uint64)
    for i, h in enumerate(hashes):
        if h is None:
            t = texts[i]
            h = hash64(f"{feature}={t}")
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[t] = hashes[i] = h
    return np.array(hashes, dtype=np.uint64)


def _plain_texts(values: pd.Series | np.ndarray | list) -> tuple[np.ndarray | None, list[str]] | None:
    """(codes, texts): the values factorised (codes None: not factorised, one text per
    value), missing ones (None, NaN, pd.NA) as :data:`MISSING`, when they are few and every
    other value is a plain ``str`` (then the texts are the ones :func:`_as_text` gives);
    None otherwise (the pandas path decides)."""
    if not isinstance(values, (list, tuple, np.ndarray, pd.Series)) or len(values) > SMALL_INPUT:
        return None
    if isinstance(values, (np.ndarray, pd.Series)) and values.dtype.kind not in "OU":
        return None
    if len(values) <= SMALL_LIST:
        # a few values: a Python pass costs less than factorising
        items = list(values) if isinstance(values, (list, tuple)) else values.tolist()
        if set(map(type, items)) <= {str}:
            return None, items
        texts = [MISSING if v is None or v is pd.NA or (type(v) is float and v != v) else v for v in items]
        return (None, texts) if set(map(type, texts)) <= {str} else None
    items = (np.fromiter(values, dtype=object, count=len(values)) if isinstance(values, (list, tuple))
             else np.asarray(values, dtype=object))
    codes, uniques = pd.factorize(items, sort=False)   # missing values -> code -1
    texts = uniques.tolist()
    if not set(map(type, texts)) <= {str}:  # numbers, bytes, str subclasses: pandas' conversion
        return None
    if len(codes) and codes.min() < 0:
        codes = np.where(codes < 0, len(texts), codes)
        texts.append(MISSING)
    return codes, texts


def _as_text(values: pd.Series | np.ndarray | list) -> pd.Series:
    s = pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values.astype(object)
    return s.where(s.notna(), MISSING).astype(str)


def hash_ids(values: pd.Series | np.ndarray | list, feature: str, table_size: int) -> np.ndarray:
    """(n,) int64 ids in [0, table_size) of ``values`` as categories of ``feature``.

    Small inputs of plain strings (a serving batch) are hashed through a per-feature cache
    of hot values; others hash each distinct value once (vectorised by factorising). Both
    give the same ids.
    """
    if table_size < 1:
        raise ValueError(f"table size of feature {feature!r} must be >= 1, got {table_size}")
    plain = _plain_texts(values)
    if plain is not None:
        codes, texts = plain
        ids = (_hash_cached(feature, texts) % np.uint64(table_size)).astype(np.int64)
        return ids if codes is None else ids[codes]
    text = _as_text(values)
    codes, uniques = pd.factorize(text, sort=False)
    h = stable_hash64(f"{feature}={u}" for u in uniques)
    ids = (h % np.uint64(table_size)).astype(np.int64)
    return ids[codes] if len(codes) else np.zeros(0, dtype=np.int64)


def hash_bags(bags: pd.Series, feature: str, table_size: int) -> pd.Series:
    """A list-of-strings column -> a column of int64 id arrays (one bag per row, same index).

    Each bag keeps its order; hashing happens once per distinct term over the whole column.
    """
    return pd.Series(bag_ids(bags.tolist(), feature, table_size), index=bags.index, dtype=object)


def bag_ids(bags: list[list[str]], feature: str, table_size: int) -> list[np.ndarray]:
    """Lists of strings -> one int64 id array per bag (the core of :func:`hash_bags`)."""
    lengths = np.fromiter((len(b) for b in bags), dtype=np.int64, count=len(bags))
    flat = [t for bag in bags for t in bag]
    ids = hash_ids(flat, feature, table_size)
    return np.split(ids, np.cumsum(lengths)[:-1]) if len(lengths) else []
