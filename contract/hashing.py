"""The one stable id hash of robeflow.

``stable_hash64`` is the first 8 bytes of BLAKE2b of a UTF-8 string, read little-endian:
the same on every machine and Python version (unlike ``hash()``), so ids computed by the
features step, the Criteo reader, the generator and the server always agree.

Example:
    >>> int(stable_hash64(["device=mobile"])[0]) == hash64("device=mobile")
    True
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def hash64(text: str) -> int:
    """The 64-bit stable hash of one string (an ``int`` in ``[0, 2**64)``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def stable_hash64(strings: Iterable[str]) -> np.ndarray:
    """(n,) uint64: :func:`hash64` of each string."""
    return np.fromiter(map(hash64, strings), dtype=np.uint64)


# The value an id feature takes for an entity the model has not seen: training replaces a
# share of ids by it (``train.id_dropout``), so its embedding learns the average entity,
# and the server maps users and items the online store does not know to it.
UNSEEN = "<unseen>"


def category_id(feature: str, value: str, table_size: int) -> int:
    """The id of ``value`` as a category of ``feature``: ``hash64("feature=value") mod
    table_size``, as :func:`features.categorize.hash_ids` computes it for a column."""
    if table_size < 1:
        raise ValueError(f"table size of feature {feature!r} must be >= 1, got {table_size}")
    return hash64(f"{feature}={value}") % table_size
