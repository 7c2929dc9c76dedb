"""Fixtures for the ROBE op tests: an independent, element-by-element model of the contract.

The Triton kernels run on CPU tensors in Triton's interpreter: ``gpu_ops.robe.kernel``
picks the interpreter for CPU tensors itself, so nothing here sets process-wide state.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

P = 2038074743  # written out again on purpose: the tests must not trust the package's constant

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(torch.cuda.device_count() < 1, reason="no CUDA device")],
    ),
]


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


@pytest.fixture(scope="session")
def contract() -> Callable[..., list]:
    return contract_lookup
