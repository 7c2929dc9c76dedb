"""SimHash signatures and Hamming top-k against a loop model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_ops.lsh_attention import hamming_topk, simhash_signatures
from gpu_ops.lsh_attention.simhash import hamming_distance


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 12), m=st.integers(1, 8), shared_keys=st.booleans(),
       shared_mask=st.booleans(), integer_path=st.booleans(), data=st.data())
def test_hamming_topk_matches_loop_model(B, L, m, shared_keys, shared_mask, integer_path, data):
    import gpu_ops.lsh_attention.simhash as simhash

    k = data.draw(st.integers(1, L))
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(B, m, generator=g) < 0.5
    keys = torch.rand(1 if shared_keys else B, L, m, generator=g) < 0.5
    mask = torch.rand(1 if shared_mask else B, L, generator=g) < 0.7
    first = (torch.rand(B, L, generator=g) < 0.3) if data.draw(st.booleans()) else None
    exact = simhash._FLOAT32_EXACT
    simhash._FLOAT32_EXACT = 0 if integer_path else exact   # 0: the int64 path of very long histories
    try:
        idx, valid = hamming_topk(q, keys, mask, k, first=first)
    finally:
        simhash._FLOAT32_EXACT = exact
    keys, mask = keys.expand(B, L, m), mask.expand(B, L)
    for b in range(B):
        # real keys by (first ones before the rest, distance, most recent first), then padding
        order = sorted(range(L), key=lambda j: (not bool(mask[b, j]),
                                                first is not None and not bool(first[b, j]),
                                                int((keys[b, j] != q[b]).sum()), -j))
        real = [j for j in order if mask[b, j]]
        got = idx[b].tolist()
        n_real = min(k, len(real))
        assert got[:n_real] == real[:n_real]
        assert valid[b].tolist() == [True] * n_real + [False] * (k - n_real)


def test_signatures_are_signs_of_projections():
    g = torch.Generator().manual_seed(0)
    x, planes = torch.randn(4, 5, generator=g), torch.randn(5, 7, generator=g)
    sig = simhash_signatures(x, planes)
    assert sig.shape == (4, 7) and sig.dtype == torch.bool
    assert torch.equal(simhash_signatures(-x, planes), ~sig)
    with pytest.raises(ValueError, match="planes"):
        simhash_signatures(x, torch.randn(4, 7))
    with pytest.raises(ValueError, match="k must be"):
        hamming_topk(sig[:, None].expand(4, 3, 7)[:, 0], sig[:, None].expand(4, 3, 7), torch.ones(4, 3, dtype=torch.bool), 4)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 4), L=st.integers(1, 9), m=st.integers(1, 40), shared=st.booleans(), seed=st.integers(0, 2**16))
def test_hamming_distance_counts_the_differing_bits(B, L, m, shared, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(B, m, generator=g) < 0.5
    keys = torch.rand(1 if shared else B, L, m, generator=g) < 0.5
    assert torch.equal(hamming_distance(q, keys), (keys != q[:, None, :]).sum(-1))
