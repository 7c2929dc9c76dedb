"""Temporary stand-in for gpu_ops.robe_lookup / RobeHash until the op lands (pure PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

P = 2038074743


@dataclass(frozen=True)
class RobeHash:
    A: int
    B: int
    C: int

    @classmethod
    def from_seed(cls, seed: int) -> "RobeHash":
        rng = np.random.default_rng(seed)
        return cls(int(rng.integers(1, P)), int(rng.integers(0, P)), int(rng.integers(0, P)))


def robe_lookup(weight, ids, *, table_offsets, dim, block, hash_abc, offsets=None):
    A, B, C = hash_abc
    T = table_offsets.numel()
    if offsets is None:
        Bn = ids.shape[0]
        values = ids.reshape(-1)
        offsets = torch.arange(values.numel() + 1, device=ids.device)
    else:
        values = ids
        Bn = (offsets.numel() - 1) // T
    lengths = offsets[1:] - offsets[:-1]
    bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device), lengths,
                                  output_size=values.numel())
    g = (table_offsets[bag % T] + values) % P
    i = torch.arange(dim, device=values.device)
    idx = (g[:, None] * A + (i // block)[None, :] * B + C) % P % (weight.numel() - block + 1) + i % block
    rows = weight[idx]
    out = torch.zeros(Bn * T, dim, dtype=weight.dtype, device=weight.device)
    out = out.index_add(0, bag, rows)
    return out.view(Bn, T, dim)
