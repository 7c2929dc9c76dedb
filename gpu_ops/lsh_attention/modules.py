"""Layers built on the ops: LSH self-attention, chunked feed-forward, the reversible encoder.

The encoder is the Reformer's (Kitaev et al., ICLR 2020, https://arxiv.org/abs/2001.04451):
N reversible blocks with F = LSH self-attention and G = a feed-forward applied a chunk of
the sequence at a time; full attention below ``full_attn_below`` tokens, where it is faster
(reformer-pytorch issue #43: LSH loses below ~2K tokens), computed by
:func:`~gpu_ops.lsh_attention.dense.dense_attention` (the reference's numbers, fewer passes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gpu_ops.lsh_attention.attention import lsh_attention, num_buckets_for, random_rotations
from gpu_ops.lsh_attention.dense import dense_attention
from gpu_ops.lsh_attention.reversible import ReversibleBlock, ReversibleSequence


# ----------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------

class LSHSelfAttention(nn.Module):
    """Multi-head shared-QK self-attention: LSH for long sequences, full for short ones.

    Args:
        dim: model width D (``heads * head_dim`` is the projection width).
        heads: attention heads.
        head_dim: width of each head; default ``dim // heads``.
        bucket_size: chunk length c; buckets default to about one chunk each.
        n_hashes: hash rounds.
        n_buckets: fixed bucket count (even); 0 = ``num_buckets_for(L, bucket_size)``.
        full_attn_below: sequences shorter than this use full attention.
        seed: seed of the fixed rotations used in eval mode (and in training unless
            ``resample_rotations``), so scoring is deterministic; they are drawn once per
            bucket count, device and dtype and kept.
        resample_rotations: draw new rotations at every training forward (from torch's
            global RNG; the reversible backward replays them).

    ``forward(x (B, L, D), mask (B, L) bool)`` -> ``(B, L, D)``.
    """

    def __init__(self, dim: int, *, heads: int = 1, head_dim: int = 0, bucket_size: int = 64,
                 n_hashes: int = 4, n_buckets: int = 0, full_attn_below: int = 2048, seed: int = 0,
                 resample_rotations: bool = False):
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        head_dim = head_dim or dim // heads
        if head_dim < 1:
            raise ValueError(f"head_dim must be >= 1 (dim={dim}, heads={heads})")
        if n_buckets < 0 or (n_buckets > 1 and n_buckets % 2):
            raise ValueError(f"n_buckets must be 0 (auto), 1 or even, got {n_buckets}")
        if n_hashes < 1 or bucket_size < 1:
            raise ValueError(f"n_hashes and bucket_size must be >= 1, got {n_hashes}, {bucket_size}")
        self.heads, self.head_dim = heads, head_dim
        self.bucket_size, self.n_hashes, self.n_buckets = bucket_size, n_hashes, n_buckets
        self.full_attn_below, self.seed = full_attn_below, seed
        self.resample_rotations = resample_rotations
        self.to_qk = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_v = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim)
        self._fixed_rotations: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def rotations(self, n_buckets: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``(head_dim, n_hashes, n_buckets // 2)`` rotations for this forward pass: fresh
        draws when training with ``resample_rotations``, else the seed's, drawn once."""
        if self.training and self.resample_rotations:
            return random_rotations(self.head_dim, self.n_hashes, n_buckets, device=device, dtype=dtype)
        key = (n_buckets, torch.device(device), dtype)
        rot = self._fixed_rotations.get(key)
        if rot is None:
            gen = torch.Generator().manual_seed(self.seed)
            rot = self._fixed_rotations[key] = random_rotations(
                self.head_dim, self.n_hashes, n_buckets, generator=gen, device=device, dtype=dtype)
        return rot

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B, L, _ = x.shape
        h, dh = self.heads, self.head_dim
        qk = self.to_qk(x).view(B, L, h, dh).transpose(1, 2).reshape(B * h, L, dh)  # (B*h, L, dh)
        v = self.to_v(x).view(B, L, h, dh).transpose(1, 2).reshape(B * h, L, dh)
        m = mask if mask is None or h == 1 else mask.repeat_interleave(h, dim=0)   # (B*h, L)
        if L < self.full_attn_below:
            o = dense_attention(qk, v, m)
        else:
            nb = self.n_buckets or num_buckets_for(L, self.bucket_size)
            o = lsh_attention(qk, v, m, rotations=self.rotations(nb, x.device, qk.dtype),
                              chunk_size=self.bucket_size, n_buckets=nb)
        o = o.view(B, h, L, dh).transpose(1, 2).reshape(B, L, h * dh)                # (B, L, h*dh)
        return self.to_out(o)


# ----------------------------------------------------------------------------------------
# Feed-forward
# ----------------------------------------------------------------------------------------

class ChunkedFeedForward(nn.Module):
    """Position-wise ``Linear -> GELU -> Linear`` over ``chunks`` slices of the sequence at a
    time, so the ``(B, L, mult*D)`` hidden activation never exists whole without autograd."""

    def __init__(self, dim: int, *, mult: int = 4, chunks: int = 1, dropout: float = 0.0):
        super().__init__()
        if mult < 1 or chunks < 1:
            raise ValueError(f"mult and chunks must be >= 1, got {mult}, {chunks}")
        self.chunks = chunks
        self.net = nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mult * dim, dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.chunks == 1 or x.shape[1] <= 1:
            return self.net(x)
        return torch.cat([self.net(part) for part in x.chunk(self.chunks, dim=1)], dim=1)


class _PreNorm(nn.Module):
    """``fn(LayerNorm(x), mask)``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.fn(self.norm(x), mask)


# ----------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------

class LSHEncoder(nn.Module):
    """``depth`` reversible blocks of LSH self-attention + chunked feed-forward, then LayerNorm.

    Args:
        dim: model width D.
        depth: number of blocks.
        reversible: recompute activations in backward (memory flat in depth); False runs the
            same blocks with ordinary autograd.
        ff_mult, ff_chunks, dropout: the feed-forward's width multiple, sequence chunks and
            dropout.
        **attn: keyword arguments of :class:`LSHSelfAttention` (heads, bucket_size,
            n_hashes, n_buckets, full_attn_below, seed, resample_rotations); block i's
            rotations use ``seed + i``.

    ``forward(x (B, L, D), mask (B, L) bool)`` -> ``(B, L, D)``, zeros at padded positions.
    """

    def __init__(self, dim: int, depth: int, *, reversible: bool = True, ff_mult: int = 4,
                 ff_chunks: int = 1, dropout: float = 0.0, **attn):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        seed = attn.pop("seed", 0)
        blocks = [
            ReversibleBlock(
                _PreNorm(dim, LSHSelfAttention(dim, seed=seed + i, **attn)),
                _PreNorm(dim, ChunkedFeedForward(dim, mult=ff_mult, chunks=ff_chunks, dropout=dropout)))
            for i in range(depth)
        ]
        self.layers = ReversibleSequence(blocks, reversible=reversible)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y1, y2 = self.layers(x, x, mask)   # both halves start as x (reformer-pytorch does the same)
        out = self.norm((y1 + y2) * 0.5)                                   # (B, L, D)
        return out if mask is None else out * mask[..., None].to(out.dtype)
