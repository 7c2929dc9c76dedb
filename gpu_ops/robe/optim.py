"""Optimizer steps on a ROBE-Z array that touch only the slots a batch read.

The lookup with ``sparse_grad=True`` gives the array a sparse COO gradient: its sorted,
distinct slots and each slot's total gradient of the step (:mod:`gpu_ops.robe.sparse`).
The updates below apply it in place, with the same arithmetic as the dense optimizers:

- ``sgd``: ``w[s] -= lr * g[s]``.
- ``adagrad``: ``acc[s] += g[s]**2; w[s] -= lr * g[s] / (sqrt(acc[s]) + eps)`` (exactly
  ``torch.optim.Adagrad``: a slot the step did not read has ``g = 0`` and keeps its state).
- ``rowwise_adagrad``: one accumulator per aligned run of ``row`` floats (``row`` = the
  embedding width by default, so the state is ``num_floats / row`` floats):
  ``acc[r] += sum(g[s]**2 for s in run r) / row; w[s] -= lr * g[s] / (sqrt(acc[s // row]) + eps)``.

On CUDA the update runs as one fused Triton kernel (no atomics: the slots are distinct;
the row-wise accumulator takes one atomic add per slot first); on CPU as a few indexed
tensor ops. Either way the work is O(slots read), not O(array).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor

Mode = Literal["sgd", "adagrad", "rowwise_adagrad"]
MODES: tuple[str, ...] = ("sgd", "adagrad", "rowwise_adagrad")


def state_size(num_floats: int, mode: str, row: int) -> int:
    """Floats of optimizer state for an array of ``num_floats`` under ``mode``."""
    if mode == "sgd":
        return 0
    if mode == "adagrad":
        return num_floats
    return math.ceil(num_floats / row)


@torch.no_grad()
def robe_sparse_update_(
    weight: Tensor, slots: Tensor, grads: Tensor, *, lr: float, mode: str = "adagrad",
    state: Tensor | None = None, eps: float = 1e-10, row: int = 1, use_triton: bool | None = None,
) -> None:
    """Applies one optimizer step to the slots ``slots`` (S,) int64, sorted and distinct,
    whose total gradients are ``grads`` (S,); ``weight`` (num_floats,) and ``state`` (the
    Adagrad accumulator: ``(num_floats,)``, or ``(ceil(num_floats / row),)`` row-wise) change
    in place. ``use_triton``: None = on CUDA tensors only.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if mode != "sgd" and state is None:
        raise ValueError(f"mode={mode!r} needs its accumulator `state`")
    if row < 1:
        raise ValueError(f"row={row}: expected an int >= 1")
    if slots.numel() == 0:
        return
    grads = grads.to(weight.dtype)
    if use_triton if use_triton is not None else weight.device.type == "cuda":
        from gpu_ops.robe.kernel import robe_sparse_update_triton

        robe_sparse_update_triton(weight, slots, grads, lr=lr, mode=mode, state=state, eps=eps, row=row)
        return
    if mode == "sgd":
        weight.index_add_(0, slots, grads, alpha=-lr)
        return
    if mode == "adagrad":
        acc = state.index_select(0, slots).addcmul_(grads, grads)  # (S,)
        state.index_copy_(0, slots, acc)
    else:
        rows, where = torch.unique_consecutive(slots // row, return_inverse=True)  # slots sorted
        sq = grads.new_zeros(rows.numel()).index_add_(0, where, grads * grads)  # (R,)
        acc_rows = state.index_select(0, rows).add_(sq / row)
        state.index_copy_(0, rows, acc_rows)
        acc = acc_rows.index_select(0, where)  # (S,)
    weight.index_add_(0, slots, grads / acc.sqrt_().add_(eps), alpha=-lr)


class SparseRobeOptimizer(torch.optim.Optimizer):
    """SGD, Adagrad or row-wise Adagrad over 1-D ROBE arrays, applying sparse gradients
    slot by slot (a dense gradient is applied to every slot, with the same result).

    Args:
        params: the ROBE arrays (1-D parameters).
        lr: learning rate; mode: ``sgd``, ``adagrad`` or ``rowwise_adagrad``.
        eps: Adagrad's epsilon (as ``torch.optim.Adagrad``'s default).
        row: floats per row-wise accumulator (``rowwise_adagrad``; the embedding width).
        initial_accumulator_value: the accumulator's start value (Adagrad modes).

    The state (``sum``, and a ``step`` counter) goes through ``state_dict`` as usual, so
    checkpoints and resumption work as with the torch optimizers.
    """

    def __init__(
        self, params: Iterable[Tensor], lr: float = 0.01, *, mode: str = "adagrad", eps: float = 1e-10,
        row: int = 16, initial_accumulator_value: float = 0.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        if lr < 0:
            raise ValueError(f"lr={lr}: expected >= 0")
        if isinstance(row, bool) or not isinstance(row, int) or row < 1:
            raise ValueError(f"row={row!r}: expected an int >= 1")
        super().__init__(params, dict(lr=lr, mode=mode, eps=eps, row=row,
                                      initial_accumulator_value=initial_accumulator_value))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 1:
                    raise ValueError(f"SparseRobeOptimizer takes 1-D ROBE arrays, got shape {tuple(p.shape)}")
                state = self.state[p]
                state["step"] = torch.tensor(0.0)
                n = state_size(p.numel(), group["mode"], group["row"])
                if n:
                    state["sum"] = torch.full((n,), float(group["initial_accumulator_value"]),
                                              dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update of every array that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    slots, vals = g._indices()[0], g._values()
                    # autograd drops the coalesced flag of the lookup's (sorted, distinct)
                    # slots; a strictly increasing check is cheaper than coalescing again
                    if not g.is_coalesced() and not bool((slots[1:] > slots[:-1]).all()):
                        g = g.coalesce()
                        slots, vals = g.indices()[0], g.values()
                else:
                    slots, vals = torch.arange(p.numel(), device=p.device), g
                state = self.state[p]
                state["step"] += 1
                robe_sparse_update_(p, slots, vals, lr=group["lr"], mode=group["mode"],
                                    state=state.get("sum"), eps=group["eps"], row=group["row"])
        return loss
