"""ProbeIndex._gather: the same rows as reading the same buckets one by one, on sampled
shapes; the index scores its own copy of the rows, held in huge pages where offered."""

from __future__ import annotations

import pytest
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
def test_distinct_equals_torch_unique(ids) -> None:
    from gpu_ops.lsh.multiprobe import _distinct

    x = torch.tensor(ids, dtype=torch.int32)
    torch.testing.assert_close(_distinct(x.numpy().copy()), torch.unique(x).to(torch.int64), rtol=0, atol=0)


@pytest.mark.parametrize("shape, dtype", [((3, 5), torch.float32), ((1 << 20, 2), torch.int32),
                                          ((1 << 19,), torch.int64)])
def test_huge_zeros_is_a_writable_zero_tensor_of_the_shape_and_dtype(shape, dtype) -> None:
    from gpu_ops.lsh.multiprobe import huge_zeros

    t = huge_zeros(shape, dtype)   # the last two take the mapped (huge page) path: >= 4 MB
    assert t.shape == shape and t.dtype == dtype and t.is_contiguous() and int(t.count_nonzero()) == 0
    t.view(-1)[-1] = 7
    assert int(t.sum()) == 7


def test_the_index_scores_its_own_copy_of_the_rows() -> None:
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3000, 8, generator=g), torch.randn(3000, generator=g)
    index = ProbeIndex(8, bits=6, tables=4, ranges=3, flip_bits=3)
    index.build(weight, bias)
    query = torch.randn(8, generator=g)
    before = index.search(query, 20, miss=0.3)
    assert index.weight.data_ptr() != weight.data_ptr()
    torch.testing.assert_close(index.weight, weight, rtol=0, atol=0)
    weight.zero_()   # the caller's tensor changes: the index answers as before
    after = index.search(query, 20, miss=0.3)
    torch.testing.assert_close(after.rows, before.rows, rtol=0, atol=0)
    torch.testing.assert_close(after.scores, before.scores, rtol=0, atol=0)
