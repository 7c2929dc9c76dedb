"""Sparse ROBE gradients and optimizer steps against the dense gradient and dense optimizers.

The dense side is the reference lookup (plain PyTorch indexing) differentiated by autograd
into a ``(num_floats,)`` gradient, then ``torch.optim.SGD`` / ``torch.optim.Adagrad`` or
the row-wise Adagrad formula written out over the whole array.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_ops import robe_lookup, robe_lookup_reference, robe_slot_indices
from gpu_ops.robe.optim import SparseRobeOptimizer, robe_sparse_update_
from gpu_ops.robe.sparse import _MASK_FLOATS_PER_START, distinct_sorted, robe_slot_gradients

_HC = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def _kw(case, table_offsets, offsets):
    return dict(table_offsets=table_offsets, dim=case.dim, block=case.block, hash_abc=case.abc,
                offsets=offsets)


def _per_id(case) -> int:
    """Floats an id's blocks span: nb windows of min(Z, dim)."""
    return -(-case.dim // case.block) * min(case.block, case.dim)


def dense_rowwise_adagrad_(weight: torch.Tensor, acc: torch.Tensor, grad: torch.Tensor, lr: float,
                           row: int, eps: float = 1e-10) -> None:
    """Row-wise Adagrad over the whole array: acc[r] += sum(g**2 over run r) / row."""
    n = weight.numel()
    padded = torch.zeros(acc.numel() * row, dtype=grad.dtype)
    padded[:n] = grad
    acc += padded.view(-1, row).square().sum(1) / row
    std = acc.sqrt().add(eps).repeat_interleave(row)[:n]
    weight -= lr * grad / std


@settings(max_examples=40, deadline=None, suppress_health_check=_HC)
@given(data=st.data())
def test_slot_gradients_are_the_dense_gradient_on_the_slots_read(robe_cases, data):
    case = data.draw(robe_cases)
    weight, ids, offsets, table_offsets = case.tensors()
    kw = _kw(case, table_offsets, offsets)
    w = weight.clone().requires_grad_()
    out = robe_lookup_reference(w, ids, **kw)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed), dtype=out.dtype)
    out.backward(grad)
    a, b, c = case.abc
    slots, grads = robe_slot_gradients(
        grad.reshape(-1, case.dim).contiguous(), ids.reshape(-1), offsets, table_offsets,
        weight.numel(), case.dim, case.block, a, b, c,
    )
    read = robe_slot_indices(ids, num_floats=weight.numel(), **{k: v for k, v in kw.items()
                                                                  if k != "offsets"}, offsets=offsets)
    assert torch.equal(slots, torch.unique(slots)) and slots.numel() <= ids.numel() * _per_id(case)
    read = torch.unique(read)
    assert bool(torch.isin(read, slots).all())  # sorted, distinct, every slot read is there
    unread = slots[~torch.isin(slots, read)]
    if case.dim % case.block == 0 or case.block > case.dim:
        assert unread.numel() == 0  # exactly the slots read
    assert bool((grads[torch.isin(slots, unread)] == 0).all())  # a last block's unread tail: 0
    dense = torch.zeros_like(weight).index_add_(0, slots, grads)
    torch.testing.assert_close(dense, w.grad, rtol=1e-12, atol=1e-12)


