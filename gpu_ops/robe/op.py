"""``robe_lookup``: the ROBE-Z embedding lookup as a ``torch.library`` custom op.

``torch.ops.robeflow.robe_lookup`` has a CPU kernel (``cpu.py``), a CUDA kernel (Triton,
``kernel.py``), a fake implementation (so ``torch.compile`` / ``torch.export`` trace it)
and an autograd formula whose backward is the op ``torch.ops.robeflow.robe_lookup_backward``
(also with a fake implementation). ``robe_lookup`` below is the checked public entry.

Precision: the array and the result stay in the array's dtype (float32; float64 for
gradcheck). Custom ops are not on autocast's lists, so under bf16/fp16 autocast the lookup
still reads and returns float32 and the array's gradient is float32; the next autocast op
(e.g. the interaction matmul) casts as autocast decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from gpu_ops.robe.cpu import robe_backward_cpu, robe_forward_cpu, robe_sgd_update_cpu
from gpu_ops.robe.hashing import P
from gpu_ops.robe.sparse import robe_slot_gradients


def _num_bags(values: Tensor, offsets: Optional[Tensor]) -> int:
    return values.numel() if offsets is None else offsets.numel() - 1


@torch.library.custom_op("robeflow::robe_lookup", mutates_args=())
def _robe_lookup_op(
    weight: Tensor, values: Tensor, offsets: Optional[Tensor], table_offsets: Tensor,
    dim: int, block: int, a: int, b: int, c: int,
) -> tuple[Tensor, Tensor]:
    """Pooled ROBE-Z rows ``(num_bags, dim)``; ``values`` flat, ``offsets`` None or ``(num_bags+1,)``.

    Second output: the block starts ``(nnz, nb)`` int64 the CPU kernel computed, saved so
    the backward does not hash again; ``(0, nb)`` on CUDA, where hashing in the backward
    kernel is cheaper than a round trip through memory.
    """
    return robe_forward_cpu(weight, values, offsets, table_offsets, dim, block, a, b, c)


@_robe_lookup_op.register_kernel("cuda")
def _robe_lookup_cuda(weight, values, offsets, table_offsets, dim, block, a, b, c):
    from gpu_ops.robe.kernel import robe_forward_triton

    out = robe_forward_triton(weight, values, offsets, table_offsets, dim, block, a, b, c)
    return out, values.new_empty(0, -(-dim // block))


@_robe_lookup_op.register_fake
def _robe_lookup_fake(weight, values, offsets, table_offsets, dim, block, a, b, c):
    num_starts = 0 if values.device.type == "cuda" else values.numel()
    return (weight.new_empty(_num_bags(values, offsets), dim),
            values.new_empty(num_starts, -(-dim // block)))


@torch.library.custom_op("robeflow::robe_lookup_backward", mutates_args=())
def _robe_backward_op(
    grad: Tensor, values: Tensor, offsets: Optional[Tensor], table_offsets: Tensor,
    starts: Tensor, num_floats: int, dim: int, block: int, a: int, b: int, c: int,
) -> Tensor:
    """Gradient of the array ``(num_floats,)`` from the output gradient ``(num_bags, dim)``."""
    return robe_backward_cpu(
        grad.contiguous(), values, offsets, table_offsets, num_floats, dim, block, a, b, c,
        starts if starts.numel() or not values.numel() else None,
    )


@_robe_backward_op.register_kernel("cuda")
def _robe_backward_cuda(grad, values, offsets, table_offsets, starts, num_floats, dim, block, a, b, c):
    from gpu_ops.robe.kernel import robe_backward_triton

    return robe_backward_triton(
        grad.contiguous(), values, offsets, table_offsets, num_floats, dim, block, a, b, c
    )


@_robe_backward_op.register_fake
def _robe_backward_fake(grad, values, offsets, table_offsets, starts, num_floats, dim, block, a, b, c):
    return grad.new_empty(num_floats)


def _setup_context(ctx, inputs, output) -> None:
    weight, values, offsets, table_offsets, dim, block, a, b, c = inputs
    ctx.save_for_backward(values, offsets, table_offsets, output[1])
    ctx.args = (weight.numel(), dim, block, a, b, c)


def _backward(ctx, grad, _grad_starts):
    values, offsets, table_offsets, starts = ctx.saved_tensors
    gw = None
    if ctx.needs_input_grad[0]:
        gw = _robe_backward_op(grad, values, offsets, table_offsets, starts, *ctx.args)
    return gw, None, None, None, None, None, None, None, None


_robe_lookup_op.register_autograd(_backward, setup_context=_setup_context)


class _RobeLookupSparseGrad(torch.autograd.Function):
    """The lookup whose array gradient is a sparse COO tensor: the distinct slots the batch
    read and their summed gradients (``robe_slot_gradients``), never a ``(num_floats,)`` tensor."""

    @staticmethod
    def forward(ctx, weight, values, offsets, table_offsets, dim, block, a, b, c):
        out, starts = _robe_lookup_op(weight, values, offsets, table_offsets, dim, block, a, b, c)
        ctx.save_for_backward(values, offsets, table_offsets, starts)
        ctx.args = (weight.numel(), dim, block, a, b, c)
        return out

    @staticmethod
    def backward(ctx, grad):
        values, offsets, table_offsets, starts = ctx.saved_tensors
        num_floats = ctx.args[0]
        slots, grads = robe_slot_gradients(
            grad.contiguous(), values, offsets, table_offsets, *ctx.args, starts=starts
        )  # (S,), (S,)
        gw = torch.sparse_coo_tensor(slots.unsqueeze(0), grads, (num_floats,), is_coalesced=True,
                                     check_invariants=False)
        return gw, None, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------- checks


def _table_sizes_tensor(table_sizes: Sequence[int] | Tensor, device: torch.device) -> Tensor:
    return torch.as_tensor(table_sizes, dtype=torch.int64, device=device).reshape(-1)


def _check_static(
    weight: Tensor, ids: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    dim: int, block: int, hash_abc: tuple[int, int, int],
) -> None:
    """Checks that need no look at tensor data (no device sync)."""
    if not isinstance(weight, Tensor) or weight.dim() != 1:
        raise ValueError(f"weight: expected the 1-D ROBE array, got {getattr(weight, 'shape', weight)}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"weight.dtype={weight.dtype}: expected torch.float32 (float64 for gradcheck)")
    if ids.dtype != torch.int64:
        raise ValueError(f"ids.dtype={ids.dtype}: expected torch.int64")
    if table_offsets.dtype != torch.int64 or table_offsets.dim() != 1 or table_offsets.numel() < 1:
        raise ValueError(
            f"table_offsets: expected a non-empty 1-D int64 tensor, got "
            f"{table_offsets.dtype} of shape {tuple(table_offsets.shape)}"
        )
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim={dim!r}: expected an int >= 1")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block={block!r}: expected an int >= 1")
    if block > weight.numel():
        raise ValueError(f"block={block} is larger than the array ({weight.numel()} floats)")
    if len(hash_abc) != 3:
        raise ValueError(f"hash_abc={hash_abc!r}: expected the tuple (A, B, C)")
    a, b, c = hash_abc
    if not (1 <= a < P and 0 <= b < P and 0 <= c < P):
        raise ValueError(f"hash_abc={hash_abc!r}: expected 1 <= A < {P} and 0 <= B, C < {P}")
    devices = {weight.device, ids.device, table_offsets.device}
    if offsets is not None:
        devices.add(offsets.device)
    if len(devices) != 1:
        raise ValueError(f"weight, ids, offsets and table_offsets must share one device, got {devices}")
    num_tables = table_offsets.numel()
    if offsets is None:
        if ids.dim() != 2 or ids.shape[1] != num_tables:
            raise ValueError(
                f"ids of shape {tuple(ids.shape)}: expected (B, {num_tables}) (one id per table), "
                "or flat values with offsets"
            )
    else:
        if ids.dim() != 1:
            raise ValueError(f"ids of shape {tuple(ids.shape)} with offsets: expected 1-D values")
        if offsets.dtype != torch.int64 or offsets.dim() != 1:
            raise ValueError(f"offsets: expected a 1-D int64 tensor, got {offsets.dtype} {tuple(offsets.shape)}")
        if (offsets.numel() - 1) % num_tables != 0 or offsets.numel() < 1:
            raise ValueError(
                f"offsets has length {offsets.numel()}: expected B*T + 1 with T={num_tables} tables"
            )


def _check_data(
    ids: Tensor, offsets: Tensor | None, table_offsets: Tensor, table_sizes: Tensor | None
) -> None:
    """Range checks on the ids, offsets and table offsets with a single device sync."""
    num_tables = table_offsets.numel()
    big = torch.iinfo(torch.int64).max
    # Table sizes: implied by the next table's offset; the last one only from table_sizes.
    if table_sizes is not None and table_sizes.numel() == num_tables:
        last = table_sizes[-1:]
    else:
        last = table_offsets.new_full((1,), big)
    sizes = torch.cat([table_offsets.diff(), last])  # (T,)
    size_of_id = _size_of_each_id(ids, offsets, sizes)  # ids.shape
    checks: list[tuple[Tensor, str]] = [
        (table_offsets[0] != 0, "table_offsets[0] must be 0"),
        ((sizes < 0).any(), "table_offsets must be non-decreasing"),
    ]
    if table_sizes is not None:
        agree = (
            (sizes != table_sizes).any() if table_sizes.numel() == num_tables
            else torch.ones((), dtype=torch.bool, device=ids.device)
        )
        checks.append((agree, f"table_sizes must have {num_tables} entries that match table_offsets"))
    if offsets is not None:
        bad_offsets = (offsets[0] != 0) | (offsets[-1] != ids.numel())
        if offsets.numel() > 1:
            bad_offsets = bad_offsets | (offsets.diff() < 0).any()
        checks.append((
            bad_offsets,
            f"offsets must start at 0, end at len(ids)={ids.numel()} and be non-decreasing",
        ))
    checks.append((((ids < 0) | (ids >= size_of_id)).any(), "ids out of range"))
    got = torch.stack([flag.reshape(()) for flag, _ in checks]).tolist()  # the one sync
    if not any(got):
        return
    msgs = [msg for (_, msg), bad in zip(checks, got) if bad]
    if got[-1]:
        msgs[-1] = _bad_ids_message(ids.reshape(-1), size_of_id.reshape(-1))
    if table_sizes is not None and got[2]:
        msgs.insert(0, f"table_sizes={table_sizes.tolist()}, table_offsets={table_offsets.tolist()}")
    raise ValueError("; ".join(msgs))


def _size_of_each_id(ids: Tensor, offsets: Tensor | None, sizes: Tensor) -> Tensor:
    """Size of the table of each id (ids.shape); robust to malformed offsets (no sync)."""
    if offsets is None:
        return sizes.expand_as(ids)
    num_bags = offsets.numel() - 1
    pos = torch.arange(ids.numel(), device=ids.device)
    bag = (torch.searchsorted(offsets, pos, right=True) - 1).clamp_(0, max(num_bags - 1, 0))
    return sizes[bag % sizes.numel()]


def _bad_ids_message(ids: Tensor, sizes: Tensor) -> str:
    bad = ((ids < 0) | (ids >= sizes)).nonzero().reshape(-1)
    n = bad[0].item()
    return (
        f"{bad.numel()} id(s) out of range, first at flat position {n}: id {ids[n].item()} "
        f"not in [0, {sizes[n].item()}) of its table"
    )


# ----------------------------------------------------------------------------- public


def robe_lookup(
    weight: Tensor,
    ids: Tensor,
    *,
    table_offsets: Tensor,
    dim: int,
    block: int,
    hash_abc: tuple[int, int, int],
    offsets: Tensor | None = None,
    table_sizes: Sequence[int] | Tensor | None = None,
    validate: bool = True,
    sparse_grad: bool = False,
) -> Tensor:
    """ROBE-Z embeddings of one id per table, or summed bags, as ``(B, T, dim)``.

    Args:
        weight: the ROBE array M, ``(num_floats,)`` float32 (float64 accepted).
        ids: ``(B, T)`` int64, one id per table, local to its table; or, with ``offsets``,
            the flat int64 values of jagged bags.
        table_offsets: ``(T,)`` int64, the global row at which each table starts
            (``[0, n_0, n_0 + n_1, ...]``).
        dim: embedding size; block: Z, the length of each contiguous block read from M.
        hash_abc: ``(A, B, C)``, e.g. ``RobeHash.from_seed(seed).abc``.
        offsets: ``(B*T + 1,)`` int64, ``include_last_offset`` form: bag ``j = b*T + t`` is
            ``ids[offsets[j]:offsets[j+1]]`` (table t); an empty bag gives zeros.
        table_sizes: ``(T,)`` table sizes. Sizes of tables 0..T-2 follow from
            ``table_offsets``; the last table's ids are range-checked only when this is given
            (it must then agree with ``table_offsets``).
        validate: run the data checks (ids in range, offsets well formed) with one device
            sync. Pass False in a training loop whose ids are known to be in range. Data
            checks are skipped while ``torch.compile`` traces; the static checks always run.
        sparse_grad: give ``weight`` a sparse COO gradient (the distinct slots read and
            their summed gradients) instead of a dense ``(num_floats,)`` one; apply it with
            ``SparseRobeOptimizer`` (or ``torch.optim.SGD``/``Adagrad``, which take sparse
            gradients). Not traceable by ``torch.compile``.

    Returns:
        ``(B, T, dim)`` in ``weight.dtype``; differentiable with respect to ``weight``.

    Raises:
        ValueError: naming the bad argument (dtype, shape, device, range).
    """
    _check_static(weight, ids, offsets, table_offsets, dim, block, hash_abc)
    sizes = None if table_sizes is None else _table_sizes_tensor(table_sizes, ids.device)
    if validate and not torch.compiler.is_compiling():
        _check_data(ids, offsets, table_offsets, sizes)
    num_tables = table_offsets.numel()
    a, b, c = (int(x) for x in hash_abc)
    values = ids.reshape(-1) if offsets is None else ids
    args = (weight, values.contiguous(), None if offsets is None else offsets.contiguous(),
            table_offsets.contiguous(), dim, block, a, b, c)
    if sparse_grad and weight.requires_grad and torch.is_grad_enabled():
        out = _RobeLookupSparseGrad.apply(*args)  # (B*T, dim)
    else:
        out, _ = _robe_lookup_op(*args)  # (B*T, dim); autograd keeps the block starts
    return out.view(-1, num_tables, dim)


@torch.no_grad()
def robe_sgd_update_(
    weight: Tensor,
    grad_out: Tensor,
    ids: Tensor,
    *,
    table_offsets: Tensor,
    dim: int,
    block: int,
    hash_abc: tuple[int, int, int],
    lr: float,
    offsets: Tensor | None = None,
) -> Tensor:
    """Fused backward + SGD step: ``weight -= lr * dL/dweight`` in place, given ``dL/dout``.

    ``grad_out`` is the gradient of ``robe_lookup``'s ``(B, T, dim)`` result; the other
    arguments are those of that call (only the static checks run again, no data checks).
    No gradient array is allocated: on CUDA the Triton backward adds ``-lr * grad``
    straight into the array (exact for plain SGD, whose update is linear in the summed
    gradient; Adagrad/Adam need the summed gradient first, i.e. the ordinary backward).
    Returns ``weight``.
    """
    _check_static(weight, ids, offsets, table_offsets, dim, block, hash_abc)
    a, b, c = (int(x) for x in hash_abc)
    values = (ids.reshape(-1) if offsets is None else ids).contiguous()
    grad = grad_out.reshape(-1, dim).to(weight.dtype).contiguous()  # (B*T, dim)
    if weight.device.type == "cuda":
        from gpu_ops.robe.kernel import robe_sgd_update_triton

        robe_sgd_update_triton(weight, grad, values, offsets, table_offsets, dim, block, a, b, c, lr)
    else:
        robe_sgd_update_cpu(weight, grad, values, offsets, table_offsets, dim, block, a, b, c, lr)
    return weight
