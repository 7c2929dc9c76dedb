"""Sparse ROBE-Z gradients: the slots a batch read and their summed gradient, no array-sized tensor.

Every (id, Z-block) of a batch reads one contiguous window ``M[s : s + w]`` of the array
(``w = min(Z, dim)``; a last block that ``dim`` fills only partly contributes zeros past
``dim``). The array's gradient is therefore fully described by

1. the distinct window starts ``u`` of the batch (``torch.unique`` over ``nnz * nb``
   starts, not over ``nnz * dim`` slots), then
2. the merge of windows that overlap: with the starts sorted and every window ``w`` long,
   the slots of window i not already covered by window i-1 are
   ``[max(u_i, u_{i-1} + w), u_i + w)``; their concatenation is the sorted set of distinct
   slots, and the position of every window element in it follows from a cumulative sum
   (no search), so one ``scatter_add_`` sums the gradients slot by slot.

The rows of a window read several times in the batch (a hot id) are summed as vectors
first (one ``index_add_`` of ``(N, w)`` rows into ``(U, w)``), so the per-slot merge works on
the distinct windows only; when no two distinct windows overlap (a large array) the slots
are the windows themselves and the merge is skipped.

The result, ``(slots (S,), grads (S,))`` with ``slots`` sorted and distinct, is what the
optimizers in :mod:`gpu_ops.robe.optim` apply; it costs O(nnz * dim) work and memory
whatever the array's size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gpu_ops.robe.cpu import block_starts_fast, global_rows


# Up to this many array floats per window start, distinct starts are found by marking them
# in an array-sized mask (O(array), ~0.5 ns a float) instead of sorting (O(N log N), ~100 ns
# an entry at N ~ 26K); either way a step's cost stays bounded by the batch.
_MASK_FLOATS_PER_START = 64


def distinct_sorted(x: Tensor, bound: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(x, sorted=True, return_inverse=True)`` for a 1-D int64 ``x`` with
    ``0 <= x < bound``: the distinct values (U,) ascending and each entry's index among them (N,).

    On CPU, when ``bound`` is at most ``_MASK_FLOATS_PER_START`` times ``x.numel()``, without
    a sort: the values are marked in a ``(bound,)`` mask, read back in order, and each one's
    rank is looked up in a ``(bound,)`` table written only at the marked places.
    """
    if x.device.type != "cpu" or x.numel() == 0 or bound > _MASK_FLOATS_PER_START * x.numel():
        return torch.unique(x, sorted=True, return_inverse=True)
    mask = torch.zeros(bound, dtype=torch.bool)
    mask.index_fill_(0, x, True)
    # numpy's flatnonzero is ~10x faster than torch.nonzero on a CPU mask
    uniq = torch.from_numpy(np.flatnonzero(mask.numpy()))  # (U,) int64, ascending
    rank = torch.empty(bound, dtype=torch.int64)
    rank.index_copy_(0, uniq, torch.arange(uniq.numel()))
    return uniq, rank.index_select(0, x)


def robe_slot_gradients(
    grad: Tensor, values: Tensor, offsets: Tensor | None, table_offsets: Tensor,
    num_floats: int, dim: int, block: int, a: int, b: int, c: int, starts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The distinct slots ``(S,)`` int64 (sorted) a batch read and their summed gradients ``(S,)``.

    Args:
        grad: the lookup's output gradient ``(num_bags, dim)`` (contiguous).
        values, offsets, table_offsets: the lookup's ids as the op takes them (flat values;
            offsets None for one id per bag).
        num_floats, dim, block, a, b, c: the array size, width, Z and hash constants.
        starts: the forward's block starts ``(nnz, nb)``; recomputed from the ids when None
            or empty (the CUDA forward does not keep them).

    Scattered into zeros, equal (up to float summation order) to the dense array gradient
    (``robe_backward_cpu``). Listed are the slots read, also those whose total is exactly 0,
    and, when Z does not divide ``dim``, the unread tail of each id's last block (gradient 0,
    which the optimizers leave unchanged).
    """
    nnz = values.numel()
    num_blocks = -(-dim // block)
    w = min(block, dim)
    if nnz == 0:
        return values.new_empty(0), grad.new_empty(0)
    if starts is None or starts.numel() == 0:
        rows = global_rows(values, offsets, table_offsets)  # (nnz,)
        starts = block_starts_fast(rows, num_blocks, num_floats, block, a, b, c)  # (nnz, nb)
    if offsets is None:
        g = grad  # (nnz, dim): one id per bag
    else:
        bags = torch.repeat_interleave(
            torch.arange(offsets.numel() - 1, device=offsets.device), offsets.diff(), output_size=nnz
        )  # (nnz,)
        g = grad.index_select(0, bags)  # (nnz, dim)
    if num_blocks * w > dim:  # the last block reads w floats but only dim - (nb-1)*w are used
        g = F.pad(g, (0, num_blocks * w - dim))
    g = g.reshape(-1, w)  # (N, w), row n = (id, block) n
    uniq, inverse = distinct_sorted(starts.reshape(-1), num_floats)  # (U,), (N,)
    # Sum the rows of each distinct window first (hot ids repeat: U is often N / 10), as
    # vectors; only the U windows' sums then go through the per-slot merge below.
    gw = g.new_zeros(uniq.numel(), w).index_add_(0, inverse, g)  # (U, w)
    within = torch.arange(w, device=uniq.device)
    # Window i adds the slots [u_i + first_new_i, u_i + w) to the sorted distinct set, at
    # positions base_i ...; the slots it shares with window i-1 sit just before them, so
    # slot u_i + j is at position base_i - first_new_i + j for every j in [0, w).
    prev_end = torch.cat([uniq[:1], uniq[:-1] + w])  # (U,) end of the previous window
    first_new = (prev_end - uniq).clamp_(min=0)  # (U,) in [0, w)
    if not bool(first_new.any()):  # no two windows overlap: the slots are the windows, in order
        return (uniq.unsqueeze(1) + within).reshape(-1), gw.reshape(-1)
    count = w - first_new  # (U,) >= 1
    base = torch.cumsum(count, 0) - count  # (U,) exclusive cumsum
    num_slots = int(base[-1] + count[-1])
    row_pos = base - first_new  # (U,) position of slot u_i
    where = (row_pos.unsqueeze(1) + within).reshape(-1)  # (U*w,)
    slots = uniq.new_empty(num_slots)
    # every window writes its slots; shared slots get the same value from both windows
    slots.scatter_(0, where, (uniq.unsqueeze(1) + within).reshape(-1))
    grads = g.new_zeros(num_slots).scatter_add_(0, where, gw.reshape(-1))  # (S,)
    return slots, grads