def _train(weight, case, batches, mode, sparse, lr=0.3, row=3):
    """Three lookup + backward + step rounds; returns (weight, optimizer state or None)."""
    _, _, _, table_offsets = case.tensors()
    w = weight.clone().requires_grad_()
    if sparse:
        opt = SparseRobeOptimizer([w], lr=lr, mode=mode, row=row)
    elif mode == "sgd":
        opt = torch.optim.SGD([w], lr=lr)
    elif mode == "adagrad":
        opt = torch.optim.Adagrad([w], lr=lr)
    else:
        opt, acc = None, torch.zeros(-(-weight.numel() // row), dtype=weight.dtype)
    for ids, offsets, grad in batches:
        kw = _kw(case, table_offsets, offsets)
        if sparse:
            out = robe_lookup(w, ids, sparse_grad=True, validate=False, **kw)
        else:
            out = robe_lookup_reference(w, ids, **kw)
        w.grad = None
        out.backward(grad)
        if sparse:
            # never a (num_floats,) tensor: at most one entry per (id, block) element read
            assert w.grad.is_sparse and w.grad._nnz() <= ids.numel() * _per_id(case)
        if opt is not None:
            opt.step()
        else:
            with torch.no_grad():
                dense_rowwise_adagrad_(w, acc, w.grad, lr, row)
    state = None
    if mode != "sgd":
        state = opt.state[w]["sum"] if opt is not None else acc
    return w.detach(), state


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), bound=st.integers(1, 40_000), seed=st.integers(0, 2**31 - 1))
def test_distinct_sorted_is_torch_unique(n, bound, seed):
    """Both ways (a mask when the bound is small for n, else a sort) give torch.unique's answer."""
    x = torch.randint(0, bound, (n,), generator=torch.Generator().manual_seed(seed))
    want_u, want_i = torch.unique(x, sorted=True, return_inverse=True)
    got_u, got_i = distinct_sorted(x, bound)
    assert torch.equal(got_u, want_u) and torch.equal(got_i, want_i)
    assert got_u.dtype == got_i.dtype == torch.int64


@pytest.mark.parametrize("num_floats", [400, 5_000_000])
def test_slot_gradients_of_hot_ids_on_a_small_and_a_large_array(num_floats):
    """Hot ids repeat (their windows' rows are summed first). On the small array the windows
    overlap and the distinct starts come from a mask; on the large one they come from a sort
    and no two windows overlap (the slots are the windows themselves)."""
    gen = torch.Generator().manual_seed(3)
    sizes = torch.tensor([5, 50, 10**6])
    table_offsets = torch.tensor([0, 5, 55])
    ids = (torch.rand(40, 3, generator=gen).pow(3) * sizes).long()  # (B, T), hot ids repeat
    dim, block, abc = 8, 8, (97, 13, 5)
    w = torch.randn(num_floats, dtype=torch.float64, requires_grad=True)
    out = robe_lookup_reference(w, ids, table_offsets=table_offsets, dim=dim, block=block, hash_abc=abc)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad)
    slots, grads = robe_slot_gradients(grad.reshape(-1, dim), ids.reshape(-1), None, table_offsets,
                                       num_floats, dim, block, *abc)
    read = torch.unique(robe_slot_indices(ids, num_floats=num_floats, table_offsets=table_offsets, dim=dim,
                                          block=block, hash_abc=abc))
    assert torch.equal(slots, read)
    windows = torch.unique(ids + table_offsets).numel()  # one window per distinct id (dim == Z)
    assert windows < ids.numel()
    if num_floats > _MASK_FLOATS_PER_START * ids.numel():
        assert slots.numel() == windows * dim  # whole windows, none shared
    else:
        assert slots.numel() < windows * dim
    torch.testing.assert_close(torch.zeros_like(w).index_add_(0, slots, grads), w.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["sgd", "adagrad", "rowwise_adagrad"])
