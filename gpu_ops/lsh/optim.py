"""Row-sparse Adagrad and Adam: only the rows a step touched move, and only their state.

The state is kept per row (per output neuron), as SLIDE keeps it per neuron; Adam counts
steps per row, so a row's bias correction follows its own number of updates ("lazy Adam").
"""

from __future__ import annotations

import torch
from torch import Tensor


class SparseRowOptimizer:
    """Adagrad or Adam over the rows of some ``(N, ...)`` tensors, updated in place.

    Args:
        tensors: the tensors to update; all share the row count N.
        kind: ``"adagrad"`` or ``"adam"``.
        lr: learning rate.
        eps: denominator guard.
        betas: Adam's moment decays.
    """

    def __init__(self, tensors: list[Tensor], kind: str = "adagrad", lr: float = 0.05,
                 eps: float = 1e-8, betas: tuple[float, float] = (0.9, 0.999)):
        if kind not in ("adagrad", "adam"):
            raise ValueError(f"optimizer={kind!r}: expected 'adagrad' or 'adam'")
        if lr <= 0:
            raise ValueError(f"lr={lr}: expected > 0")
        if len({t.shape[0] for t in tensors}) != 1:
            raise ValueError(f"tensors of row counts {[t.shape[0] for t in tensors]}: expected one N")
        self.tensors, self.kind, self.lr, self.eps, self.betas = tensors, kind, float(lr), float(eps), betas
        self.sq = [torch.zeros_like(t) for t in tensors]          # adagrad: sum g^2; adam: v
        self.m = [torch.zeros_like(t) for t in tensors] if kind == "adam" else []
        self.steps = torch.zeros(tensors[0].shape[0], dtype=torch.int64, device=tensors[0].device)

    def state(self) -> dict[str, Tensor]:
        """The optimizer state as named tensors (for checkpoints)."""
        out = {f"sq{i}": s for i, s in enumerate(self.sq)}
        out.update({f"m{i}": m for i, m in enumerate(self.m)})
        out["steps"] = self.steps
        return out

    @torch.no_grad()
    def step(self, ids: Tensor | None, grads: list[Tensor]) -> None:
        """Updates rows ``ids`` (distinct, ``(U,)``) with ``grads`` (``(U, ...)`` each); None = all rows."""
        rows = slice(None) if ids is None else ids
        self.steps[rows] += 1
        if self.kind == "adam":
            b1, b2 = self.betas
            t = self.steps[rows].to(grads[0].dtype)                   # (U,)
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        for i, (w, g) in enumerate(zip(self.tensors, grads)):
            if self.kind == "adagrad" and ids is not None:
                # gathered once, updated in place, written back: no (U, ...) temporaries per
                # operator (the same values as the plain form below)
                sq = self.sq[i].index_select(0, ids).add_(g * g)
                self.sq[i].index_copy_(0, ids, sq)
                w.index_add_(0, ids, torch.mul(g, self.lr).div_(sq.sqrt_().add_(self.eps)), alpha=-1)
            elif self.kind == "adagrad":
                sq = self.sq[i][rows] + g * g
                self.sq[i][rows] = sq
                w[rows] -= self.lr * g / (sq.sqrt() + self.eps)
            else:
                shape = (-1,) + (1,) * (g.dim() - 1)
                m = self.m[i][rows].mul_(b1).add_(g, alpha=1 - b1)
                v = self.sq[i][rows].mul_(b2).addcmul_(g, g, value=1 - b2)
                self.m[i][rows], self.sq[i][rows] = m, v
                w[rows] -= self.lr * (m / c1.view(shape)) / ((v / c2.view(shape)).sqrt() + self.eps)
