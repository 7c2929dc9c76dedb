"""Bucket tables (FIFO / reservoir), vote counting and the index over a weight matrix."""

from __future__ import annotations

from collections import Counter, deque

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_ops.lsh import BucketTables, LSHConfig, LSHIndex, dedup_by_votes


def fifo_model(ids: list[int], codes: list[list[int]], tables: int, buckets: int, size: int) -> list[list[set]]:
    """Offers the ids one by one to bounded deques: the FIFO contract, one id at a time."""
    q = [[deque(maxlen=size) for _ in range(buckets)] for _ in range(tables)]
    for i, row in zip(ids, codes):
        for t, c in enumerate(row):
            q[t][c].append(i)
    return [[set(d) for d in tq] for tq in q]


def contents(tab: BucketTables) -> list[list[set]]:
    return [[{int(i) for i in tab.buckets[t, b] if i >= 0} for b in range(tab.num_buckets)]
            for t in range(tab.tables)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), bits=st.integers(1, 3), size=st.integers(1, 5), split=st.integers(0, 60),
       seed=st.integers(0, 1000))
def test_fifo_insert_equals_one_at_a_time(n: int, bits: int, size: int, split: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(1000, generator=g)[:n]
    codes = torch.randint(0, 2 ** bits, (n, 3), generator=g)
    tab = BucketTables(3, bits, size, "fifo")
    k = min(split, n)
    tab.insert(ids[:k], codes[:k])                                # two batches == one stream
    tab.insert(ids[k:], codes[k:])
    assert contents(tab) == fifo_model(ids.tolist(), codes.tolist(), 3, 2 ** bits, size)
    assert tab.offered.sum().item() == 3 * n


@pytest.mark.parametrize("bits,size,policy", [(3, 4, "fifo"), (8, 2, "fifo"), (17, 3, "fifo"),
                                               (3, 4, "reservoir")])
def test_fill_equals_emptying_then_inserting(bits: int, size: int, policy: str) -> None:
    # crowded buckets (3 bits: ~250 ids a bucket), sparse ones (17 bits: int32 keys), and
    # tables that held other ids before
    g = torch.Generator().manual_seed(bits)
    n = 2000
    ids = torch.randperm(5000, generator=g)[:n]
    codes = torch.randint(0, 2 ** bits, (n, 4), generator=g)
    filled, inserted = BucketTables(4, bits, size, policy, seed=1), BucketTables(4, bits, size, policy, seed=1)
    for tab in (filled, inserted):
        tab.insert(torch.arange(50), torch.randint(0, 2 ** bits, (50, 4), generator=g))
    filled.fill(ids, codes)
    inserted.clear()
    inserted.insert(ids, codes)
    assert torch.equal(filled.buckets, inserted.buckets) and torch.equal(filled.offered, inserted.offered)
    if policy == "fifo" and bits <= 8:   # (the one-at-a-time model walks every bucket in Python)
        assert contents(filled) == fifo_model(ids.tolist(), codes.tolist(), 4, 2 ** bits, size)


def test_reservoir_keeps_a_uniform_sample() -> None:
    # 40 ids into one bucket of 4, many times: each id survives with probability 4/40.
    kept = Counter()
    for seed in range(400):
        tab = BucketTables(1, 1, 4, "reservoir", seed=seed)
        tab.insert(torch.arange(40), torch.zeros(40, 1, dtype=torch.long))
        row = tab.buckets[0, 0]
        assert (row >= 0).all() and row.unique().numel() == 4
        kept.update(row.tolist())
    freq = torch.tensor([kept[i] for i in range(40)], dtype=torch.float) / 400
    assert abs(freq.mean().item() - 0.1) < 1e-6
    assert freq.max().item() < 0.2 and freq[:4].mean().item() < 0.2   # the first 4 are not favoured
    # fewer ids than slots: all are kept
    tab = BucketTables(2, 2, 8, "reservoir")
    tab.insert(torch.arange(5), torch.zeros(5, 2, dtype=torch.long))
    assert contents(tab)[1][0] == set(range(5))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.lists(st.integers(-1, 9), min_size=0, max_size=12), min_size=1, max_size=5),
       budget=st.integers(0, 4))