@settings(max_examples=25, deadline=None, suppress_health_check=_HC)
@given(data=st.data())
def test_sparse_steps_equal_the_dense_optimizer(mode, robe_cases, data):
    """Three steps on three random batches of one case (the same array, tables and hash)."""
    case = data.draw(robe_cases)
    weight, _, _, _ = case.tensors()
    batches = []
    gen = torch.Generator().manual_seed(case.seed)
    sizes = torch.tensor(case.sizes)
    T = len(case.sizes)
    for k in range(3):
        if k == 0:
            _, ids, offsets, _ = case.tensors()
        else:  # more batches of the same tables: one-hot or bags of 0..3 ids
            batch = data.draw(st.integers(0, 6))
            lengths = torch.randint(0, 4, (batch * T,), generator=gen)
            t_of = torch.repeat_interleave(torch.arange(batch * T) % T, lengths)
            ids = (torch.rand(int(lengths.sum()), generator=gen, dtype=torch.float64) * sizes[t_of]).long()
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        num_bags = ids.numel() if offsets is None else offsets.numel() - 1
        grad = torch.randn(num_bags, case.dim, generator=gen, dtype=weight.dtype)
        batches.append((ids, offsets, grad.view(-1, T, case.dim)))
    w_dense, s_dense = _train(weight, case, batches, mode, sparse=False)
    w_sparse, s_sparse = _train(weight, case, batches, mode, sparse=True)
    torch.testing.assert_close(w_sparse, w_dense, rtol=1e-6, atol=1e-6)
    if s_dense is not None:
        torch.testing.assert_close(s_sparse, s_dense, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["sgd", "adagrad", "rowwise_adagrad"])
