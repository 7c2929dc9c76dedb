"""DLRM building blocks: the dense arch (bottom MLP), the interaction arches, the over arch.

Reference architecture: Naumov et al., "Deep Learning Recommendation Model for
Personalization and Recommendation Systems", 2019 (https://arxiv.org/abs/1906.00091).
DCNv2 cross layers: Wang et al., WWW 2021 (https://arxiv.org/abs/2008.13535), the
interaction of the current MLPerf recommendation benchmark.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int], *, last_activation: bool) -> nn.Sequential:
    """Linear layers of widths ``sizes[0] -> sizes[1] -> ...`` with ReLU between them."""
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"MLP widths must be >= 1 and at least two, got {sizes}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DotInteraction(nn.Module):
    """Pairwise dot products of the F = T + 1 vectors (strict lower triangle), then the
    bottom output concatenated: (B, F, d) -> (B, d + F(F-1)/2)."""

    def __init__(self, num_vectors: int):
        super().__init__()
        li, lj = torch.tril_indices(num_vectors, num_vectors, offset=-1)
        # flat positions in the (F*F) matrix: index_select's backward is a cheap index_add,
        # where z[:, li, lj] would backprop through a sorting index_put
        self.register_buffer("tril", li * num_vectors + lj, persistent=False)
        self.out_features_extra = num_vectors * (num_vectors - 1) // 2

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = torch.cat([dense.unsqueeze(1), sparse], dim=1)         # (B, F, d)
        z = torch.bmm(x, x.transpose(1, 2))                        # (B, F, F)
        pairs = z.flatten(1).index_select(1, self.tril)             # (B, F(F-1)/2)
        return torch.cat([dense, pairs], dim=1)                    # (B, d + F(F-1)/2)


class CrossInteraction(nn.Module):
    """DCNv2 cross network over x0 = [dense, flattened embeddings] (B, F*d):
    x_{l+1} = x0 * (U_l (V_l x_l) + b_l) + x_l, low rank when ``rank`` > 0."""

    def __init__(self, width: int, num_layers: int, rank: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"dcn_layers must be >= 1, got {num_layers}")
        if rank < 0:
            raise ValueError(f"dcn_rank must be >= 0, got {rank}")
        if rank == 0 or rank >= width:
            self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        else:
            self.layers = nn.ModuleList(
                nn.Sequential(nn.Linear(width, rank, bias=False), nn.Linear(rank, width))
                for _ in range(num_layers))
        self.width = width

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([dense, sparse.flatten(1)], dim=1)          # (B, F*d)
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x                                                   # (B, F*d)
