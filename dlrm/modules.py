"""DLRM building blocks: the dense arch (bottom MLP), the interaction arches, the over arch.

Reference architecture: Naumov et al., "Deep Learning Recommendation Model for
Personalization and Recommendation Systems", 2019 (https://arxiv.org/abs/1906.00091).
DCNv2 cross layers: Wang et al., WWW 2021 (https://arxiv.org/abs/2008.13535), the
interaction of the current MLPerf recommendation benchmark.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_nn
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


class _DotPairs(torch.autograd.Function):
    """[dense, strict lower triangle of x x^T] for x = [dense; sparse], with a backward of
    one batched matmul: z = x x^T gives dx = (G + G^T) x for the pair gradients G, and the
    symmetric G + G^T is one gather of the output gradient (each pair's gradient at (i, j)
    and (j, i), zero on the diagonal). Autograd of the forward would zero-fill and scatter G,
    then run two bmm (G x and G^T x) and add them."""

    @staticmethod
    def forward(ctx, dense: torch.Tensor, sparse: torch.Tensor, tril: torch.Tensor,
                mirror: torch.Tensor) -> torch.Tensor:
        x = torch.cat([dense.unsqueeze(1), sparse], dim=1)         # (B, F, d)
        z = torch.bmm(x, x.transpose(1, 2))                        # (B, F, F)
        pairs = z.flatten(1).index_select(1, tril)                 # (B, P)
        ctx.save_for_backward(x, mirror)
        return torch.cat([dense, pairs], dim=1)                    # (B, d + P)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, mirror = ctx.saved_tensors
        B, F, d = x.shape
        # column P of the padded pair gradients is 0: the diagonal's entry of ``mirror``
        sym = F_nn.pad(grad[:, d:], (0, 1)).index_select(1, mirror)   # (B, F*F) = G + G^T
        gx = torch.bmm(sym.view(B, F, F), x)                       # (B, F, d)
        g_dense = gx[:, 0] + grad[:, :d] if ctx.needs_input_grad[0] else None
        g_sparse = gx[:, 1:] if ctx.needs_input_grad[1] else None
        return g_dense, g_sparse, None, None


class DotInteraction(nn.Module):
    """Pairwise dot products of the F = T + 1 vectors (strict lower triangle), then the
    bottom output concatenated: (B, F, d) -> (B, d + F(F-1)/2)."""

    def __init__(self, num_vectors: int):
        super().__init__()
        li, lj = torch.tril_indices(num_vectors, num_vectors, offset=-1)
        pairs = num_vectors * (num_vectors - 1) // 2
        # flat positions of the pairs in the (F*F) matrix; and for each of the F*F positions,
        # the index of its pair, (i, j) and (j, i) alike (the diagonal: P, a zero column)
        self.register_buffer("tril", li * num_vectors + lj, persistent=False)
        mirror = torch.full((num_vectors * num_vectors,), pairs, dtype=torch.int64)
        mirror[li * num_vectors + lj] = torch.arange(pairs)
        mirror[lj * num_vectors + li] = torch.arange(pairs)
        self.register_buffer("mirror", mirror, persistent=False)
        self.out_features_extra = pairs

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        if dense.dtype != sparse.dtype:   # as torch.cat would promote
            dtype = torch.promote_types(dense.dtype, sparse.dtype)
            dense, sparse = dense.to(dtype), sparse.to(dtype)
        return _DotPairs.apply(dense, sparse, self.tril, self.mirror)  # (B, d + F(F-1)/2)


def dot_interaction_reference(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """:class:`DotInteraction` through plain autograd ops (the definition it is tested against)."""
    x = torch.cat([dense.unsqueeze(1), sparse], dim=1)             # (B, F, d)
    F = x.shape[1]
    li, lj = torch.tril_indices(F, F, offset=-1, device=x.device)
    return torch.cat([dense, torch.bmm(x, x.transpose(1, 2))[:, li, lj]], dim=1)


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
