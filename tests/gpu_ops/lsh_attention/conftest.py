"""Fixtures for the LSH attention tests: an independent loop model of multi-round chunked
attention (which keys each query sees), and planted-cluster data."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

SELF = -5e4  # written out again on purpose: the tests do not trust the package's constant


def seen_keys(buckets: torch.Tensor, mask: torch.Tensor, chunk: int) -> torch.Tensor:
    """(N, L, L) bool: key j is in query i's window in at least one round.

    buckets (N, H, L) from the hash; padding sorts after every bucket; the sequence is padded
    to whole chunks; a chunk sees itself and its cyclic predecessor. Python loops on purpose.
    """
    N, H, L = buckets.shape
    Lp = -(-L // chunk) * chunk
    C = Lp // chunk
    seen = torch.zeros(N, L, L, dtype=torch.bool)
    for n in range(N):
        for r in range(H):
            big = int(buckets.max()) + 1
            keys = [(int(buckets[n, r, t]) if t < L and mask[n, t] else big, t) for t in range(Lp)]
            order = [t for _, t in sorted(keys)]
            chunk_of = {t: i // chunk for i, t in enumerate(order)}
            for i in range(L):
                ci = chunk_of[i]
                for j in range(L):
                    if chunk_of[j] == ci or (C > 1 and chunk_of[j] == (ci - 1) % C):
                        seen[n, i, j] = True
    return seen


def union_softmax(qk: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Shared-QK softmax of each query over exactly the keys in ``seen`` (loops over rows)."""
    N, L, d = qk.shape
    out = torch.zeros(N, L, v.shape[-1], dtype=qk.dtype)
    for n in range(N):
        k = qk[n] / qk[n].norm(dim=-1, keepdim=True).clamp_min(1e-12)
        for i in range(L):
            if not mask[n, i]:
                continue
            js = [j for j in range(L) if seen[n, i, j] and mask[n, j]]
            s = torch.tensor([SELF if j == i else float(qk[n, i] @ k[j]) / math.sqrt(d) for j in js],
                             dtype=qk.dtype)
            out[n, i] = torch.softmax(s, 0) @ v[n, js]
    return out


@pytest.fixture(scope="session")
def loop_model() -> tuple[Callable, Callable]:
    """(seen_keys, union_softmax)."""
    return seen_keys, union_softmax


@pytest.fixture()
def planted_clusters() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``make(N, L, d, clusters, seed)`` -> (qk (N, L, d), v (N, L, 8)): tokens near one of
    ``clusters`` random directions, long enough that attention stays inside the cluster."""

    def make(N: int = 2, L: int = 512, d: int = 16, clusters: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        centers = torch.nn.functional.normalize(torch.randn(N, clusters, d, generator=g), dim=-1)
        assign = torch.randperm(L, generator=g) % clusters
        x = centers[:, assign] + 0.03 * torch.randn(N, L, d, generator=g)
        return 30 * torch.nn.functional.normalize(x, dim=-1), torch.randn(N, L, 8, generator=g)

    return make
