"""robe_lookup (the registered op, CPU path) against the element-by-element contract."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_ops import RobeEmbedding, RobeHash, robe_lookup, robe_lookup_reference

P = 2038074743


@st.composite
def cases(draw):
    """Small random problems: tables, dim, block (dividing dim or not, > dim, 1), bags."""
    num_tables = draw(st.integers(1, 3))
    big = draw(st.booleans())  # tables past 2**31 rows: global rows beyond int32
    sizes = [draw(st.integers(1, 6)) if not big else draw(st.integers(2**31, 2**33))
             for _ in range(num_tables)]
    dim = draw(st.integers(1, 9))
    block = draw(st.sampled_from([1, 2, 3, dim, dim + 2]))
    num_floats = draw(st.integers(block, block + 40))
    batch = draw(st.integers(0, 3))
    multi_hot = draw(st.booleans())
    a = draw(st.integers(1, P - 1))
    b, c = draw(st.integers(0, P - 1)), draw(st.integers(0, P - 1))
    ids, offsets = [], [0] if multi_hot else None
    for _ in range(batch):
        for t in range(num_tables):
            n = draw(st.integers(0, 3)) if multi_hot else 1
            ids += [draw(st.integers(0, sizes[t] - 1)) for _ in range(n)]
            if multi_hot:
                offsets.append(len(ids))
    seed = draw(st.integers(0, 2**16))
    return sizes, dim, block, num_floats, (a, b, c), ids, offsets, seed


def _tensors(sizes, ids, offsets, batch_tables):
    table_offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
    ids_t = torch.tensor(ids, dtype=torch.int64)
    if offsets is None:
        ids_t = ids_t.view(-1, batch_tables)
        return ids_t, None, table_offsets
    return ids_t, torch.tensor(offsets, dtype=torch.int64), table_offsets


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_lookup_matches_contract(contract, case):
    sizes, dim, block, num_floats, abc, ids, offsets, seed = case
    weight = torch.randn(num_floats, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ids_t, offsets_t, table_offsets = _tensors(sizes, ids, offsets, len(sizes))
    kw = dict(table_offsets=table_offsets, dim=dim, block=block, hash_abc=abc, offsets=offsets_t)
    got = robe_lookup(weight, ids_t, table_sizes=sizes, **kw)
    want = torch.tensor(contract(weight.tolist(), ids, offsets, sizes, dim, block, abc),
                        dtype=torch.float64).reshape(-1, len(sizes), dim)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(robe_lookup_reference(weight, ids_t, **kw), want)


def test_module_forward_backward_single_and_multi_hot():
    emb = RobeEmbedding(64, [5, 7, 3], dim=8, block=3, seed=1)
    ids = torch.tensor([[0, 6, 2], [4, 1, 0]])
    out = emb(ids)
    assert out.shape == (2, 3, 8)
    out.square().sum().backward()
    ref_w = emb.weight.detach().clone().requires_grad_()
    ref = robe_lookup_reference(ref_w, ids, table_offsets=emb.table_offsets, dim=8, block=3,
                                hash_abc=emb.hash.abc)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(emb.weight.grad, ref_w.grad)


def test_reference_hash_constants_follow_the_reference_code():
    import numpy as np

    r = np.random.RandomState(7).randint(0, P, 50)
    h = RobeHash.reference(7)
    assert (h.A, h.B, h.C) == (r[2], r[1], r[0])
    s = RobeHash.from_seed(7)
    assert 1 <= s.A < P and 0 <= s.B < P and 0 <= s.C < P
    assert s == RobeHash.from_seed(7) and s != RobeHash.from_seed(8)


@settings(max_examples=8, deadline=None)
@given(cases())
def test_gradcheck_float64(case):
    sizes, dim, block, num_floats, abc, ids, offsets, seed = case
    weight = torch.randn(num_floats, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64, requires_grad=True)
    ids_t, offsets_t, table_offsets = _tensors(sizes, ids, offsets, len(sizes))

    def f(w):
        return robe_lookup(w, ids_t, table_offsets=table_offsets, dim=dim, block=block,
                           hash_abc=abc, offsets=offsets_t)

    assert torch.autograd.gradcheck(f, (weight,))
