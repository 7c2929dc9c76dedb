"""Full shared-QK attention for the short-sequence path: the numbers of
:func:`~gpu_ops.lsh_attention.reference.full_attention` in fewer passes over the scores.

At L = 1K the ``(N, L, L)`` scores are the whole cost: the reference writes and reads them
six times (matmul, scale, diagonal mask, padding mask, softmax, matmul) and builds an
``(L, L)`` identity. Here the scale is folded into the ``(N, L, d)`` queries, the self
score is written on the diagonal in place (``L`` entries, not ``L^2``), padding is filled
in place and only when a row has padding, and the output is zeroed at padded queries only
then. The in-place writes land on the matmul's output, which autograd does not keep, so
the same function trains.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gpu_ops.lsh_attention.reference import SELF_SCORE, check_qkv, shared_keys


def dense_attention(qk: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Shared-QK softmax attention over the whole sequence (same rules as ``full_attention``).

    Args:
        qk: ``(N, L, d)`` shared query/key vectors.
        v: ``(N, L, dv)`` values.
        mask: ``(N, L)`` bool, True for real tokens; None = no padding.

    Returns:
        ``(N, L, dv)``; zeros at padded positions.
    """
    padded = mask is not None
    mask = check_qkv(qk, v, mask)
    if padded and bool(mask.all()):
        padded = False
    N, L, d = qk.shape
    k = shared_keys(qk)                                                    # (N, L, d)
    s = torch.bmm(qk * (1.0 / math.sqrt(d)), k.transpose(1, 2))            # (N, L, L)
    s.diagonal(dim1=1, dim2=2).fill_(SELF_SCORE)
    if padded:   # finfo.min, as the reference: exactly 0 weight, finite on all-padded rows
        s.masked_fill_(~mask[:, None, :], torch.finfo(s.dtype).min)
    out = torch.bmm(torch.softmax(s, dim=-1), v)                           # (N, L, dv)
    return out * mask[..., None].to(out.dtype) if padded else out
