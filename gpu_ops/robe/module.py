"""``RobeEmbedding``: all embedding tables of a model as one ROBE-Z array (an nn.Module)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gpu_ops.robe.hashing import RobeHash
from gpu_ops.robe.op import robe_lookup


class RobeEmbedding(nn.Module):
    """T virtual embedding tables of sizes ``table_sizes`` read from one learned array.

    Args:
        num_floats: |M|, the size of the learned array (the memory budget, in floats).
        table_sizes: virtual rows of each table (e.g. ``FeatureSpec.table_sizes``).
        dim: embedding size.
        block: Z, floats read as one contiguous run per block (ROBE-1 is Z = 1).
        seed: draws the hash constants with ``RobeHash.from_seed``; ``hash`` overrides it
            (e.g. ``RobeHash.reference(seed)`` for arrays trained with the reference code).

    The array starts uniform in ``[-1/sqrt(num_floats), 1/sqrt(num_floats)]``.

    Example:
        >>> emb = RobeEmbedding(540_000, [1460, 583, 10_131_227], dim=16, block=16)
        >>> emb(torch.tensor([[3, 7, 11]])).shape
        torch.Size([1, 3, 16])
    """

    def __init__(
        self,
        num_floats: int,
        table_sizes: Sequence[int],
        dim: int,
        block: int,
        seed: int = 0,
        hash: RobeHash | None = None,
    ) -> None:
        super().__init__()
        sizes = [int(n) for n in table_sizes]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"table_sizes={list(table_sizes)!r}: expected one or more sizes >= 1")
        if not 1 <= block <= num_floats:
            raise ValueError(f"block={block}: expected 1 <= block <= num_floats={num_floats}")
        self.num_floats, self.dim, self.block = int(num_floats), int(dim), int(block)
        self.table_sizes = tuple(sizes)
        self.hash = hash if hash is not None else RobeHash.from_seed(seed)
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)  # (T,)
        self.register_buffer("table_offsets", offsets, persistent=False)
        self.register_buffer(
            "table_sizes_t", torch.tensor(sizes, dtype=torch.int64), persistent=False
        )
        self.weight = nn.Parameter(torch.empty(self.num_floats))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.num_floats)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, ids: Tensor, offsets: Tensor | None = None, validate: bool = True) -> Tensor:
        """``(B, T)`` ids, or flat values with ``(B*T + 1,)`` offsets -> ``(B, T, dim)``."""
        return robe_lookup(
            self.weight, ids, table_offsets=self.table_offsets, dim=self.dim, block=self.block,
            hash_abc=self.hash.abc, offsets=offsets, table_sizes=self.table_sizes_t,
            validate=validate,
        )

    def extra_repr(self) -> str:
        return (
            f"num_floats={self.num_floats}, tables={len(self.table_sizes)}, dim={self.dim}, "
            f"block={self.block}, hash={self.hash.abc}"
        )
