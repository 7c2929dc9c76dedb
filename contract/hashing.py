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
