"""When to rehash the LSH tables: often at first, then at exponentially growing intervals.

SLIDE (Chen et al., MLSys 2020, https://arxiv.org/abs/1903.03129, section 4.2) notes that
the weights move fast early in training and slowly later, so it updates its tables with an
exponentially decaying frequency: the t-th interval is ``N0 * exp(lambda * t)`` steps.
"""

from __future__ import annotations

import math


class RehashSchedule:
    """``due(step)`` is True at steps N0, N0 + N0 e^g, N0 + N0 e^g + N0 e^{2g}, ... (intervals capped)."""

    def __init__(self, first: int, growth: float, max_interval: int):
        if first < 1:
            raise ValueError(f"rehash_first={first}: expected an int >= 1")
        if growth < 0:
            raise ValueError(f"rehash_growth={growth}: expected >= 0")
        if max_interval < 1:
            raise ValueError(f"rehash_max={max_interval}: expected an int >= 1")
        self.first, self.growth, self.max_interval = int(first), float(growth), int(max_interval)
        self.count = 0                  # rehashes done
        self.next = self.first          # the step of the next rehash

    def interval(self, t: int) -> int:
        """Steps between rehash t and t + 1."""
        return max(1, min(self.max_interval, round(self.first * math.exp(self.growth * t))))

    def due(self, step: int) -> bool:
        """True (once) when ``step`` reaches the next rehash; then schedules the one after."""
        if step < self.next:
            return False
        self.count += 1
        self.next = step + self.interval(self.count)
        return True
