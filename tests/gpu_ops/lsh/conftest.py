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


@dataclass
class Catalogue:
    weight: torch.Tensor    # (N, d) item vectors: cluster centre + item offset, small noise past the latent width
    bias: torch.Tensor      # (N,) item popularity
    planted: torch.Tensor   # (Q, d) the world's purchase intents, zero past the latent width
    random: torch.Tensor    # (Q, d) random vectors over all d (an untrained user tower's)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    """40K item vectors laid out as ``benchmarks/retrieve_bench.py`` lays out its planted
    catalogue (clusters of 100 of ``dlrm.retrieval_world``, 16 latent dims of 32), with 40
    planted and 40 random user vectors."""
    from dlrm.retrieval_world import PlantedWorld, WorldConfig

    n, d, q = 40_000, 32, 40
    world = PlantedWorld(WorldConfig(items=n, cluster_size=100, latent=16))
    g = torch.Generator().manual_seed(1)
    k = torch.arange(n) // 100
    weight = torch.cat([4 * world.centres[k] + 3 * world.offsets, 0.05 * torch.randn(n, d - 16, generator=g)], 1)
    z = world.z(world.sample(q, seed=4)[0])
    planted = torch.cat([z, torch.zeros(q, d - 16)], 1)
    return Catalogue(weight.contiguous(), world.item_pop.clone(), planted, 0.3 * torch.randn(q, d, generator=g))
