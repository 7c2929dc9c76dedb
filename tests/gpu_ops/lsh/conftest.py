"""Fixtures for the LSH layer tests: planted neurons whose true top set for a query is known."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch


@dataclass
class Planted:
    weight: torch.Tensor   # (N, d) unit rows
    queries: torch.Tensor  # (Q, d) unit rows
    top: torch.Tensor      # (Q, m) ids of the m planted neighbours of each query


@pytest.fixture
def planted() -> Planted:
    """2000 random unit neurons in d = 64, plus m = 8 neurons at cosine ~0.98 to each of 6 queries."""
    g = torch.Generator().manual_seed(7)
    d, n_random, n_q, m = 64, 2000, 6, 8
    queries = torch.nn.functional.normalize(torch.randn(n_q, d, generator=g), dim=1)
    near = queries.repeat_interleave(m, 0) + 0.2 / d ** 0.5 * torch.randn(n_q * m, d, generator=g)
    rand = torch.randn(n_random, d, generator=g)
    weight = torch.nn.functional.normalize(torch.cat([rand, near]), dim=1)
    perm = torch.randperm(weight.shape[0], generator=g)           # planted ids spread over the range
    weight = weight[perm]
    where = torch.empty_like(perm)
    where[perm] = torch.arange(perm.numel())
    top = where[n_random:].view(n_q, m)
    return Planted(weight, queries, top)
