"""Reversible blocks: gradients equal plain autograd (gradcheck in float64 and the same encoder
run both ways), RNG replay of dropout / resampled rotations, and activations not stored."""

from __future__ import annotations

import copy

import torch
from torch import nn

from gpu_ops.lsh_attention import ChunkedFeedForward, LSHEncoder, ReversibleBlock, ReversibleSequence


class _Tanh(nn.Module):
    """A small F or G taking (x, mask)."""

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        return torch.tanh(self.lin(x))


def _seq(depth, dim, reversible):
    torch.manual_seed(0)
    blocks = [ReversibleBlock(_Tanh(dim), _Tanh(dim)) for _ in range(depth)]
    return ReversibleSequence(blocks, reversible=reversible).double()


def test_gradcheck_reversible_sequence_inputs_and_params():
    seq = _seq(3, 4, reversible=True)
    x1 = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(seq.parameters())
    assert torch.autograd.gradcheck(lambda a, b, *p: seq(a, b), (x1, x2, *params))


def test_gradcheck_reversible_lsh_encoder_block():
    torch.manual_seed(0)
    enc = LSHEncoder(4, 1, heads=2, head_dim=2, bucket_size=3, n_hashes=2, full_attn_below=0,
                     ff_mult=1).double()
    x = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    assert torch.autograd.gradcheck(lambda a: enc(a, mask), (x,), fast_mode=True)


def _grads(model, x, mask, seed):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = model(x, mask)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


def test_reversible_encoder_gradients_equal_plain_autograd():
    # LSH path, padding, two heads, dropout and rotations resampled per step: all replayed
    torch.manual_seed(0)
    rev = LSHEncoder(8, 2, heads=2, bucket_size=4, n_hashes=2, full_attn_below=0, ff_chunks=3,
                     dropout=0.2, resample_rotations=True).double().train()
    plain = copy.deepcopy(rev)
    plain.layers.reversible = False
    x = torch.randn(3, 14, 8, dtype=torch.float64)
    mask = torch.arange(14)[None, :] < torch.tensor([[14], [9], [0]])
    out_r, gx_r, gp_r = _grads(rev, x, mask, seed=5)
    out_p, gx_p, gp_p = _grads(plain, x, mask, seed=5)
    torch.testing.assert_close(out_r, out_p)
    torch.testing.assert_close(gx_r, gx_p)
    assert gp_r.keys() == gp_p.keys()
    for name in gp_r:
        torch.testing.assert_close(gp_r[name], gp_p[name], msg=name)
    # a different seed draws other dropout masks: the comparison above can fail
    out_other, _, _ = _grads(plain, x, mask, seed=6)
    assert not torch.allclose(out_other, out_p)


def _saved_bytes(model, x, mask):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, mask).sum()
    return total


def test_reversible_saves_the_same_activations_at_any_depth():
    x = torch.randn(2, 64, 16, requires_grad=True)
    mask = torch.ones(2, 64, dtype=torch.bool)
    saved = {}
    for reversible in (True, False):
        for depth in (2, 4):
            torch.manual_seed(0)
            enc = LSHEncoder(16, depth, bucket_size=16, full_attn_below=0, reversible=reversible)
            saved[reversible, depth] = _saved_bytes(enc, x, mask)
    assert saved[True, 2] == saved[True, 4]
    assert saved[False, 4] > 1.8 * saved[False, 2]
    assert saved[True, 4] < saved[False, 4] / 4


def test_chunked_feed_forward_equals_unchunked():
    torch.manual_seed(0)
    ff = ChunkedFeedForward(6, mult=2, chunks=4).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    one = copy.deepcopy(ff)
    one.chunks = 1
    torch.testing.assert_close(ff(x), one(x))
