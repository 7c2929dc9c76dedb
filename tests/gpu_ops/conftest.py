"""Fixtures for the ROBE op tests: an independent, element-by-element model of the contract,
and a hypothesis strategy of small lookup problems.

The Triton kernels are checked on CPU in Triton's interpreter from a subprocess that sets
``TRITON_INTERPRET=1`` before triton is imported (see test_kernel.py), so nothing here
changes process-wide state that other test folders could see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import strategies as st

P = 2038074743  # written out again on purpose: the tests must not trust the package's constant


def contract_lookup(
    weight: list[float],
    ids: list[int],
    offsets: list[int] | None,
    table_sizes: list[int],
    dim: int,
    block: int,
    abc: tuple[int, int, int],
) -> list[list[list[float]]]:
    """The DESIGN.md mapping with Python ints and loops: (B, T, dim) nested lists.

    ``ids`` is the flat sample-major grid when ``offsets`` is None (one id per bag).
    """
    a, b, c = abc
    num_tables = len(table_sizes)
    if offsets is None:
        offsets = list(range(len(ids) + 1))
    starts = [sum(table_sizes[:t]) for t in range(num_tables)]
    m = len(weight)
    out = []
    for j in range(len(offsets) - 1):
        t = j % num_tables
        row = [0.0] * dim
        for x in ids[offsets[j]:offsets[j + 1]]:
            g = starts[t] + x
            for i in range(dim):
                slot = ((g % P) * a + (i // block) * b + c) % P % (m - block + 1) + i % block
                row[i] += weight[slot]
        out.append(row)
    return [out[n * num_tables:(n + 1) * num_tables] for n in range(len(out) // num_tables)]


@dataclass
class Case:
    """One small lookup problem; ``ids``/``offsets`` as Python lists (offsets None: one-hot grid)."""

    sizes: list[int]
    dim: int
    block: int
    num_floats: int
    abc: tuple[int, int, int]
    ids: list[int]
    offsets: list[int] | None
    seed: int

    def tensors(self, device: str = "cpu", dtype: torch.dtype = torch.float64):
        """(weight, ids, offsets, table_offsets) on ``device``; ids ``(B, T)`` without offsets."""
        gen = torch.Generator().manual_seed(self.seed)
        weight = torch.randn(self.num_floats, generator=gen, dtype=dtype).to(device)
        table_offsets = torch.tensor([0, *self.sizes[:-1]], dtype=torch.int64).cumsum(0).to(device)
        ids = torch.tensor(self.ids, dtype=torch.int64, device=device)
        if self.offsets is None:
            return weight, ids.view(-1, len(self.sizes)), None, table_offsets
        return weight, ids, torch.tensor(self.offsets, dtype=torch.int64, device=device), table_offsets


@st.composite
def _cases(draw) -> Case:
    """Tables (some past 2**31 rows), Z dividing dim or not, Z > dim, Z = 1, tiny arrays,
    empty and multi-hot bags, empty batches."""
    num_tables = draw(st.integers(1, 3))
    big = draw(st.booleans())  # global rows beyond int32
    sizes = [draw(st.integers(2**31, 2**33)) if big else draw(st.integers(1, 6))
             for _ in range(num_tables)]
    dim = draw(st.integers(1, 9))
    block = draw(st.sampled_from([1, 2, 3, dim, dim + 2]))
    num_floats = draw(st.integers(block, block + 40))
    batch = draw(st.integers(0, 3))
    multi_hot = draw(st.booleans())
    abc = (draw(st.integers(1, P - 1)), draw(st.integers(0, P - 1)), draw(st.integers(0, P - 1)))
    ids: list[int] = []
    offsets = [0] if multi_hot else None
    for _ in range(batch):
        for t in range(num_tables):
            n = draw(st.integers(0, 3)) if multi_hot else 1
            ids += [draw(st.integers(0, sizes[t] - 1)) for _ in range(n)]
            if offsets is not None:
                offsets.append(len(ids))
    return Case(sizes, dim, block, num_floats, abc, ids, offsets, draw(st.integers(0, 2**16)))


@pytest.fixture(scope="session")
def contract() -> Callable[..., list]:
    """The element-by-element contract (``contract_lookup``)."""
    return contract_lookup


@pytest.fixture(scope="session")
def robe_cases() -> st.SearchStrategy[Case]:
    """Hypothesis strategy of small ``Case``s (draw with ``data.draw(robe_cases)``)."""
    return _cases()
