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


def mlp(sizes: list[int], *, last_activation: bool) -> "MLP":
    """Linear layers of widths ``sizes[0] -> sizes[1] -> ...`` with ReLU between them."""
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"MLP widths must be >= 1 and at least two, got {sizes}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return MLP(*layers)


class _MLPFunction(torch.autograd.Function):
    """Linear (+ ReLU) layers as one autograd node: the forward keeps each layer's output
    (ReLU applied in place), the backward runs per layer the ReLU mask, the bias sum and two
    matmuls, with no per-op autograd nodes or extra activation copies."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, relu: tuple[bool, ...], *params: torch.Tensor) -> torch.Tensor:
        acts = [x]
        h = x
        for i, on in enumerate(relu):
            h = torch.addmm(params[2 * i + 1], h, params[2 * i].t())   # (B, out)
            if on:
                h.relu_()
            acts.append(h)
        ctx.relu = relu
        ctx.save_for_backward(*params, *acts)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        relu = ctx.relu
        n = len(relu)
        saved = ctx.saved_tensors
        params, acts = saved[:2 * n], saved[2 * n:]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        g = grad
        for i in reversed(range(n)):
            if relu[i]:
                g = torch.ops.aten.threshold_backward(g, acts[i + 1], 0)  # as ReLU's own backward
            if ctx.needs_input_grad[2 + 2 * i]:
                # an input width that is not a multiple of 8 (13 dense features, 367 interaction
                # outputs) makes MKL slow as the row length of the weight gradient: it is taken
                # transposed then (~0.5 ms less each at 1024 x 512 x 367 on one AVX2 core)
                a = acts[i]
                grads[2 * i] = a.t().mm(g).t().contiguous() if a.shape[1] % 8 else g.t().mm(a)  # (out, in)
            if ctx.needs_input_grad[3 + 2 * i]:
                grads[2 * i + 1] = g.sum(0)                            # (out,)
            if i > 0 or ctx.needs_input_grad[0]:
                # (the input gradient stays row-major: its consumers, e.g. the interaction's
                # backward, cost more on a transposed one than the transposed product saves)
                g = g.mm(params[2 * i])                                # (B, in)
        return (g if ctx.needs_input_grad[0] else None), None, *grads


class MLP(nn.Sequential):
    """``nn.Sequential`` of Linear and ReLU layers (same parameters and state dict) whose
    forward, when it records gradients of float32/float64 CPU tensors, runs as one autograd
    node (:class:`_MLPFunction`); otherwise (inference, autocast, other layer kinds) layer by
    layer."""

    def _plan(self) -> tuple[list[nn.Linear], tuple[bool, ...]] | None:
        mods = list(self)
        linears, relu = [], []
        for i, m in enumerate(mods):
            if isinstance(m, nn.Linear) and m.bias is not None:
                linears.append(m)
                relu.append(i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU))
            elif not isinstance(m, nn.ReLU) or i == 0 or not isinstance(mods[i - 1], nn.Linear):
                return None
        return linears, tuple(relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if (torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
            plan = self._plan()
            if plan is not None and all(p.dtype == x.dtype for m in plan[0] for p in (m.weight, m.bias)):
                linears, relu = plan
                return _MLPFunction.apply(x, relu, *(p for m in linears for p in (m.weight, m.bias)))
        return super().forward(x)


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
