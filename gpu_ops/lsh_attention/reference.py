"""Full shared-QK attention with exact key-padding masks: the reference and the short-sequence path.

The rules are the Reformer's (Kitaev et al., ICLR 2020, https://arxiv.org/abs/2001.04451),
so that LSH attention and this function agree exactly whenever LSH attends everything:

- shared query/key projection: a token's key is its query divided by its norm;
- scores ``q . k / sqrt(d)``; a token scores ``SELF_SCORE`` against itself, so it attends to
  itself only when no other token is allowed (shared QK would otherwise make it its own
  best match);
- padded keys (``mask == False``) get weight exactly 0; padded queries return zeros.

Rows of the batch never see each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Score of a token against itself (the Reformer's value): finite, so a token that may attend
# to nothing else still gets a defined output, and far below any real score.
SELF_SCORE = -5e4


def check_qkv(qk: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Validate ``qk (N, L, d)``, ``v (N, L, dv)``, ``mask (N, L)``; return the bool mask."""
    if qk.dim() != 3 or v.dim() != 3:
        raise ValueError(f"qk and v must be (N, L, d), got shapes {tuple(qk.shape)} and {tuple(v.shape)}")
    if qk.shape[:2] != v.shape[:2]:
        raise ValueError(f"qk {tuple(qk.shape)} and v {tuple(v.shape)} differ in (N, L)")
    if not qk.is_floating_point() or qk.dtype != v.dtype:
        raise TypeError(f"qk and v must share one floating dtype, got {qk.dtype} and {v.dtype}")
    if mask is None:
        return torch.ones(qk.shape[:2], dtype=torch.bool, device=qk.device)
    if mask.shape != qk.shape[:2]:
        raise ValueError(f"mask must be (N, L) = {tuple(qk.shape[:2])}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be torch.bool (True = real token), got {mask.dtype}")
    return mask


def shared_keys(qk: Tensor) -> Tensor:
    """Keys of shared-QK attention: the queries scaled to unit length, ``(N, L, d)``."""
    return F.normalize(qk, dim=-1)


def full_attention(qk: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Shared-QK softmax attention over the whole sequence, ``O(L^2)`` memory.

    Args:
        qk: ``(N, L, d)`` shared query/key vectors.
        v: ``(N, L, dv)`` values.
        mask: ``(N, L)`` bool, True for real tokens; None = no padding.

    Returns:
        ``(N, L, dv)``; zeros at padded positions.
    """
    mask = check_qkv(qk, v, mask)
    N, L, d = qk.shape
    k = shared_keys(qk)
    s = torch.matmul(qk, k.transpose(1, 2)) * (1.0 / math.sqrt(d))   # (N, L, L)
    eye = torch.eye(L, dtype=torch.bool, device=qk.device)
    s = s.masked_fill(eye, SELF_SCORE)
    # finfo.min rather than -inf: exp() of it is exactly 0 next to any real score, and a
    # fully padded row stays finite (its output is zeroed below)
    if not bool(mask.all()):
        s = s.masked_fill(~mask[:, None, :], torch.finfo(s.dtype).min)
    out = torch.matmul(torch.softmax(s, dim=-1), v)                  # (N, L, dv)
    return out * mask[..., None].to(out.dtype)