def test_dedup_by_votes_matches_counting(rows: list[list[int]], budget: int) -> None:
    width = max(len(r) for r in rows)
    cand = torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long).view(len(rows), width)
    out = dedup_by_votes(cand, 10, budget)
    for r, got in zip(rows, out.tolist()):
        votes = Counter(i for i in r if i >= 0)
        want = sorted(votes, key=lambda i: (-votes[i], i))
        want = want[:budget] if budget else want
        assert [i for i in got if i >= 0] == want


def test_index_finds_identical_rows_and_checks_shapes() -> None:
    w = torch.randn(500, 16)
    idx = LSHIndex(16, 500, LSHConfig(bits=10, tables=8, bucket_size=32, hash_bias=False))
    with pytest.raises(ValueError, match="build"):
        idx.query(w[:2])
    idx.build(w)
    cand = idx.query(w[[3, 77]] * 2.0)                             # same direction, any norm
    assert cand[0, 0] == 3 and cand[1, 0] == 77                    # hit in all 8 tables: first
    with pytest.raises(ValueError, match="weight of shape"):
        idx.build(torch.randn(499, 16))
    with pytest.raises(ValueError, match="queries of shape"):
        idx.query(torch.randn(2, 15))


@pytest.mark.parametrize("kw, name", [(dict(tables=0), "tables"), (dict(bits=0), "bits"),
                                      (dict(bucket_size=0), "bucket_size"), (dict(policy="lru"), "policy")])
def test_bad_table_parameters(kw: dict, name: str) -> None:
    args = dict(tables=2, bits=3, bucket_size=4, policy="fifo") | kw
    with pytest.raises(ValueError, match=name):
        BucketTables(**args)


@pytest.mark.parametrize("mips", [False, True])
def test_index_hashes_rows_with_their_bias(mips: bool) -> None:
    w, b = torch.randn(200, 8), torch.randn(200)
    idx = LSHIndex(8, 200, LSHConfig(bits=6, tables=4, bucket_size=256, mips=mips))
    idx.build(w, b)
    rows = torch.cat([w - w.mean(dim=0), b.view(-1, 1)], dim=1)    # rows hashed minus the mean row
    want = idx.hash.codes(torch.cat([rows / rows.norm(dim=1).max(),
                                     (1 - (rows.norm(dim=1) / rows.norm(dim=1).max()) ** 2).clamp_min(0).sqrt()
                                     .view(-1, 1)], dim=1) if mips else rows)
    torch.testing.assert_close(idx.item_codes(w, b), want)
    for i in range(200):                                           # no evictions: every row where it hashes
        assert all(i in idx.tables.buckets[t, want[i, t]].tolist() for t in range(4))


def test_centering_spreads_rows_that_moved_together() -> None:
    # rows sharing a large component (what training does to items that are only ever
    # negatives) crowd a few buckets unless hashed minus their mean; queries rank them alike
    g = torch.Generator().manual_seed(0)
    n, d = 20000, 16
    w = 6.0 * torch.randn(d, generator=g) + torch.randn(n, d, generator=g)
    queries = torch.randn(200, d, generator=g)
    exact = (queries @ w.t()).topk(10, dim=1).indices
    found = {}
    for center in (True, False):
        idx = LSHIndex(d, n, LSHConfig(bits=8, tables=16, bucket_size=128, hash_bias=False, center=center))
        idx.build(w)
        got = idx.query(queries, budget=500)
        found[center] = sum(len(set(e.tolist()) & set(c.tolist())) for e, c in zip(exact, got)) / exact.numel()
    assert found[True] > 0.3 and found[True] > 5 * found[False], found   # measured: 0.40 against 0.017
