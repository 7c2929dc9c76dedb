"""The ROBE-Z hash constants (A, B, C) over the prime P, drawn once from a seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

P: int = 2038074743  # the prime of the reference ROBE code; (P - 1)**2 < 2**63


@dataclass(frozen=True)
class RobeHash:
    """Universal-hash constants of the ROBE-Z mapping (see DESIGN.md).

    Slot of element i of global row g (array of ``num_floats`` floats, block ``Z``)::

        ((g mod P) * A + (i // Z) * B + C) mod P mod (num_floats - Z + 1) + i mod Z

    Example:
        >>> h = RobeHash.from_seed(0)
        >>> robe_lookup(weight, ids, ..., hash_abc=h.abc)
    """

    A: int
    B: int
    C: int
    P: ClassVar[int] = P

    def __post_init__(self) -> None:
        for name, lo in (("A", 1), ("B", 0), ("C", 0)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or not lo <= int(v) < P:
                raise ValueError(f"RobeHash.{name}={v!r}: expected an int in [{lo}, {P})")
            object.__setattr__(self, name, int(v))

    @property
    def abc(self) -> tuple[int, int, int]:
        """The tuple ``(A, B, C)`` that ``robe_lookup(..., hash_abc=...)`` takes."""
        return (self.A, self.B, self.C)

    @classmethod
    def from_seed(cls, seed: int) -> "RobeHash":
        """Draw A in [1, P) and B, C in [0, P) from ``numpy.random.default_rng(seed)``."""
        rng = np.random.default_rng(seed)
        a = int(rng.integers(1, P))
        b = int(rng.integers(0, P))
        c = int(rng.integers(0, P))
        return cls(a, b, c)

    @classmethod
    def reference(cls, seed: int) -> "RobeHash":
        """The constants the public reference ROBE code draws for ``seed``.

        It takes ``r = numpy.random.RandomState(seed).randint(0, P, 50)`` and uses
        ``C = r[0], B = r[1], A = r[2]``, so arrays trained there load here unchanged.
        Raises ValueError for the (probability 1/P) seeds where that gives A = 0.
        """
        r = np.random.RandomState(seed).randint(0, P, 50)
        return cls(A=int(r[2]), B=int(r[1]), C=int(r[0]))
