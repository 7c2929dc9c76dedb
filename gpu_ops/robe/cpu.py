"""Fast CPU path of the ROBE-Z lookup: vectorised hashing, a window gather, index_add_.

The array M (``num_floats``) is viewed, without a copy, as the overlapping windows
``W[s] = M[s : s + w]`` (``w = min(Z, dim)``): a Z-block is then one row of W, so the
forward is one ``F.embedding`` over the block starts (each block read as one contiguous
run) and, for bags, one ``index_add_``. The hash is computed once per (id, block), not
per element.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from gpu_ops.robe.hashing import P


def global_rows(values: Tensor, offsets: Tensor | None, table_offsets: Tensor) -> Tensor:
    """Global row ``table_offsets[t] + x`` of each id: ``(nnz,)`` int64."""
    num_tables = table_offsets.numel()
    if offsets is None:  # (B*T,) sample-major grid
        return (values.view(-1, num_tables) + table_offsets).view(-1)
    num_bags = offsets.numel() - 1
    starts = table_offsets.repeat(num_bags // num_tables)  # (B*T,) table start of each bag
    return values + torch.repeat_interleave(starts, offsets.diff(), output_size=values.numel())


def block_starts_fast(
    rows: Tensor, num_blocks: int, num_floats: int, block: int, a: int, b: int, c: int
) -> Tensor:
    """Same value as ``reference.block_starts`` with one modulo per id instead of per block.

    ``(g mod P) * A mod P`` and ``(k*B + C) mod P`` are both < P, so their sum mod P is a
    conditional subtraction; the result is < P < 2**31.
    """
    lo_hi = rows.aminmax() if rows.device.type == "cpu" and rows.numel() else None
    if lo_hi is not None and lo_hi.min >= 0 and lo_hi.max < P:
        hv = (rows * a).remainder_(P)  # (nnz,) global rows below P (any real table): no first modulo
    else:
        hv = (rows % P).mul_(a).remainder_(P)  # (nnz,)
    kbc = (torch.arange(num_blocks, dtype=torch.int64, device=rows.device) * b + c) % P  # (nb,)
    h = hv.unsqueeze(1) + kbc  # (nnz, nb) < 2P
    h -= (h >= P).to(torch.int64) * P
    return h.remainder_(num_floats - block + 1)


def _windows(weight: Tensor, block: int, dim: int) -> Tensor:
    w = min(block, dim)
    # (num_floats - Z + 1, w) overlapping rows; start s + w - 1 <= num_floats - 1 always.
    return weight.as_strided((weight.numel() - block + 1, w), (1, 1))


def robe_forward_cpu(
    weight: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    dim: int, block: int, a: int, b: int, c: int,
) -> tuple[Tensor, Tensor]:
    """Pooled embeddings ``(num_bags, dim)`` (``num_bags = nnz`` when ``offsets`` is None)
    and the block starts ``(nnz, nb)`` it read, which the backward reuses."""
    num_blocks = -(-dim // block)
    starts = block_starts_fast(
        global_rows(values, offsets, table_offsets), num_blocks, weight.numel(), block, a, b, c
    )  # (nnz, nb)
    rows = F.embedding(starts, _windows(weight, block, dim))  # (nnz, nb, w)
    rows = rows.view(values.numel(), num_blocks * min(block, dim))  # (nnz, nb*w); nb*w >= dim
    if offsets is None:
        return rows[:, :dim].contiguous(), starts
    num_bags = offsets.numel() - 1
    bags = torch.repeat_interleave(
        torch.arange(num_bags, device=offsets.device), offsets.diff(), output_size=values.numel()
    )  # (nnz,)
    out = weight.new_zeros(num_bags, rows.shape[1]).index_add_(0, bags, rows)
    return out[:, :dim].contiguous(), starts


# Ids per chunk of the backward: keeps each temporary (slots int64, gradients) at a few MB,
# which the allocator then reuses across chunks and calls. One (nnz * dim) int64 slot tensor
# would be a fresh mmap on every call, and its page faults cost more than the scatter itself.
_CHUNK_ELEMS = 1 << 20


def _chunks(
    grad: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    num_floats: int, dim: int, block: int, a: int, b: int, c: int, starts: Tensor | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (flat slots, their gradients) of consecutive id chunks: ``(n * dim,)`` each.

    ``starts``: the forward's block starts ``(nnz, nb)``; recomputed from the ids if None.
    """
    num_blocks = -(-dim // block)
    w = min(block, dim)
    rows = global_rows(values, offsets, table_offsets) if starts is None else None  # (nnz,)
    bags = None
    if offsets is not None:
        bags = torch.repeat_interleave(
            torch.arange(offsets.numel() - 1, device=offsets.device), offsets.diff(),
            output_size=values.numel(),
        )  # (nnz,)
    step = max(1, _CHUNK_ELEMS // dim)
    within = torch.arange(w, device=values.device)
    for lo in range(0, values.numel(), step):
        hi = min(lo + step, values.numel())
        st = (starts[lo:hi] if rows is None
              else block_starts_fast(rows[lo:hi], num_blocks, num_floats, block, a, b, c))  # (n, nb)
        idx = (st.unsqueeze(2) + within).view(hi - lo, num_blocks * w)[:, :dim]  # (n, dim)
        g = grad[lo:hi] if bags is None else grad.index_select(0, bags[lo:hi])  # (n, dim)
        yield idx.reshape(-1), g.reshape(-1)


def robe_backward_cpu(
    grad: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    num_floats: int, dim: int, block: int, a: int, b: int, c: int, starts: Tensor | None = None,
) -> Tensor:
    """Gradient of the array ``(num_floats,)`` from the output gradient ``(num_bags, dim)``;
    ``starts`` are the forward's block starts ``(nnz, nb)`` (recomputed if None)."""
    out = grad.new_zeros(num_floats)
    chunks = _chunks(grad, values, offsets, table_offsets, num_floats, dim, block, a, b, c, starts)
    for idx, src in chunks:
        # scatter_add_ accumulates duplicates, so colliding slots sum their gradients (it
        # is ~1.3-1.7x faster than index_add_ on a 1-D target on CPU).
        out.scatter_add_(0, idx, src)
    return out


def robe_sgd_update_cpu(
    weight: Tensor, grad: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    dim: int, block: int, a: int, b: int, c: int, lr: float,
) -> None:
    """``weight -= lr * dL/dweight`` in place, without a gradient array."""
    for idx, src in _chunks(grad, values, offsets, table_offsets, weight.numel(), dim, block, a, b, c):
        weight.scatter_add_(0, idx, src * -lr)
