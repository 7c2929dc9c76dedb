"""The LSH-sampled softmax layer: planted recall, sparse = dense update on the set, rehashing."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from gpu_ops.lsh import LSHConfig, LSHSoftmax, RehashSchedule, merge_sets


def planted_layer(planted, **kw) -> LSHSoftmax:
    n, d = planted.weight.shape
    layer = LSHSoftmax(d, n, LSHConfig(random_negatives=0, rehash_first=10 ** 6, hash_bias=False, **kw))
    layer.weight.copy_(planted.weight)
    layer.rehash()
    return layer


@pytest.mark.parametrize("family, bits", [("simhash", 10), ("dwta", 12)])
def test_active_set_equals_true_top_neurons(planted, family: str, bits: int) -> None:
    m = planted.top.shape[1]
    layer = planted_layer(planted, hash=family, bits=bits, tables=50, bucket_size=64, mips=False,
                          max_active=m)
    exact = layer.scores(planted.queries).topk(m, dim=1).indices           # (Q, m)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(exact, planted.top))
    active = layer.active(planted.queries)                                # (Q, <= m)
    for got, want in zip(active, planted.top):
        assert set(got.tolist()) == set(want.tolist())
    _, ids = layer.retrieve(planted.queries, k=m)
    torch.testing.assert_close(ids, exact)                                 # exact order too


def test_with_too_few_tables_the_set_misses_neighbours(planted) -> None:
    # The same data with one table of 16 bits: the equality above is not automatic.
    layer = planted_layer(planted, bits=16, tables=1, bucket_size=64, mips=False)
    active = layer.active(planted.queries)
    found = sum(len(set(a.tolist()) & set(t.tolist())) for a, t in zip(active, planted.top))
    assert found < planted.top.numel()


def test_merge_sets_puts_the_label_first_without_repeats() -> None:
    labels = torch.tensor([3, 5])
    a = torch.tensor([[3, 1, -1], [2, 2, 5]])
    b = torch.tensor([[1, 4], [-1, 7]])
    out = merge_sets(labels, a, b)
    assert out[:, 0].tolist() == [3, 5]
    assert sorted(i for i in out[0].tolist() if i >= 0) == [1, 3, 4]
    assert sorted(i for i in out[1].tolist() if i >= 0) == [2, 5, 7]


def dense_masked_loss(w: torch.Tensor, b: torch.Tensor, h: torch.Tensor, labels: torch.Tensor,
                      ids: torch.Tensor) -> torch.Tensor:
    """Full-softmax loss with every neuron outside the sample's set masked out."""
    logits = h @ w.t() + b                                                 # (B, N)
    member = torch.zeros_like(logits, dtype=torch.bool)
    rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)
    member[rows[ids >= 0], ids[ids >= 0]] = True
    return torch.nn.functional.cross_entropy(logits.masked_fill(~member, float("-inf")), labels)


def test_sparse_adagrad_equals_dense_adagrad_over_steps() -> None:
    # Outside the set the masked dense gradient is zero, so dense Adagrad leaves those rows
    # (and their state) alone: the sparse layer must match it exactly, step after step.
    n, d, B = 300, 8, 6
    cfg = LSHConfig(bits=4, tables=4, bucket_size=8, random_negatives=5, lr=0.3, rehash_first=10 ** 6)
    layer = LSHSoftmax(d, n, cfg)
    w = layer.weight.clone().requires_grad_()
    b = layer.bias.clone().requires_grad_()
    ref = torch.optim.Adagrad([w, b], lr=cfg.lr, eps=cfg.eps)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        h = torch.randn(B, d, generator=g, requires_grad=True)
        y = torch.randint(0, n, (B,), generator=g)
        out = layer(h, y)
        out.loss().backward()
        before = layer.weight.clone()
        layer.step()
        h_ref = h.detach().clone().requires_grad_()
        ref.zero_grad()
        dense_masked_loss(w, b, h_ref, y, out.ids).backward()
        ref.step()
        torch.testing.assert_close(h.grad, h_ref.grad)
        torch.testing.assert_close(layer.weight, w.detach())
        torch.testing.assert_close(layer.bias, b.detach())
        moved = (layer.weight != before).any(dim=1).nonzero().view(-1)
        touched = out.ids[out.ids >= 0].unique()
        assert set(moved.tolist()) <= set(touched.tolist())              # nothing outside the set moved


def test_sparse_adam_equals_dense_adam_restricted_to_the_set() -> None:
    n, d, B = 200, 8, 5
    cfg = LSHConfig(bits=4, tables=4, bucket_size=8, random_negatives=3, optimizer="adam", lr=0.01,
                    rehash_first=10 ** 6)
    layer = LSHSoftmax(d, n, cfg)
    w0, b0 = layer.weight.clone(), layer.bias.clone()
    g = torch.Generator().manual_seed(2)
    h = torch.randn(B, d, generator=g, requires_grad=True)
    y = torch.randint(0, n, (B,), generator=g)
    out = layer(h, y)
    out.loss().backward()
    layer.step()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    dense_masked_loss(w, b, h.detach(), y, out.ids).backward()
    rows = out.ids[out.ids >= 0].unique()
    w_rows, b_rows = w0[rows].clone().requires_grad_(), b0[rows].clone().requires_grad_()
    w_rows.grad, b_rows.grad = w.grad[rows], b.grad[rows]
    torch.optim.Adam([w_rows, b_rows], lr=cfg.lr, eps=cfg.eps, betas=cfg.betas).step()
    expected_w, expected_b = w0.clone(), b0.clone()
    expected_w[rows], expected_b[rows] = w_rows.detach(), b_rows.detach()
    torch.testing.assert_close(layer.weight, expected_w)
    torch.testing.assert_close(layer.bias, expected_b)


