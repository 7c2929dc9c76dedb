"""Full shared-QK attention for the short-sequence path: the numbers of
:func:`~gpu_ops.lsh_attention.reference.full_attention` in fewer passes over the scores.

At L = 1K the ``(N, L, L)`` scores are the whole cost: the reference writes and reads them
six times (matmul, scale, diagonal mask, padding mask, softmax, matmul) and builds an
``(L, L)`` identity.

With autograd (training), and for scores larger than the workspace below (a scoring batch
of many histories), the attention runs in PyTorch's fused ``scaled_dot_product_attention``
with one additive bias for the self score and the padding (:func:`_fused_attention`): no
``(N, L, L)`` scores, softmax or their transposed gradients are materialised, only the
bias (scoring 8,192 histories of 100 events: 0.61-0.70 s against 0.81-0.91 s).

Otherwise (one user's history, as serving scores it) the scale is folded into the
``(N, L, d)`` queries, the self score is written on the diagonal in place (``L`` entries,
not ``L^2``), padding is filled in place and only when a row has padding, and the output
is zeroed at padded queries only then. The scores live in a per-thread workspace that is
kept between calls and the softmax runs in place: a fresh 4 MB tensor per call (L = 1K)
costs its page faults every time once the allocator hands such blocks back to the system,
which on a busy machine doubled the attention's time (the fused path is no faster there:
4.0-4.4 ms at L = 1K either way).
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from gpu_ops.lsh_attention.reference import SELF_SCORE, check_qkv, shared_keys


WORKSPACE_MAX_BYTES = 64 << 20   # larger score tensors are allocated per call
_workspace = threading.local()


def _scores_workspace(n: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """``n`` elements of this thread's score workspace for ``(dtype, device)`` (None: too large)."""
    if n * torch.empty((), dtype=dtype).element_size() > WORKSPACE_MAX_BYTES:
        return None
    buffers = getattr(_workspace, "buffers", None)
    if buffers is None:
        buffers = _workspace.buffers = {}
    buf = buffers.get((dtype, device))
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):   # a normal tensor: writable inside and outside inference mode
            buf = buffers[(dtype, device)] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n]


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
    graph = torch.is_grad_enabled() and (qk.requires_grad or v.requires_grad)
    work = None if graph else _scores_workspace(N * L * L, qk.dtype, qk.device)
    if work is None:   # training, or scores too large for the workspace (a big scoring batch)
        return _fused_attention(qk, k, v, mask if padded else None)
    q = qk * (1.0 / math.sqrt(d))
    s = torch.bmm(q, k.transpose(1, 2), out=work.view(N, L, L))           # (N, L, L)
    s.diagonal(dim1=1, dim2=2).fill_(SELF_SCORE)
    if padded:   # finfo.min, as the reference: exactly 0 weight, finite on all-padded rows
        s.masked_fill_(~mask[:, None, :], torch.finfo(s.dtype).min)
    p = torch.ops.aten._softmax.out(s, -1, False, out=s)   # in place: the kernel reads a row before writing it
    # as (v^T p^T)^T: the same product, ~3x faster on CPU for narrow heads (dv = 8: 2.5 -> 0.8 ms
    # at L = 1K), where the GEMM with an (L, dv) right side is poorly blocked
    out = torch.bmm(v.transpose(1, 2), p.transpose(1, 2)).transpose(1, 2)  # (N, L, dv)
    return out * mask[..., None].to(out.dtype) if padded else out


def _fused_attention(qk: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Training's path: PyTorch's fused ``scaled_dot_product_attention`` with the self score
    and the padding as one additive ``(N, 1, L, L)`` bias. The scores' softmax and its
    backward then run inside one kernel instead of over materialised ``(N, L, L)`` tensors
    and their transposed copies (forward + backward at N = 1024, L = 100, d = 16 on one CPU
    thread: 1.6x faster when freed memory is kept for reuse, 2.3x when every large tensor
    pays its page faults anew). Adding ``SELF_SCORE`` to the self score instead of setting it gives
    the same weights: ``exp`` of either underflows to exactly 0 next to any allowed key, and
    a token with no other key attends to itself alone either way (and a one-key softmax
    passes no gradient to its score)."""
    N, L, d = qk.shape
    bias = qk.new_zeros(N, 1, L, L)
    if mask is not None:
        bias.masked_fill_(~mask[:, None, None, :], torch.finfo(qk.dtype).min)
    bias.diagonal(dim1=2, dim2=3).fill_(SELF_SCORE)
    out = F.scaled_dot_product_attention(qk[:, None], k[:, None], v[:, None], attn_mask=bias,
                                         scale=1.0 / math.sqrt(d))[:, 0]    # (N, L, dv)
    return out * mask[..., None].to(out.dtype) if mask is not None else out
