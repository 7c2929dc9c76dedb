"""Triton kernels of the ROBE-Z lookup (forward, atomic backward, fused SGD update).

One launch covers all tables and all bags of a batch. A program owns a tile of
``BLOCK_BAGS`` bags x ``BLOCK_D`` (>= dim) elements; it walks the ids of its bags in
lock-step (masking bags that are already done), hashes each id in registers, reads each
Z-block of the row as one contiguous run of the array and sums the bag in registers
(fp32 accumulation for a float32 array). Bag j = b*T + t belongs to table ``j % T``.

Backward: the same walk, adding the bag's output gradient into every slot its ids read
with ``tl.atomic_add``, so no (batch x tables x dim) index tensor is materialised; slots
that collide add up, as the contract requires. The fused SGD variant adds ``-lr * grad``
straight into the array (exact for SGD, whose update is linear in the summed gradient).
A sorted segmented reduction (sort slots, reduce runs, no atomics) is the alternative
when atomics contend on hot slots; its launcher would slot in beside ``robe_backward_triton``.

The launchers take CUDA tensors; with ``TRITON_INTERPRET=1`` set before triton is first
imported, they run in Triton's interpreter on CPU tensors instead (how the tests check them
on machines without a GPU).

Hash arithmetic per (id, element): ``hv = (g mod P) * A mod P`` once per id (int64), then
``(hv + kbc[i]) mod P`` by one conditional subtraction, where ``kbc[i] = ((i // Z) * B + C)
mod P`` is per element; every value stays below 2P < 2**32, nothing overflows int64.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from gpu_ops.robe.hashing import P


@triton.jit
def _robe_fwd(
    W, values, offsets, table_offsets, out,
    num_bags, num_tables, R, a, b, c,
    PRIME: tl.constexpr, DIM: tl.constexpr, Z: tl.constexpr, HAS_OFFSETS: tl.constexpr,
    BLOCK_BAGS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    bags = pid.to(tl.int64) * BLOCK_BAGS + tl.arange(0, BLOCK_BAGS)  # (BB,)
    bag_ok = bags < num_bags
    toff = tl.load(table_offsets + bags % num_tables, mask=bag_ok, other=0)  # (BB,)
    if HAS_OFFSETS:
        start = tl.load(offsets + bags, mask=bag_ok, other=0)
        length = tl.load(offsets + bags + 1, mask=bag_ok, other=0) - start
    else:
        start = bags
        length = bag_ok.to(tl.int64)
    d = tl.arange(0, BLOCK_D)  # (BD,)
    d_ok = d < DIM
    kbc = ((d // Z).to(tl.int64) * b + c) % PRIME  # (BD,)
    r = d % Z
    acc = tl.zeros((BLOCK_BAGS, BLOCK_D), dtype=tl.float32 if W.dtype.element_ty != tl.float64 else tl.float64)
    for p in range(0, tl.max(length, axis=0)):
        v_ok = bag_ok & (p < length)
        x = tl.load(values + start + p, mask=v_ok, other=0)  # (BB,) local ids
        hv = ((toff + x) % PRIME) * a % PRIME  # (BB,)
        h = hv[:, None] + kbc[None, :]  # (BB, BD) < 2P
        h = tl.where(h >= PRIME, h - PRIME, h)
        slot = h % R + r[None, :]
        acc += tl.load(W + slot, mask=v_ok[:, None] & d_ok[None, :], other=0.0)
    o = bags[:, None] * DIM + d[None, :]
    tl.store(out + o, acc.to(out.dtype.element_ty), mask=bag_ok[:, None] & d_ok[None, :])


@triton.jit
def _robe_bwd(
    G, values, offsets, table_offsets, GW,
    num_bags, num_tables, R, a, b, c, scale,
    PRIME: tl.constexpr, DIM: tl.constexpr, Z: tl.constexpr, HAS_OFFSETS: tl.constexpr,
    BLOCK_BAGS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    bags = pid.to(tl.int64) * BLOCK_BAGS + tl.arange(0, BLOCK_BAGS)
    bag_ok = bags < num_bags
    toff = tl.load(table_offsets + bags % num_tables, mask=bag_ok, other=0)
    if HAS_OFFSETS:
        start = tl.load(offsets + bags, mask=bag_ok, other=0)
        length = tl.load(offsets + bags + 1, mask=bag_ok, other=0) - start
    else:
        start = bags
        length = bag_ok.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < DIM
    kbc = ((d // Z).to(tl.int64) * b + c) % PRIME
    r = d % Z
    g = tl.load(G + bags[:, None] * DIM + d[None, :], mask=bag_ok[:, None] & d_ok[None, :], other=0.0)
    g = g * scale  # (BB, BD): 1 for the gradient, -lr for the fused SGD step
    for p in range(0, tl.max(length, axis=0)):
        v_ok = bag_ok & (p < length)
        x = tl.load(values + start + p, mask=v_ok, other=0)
        hv = ((toff + x) % PRIME) * a % PRIME
        h = hv[:, None] + kbc[None, :]
        h = tl.where(h >= PRIME, h - PRIME, h)
        slot = h % R + r[None, :]
        tl.atomic_add(GW + slot, g.to(GW.dtype.element_ty), mask=v_ok[:, None] & d_ok[None, :], sem="relaxed")


def _check_device(t: Tensor) -> None:
    if t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"the Triton ROBE kernels need CUDA tensors, got {t.device} (on CPU set "
            "TRITON_INTERPRET=1 before triton is imported to run them in the interpreter)"
        )


def _tile(dim: int) -> tuple[int, int, int]:
    """(BLOCK_BAGS, BLOCK_D, num_warps): about 2K elements per program."""
    block_d = triton.next_power_of_2(dim)
    block_bags = max(1, min(128, 2048 // block_d))
    return block_bags, block_d, 4 if block_bags * block_d >= 1024 else 2


def _num_bags(values: Tensor, offsets: Tensor | None) -> int:
    return values.numel() if offsets is None else offsets.numel() - 1


def robe_forward_triton(
    weight: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    dim: int, block: int, a: int, b: int, c: int,
) -> Tensor:
    """Pooled ROBE-Z rows ``(num_bags, dim)``; same meaning as the CPU path's arguments."""
    _check_device(weight)
    num_bags = _num_bags(values, offsets)
    out = weight.new_empty(num_bags, dim)
    if num_bags == 0:
        return out
    bb, bd, warps = _tile(dim)
    grid = (triton.cdiv(num_bags, bb),)
    _robe_fwd[grid](
        weight, values, values if offsets is None else offsets, table_offsets, out,
        num_bags, table_offsets.numel(), weight.numel() - block + 1, a, b, c,
        PRIME=P, DIM=dim, Z=block, HAS_OFFSETS=offsets is not None,
        BLOCK_BAGS=bb, BLOCK_D=bd, num_warps=warps,
    )
    return out


