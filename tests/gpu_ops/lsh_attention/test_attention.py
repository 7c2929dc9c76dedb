"""LSH attention against full attention and against a loop model of what each query sees;
masks (padding, batch rows); hashing; input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_ops.lsh_attention import full_attention, lsh_attention, lsh_buckets, num_buckets_for, random_rotations

_FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _inputs(N, L, d, dv, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(N, L, d, generator=g, dtype=dtype)
    v = torch.randn(N, L, dv, generator=g, dtype=dtype)
    lengths = torch.randint(0, L + 1, (N,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    return qk, v, mask


@_FEW
@given(N=st.integers(1, 3), L=st.integers(1, 40), d=st.integers(2, 8), n_hashes=st.integers(1, 4),
       n_buckets=st.sampled_from([1, 2, 4, 8]), extra=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_equals_full_attention_when_chunks_cover_the_sequence(N, L, d, n_hashes, n_buckets, extra, seed):
    # one chunk (chunk >= L) or two chunks (2 * chunk >= L): every round sees every key
    qk, v, mask = _inputs(N, L, d, 3, seed)
    rot = random_rotations(d, n_hashes, n_buckets, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    ref = full_attention(qk, v, mask)
    for chunk in (L + extra, -(-L // 2)):
        out = lsh_attention(qk, v, mask, rotations=rot, chunk_size=chunk, n_buckets=n_buckets)
        torch.testing.assert_close(out, ref)


def test_equals_full_attention_when_everything_hashes_to_one_bucket():
    # identical directions: every token lands in the same bucket; chunks still split the sequence,
    # so agreement needs the window to cover it (two chunks of 24 for 48 tokens)
    qk, v, mask = _inputs(2, 48, 6, 4, 1)
    g = torch.Generator().manual_seed(2)
    scale = 0.5 + torch.rand(2, 48, 1, generator=g, dtype=torch.float64)
    qk = scale * (torch.ones_like(qk) + 1e-4 * qk)   # nearly one direction, different lengths
    rot = random_rotations(6, 3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = lsh_buckets(qk, rot)                      # (N, rounds, L): one bucket per round
    assert torch.equal(b, b[..., :1].expand_as(b)) and b.unique().numel() > 1
    out = lsh_attention(qk, v, mask, rotations=rot, chunk_size=24)
    torch.testing.assert_close(out, full_attention(qk, v, mask))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(N=st.integers(1, 2), L=st.integers(2, 30), chunk=st.integers(1, 6), n_hashes=st.integers(1, 3),
       n_buckets=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**16))
def test_rounds_combine_to_softmax_over_keys_seen(loop_model, N, L, chunk, n_hashes, n_buckets, seed):
    # logsumexp weights + the log-count correction = softmax over the union of the rounds' windows
    seen_keys, union_softmax = loop_model
    qk, v, mask = _inputs(N, L, 4, 3, seed)
    rot = random_rotations(4, n_hashes, n_buckets, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    out = lsh_attention(qk, v, mask, rotations=rot, chunk_size=chunk)
    seen = seen_keys(lsh_buckets(qk, rot), mask, chunk)
    torch.testing.assert_close(out, union_softmax(qk, v, mask, seen))


def test_approximates_full_attention_on_planted_clusters(planted_clusters):
    qk, v = planted_clusters(N=2, L=512, d=16, clusters=32, seed=0)
    ref = full_attention(qk, v)
    rot = random_rotations(16, 8, 32, generator=torch.Generator().manual_seed(1))

    def err(out):
        return float((out - ref).norm() / ref.norm())

    lsh = err(lsh_attention(qk, v, rotations=rot, chunk_size=64))
    local = err(lsh_attention(qk, v, rotations=rot, chunk_size=64, n_buckets=1))  # same budget, no hashing
    one_round = err(lsh_attention(qk, v, rotations=rot[:, :1], chunk_size=64))
    assert lsh < 0.05, lsh
    assert lsh < 0.05 * local, (lsh, local)
    assert lsh < one_round, (lsh, one_round)


@pytest.mark.parametrize("mode", ["lsh", "full"])
def test_padding_and_other_rows_never_leak(mode):
    N, L, d = 3, 40, 6
    qk, v, _ = _inputs(N, L, d, 5, 7)
    mask = torch.ones(N, L, dtype=torch.bool)
    mask[0, 25:] = False
    mask[1, :] = False
    rot = random_rotations(d, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(qk, v):
        if mode == "full":
            return full_attention(qk, v, mask)
        return lsh_attention(qk, v, mask, rotations=rot, chunk_size=8)

    out = run(qk, v)
    qk2, v2 = qk.clone(), v.clone()
    qk2[0, 25:] = 100 * torch.randn(15, d, dtype=torch.float64)   # row 0's padding
    v2[0, 25:] = 1e6
    qk2[2] = torch.randn(L, d, dtype=torch.float64)                # another user
    v2[2] = -v2[2]
    out2 = run(qk2, v2)
    torch.testing.assert_close(out2[0], out[0], rtol=0, atol=0)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.equal(out2[1], out[1])
    assert torch.isfinite(out).all()

    # and no gradient crosses: row 0's output depends on row 0's real tokens only
    qk.requires_grad_(True)
    v.requires_grad_(True)
    run(qk, v)[0].sum().backward()
    for g in (qk.grad, v.grad):
        assert torch.equal(g[1:], torch.zeros_like(g[1:]))
        assert torch.equal(g[0, 25:], torch.zeros_like(g[0, 25:]))
        assert g[0, :25].abs().sum() > 0


def test_self_only_when_nothing_else():
    # a single real token attends to itself; two tokens attend to each other
    qk, v, _ = _inputs(1, 3, 4, 2, 3)
    one = torch.tensor([[True, False, False]])
    torch.testing.assert_close(full_attention(qk, v, one)[0, 0], v[0, 0])
    two = torch.tensor([[True, True, False]])
    out = full_attention(qk, v, two)
    torch.testing.assert_close(out[0, 0], v[0, 1])
    torch.testing.assert_close(out[0, 1], v[0, 0])


def test_gradcheck_lsh_attention():
    qk, v, mask = _inputs(2, 9, 3, 2, 5)
    mask[0, 6:] = False
    rot = random_rotations(3, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    qk.requires_grad_(True)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: lsh_attention(a, b, mask, rotations=rot, chunk_size=3), (qk, v))


def test_buckets_are_angular_and_in_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 8, generator=g)
    rot = random_rotations(8, 3, 6, generator=g)
    b = lsh_buckets(x, rot)
    assert b.shape == (2, 3, 50) and b.min() >= 0 and b.max() < 6
    assert torch.equal(lsh_buckets(3.7 * x, rot), b)          # scale-invariant
    # the opposite vector lands in the mirrored bucket (argmax of [xR; -xR] swaps halves)
    assert torch.equal(lsh_buckets(-x, rot), (b + 3) % 6)
    assert num_buckets_for(1000, 64) == 16 and num_buckets_for(10, 64) == 2
    # hashed a slice of the sequence at a time: the same buckets as [xR; -xR] formed whole
    r = torch.einsum("nld,dhr->nhlr", x, rot)
    whole = torch.cat([r, -r], dim=-1).argmax(dim=-1)
    for block_elems in (1 << 24, 100, 1):
        assert torch.equal(lsh_buckets(x, rot, block_elems=block_elems), whole)


@pytest.mark.parametrize("bad", [
    dict(chunk_size=0), dict(mask=torch.ones(2, 5)), dict(mask=torch.ones(2, 4, dtype=torch.bool)),
    dict(v=torch.zeros(2, 4, 3)),
])
def test_bad_arguments_raise(bad):
    kw = dict(qk=torch.zeros(2, 5, 4), v=torch.zeros(2, 5, 3), mask=None,
              rotations=random_rotations(4, 1, 2), chunk_size=2)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError)):
        lsh_attention(kw.pop("qk"), kw.pop("v"), kw.pop("mask"), **kw)
    with pytest.raises(ValueError, match="n_buckets"):
        random_rotations(4, 1, 3)
