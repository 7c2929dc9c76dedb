"""robe_lookup (the registered op) against the element-by-element contract; autograd,
input checks, the fused SGD update, RobeEmbedding, RobeHash, torch.compile and torch.export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_ops import (
    RobeEmbedding, RobeHash, robe_lookup, robe_lookup_reference, robe_sgd_update_, robe_slot_indices,
)

P = 2038074743
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device"),
    ]),
]
_HC = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def few(n: int) -> settings:
    """Few examples (the suite shares 2 cores), no per-example deadline."""
    return settings(max_examples=n, deadline=None, suppress_health_check=_HC)


def _kw(case, table_offsets, offsets):
    return dict(table_offsets=table_offsets, dim=case.dim, block=case.block, hash_abc=case.abc,
                offsets=offsets)


@pytest.mark.parametrize("device", DEVICES)
@few(30)
@given(data=st.data())
def test_lookup_matches_contract(device, contract, robe_cases, data):
    case = data.draw(robe_cases)
    weight, ids, offsets, table_offsets = case.tensors(device)
    kw = _kw(case, table_offsets, offsets)
    want = torch.tensor(
        contract(weight.tolist(), case.ids, case.offsets, case.sizes, case.dim, case.block, case.abc),
        dtype=torch.float64,
    ).reshape(-1, len(case.sizes), case.dim)
    got = robe_lookup(weight, ids, table_sizes=case.sizes, **kw)
    torch.testing.assert_close(got.cpu(), want)
    torch.testing.assert_close(robe_lookup_reference(weight, ids, **kw).cpu(), want)
    # float32 array: the production dtype
    got32 = robe_lookup(weight.float(), ids, table_sizes=case.sizes, **kw)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.cpu(), want.float())


@few(25)
@given(data=st.data())
def test_slot_indices_match_contract(robe_cases, data):
    case = data.draw(robe_cases)
    _, ids, offsets, table_offsets = case.tensors()
    idx = robe_slot_indices(ids, table_offsets=table_offsets, dim=case.dim, block=case.block,
                            hash_abc=case.abc, num_floats=case.num_floats, offsets=offsets)
    a, b, c = case.abc
    # the table of each flat id
    flat_t = ([j % len(case.sizes) for j in range(len(case.offsets) - 1)
               for _ in range(case.offsets[j + 1] - case.offsets[j])] if case.offsets is not None
              else [n % len(case.sizes) for n in range(len(case.ids))])
    want = [[((sum(case.sizes[:t]) + x) % P * a + (i // case.block) * b + c) % P
             % (case.num_floats - case.block + 1) + i % case.block for i in range(case.dim)]
            for x, t in zip(case.ids, flat_t)]
    assert idx.reshape(-1, case.dim).tolist() == want


@pytest.mark.parametrize("device", DEVICES)
@few(8)
@given(data=st.data())
def test_gradcheck_float64(device, robe_cases, data):
    case = data.draw(robe_cases)
    weight, ids, offsets, table_offsets = case.tensors(device)
    weight.requires_grad_()
    kw = _kw(case, table_offsets, offsets)
    assert torch.autograd.gradcheck(lambda w: robe_lookup(w, ids, **kw), (weight,))


@pytest.mark.parametrize("device", DEVICES)
@few(15)
@given(data=st.data())
def test_backward_and_fused_sgd_match_reference(device, robe_cases, data):
    case = data.draw(robe_cases)
    weight, ids, offsets, table_offsets = case.tensors(device, torch.float32)
    kw = _kw(case, table_offsets, offsets)
    w1, w2 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    out = robe_lookup(w1, ids, **kw)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed)).to(device)
    out.backward(grad_out)
    robe_lookup_reference(w2, ids, **kw).backward(grad_out)
    torch.testing.assert_close(w1.grad, w2.grad)
    w3 = weight.clone()
    robe_sgd_update_(w3, grad_out, ids, lr=0.5, **kw)
    torch.testing.assert_close(w3, weight - 0.5 * w2.grad)


def test_collisions_add_up():
    # An array of exactly Z floats has one possible block start: every id reads M[0:Z].
    weight = torch.arange(4.0, requires_grad=True)
    ids = torch.tensor([[0, 3], [2, 1]])
    out = robe_lookup(weight, ids, table_offsets=torch.tensor([0, 5]), dim=6, block=4,
                      hash_abc=(12345, 678, 9))
    assert out[0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]
    out.sum().backward()
    assert weight.grad.tolist() == [8.0, 8.0, 4.0, 4.0]  # 4 rows x (2, 2, 1, 1) reads


def test_module_single_and_multi_hot():
    emb = RobeEmbedding(64, [5, 7, 3], dim=8, block=3, seed=1)
    assert emb.hash == RobeHash.from_seed(1)
    ids = torch.tensor([[0, 6, 2], [4, 1, 0]])
    # the same ids as bags of one, plus an empty and a two-id bag
    values = torch.tensor([0, 6, 2, 4, 1, 0, 3, 3])
    offsets = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 8, 8])
    one = emb(ids)
    bags = emb(values, offsets)
    assert one.shape == (2, 3, 8) and bags.shape == (3, 3, 8)
    torch.testing.assert_close(bags[:2], one)
    assert bags[2, 0].abs().sum() == 0
    torch.testing.assert_close(bags[2, 1], 2 * emb(torch.tensor([[0, 3, 0]]))[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        emb(torch.tensor([[0, 0, 3]]))  # last table checked through the module's table sizes


def test_robe_hash():
    r = np.random.RandomState(7).randint(0, P, 50)
    h = RobeHash.reference(7)
    assert (h.A, h.B, h.C) == (r[2], r[1], r[0]) and h.P == P
    s = RobeHash.from_seed(7)
    assert 1 <= s.A < P and 0 <= s.B < P and 0 <= s.C < P
    assert s == RobeHash.from_seed(7) and s != RobeHash.from_seed(8)
    with pytest.raises(ValueError, match="RobeHash.A=0"):
        RobeHash(0, 1, 2)


# ----------------------------------------------------------------------------- bad input

def _call(**over):
    kw = dict(weight=torch.zeros(50), ids=torch.tensor([[0, 1], [4, 2]]),
              table_offsets=torch.tensor([0, 5]), dim=4, block=2, hash_abc=(3, 4, 5))
    kw.update(over)
    return robe_lookup(kw.pop("weight"), kw.pop("ids"), **kw)


@pytest.mark.parametrize("over, match", [
    (dict(ids=torch.tensor([[0, 1], [-1, 2]])), "id -1 not in"),
    (dict(ids=torch.tensor([[0, 1], [5, 2]])), r"id 5 not in \[0, 5\)"),
    (dict(ids=torch.tensor([[0, 1], [4, 3]]), table_sizes=[5, 3]), r"id 3 not in \[0, 3\)"),
    (dict(table_sizes=[5, 3, 1]), "table_sizes"),
    (dict(table_sizes=[4, 3]), "table_sizes"),
    (dict(ids=torch.tensor([[0, 1], [4, 2]], dtype=torch.int32)), "ids.dtype=torch.int32"),
    (dict(ids=torch.tensor([[0, 1, 2]])), r"expected \(B, 2\)"),
    (dict(weight=torch.zeros(50, dtype=torch.float16)), "weight.dtype"),
    (dict(weight=torch.zeros(5, 10)), "1-D"),
    (dict(block=51), "block=51 is larger than the array"),
    (dict(block=0), "block=0"),
    (dict(dim=0), "dim=0"),
    (dict(hash_abc=(0, 1, 2)), "hash_abc"),
    (dict(hash_abc=(1, P, 2)), "hash_abc"),
    (dict(table_offsets=torch.tensor([1, 5])), r"table_offsets\[0\] must be 0"),
    (dict(table_offsets=torch.tensor([0, 5], dtype=torch.int32)), "table_offsets"),
    (dict(ids=torch.tensor([0, 1, 4]), offsets=torch.tensor([0, 1, 2, 3])), "offsets has length 4"),
    (dict(ids=torch.tensor([0, 1, 4]), offsets=torch.tensor([0, 1, 2, 2, 4])), "end at len"),
    (dict(ids=torch.tensor([0, 1, 4]), offsets=torch.tensor([0, 2, 1, 3, 3])), "non-decreasing"),
    (dict(ids=torch.tensor([0, 6, 1]), offsets=torch.tensor([0, 1, 1, 2, 3])), r"id 6 not in \[0, 5\)"),
])
def test_bad_input_raises_value_error(over, match):
    with pytest.raises(ValueError, match=match):
        _call(**over)


def test_validate_false_skips_the_data_checks_only():
    _call(ids=torch.tensor([[0, 1], [9, 2]]), validate=False)  # no sync, no range check
    with pytest.raises(ValueError, match="ids.dtype"):
        _call(ids=torch.tensor([[0, 1]], dtype=torch.int32), validate=False)


# ----------------------------------------------------------------------------- compile / export

class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = RobeEmbedding(97, [5, 7], dim=4, block=3, seed=2)

    def forward(self, values, offsets):
        e = self.emb(values, offsets)  # (B, T, dim)
        return (e[:, 0] * e[:, 1]).sum(1)  # (B,) dot-product interaction; little to codegen


def test_torch_compile_and_export_on_cpu():
    torch.manual_seed(0)
    model = _Tiny()
    values = torch.tensor([0, 6, 2, 4, 4])
    offsets = torch.tensor([0, 1, 2, 2, 5])  # B=2, T=2; bag 2 empty
    eager = model(values, offsets)
    eager.sum().backward()
    grad_eager = model.emb.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(values, offsets)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(model.emb.weight.grad, grad_eager)
    exported = torch.export.export(model, (values, offsets))
    torch.testing.assert_close(exported.module()(values, offsets), eager)
    assert "robeflow.robe_lookup" in str(exported.graph)


def test_cpu_backward_in_many_chunks(monkeypatch):
    import gpu_ops.robe.cpu as cpu

    monkeypatch.setattr(cpu, "_CHUNK_ELEMS", 7)  # 1 id per chunk at dim 5: every boundary
    gen = torch.Generator().manual_seed(3)
    table_offsets = torch.tensor([0, 10, 13])
    lengths = torch.randint(0, 4, (3 * 6,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    values = torch.randint(0, 3, (int(offsets[-1]),), generator=gen)
    weight = torch.randn(40, generator=gen)
    kw = dict(table_offsets=table_offsets, dim=5, block=2, hash_abc=(99991, 5, 7), offsets=offsets)
    w1, w2 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    robe_lookup(w1, values, **kw).square().sum().backward()
    ref = robe_lookup_reference(w2, values, **kw)
    ref.square().sum().backward()
    torch.testing.assert_close(w1.grad, w2.grad)
    w3 = weight.clone()
    robe_sgd_update_(w3, 2 * ref.detach(), values, lr=0.1, **kw)
    torch.testing.assert_close(w3, weight - 0.1 * w2.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_keeps_the_array_and_result_in_float32(device):
    emb = RobeEmbedding(64, [5, 7], dim=4, block=2, seed=0).to(device)
    ids = torch.tensor([[1, 2], [3, 4]], device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = emb(ids)
        (out @ torch.ones(4, 1, device=device)).sum().backward()  # a matmul autocast does cast
    assert out.dtype == torch.float32 and emb.weight.grad.dtype == torch.float32
    torch.testing.assert_close(out, emb(ids))
