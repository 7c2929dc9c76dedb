"""ProbeIndex.query gathers with index_select: the same candidates as the plain
advanced-indexing formulation of the same probes, on sampled shapes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_ops.lsh.multiprobe import ProbeIndex


def reference_query(index: ProbeIndex, query: torch.Tensor, budget: int) -> torch.Tensor:
    """The probes of ``index`` for ``query``, gathered bucket by bucket with advanced indexing."""
    q = torch.cat([query.float().view(-1), torch.ones(1), torch.zeros(1)])
    proj = (q @ index.projections).view(index.tables, index.bits)                    # (L, K)
    home = ((proj > 0).to(torch.int64) * index.powers).sum(dim=1)                    # (L,)
    if index.flip_bits == 0:
        table, code = torch.arange(index.tables), home
    else:
        weak = proj.abs().topk(index.flip_bits, dim=1, largest=False)
        cost = (weak.values.square() @ index.flip_sets.t()).view(-1)
        P = index.flip_sets.shape[0]
        limit = index.tables + 2 * budget * (1 << index.bits) // index.num_items
        order = cost.topk(limit, largest=False, sorted=True).indices if 0 < limit < cost.numel() \
            else torch.argsort(cost, stable=True)
        table, flip = order // P, order % P
        mask = (index.flip_sets[flip].to(torch.int64) * index.powers[weak.indices[table]]).sum(dim=1)
        code = home[table] ^ mask
    rows: list[int] = []
    for t, c in zip(table.tolist(), code.tolist()):
        bucket = index.ids[t, index.offsets[t, c]:index.offsets[t, c + 1]].tolist()
        rows += bucket[:max(0, budget - len(rows))]
    return torch.tensor(sorted(set(rows)), dtype=torch.int64)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 400), dim=st.integers(1, 9), bits=st.integers(1, 6), tables=st.integers(1, 5),
       flips=st.integers(0, 6), budget=st.integers(1, 500), seed=st.integers(0, 1000))
def test_query_equals_the_bucket_by_bucket_reference(n, dim, bits, tables, flips, budget, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    index = ProbeIndex(dim, bits=bits, tables=tables, ranges=0, flip_bits=min(flips, bits), seed=seed)
    index.build(torch.randn(n, dim, generator=g), torch.randn(n, generator=g))
    for query in torch.randn(3, dim, generator=g):
        got = index.query(query, budget)
        assert got.dtype == torch.int64
        torch.testing.assert_close(got, reference_query(index, query, budget), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=300))
def test_sorted_distinct_equals_torch_unique(ids) -> None:
    from gpu_ops.lsh.multiprobe import _sorted_distinct

    x = torch.tensor(ids, dtype=torch.int32)
    torch.testing.assert_close(_sorted_distinct(x), torch.unique(x).to(torch.int64), rtol=0, atol=0)