def _scatter(
    target: Tensor, grad: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    dim: int, block: int, a: int, b: int, c: int, scale: float,
) -> None:
    _check_device(target)
    num_bags = _num_bags(values, offsets)
    if num_bags == 0:
        return
    bb, bd, warps = _tile(dim)
    grid = (triton.cdiv(num_bags, bb),)
    _robe_bwd[grid](
        grad, values, values if offsets is None else offsets, table_offsets, target,
        num_bags, table_offsets.numel(), target.numel() - block + 1, a, b, c, scale,
        PRIME=P, DIM=dim, Z=block, HAS_OFFSETS=offsets is not None,
        BLOCK_BAGS=bb, BLOCK_D=bd, num_warps=warps,
    )


def robe_backward_triton(
    grad: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    num_floats: int, dim: int, block: int, a: int, b: int, c: int,
) -> Tensor:
    """Gradient of the array ``(num_floats,)`` from the contiguous output gradient ``(num_bags, dim)``."""
    gw = torch.zeros(num_floats, dtype=grad.dtype, device=grad.device)
    _scatter(gw, grad, values, offsets, table_offsets, dim, block, a, b, c, 1.0)
    return gw


def robe_sgd_update_triton(
    weight: Tensor, grad: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    dim: int, block: int, a: int, b: int, c: int, lr: float,
) -> None:
    """Fused backward + SGD: ``weight -= lr * dL/dweight`` in place, no gradient array."""
    _scatter(weight, grad, values, offsets, table_offsets, dim, block, a, b, c, -lr)


# ----------------------------------------------------------------------------- sparse optimizer steps

_SPARSE_MODES = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 2}


@triton.jit
def _robe_rowwise_accumulate(
    S, slots, grads, n, inv_row, ROW: tl.constexpr, BLOCK: tl.constexpr,
):
    """Row-wise Adagrad, first pass: ``acc[slot // ROW] += g**2 / ROW`` for every slot."""
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = k < n
    s = tl.load(slots + k, mask=ok, other=0)
    g = tl.load(grads + k, mask=ok, other=0.0)
    tl.atomic_add(S + s // ROW, g * g * inv_row, mask=ok, sem="relaxed")


@triton.jit
def _robe_sparse_update(
    W, S, slots, grads, n, lr, eps, MODE: tl.constexpr, ROW: tl.constexpr, BLOCK: tl.constexpr,
):
    """One optimizer step on distinct slots (no two programs touch one float: no atomics).

    MODE 0: SGD; 1: Adagrad (``acc[s] += g**2`` here); 2: row-wise Adagrad (``acc`` already
    holds this step's row sums).
    """
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = k < n
    s = tl.load(slots + k, mask=ok, other=0)
    g = tl.load(grads + k, mask=ok, other=0.0)
    if MODE == 0:
        step = g
    elif MODE == 1:
        acc = tl.load(S + s, mask=ok, other=0.0) + g * g
        tl.store(S + s, acc, mask=ok)
        step = g / (tl.sqrt(acc) + eps)
    else:
        acc = tl.load(S + s // ROW, mask=ok, other=1.0)
        step = g / (tl.sqrt(acc) + eps)
    w = tl.load(W + s, mask=ok, other=0.0)
    tl.store(W + s, w - lr * step, mask=ok)


def robe_sparse_update_triton(
    weight: Tensor, slots: Tensor, grads: Tensor, *, lr: float, mode: str,
    state: Tensor | None, eps: float, row: int,
) -> None:
    """Fused sparse optimizer step (see ``gpu_ops.robe.optim.robe_sparse_update_``): ``slots``
    (S,) distinct int64, ``grads`` (S,) their total gradients; ``weight`` and ``state`` in place."""
    _check_device(weight)
    n = slots.numel()
    if n == 0:
        return
    code = _SPARSE_MODES[mode]
    acc = weight if state is None else state  # SGD reads no state; any pointer does
    block = 1024
    grid = (triton.cdiv(n, block),)
    slots, grads = slots.contiguous(), grads.contiguous()
    if code == 2:
        _robe_rowwise_accumulate[grid](acc, slots, grads, n, 1.0 / row, ROW=row, BLOCK=block)
    _robe_sparse_update[grid](weight, acc, slots, grads, n, lr, eps, MODE=code, ROW=row, BLOCK=block)
