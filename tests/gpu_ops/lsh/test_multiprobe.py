"""The static multi-probe index used at serving: every row in every table, probes best first,
and recall of the exact inner-product top on planted data."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpu_ops.lsh import LSHConfig, LSHIndex
from gpu_ops.lsh.multiprobe import ProbeIndex, norm_ranged_augment


def clustered(n: int, d: int = 16, cluster: int = 50, queries: int = 20, seed: int = 0):
    """Items around cluster centres (vector = centre + offset, bias = popularity) and queries
    that lean towards a few clusters: the shape of a trained catalogue."""
    g = torch.Generator().manual_seed(seed)
    k = n // cluster
    centres = torch.randn(k, d, generator=g)
    weight = 3 * centres.repeat_interleave(cluster, 0) + torch.randn(n, d, generator=g)   # (N, d)
    bias = 0.5 * torch.randn(n, generator=g)                                                  # (N,)
    pick = torch.randint(0, k, (queries,), generator=g)
    hidden = centres[pick] + 0.3 * torch.randn(queries, d, generator=g)                       # (Q, d)
    return weight, bias, hidden


def recall(found: list[list[int]], exact: torch.Tensor) -> float:
    return sum(len(set(f) & set(e.tolist())) for f, e in zip(found, exact)) / exact.numel()


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 200), ranges=st.integers(0, 5), seed=st.integers(0, 100))
@example(n=2, ranges=4, seed=0)  # fewer rows than ranges: some ranges are empty
def test_norm_ranged_augment_matches_the_formula(n: int, ranges: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, 5, generator=g) * torch.rand(n, 1, generator=g) * 4
    aug, group = norm_ranged_augment(rows, ranges)
    if ranges == 0:
        torch.testing.assert_close(aug, torch.cat([rows, torch.zeros(n, 1)], 1))
        return
    norms = rows.norm(dim=1)
    for r in group.unique().tolist():
        m = norms[group == r].max()
        ref = torch.cat([rows[group == r] / m, (1 - (norms[group == r] / m) ** 2).clamp_min(0).sqrt()[:, None]], 1)
        torch.testing.assert_close(aug[group == r], ref)
        # inside a range the cosine with [q, 0] orders rows as q . x does
        q = torch.randn(5, generator=g)
        cos = aug[group == r] @ torch.cat([q, torch.zeros(1)])
        torch.testing.assert_close(cos, rows[group == r] @ q / m)
    # ranges are contiguous in norm: a row's range never holds a larger norm than a higher range
    # (with fewer rows than ranges some ranges are empty, so compare the ranges that hold rows)
    held = group.unique().tolist()
    assert all(norms[group == lo].max() <= norms[group == hi].min() for lo, hi in zip(held, held[1:]))


def test_every_row_sits_in_the_bucket_of_its_code_in_every_table() -> None:
    weight, bias, _ = clustered(600)
    idx = ProbeIndex(16, bits=5, tables=3, ranges=2, flip_bits=2, seed=1)
    idx.build(weight, bias)
    aug, _ = norm_ranged_augment(torch.cat([weight, bias[:, None]], 1), 2)
    codes = idx._codes(aug)                                                     # (N, L)
    for t in range(3):
        assert sorted(idx.ids[t].tolist()) == list(range(600))
        for c in range(32):
            bucket = idx.ids[t, idx.offsets[t, c]:idx.offsets[t, c + 1]].tolist()
            assert sorted(bucket) == torch.nonzero(codes[:, t] == c).flatten().tolist()


def test_probes_start_with_each_tables_own_bucket_and_flip_the_least_certain_bit_next() -> None:
    idx = ProbeIndex(8, bits=6, tables=4, ranges=1, flip_bits=3, seed=2)
    q = torch.randn(8, generator=torch.Generator().manual_seed(3))
    table, code = idx.probe_order(q)
    assert table.numel() == 4 * 2 ** 3 and len(set(zip(table.tolist(), code.tolist()))) == table.numel()
    proj = (torch.cat([q, torch.ones(1), torch.zeros(1)]) @ idx.projections).view(4, 6)
    home = ((proj > 0).long() * 2 ** torch.arange(6)).sum(1)
    assert sorted(table[:4].tolist()) == [0, 1, 2, 3]
    assert code[:4].tolist() == home[table[:4]].tolist()
    # the fifth probe flips the single bit nearest its hyperplane, over all tables
    t, k = divmod(int(proj.abs().argmin()), 6)
    assert (int(table[4]), int(code[4])) == (t, int(home[t]) ^ (1 << k))


def test_a_budget_covering_the_catalogue_returns_every_row_once() -> None:
    weight, bias, hidden = clustered(500)
    idx = ProbeIndex(16, bits=3, tables=2, ranges=0, flip_bits=3)
    idx.build(weight, bias)
    got = idx.query(hidden[0], budget=10_000)
    assert got.tolist() == list(range(500))
    assert idx.query(hidden[0], budget=37).numel() <= 37


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="flip_bits=9"):
        ProbeIndex(4, bits=8, flip_bits=9)
    with pytest.raises(ValueError, match="bits=0"):
        ProbeIndex(4, bits=0)
    with pytest.raises(ValueError, match="call build"):
        ProbeIndex(4).query(torch.zeros(4), 10)
    idx = ProbeIndex(4, bits=2, tables=1, flip_bits=1)
    idx.build(torch.randn(10, 4))
    with pytest.raises(ValueError, match="expected 4"):
        idx.query(torch.zeros(5), 10)
    with pytest.raises(ValueError, match="budget=0"):
        idx.query(torch.zeros(4), 0)


def test_recall_of_the_exact_top_100_on_a_clustered_catalogue_beats_the_bounded_buckets() -> None:
    # 40K items, budget 10% of the catalogue (measured: 0.77 of the exact top 100). The bounded
    # SLIDE tables the server used before held 2^8 buckets x 256 ids = 6.5% of a 1M catalogue
    # per table; given the same share here they find 0.09.
    n, budget = 40_000, 4000
    weight, bias, hidden = clustered(n)
    exact = (hidden @ weight.t() + bias).topk(100, dim=1).indices                           # (Q, 100)

    def top(cand: torch.Tensor, h: torch.Tensor) -> list[int]:
        return cand[(weight[cand] @ h + bias[cand]).topk(min(100, cand.numel())).indices].tolist()

    idx = ProbeIndex(16, bits=10, tables=16, ranges=0, flip_bits=6)
    idx.build(weight, bias)
    new = recall([top(idx.query(h, budget), h) for h in hidden], exact)
    share = math.ceil(0.0655 * n / 2 ** 8)
    old = LSHIndex(16, n, LSHConfig(bits=8, tables=32, bucket_size=share, hash_bias=True))
    old.build(weight, bias)
    old_found = []
    for h in hidden:
        cand = old.query(h[None], budget=budget)[0]
        old_found.append(top(cand[cand >= 0], h))
    was = recall(old_found, exact)
    assert new >= 0.7, new
    assert was < 0.2, was
