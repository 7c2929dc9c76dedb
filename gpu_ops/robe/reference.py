"""The ROBE-Z lookup in plain vectorised PyTorch: the specification the kernels must meet.

Works on any device and is differentiable through ordinary autograd (indexing), so it
doubles as the gradient reference. It favours clarity over speed: the fast CPU path is in
``cpu.py``, the GPU kernels in ``kernel.py``.

Paper: Desai, Chou, Shrivastava, "Random Offset Block Embedding (ROBE) for compressed
embedding tables in deep learning recommendation systems", MLSys 2022.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpu_ops.robe.hashing import P


def value_tables(
    num_values: int, num_tables: int, offsets: Tensor | None, device: torch.device | None = None
) -> Tensor:
    """Table index of each id: ``(nnz,)`` int64.

    Without ``offsets`` the ids are a flattened ``(B, T)`` grid (id n belongs to table
    ``n % T``); with ``offsets`` (length ``B*T + 1``) bag ``j`` belongs to table ``j % T``.
    """
    if offsets is None:
        return torch.arange(num_values, device=device) % num_tables
    num_bags = offsets.numel() - 1
    bag_t = torch.arange(num_bags, device=offsets.device) % num_tables  # (B*T,)
    return torch.repeat_interleave(bag_t, offsets.diff(), output_size=num_values)


def value_bags(num_values: int, offsets: Tensor) -> Tensor:
    """Bag index ``j = b*T + t`` of each id of a jagged batch: ``(nnz,)`` int64."""
    bags = torch.arange(offsets.numel() - 1, device=offsets.device)
    return torch.repeat_interleave(bags, offsets.diff(), output_size=num_values)


def block_starts(
    rows: Tensor, num_blocks: int, num_floats: int, block: int, hash_abc: tuple[int, int, int]
) -> Tensor:
    """First slot of each Z-block of each global row: ``(nnz, num_blocks)`` int64.

    ``((g mod P) * A + k * B + C) mod P mod (num_floats - Z + 1)`` for block k, written as
    the contract states it: g is reduced mod P first, so every term stays below 2**63.
    """
    a, b, c = hash_abc
    k = torch.arange(num_blocks, device=rows.device, dtype=torch.int64)  # (nb,)
    h = ((rows % P) * a).unsqueeze(1) + k * b + c  # (nnz, nb)
    return h % P % (num_floats - block + 1)


def robe_slot_indices(
    ids: Tensor,
    *,
    table_offsets: Tensor,
    dim: int,
    block: int,
    hash_abc: tuple[int, int, int],
    num_floats: int,
    offsets: Tensor | None = None,
) -> Tensor:
    """The array slot that each embedding element reads: ``ids.shape + (dim,)`` int64.

    ``ids`` is a ``(B, T)`` grid or, with ``offsets``, the flat jagged values ``(nnz,)``.
    For tests and debugging; no input checks.
    """
    flat = ids.reshape(-1)
    t = value_tables(flat.numel(), table_offsets.numel(), offsets, flat.device)
    g = table_offsets[t] + flat  # (nnz,) global rows
    num_blocks = -(-dim // block)
    starts = block_starts(g, num_blocks, num_floats, block, hash_abc)  # (nnz, nb)
    i = torch.arange(dim, device=flat.device)
    idx = starts[:, i // block] + i % block  # (nnz, dim)
    return idx.reshape(*ids.shape, dim)


def robe_lookup_reference(
    weight: Tensor,
    ids: Tensor,
    *,
    table_offsets: Tensor,
    dim: int,
    block: int,
    hash_abc: tuple[int, int, int],
    offsets: Tensor | None = None,
) -> Tensor:
    """ROBE-Z embeddings (or summed bags) as ``(B, T, dim)``; same arguments as ``robe_lookup``."""
    num_tables = table_offsets.numel()
    idx = robe_slot_indices(
        ids, table_offsets=table_offsets, dim=dim, block=block, hash_abc=hash_abc,
        num_floats=weight.numel(), offsets=offsets,
    )
    rows = weight[idx]  # ids.shape + (dim,)
    if offsets is None:
        return rows  # (B, T, dim)
    num_bags = offsets.numel() - 1
    bags = value_bags(ids.numel(), offsets)
    out = weight.new_zeros(num_bags, dim).index_add(0, bags, rows)  # empty bags stay zero
    return out.view(num_bags // num_tables, num_tables, dim)
