"""The retrieval model: data batching, the four output heads, metrics and the planted world."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlrm.retrieval import (InBatchHead, RetrievalConfig, RetrievalData, RetrievalModel, SampledSoftmaxHead,
                            evaluate_retrieval, popularity, ranking_metrics, retrieval_overlap, train_retrieval)
from dlrm.retrieval_world import PlantedWorld, WorldConfig
from gpu_ops.lsh import LSHConfig

TINY_WORLD = WorldConfig(items=200, cluster_size=20, users=40, categories=8, favourites=2, seed=3)


@pytest.fixture(scope="module")
def world() -> PlantedWorld:
    return PlantedWorld(TINY_WORLD)


@pytest.fixture(scope="module")
def splits(world: PlantedWorld) -> tuple[RetrievalData, RetrievalData]:
    train = RetrievalData.from_grid(*world.sample(4000, seed=1))
    test = RetrievalData.from_grid(*world.sample(600, seed=2))
    return train, test


def test_take_gathers_jagged_rows() -> None:
    # 3 rows x 2 features; row 1 has an empty bag and a bag of three ids
    values = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    offsets = torch.tensor([0, 1, 2, 2, 5, 6, 8])
    data = RetrievalData(values, offsets, torch.tensor([10, 11, 12]), 2)
    out = data.take(torch.tensor([2, 1]))
    assert out.values.tolist() == [6, 7, 8, 3, 4, 5]
    assert out.offsets.tolist() == [0, 1, 3, 3, 6]
    assert out.items.tolist() == [12, 11]
    with pytest.raises(ValueError, match="N\\*T \\+ 1"):
        RetrievalData(values, offsets[:-1], torch.tensor([10, 11, 12]), 2)


def test_ranking_metrics_count_hits() -> None:
    top = torch.tensor([[3, 1, 2], [0, 3, 1], [1, 2, 0], [2, 0, 1]])
    items = torch.tensor([3, 3, 0, 3])
    m = ranking_metrics(top, items, ks=(1, 2, 3))
    assert m == {"recall_at_1": 0.25, "recall_at_2": 0.5, "recall_at_3": 0.75, "p_at_1": 0.25}
    with pytest.raises(ValueError, match="k=4"):
        ranking_metrics(top, items, ks=(4,))


def small_cfg(method: str, **kw) -> RetrievalConfig:
    lsh = LSHConfig(bits=4, tables=16, bucket_size=64, random_negatives=8, rehash_first=5)
    args = dict(tower=(32,), dim=16, lsh=lsh, negatives=32, batch_size=128, epochs=3, item_lr=0.1,
                tower_lr=3e-3) | kw
    return RetrievalConfig(method=method, **args)


@pytest.mark.parametrize("method", ["lsh", "full", "sampled", "inbatch"])
def test_every_method_learns_the_planted_world(world, splits, method: str) -> None:
    train, test = splits
    pop = popularity(train.items, TINY_WORLD.items)
    model = RetrievalModel(world.table_sizes, TINY_WORLD.items, small_cfg(method), pop)
    before = evaluate_retrieval(model, test, ks=(10,))
    log = train_retrieval(model, train)
    after = evaluate_retrieval(model, test, ks=(10,))
    oracle = world.oracle_recall(torch.stack([test.values.view(-1, 4)[:, i] for i in range(4)], 1),
                                 test.items, ks=(10,))
    assert log.steps == 3 * math.ceil(4000 / 128)
    assert after["recall_at_10"] > before["recall_at_10"] + 0.1
    assert after["recall_at_10"] <= oracle["recall_at_10"] + 0.05   # nobody beats the planted truth by much


def test_lsh_retrieval_finds_the_exact_top_items_with_generous_tables(world, splits) -> None:
    train, test = splits
    model = RetrievalModel(world.table_sizes, TINY_WORLD.items, small_cfg("lsh", epochs=1))
    train_retrieval(model, train)
    model.head.layer.rehash()
    assert retrieval_overlap(model, test, k=10) >= 0.9
    top = model.recommend(test.take(torch.arange(20)), 10, exact=False)
    assert all(len(set(r.tolist())) == 10 for r in top)                 # k distinct items


def test_full_softmax_step_is_dense_adagrad(world, splits) -> None:
    train, _ = splits
    model = RetrievalModel(world.table_sizes, TINY_WORLD.items, small_cfg("full"))
    batch = train.take(torch.arange(16))
    w = model.head.weight.clone().requires_grad_()
    b = model.head.bias.clone().requires_grad_()
    h = model.hidden(batch)
    model.head.loss(h, batch.items).backward()
    model.head.step()
    F.cross_entropy(h.detach() @ w.t() + b, batch.items).backward()
    torch.optim.Adagrad([w, b], lr=model.cfg.item_lr, eps=1e-8).step()
    torch.testing.assert_close(model.head.weight, w.detach())
    torch.testing.assert_close(model.head.bias, b.detach())


def test_sampled_softmax_applies_log_q_and_drops_accidental_hits() -> None:
    cfg = RetrievalConfig(method="sampled", dim=4, negatives=3)
    pop = torch.tensor([5, 1, 0, 2, 9, 3])
    head = SampledSoftmaxHead(4, 6, cfg, pop)
    neg = torch.tensor([4, 1, 4])
    head.sample = lambda n: neg                                           # fixed draws
    h = torch.randn(2, 4)
    labels = torch.tensor([1, 3])
    got = head.loss(h, labels)
    q = (pop.double() + 1) / (pop.double() + 1).sum()
    logit = lambda i: h @ head.weight[i] + head.bias[i] - math.log(3) - q[i].log().float()   # (2,)
    ref = []
    for r in range(2):
        row = [logit(labels[r])[r]] + [logit(n)[r] if n != labels[r] else torch.tensor(float("-inf"))
                                       for n in neg]
        ref.append(-torch.log_softmax(torch.stack(row), 0)[0])
    torch.testing.assert_close(got, torch.stack(ref).mean())


def test_in_batch_negatives_mask_repeated_labels() -> None:
    cfg = RetrievalConfig(method="inbatch", dim=4)
    pop = torch.tensor([4, 1, 1, 7])
    head = InBatchHead(4, 4, cfg, pop)
    h = torch.randn(3, 4)
    labels = torch.tensor([2, 0, 2])
    got = head.loss(h, labels)
    log_q = ((pop.double() + 1) / (pop.double() + 1).sum()).log().float()
    logits = h @ head.weight[labels].t() + head.bias[labels] - log_q[labels]
    logits[0, 2] = logits[2, 0] = float("-inf")                         # item 2 is no negative of item 2
    torch.testing.assert_close(got, F.cross_entropy(logits, torch.arange(3)))


def test_planted_world_probabilities_are_normalised_and_sampled(world) -> None:
    ctx, items = world.sample(20000, seed=5)
    logp = world.log_prob(ctx[:50])
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(50))
    expected = torch.cat([world.log_prob(ctx[s:s + 2000]).exp().sum(0) for s in range(0, 20000, 2000)])
    expected = expected.view(-1, TINY_WORLD.items).sum(0)                # (N,) expected purchases
    seen = torch.bincount(items, minlength=TINY_WORLD.items).float()
    z = (seen - expected) / expected.clamp_min(1).sqrt()
    assert z.abs().max() < 5 and abs(float(z.mean())) < 0.3


@pytest.mark.parametrize("kw, name", [(dict(method="knn"), "method"), (dict(dim=0), "dim"),
                                      (dict(batch_size=0), "batch_size"), (dict(item_lr=0.0), "item_lr"),
                                      (dict(tower=(0,)), "tower"), (dict(init_scale=0.0), "init_scale")])
def test_bad_config_raises(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RetrievalConfig(**kw)


def test_bad_inputs_raise(world, splits) -> None:
    train, _ = splits
    with pytest.raises(ValueError, match="popularity"):
        RetrievalModel(world.table_sizes, TINY_WORLD.items, RetrievalConfig(method="sampled"))
    model = RetrievalModel(world.table_sizes, 50, small_cfg("full"))
    with pytest.raises(ValueError, match="0 <= item < 50"):
        train_retrieval(model, train)
    with pytest.raises(ValueError, match="cluster_size=10"):
        WorldConfig(items=101, cluster_size=10)