def test_float32_training_batches_match_the_dense_optimizer(mode):
    """A Criteo-like float32 batch (26 tables, dim 16, Z 32, hot ids repeating) on a small
    array where the windows overlap a lot, and on a large one where they rarely do.

    The sparse path sums a slot's gradients in another order than the dense scatter, so the
    two float32 results differ by rounding; both are held against the same steps in float64:
    the sparse one must be as close to it as the dense float32 one is (2x, or 1e-6)."""
    gen = torch.Generator().manual_seed(5)
    sizes = torch.tensor([3, 40, 1000, 10**7] * 6 + [7, 11])
    table_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes[:-1].cumsum(0)])
    for num_floats in (300, 2_000_000):
        weight = torch.randn(num_floats, generator=gen)
        w_d, w_s = weight.clone().requires_grad_(), weight.clone().requires_grad_()
        w_64 = weight.double().requires_grad_()
        opt_s = SparseRobeOptimizer([w_s], lr=0.05, mode=mode, row=16)
        dense_opt = torch.optim.SGD if mode == "sgd" else torch.optim.Adagrad
        opt_d, opt_64 = dense_opt([w_d], lr=0.05), dense_opt([w_64], lr=0.05)
        acc = torch.zeros(-(-num_floats // 16))
        acc_64 = acc.double()
        for _ in range(3):
            ids = (torch.rand(256, sizes.numel(), generator=gen).pow(3) * sizes).long()
            grad = torch.randn(256, sizes.numel(), 16, generator=gen)
            kw = dict(table_offsets=table_offsets, dim=16, block=32, hash_abc=(97, 13, 5))
            for w, sparse, g in ((w_d, False, grad), (w_s, True, grad), (w_64, False, grad.double())):
                w.grad = None
                robe_lookup(w, ids, sparse_grad=sparse, **kw).backward(g)
            opt_s.step()
            if mode == "rowwise_adagrad":
                with torch.no_grad():
                    dense_rowwise_adagrad_(w_d, acc, w_d.grad, 0.05, 16)
                    dense_rowwise_adagrad_(w_64, acc_64, w_64.grad, 0.05, 16)
            else:
                opt_d.step()
                opt_64.step()
        dense_err = (w_d.detach().double() - w_64.detach()).abs().max().item()
        torch.testing.assert_close(w_s.detach().double(), w_64.detach(), rtol=0, atol=max(2 * dense_err, 1e-6))


def test_a_dense_gradient_updates_every_slot_alike():
    """The optimizer also takes a dense gradient (e.g. accumulated by other code)."""
    w1 = torch.randn(50, dtype=torch.float64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_()
    g = torch.randn(50, dtype=torch.float64)
    g[::3] = 0
    nz = g.nonzero().reshape(-1)
    w1.grad = g
    w2.grad = torch.sparse_coo_tensor(nz.unsqueeze(0), g[nz], (50,), check_invariants=True)
    for mode in ("sgd", "adagrad", "rowwise_adagrad"):
        o1 = SparseRobeOptimizer([w1], lr=0.1, mode=mode, row=4)
        o2 = SparseRobeOptimizer([w2], lr=0.1, mode=mode, row=4)
        o1.step()
        o2.step()
        torch.testing.assert_close(w1, w2)
        torch.testing.assert_close(o1.state[w1].get("sum"), o2.state[w2].get("sum"))


def test_uncoalesced_gradients_are_summed_first():
    w = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    w.grad = torch.sparse_coo_tensor(torch.tensor([[4, 1, 4]]), torch.tensor([1.0, 2.0, 3.0],
                                                                            dtype=torch.float64), (10,))
    opt = SparseRobeOptimizer([w], lr=1.0, mode="adagrad")
    opt.step()
    assert opt.state[w]["sum"][4] == 16.0 and opt.state[w]["sum"][1] == 4.0
    torch.testing.assert_close(w.detach()[[1, 4]], torch.tensor([-1.0, -1.0], dtype=torch.float64))


def test_state_dict_round_trip_resumes_bitwise():
    torch.manual_seed(0)
    table_offsets = torch.tensor([0, 100])
    kw = dict(table_offsets=table_offsets, dim=8, block=4, hash_abc=(11, 22, 33), sparse_grad=True)
    batches = [torch.randint(0, 100, (16, 2)) for _ in range(6)]

    def run(w, opt, bs):
        for ids in bs:
            w.grad = None
            robe_lookup(w, ids, **kw).square().sum().backward()
            opt.step()

    w1 = torch.randn(64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_()
    o1 = SparseRobeOptimizer([w1], lr=0.1, mode="rowwise_adagrad", row=8)
    run(w1, o1, batches)
    o2 = SparseRobeOptimizer([w2], lr=0.1, mode="rowwise_adagrad", row=8)
    run(w2, o2, batches[:3])
    saved_w, saved_opt = w2.detach().clone(), o2.state_dict()
    w3 = saved_w.clone().requires_grad_()
    o3 = SparseRobeOptimizer([w3], lr=0.1, mode="rowwise_adagrad", row=8)
    o3.load_state_dict(saved_opt)
    run(w3, o3, batches[3:])
    assert torch.equal(w3, w1) and torch.equal(o3.state[w3]["sum"], o1.state[w1]["sum"])
    assert o3.state[w3]["sum"].numel() == 8  # 64 floats / rows of 8


def test_bad_arguments_raise_value_errors():
    w = torch.zeros(8, requires_grad=True)
    with pytest.raises(ValueError, match="mode='adam'"):
        SparseRobeOptimizer([w], mode="adam")
    with pytest.raises(ValueError, match="row=0"):
        SparseRobeOptimizer([w], row=0)
    with pytest.raises(ValueError, match="1-D"):
        SparseRobeOptimizer([torch.zeros(2, 2, requires_grad=True)])
    with pytest.raises(ValueError, match="accumulator"):
        robe_sparse_update_(w.detach(), torch.tensor([1]), torch.tensor([1.0]), lr=0.1, mode="adagrad")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), big=st.booleans(), nb=st.integers(1, 3),
       num_floats=st.integers(40, 10**7))
def test_block_starts_fast_equals_the_contract(seed, big, nb, num_floats):
    """Global rows all below P (the first modulo skipped) or some at and beyond P."""
    from gpu_ops.robe.cpu import block_starts_fast
    from gpu_ops.robe.hashing import P
    from gpu_ops.robe.reference import block_starts

    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 2**40 if big else P, (50,), generator=g)
    rows[:2] = torch.tensor([0, P - 1])
    if big:
        rows[2:4] = torch.tensor([P, 2**62])
    abc = (int(torch.randint(1, P, (1,), generator=g)), int(torch.randint(0, P, (1,), generator=g)), 7)
    assert torch.equal(block_starts_fast(rows, nb, num_floats, 32, *abc),
                       block_starts(rows, nb, num_floats, 32, abc))
