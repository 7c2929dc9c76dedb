"""The short-sequence path (dense_attention) against the reference full attention: values
and gradients, with and without padding; the encoder's fixed LSH rotations drawn once."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_ops.lsh_attention import LSHSelfAttention, dense_attention, full_attention, random_rotations

_FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _inputs(N, L, d, dv, seed, dtype=torch.float64, pad=True):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(N, L, d, generator=g, dtype=dtype)
    v = torch.randn(N, L, dv, generator=g, dtype=dtype)
    lengths = torch.randint(0, L + 1, (N,), generator=g) if pad else torch.full((N,), L)
    return qk, v, torch.arange(L)[None, :] < lengths[:, None]


@_FEW
@given(N=st.integers(1, 3), L=st.integers(1, 40), d=st.integers(1, 8), pad=st.booleans(),
       seed=st.integers(0, 2**16))
def test_dense_equals_full_attention_values_and_gradients(N, L, d, pad, seed):
    qk, v, mask = _inputs(N, L, d, 3, seed, pad=pad)
    outs, grads = [], []
    for fn in (full_attention, dense_attention):
        a, b = qk.clone().requires_grad_(), v.clone().requires_grad_()
        out = fn(a, b, mask)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs.append(out)
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(grads[1], grads[0])


def test_dense_without_mask_and_float32_at_serving_length():
    qk, v, _ = _inputs(2, 1000, 16, 16, 3, dtype=torch.float32, pad=False)
    torch.testing.assert_close(dense_attention(qk, v), full_attention(qk, v))
    torch.testing.assert_close(dense_attention(qk, v, torch.ones(2, 1000, dtype=torch.bool)),
                               full_attention(qk, v))


def test_dense_padding_gets_zero_weight_and_zero_output():
    qk, v, mask = _inputs(2, 12, 4, 3, 5, pad=False)
    mask[0, 7:] = False
    mask[1, 1:] = False   # one real token: it attends to itself only
    out = dense_attention(qk, v, mask)
    moved = v.clone()
    moved[:, 7:] = 1e6    # what padded tokens hold never reaches a real token
    torch.testing.assert_close(dense_attention(qk, moved, mask), out)
    assert torch.equal(out[0, 7:], torch.zeros_like(out[0, 7:]))
    torch.testing.assert_close(out[1, 0], v[1, 0])
    assert torch.equal(out[1, 1:], torch.zeros_like(out[1, 1:]))


def test_fixed_rotations_are_the_seeds_and_drawn_once():
    attn = LSHSelfAttention(8, heads=2, n_hashes=3, seed=7).eval()
    r1 = attn.rotations(6, torch.device("cpu"), torch.float32)
    assert attn.rotations(6, torch.device("cpu"), torch.float32) is r1
    torch.testing.assert_close(r1, random_rotations(4, 3, 6, generator=torch.Generator().manual_seed(7)))
    assert attn.rotations(8, torch.device("cpu"), torch.float32).shape == (4, 3, 4)
    attn.train()
    assert attn.rotations(6, torch.device("cpu"), torch.float32) is r1   # no resampling asked
    resampling = LSHSelfAttention(8, heads=2, n_hashes=3, seed=7, resample_rotations=True).train()
    torch.manual_seed(0)
    a = resampling.rotations(6, torch.device("cpu"), torch.float32)
    b = resampling.rotations(6, torch.device("cpu"), torch.float32)
    assert not torch.equal(a, b)


def test_dense_without_autograd_reuses_its_workspace_and_returns_its_own_tensor():
    import gpu_ops.lsh_attention.dense as dense

    qk, v, mask = _inputs(2, 30, 4, 3, 8, dtype=torch.float32)
    ref = full_attention(qk, v, mask)
    with torch.inference_mode():
        a = dense_attention(qk, v, mask)
    with torch.no_grad():
        b = dense_attention(qk, v, mask)
        work = dense._scores_workspace(2 * 30 * 30, torch.float32, qk.device)
        c = dense_attention(qk[:1, :10], v[:1, :10])      # a smaller call reuses the same memory
        assert dense._scores_workspace(2 * 30 * 30, torch.float32, qk.device).data_ptr() == work.data_ptr()
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, ref)                      # not overwritten by the later call
    torch.testing.assert_close(c, full_attention(qk[:1, :10], v[:1, :10]))
    big = dense.WORKSPACE_MAX_BYTES // 4 + 1
    assert dense._scores_workspace(big, torch.float32, qk.device) is None


def test_training_and_scoring_paths_agree_in_float32_with_short_and_empty_rows():
    qk, v, mask = _inputs(4, 300, 16, 8, 11, dtype=torch.float32)
    mask[0] = False            # an empty history
    mask[1, 1:] = False        # one event: it attends to itself only
    mask[2, :] = True
    with torch.no_grad():
        scored = dense_attention(qk, v, mask)                              # the workspace path
    a, b = qk.clone().requires_grad_(), v.clone().requires_grad_()
    trained = dense_attention(a, b, mask)                                  # the fused path
    torch.testing.assert_close(trained.detach(), scored)
    torch.testing.assert_close(trained[1, 0].detach(), v[1, 0])
    assert torch.equal(trained[0].detach(), torch.zeros_like(trained[0]))
    trained.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert torch.equal(b.grad[0], torch.zeros_like(b.grad[0]))             # nothing reaches an empty row


def test_scoring_beyond_the_workspace_takes_the_fused_path_with_the_same_numbers(monkeypatch):
    from gpu_ops.lsh_attention import dense

    qk, v, mask = _inputs(5, 60, 8, 4, 2)
    mask[1, 1:] = False
    expected = full_attention(qk, v, mask)
    monkeypatch.setattr(dense, "WORKSPACE_MAX_BYTES", 0)
    fused, calls = dense._fused_attention, []

    def spy(*args):
        calls.append(args[0].shape)
        return fused(*args)

    monkeypatch.setattr(dense, "_fused_attention", spy)
    with torch.no_grad():
        out = dense_attention(qk, v, mask)
    assert calls == [qk.shape]
    torch.testing.assert_close(out, expected)