def stale_rows(layer: LSHSoftmax) -> int:
    """Neurons missing from the bucket their current weights hash to, in some table."""
    codes = layer.index.item_codes(layer.weight, layer.bias)              # (N, L)
    tab = layer.index.tables
    hit = tab.buckets[torch.arange(tab.tables), codes] == torch.arange(layer.num_classes).view(-1, 1, 1)
    return int((~hit.any(dim=2)).any(dim=1).sum())


def test_tables_are_rehashed_after_weight_changes_on_schedule() -> None:
    n, d = 400, 16
    cfg = LSHConfig(bits=6, tables=8, bucket_size=512, random_negatives=50, lr=0.5,  # no evictions
                    rehash_first=3, rehash_growth=0.0)
    layer = LSHSoftmax(d, n, cfg)
    assert stale_rows(layer) == 0
    g = torch.Generator().manual_seed(3)
    rehashed = []
    for _ in range(3):
        h = 3 * torch.randn(32, d, generator=g)
        layer(h, torch.randint(0, n, (32,), generator=g)).loss().backward()
        rehashed.append(layer.step())
        if not rehashed[-1]:
            assert stale_rows(layer) > 0                                   # weights moved, tables not yet
    assert rehashed == [False, False, True]
    assert stale_rows(layer) == 0 and layer.rehashes == 1


def test_redraw_draws_new_hash_functions() -> None:
    layer = LSHSoftmax(8, 100, LSHConfig(bits=4, tables=3, redraw_every=2, rehash_first=10 ** 6))
    p0 = layer.index.hash.projections.clone()
    layer.rehash()
    torch.testing.assert_close(layer.index.hash.projections, p0)
    layer.rehash()
    assert not torch.equal(layer.index.hash.projections, p0)


def test_rehash_schedule_starts_often_then_decays() -> None:
    s = RehashSchedule(first=2, growth=math.log(2), max_interval=16)
    assert [t for t in range(1, 61) if s.due(t)] == [2, 6, 14, 30, 46]


@pytest.mark.parametrize("kw, name", [
    (dict(bits=0), "bits"), (dict(tables=0), "tables"), (dict(bucket_size=0), "bucket_size"),
    (dict(hash="minhash"), "hash"), (dict(policy="lru"), "policy"), (dict(optimizer="sgd"), "optimizer"),
    (dict(bin_size=6), "bin_size"), (dict(lr=0.0), "lr"), (dict(max_active=-1), "max_active"),
    (dict(random_negatives=-2), "random_negatives"), (dict(rehash_first=0), "rehash_first"),
    (dict(rehash_growth=-1.0), "rehash_growth"), (dict(rehash_max=0), "rehash_max"),
])
def test_bad_config_raises_naming_the_parameter(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LSHConfig(**kw)


def test_bad_layer_use_raises() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        LSHSoftmax(8, 1)
    with pytest.raises(ValueError, match="dim"):
        LSHSoftmax(0, 10)
    layer = LSHSoftmax(8, 50, LSHConfig(bits=3, tables=2))
    with pytest.raises(ValueError, match="num_classes=50"):
        layer(torch.randn(2, 8), torch.tensor([0, 50]))
    with pytest.raises(ValueError, match="hidden of shape"):
        layer(torch.randn(2, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="without a forward"):
        layer.step()
    layer(torch.randn(2, 8, requires_grad=True), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="backward"):
        layer.step()
    with pytest.raises(ValueError, match="k=0"):
        layer.retrieve(torch.randn(2, 8), 0)


def test_gathered_logits_gradients_match_autograd_indexing() -> None:
    from gpu_ops.lsh.layer import gathered_logits

    g = torch.Generator().manual_seed(4)
    h = torch.randn(5, 6, generator=g, dtype=torch.double, requires_grad=True)
    w = torch.randn(9, 6, generator=g, dtype=torch.double, requires_grad=True)
    b = torch.randn(9, generator=g, dtype=torch.double, requires_grad=True)
    inv = torch.randint(0, 9, (5, 7), generator=g)
    torch.autograd.gradcheck(lambda h, w, b: gathered_logits(h, w, b, inv), (h, w, b))
    ref = torch.bmm(w[inv], h.unsqueeze(2)).squeeze(2) + b[inv]
    torch.testing.assert_close(gathered_logits(h, w, b, inv), ref)


def test_labels_are_reinserted_where_they_hash_after_a_step() -> None:
    n, d = 300, 8
    cfg = LSHConfig(bits=6, tables=4, bucket_size=512, random_negatives=10, lr=0.5, rehash_first=10 ** 6)
    g = torch.Generator().manual_seed(6)
    for reinsert in (True, False):
        layer = LSHSoftmax(d, n, replace(cfg, reinsert_labels=reinsert))
        y = torch.randint(0, n, (16,), generator=g)
        layer(3 * torch.randn(16, d, generator=g), y).loss().backward()
        layer.step()
        codes = layer.index.item_codes(layer.weight, layer.bias)[y]        # (16, L)
        tab = layer.index.tables
        found = (tab.buckets[torch.arange(tab.tables), codes] == y.view(-1, 1, 1)).any(dim=2).all()
        assert bool(found) == reinsert
