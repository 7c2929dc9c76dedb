"""The warm-up days before the window are counted a piece at a time: the same days, and
the same generator state after them, as one sorted draw of all of them."""

from __future__ import annotations

import numpy as np
import pytest

from generator.events import _day_counts


@pytest.mark.parametrize("seed,n,piece", [(7, 857_143, 1 << 22), (11, 64_286, 1_000), (3, 1_000_001, 4_096)])
def test_day_counts_give_the_sorted_draw_and_leave_the_same_state(seed, n, piece):
    one, pieces = np.random.default_rng([seed, 6]), np.random.default_rng([seed, 6])
    want = np.sort(one.integers(-60, 0, size=n))
    ends = np.cumsum(_day_counts(pieces, 60, n, piece=piece))
    assert ends[-1] == n
    assert np.array_equal(np.searchsorted(ends, np.arange(n), side="right") - 60, want)
    assert one.random() == pieces.random()
