"""SimHash, DWTA and the MIPS transform."""

from __future__ import annotations

import math

import pytest
import torch

from gpu_ops.lsh import DWTAHash, SimHash, mips_augment, query_augment
from gpu_ops.lsh.hashing import sign_codes


@pytest.mark.parametrize("family", ["simhash", "dwta"])
def test_codes_shape_range_and_chunking(family: str) -> None:
    h = SimHash(16, 7, 5, seed=3) if family == "simhash" else DWTAHash(16, 7, 5, bin_size=4, seed=3)
    x = torch.randn(300, 16)
    codes = h.codes(x)
    assert codes.shape == (300, 5) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 2 ** 7
    torch.testing.assert_close(h.codes(x, chunk=37), codes)       # chunking changes nothing


def test_simhash_bits_are_projection_signs() -> None:
    h = SimHash(8, 3, 2, seed=0)
    x = torch.randn(50, 8)
    signs = (x @ h.projections > 0).long().view(50, 2, 3)          # (N, L, K)
    expected = signs[..., 0] + 2 * signs[..., 1] + 4 * signs[..., 2]
    torch.testing.assert_close(h.codes(x), expected)


@pytest.mark.parametrize("bits,dtype", [(1, torch.float32), (15, torch.float32), (24, torch.float32),
                                        (26, torch.float32), (20, torch.float64)])
def test_sign_codes_pack_every_bit_exactly(bits: int, dtype: torch.dtype) -> None:
    # the float32 product must stay exact up to 24 bits; wider codes take the int64 path
    tables = 3
    proj = torch.randn(500, tables * bits, dtype=dtype)
    proj[0] = 1.0                                                  # every bit set: the largest code
    proj[1, 5 % proj.shape[1]] = 0.0                               # 0 is not > 0
    proj[2, 0] = 1e-300 if dtype == torch.float64 else 1e-40        # > 0, though 0 once rounded to float32
    powers = 2 ** torch.arange(bits, dtype=torch.int64)
    expected = ((proj > 0).view(500, tables, bits).long() * powers).sum(dim=2)
    got = sign_codes(proj.clone(), tables, bits)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert int(got[0, 0]) == 2 ** bits - 1


def test_simhash_collision_rate_follows_the_angle() -> None:
    # P(bit agrees) = 1 - theta / pi (Charikar); with 64 tables x 16 bits the mean is sharp.
    h = SimHash(32, 16, 64, seed=1)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 32, generator=g)
    for theta in (0.3, 1.2):
        u = torch.randn(1, 32, generator=g)
        u = u - (u @ a.t()) / (a @ a.t()) * a                       # orthogonal to a
        b = math.cos(theta) * a / a.norm() + math.sin(theta) * u / u.norm()
        pa, pb = (a @ h.projections > 0), (b @ h.projections > 0)
        agree = (pa == pb).float().mean().item()
        assert abs(agree - (1 - theta / math.pi)) < 0.06


def test_dwta_is_the_argmax_of_each_bin_and_ignores_positive_scaling() -> None:
    h = DWTAHash(32, 6, 4, bin_size=8, seed=2)                     # 2 bins of 3 bits per table
    x = torch.rand(20, 32) + 0.1                                    # no zeros: no densification
    winners = x[:, h.bins].argmax(dim=2).view(20, 4, 2)
    torch.testing.assert_close(h.codes(x), winners[..., 0] + 8 * winners[..., 1])
    torch.testing.assert_close(h.codes(3.5 * x), h.codes(x))


def test_dwta_densifies_empty_bins_from_their_probes() -> None:
    h = DWTAHash(64, 3, 8, bin_size=8, seed=4)                     # one bin per table, disjoint bins
    x = torch.zeros(1, 64)
    x[0, h.bins[0]] = torch.arange(8.0) + 1                         # only bin 0 is non-empty: winner 7
    codes = h.codes(x)[0]
    assert int(codes[0]) == 7
    # every other bin borrows bin 0's winner shifted by the probe rank that found it
    for b in range(1, 8):
        rank = int((h.probe[b] == 0).nonzero()[0])
        assert int(codes[b]) == (7 + rank) % 8


def test_mips_augment_orders_by_inner_product() -> None:
    g = torch.Generator().manual_seed(5)
    w = torch.randn(100, 12, generator=g) * torch.rand(100, 1, generator=g) * 3
    q = torch.randn(4, 12, generator=g)
    aug, m = mips_augment(w)
    torch.testing.assert_close(aug.norm(dim=1), torch.ones(100))
    cos = torch.nn.functional.normalize(query_augment(q), dim=1) @ aug.t()
    torch.testing.assert_close(cos, (q @ w.t()) / (m * q.norm(dim=1, keepdim=True)))


@pytest.mark.parametrize("kw, name", [(dict(dim=0), "dim"), (dict(bin_size=6), "bin_size")])
def test_bad_hash_parameters(kw: dict, name: str) -> None:
    args = dict(dim=8, bits=4, tables=2, bin_size=4) | kw
    with pytest.raises(ValueError, match=name):
        DWTAHash(**args)


def test_codes_reject_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"expected \(N, 8\)"):
        SimHash(8, 4, 2).codes(torch.randn(3, 9))
