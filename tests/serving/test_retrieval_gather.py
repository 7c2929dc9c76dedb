"""The LSH path of Retriever.top_many: the rows the index's search finds, best first by their
exact scores, then the most popular others when the tables return too few."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from contract.spec import FeatureSpec
from serving.config import ServeConfig
from serving.retrieval import Retriever


def retriever(n: int, d: int, seed: int, budget: int) -> Retriever:
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(d, n)
    with torch.no_grad():
        head.weight.copy_(torch.randn(n, d, generator=g))
        head.bias.copy_(torch.randn(n, generator=g))
    model = SimpleNamespace(head=head, num_items=n)
    cfg = ServeConfig(retrieval_index="lsh", lsh_bits=5, lsh_tables=4, lsh_flip_bits=3, lsh_budget=budget,
                      reload_s=0)
    popularity = torch.randint(0, 50, (n,), generator=g).numpy()
    return Retriever(model, [f"i{j}" for j in range(n)], FeatureSpec((), ()), popularity,
                     FeatureSpec((), (), extra={"sources": {}}), None, cfg)


def reference_top(r: Retriever, hidden: torch.Tensor, n: int) -> list[int]:
    """The search's rows, checked against scores through advanced indexing; the most popular
    others fill up."""
    n = min(n, r.num_items)
    got = r.index.search(hidden, n, miss=r.cfg.lsh_miss, budget=r.cfg.lsh_budget)
    scores = r.weight[got.rows] @ hidden + r.bias[got.rows]
    torch.testing.assert_close(got.scores, scores)
    assert got.rows.tolist() == got.rows[scores.argsort(descending=True, stable=True)].tolist()
    found = got.rows.tolist()
    fill = [i for i in r.popular.tolist() if i not in set(found)]
    return found + fill[:n - len(found)]


@pytest.mark.parametrize("n,d,seed,budget", [(300, 8, 0, 60), (1000, 16, 1, 400), (50, 4, 2, 5), (7, 3, 3, 100)])
def test_lsh_top_many_equals_the_advanced_indexing_reference(n, d, seed, budget) -> None:
    r = retriever(n, d, seed, budget)
    hidden = torch.randn(6, d, generator=torch.Generator().manual_seed(seed + 10))   # (B, d)
    ns = [1, 10, 40, n, 2 * n, 25]
    got = r.top_many(hidden, ns)
    assert got == [reference_top(r, hidden[j], k) for j, k in enumerate(ns)]
    for rows, k in zip(got, ns):
        assert len(rows) == min(k, n) and len(set(rows)) == len(rows)


@pytest.mark.parametrize("field,value", [("lsh_miss", 0.0), ("lsh_miss", 1.0), ("lsh_norm_ranges", 0)])
def test_lsh_settings_out_of_range_are_refused_by_name(field, value) -> None:
    with pytest.raises(ValueError, match=rf"serve\.{field} = "):
        ServeConfig(**{field: value})
