"""ProbeIndex._gather gathers with index_select: the same rows as reading the same buckets
one by one, on sampled shapes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_ops.lsh.multiprobe import ProbeIndex


def reference_gather(index: ProbeIndex, r: int, probes: torch.Tensor, codes: torch.Tensor, cap: int) -> torch.Tensor:
    """The rows of range r in the buckets ``probes``, read bucket by bucket, at most ``cap``."""
    S = index.flip_sets.shape[0]
    rows: list[int] = []
    for p in probes.tolist():
        t, at = p // S, r * (1 << index.bits) + int(codes[p])
        bucket = index.ids[t, index.offsets[t, at]:index.offsets[t, at + 1]].tolist()
        rows += bucket[:max(0, cap - len(rows))]
    return torch.tensor(sorted(set(rows)), dtype=torch.int64)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 400), dim=st.integers(1, 9), bits=st.integers(1, 6), tables=st.integers(1, 5),
       flips=st.integers(0, 6), ranges=st.integers(1, 4), cap=st.integers(1, 500), seed=st.integers(0, 1000))
def test_gather_equals_the_bucket_by_bucket_reference(n, dim, bits, tables, flips, ranges, cap, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    index = ProbeIndex(dim, bits=bits, tables=tables, ranges=ranges, flip_bits=min(flips, bits), seed=seed)
    index.build(torch.randn(n, dim, generator=g), torch.randn(n, generator=g))
    S = index.flip_sets.shape[0]
    for query in torch.randn(3, dim, generator=g):
        _, _, codes, _, _ = index._margins(query)
        probes = torch.randperm(tables * S, generator=g)[:max(1, tables * S // 2)]
        for r in range(ranges):
            got, used = index._gather(r, probes, codes, cap)
            assert got.dtype == torch.int64 and used <= probes.numel()
            torch.testing.assert_close(got, reference_gather(index, r, probes, codes, cap), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=300))
def test_sorted_distinct_equals_torch_unique(ids) -> None:
    from gpu_ops.lsh.multiprobe import _sorted_distinct

    x = torch.tensor(ids, dtype=torch.int32)
    torch.testing.assert_close(_sorted_distinct(x), torch.unique(x).to(torch.int64), rtol=0, atol=0)
