"""A world of millions of users and items draws the same data as a small one would: the
searches in long tables visit their needles in sorted order, and long id lists format
their names on demand; both give exactly what the plain way gives."""

from __future__ import annotations

import numpy as np
import pytest

import generator.world as world_mod
from generator.config import GenerateConfig
from generator.events import build_world, generate_chunk, warm_history
from generator.world import IdNames, format_ids, searchsorted


@pytest.mark.parametrize("side", ["left", "right"])
def test_sorted_probes_give_numpys_answer(side):
    rng = np.random.default_rng(0)
    table = np.sort(rng.integers(0, 50_000, world_mod.SORTED_PROBES_FROM * 2)).astype(float)  # ties
    needles = np.r_[rng.integers(-5, 50_005, 20_000).astype(float), table[:100], table[-3:]]
    assert np.array_equal(searchsorted(table, needles, side=side), np.searchsorted(table, needles, side=side))


@pytest.mark.parametrize("prefix,width,idx", [
    ("u", 7, [0, 5, 9_999_999, 123_456]),
    ("ev7-", 10, list(range(99_990, 100_010))),
    ("i", 6, [999_999, 1_000_000, 42]),   # wider than width: the plain formatting
    ("i", 3, []),
])
def test_ids_formatted_as_bytes_equal_fstrings(prefix, width, idx):
    got = format_ids(prefix, np.array(idx, dtype=np.int64), width)
    assert got.dtype == object and got.tolist() == [f"{prefix}{k:0{width}d}" for k in idx]


def test_long_id_lists_format_on_demand(monkeypatch):
    monkeypatch.setattr(world_mod, "EAGER_IDS", 10)
    lazy, eager = IdNames("u", 7, 100_000), IdNames("u", 7, 5)
    assert lazy._table is None and eager._table is not None
    idx = np.array([[0, 99_999, 7], [7, 42, -1]])
    assert lazy[idx].tolist() == [["u0000000", "u0099999", "u0000007"], ["u0000007", "u0000042", "u0099999"]]
    assert lazy[3] == "u0000003" and len(lazy) == 100_000
    assert list(eager) == [f"u{k:07d}" for k in range(5)]
    assert sum(1 for _ in lazy) == 100_000
    with pytest.raises(IndexError, match="0..99999"):
        lazy[np.array([100_000])]


def test_a_chunk_is_the_same_with_lazy_ids_and_sorted_probes(monkeypatch):
    cfg = GenerateConfig(rows=30_000, users=2_000, items=500, chunk_rows=15_000)

    def chunks():
        world = build_world(cfg)
        history = warm_history(cfg, world)
        return [generate_chunk(cfg, world, k, history) for k in range(2)]

    plain = chunks()
    monkeypatch.setattr(world_mod, "EAGER_IDS", 0)
    monkeypatch.setattr(world_mod, "SORTED_PROBES_FROM", 1)
    large = chunks()
    for (frame, truth), (frame2, truth2) in zip(plain, large):
        assert frame.equals(frame2) and truth.equals(truth2)
