"""Triton kernel of the bucketed, chunked attention step of :func:`lsh_attention` (forward).

One program owns one chunk of one hash round of one row: it gathers the chunk's c queries
and the 2c keys and values of its window straight from the unsorted ``(N, L, d)`` tensors
through the sort permutation (no sorted copies in memory), scores them, applies the self
score, the duplicate correction (walking the rounds' chunk ids) and the padding mask, and
writes each query's output and log-sum-exp in sorted order; the rounds are combined in
PyTorch, as on the PyTorch path. Scores stay in registers: the ``(N, H, L, 2c)`` score
tensor of the PyTorch path never exists.

Forward only (no autograd): ``lsh_attention(..., backend="triton")`` for inputs that need
no gradient (scoring, evaluation). It is checked against the PyTorch path in Triton's
interpreter (``TRITON_INTERPRET=1`` set before triton is first imported runs it on CPU
tensors); it has not been compiled or timed on a GPU yet, so it is opt-in. Registers: a
program holds ``c x 2c x d`` products, fine for the small head widths of the history tower
(d = 8..16); wide heads would want ``tl.dot`` tiles instead.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _lsh_chunk_fwd(
    QK, K, V, SIDX, CHUNK_OF, MASK, O, LSE,
    Lp, C, H, self_score, mask_score,
    CHUNK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, LOOK_BACK: tl.constexpr,
    DEDUPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    ci = pid % C                       # chunk
    nr = pid // C                      # n * H + round
    n = nr // H
    i = tl.arange(0, BLOCK_C)
    q_ok = i < CHUNK
    qs = ci * CHUNK + i                # sorted positions of the queries
    qi = tl.load(SIDX + nr * Lp + qs, mask=q_ok, other=0)          # (BC,) tokens
    j = tl.arange(0, BLOCK_W)
    if LOOK_BACK:
        k_ok = j < 2 * CHUNK
        prev = (ci + C - 1) % C
        ks = tl.where(j < CHUNK, ci * CHUNK + j, prev * CHUNK + j - CHUNK)
    else:
        k_ok = j < CHUNK
        ks = ci * CHUNK + j
    ki = tl.load(SIDX + nr * Lp + ks, mask=k_ok, other=0)          # (BW,) tokens

    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    q = tl.load(QK + (n * Lp + qi[:, None]) * D + dd[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
    k = tl.load(K + (n * Lp + ki[:, None]) * D + dd[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)               # (BC, BW)
    s = tl.where(qi[:, None] == ki[None, :], self_score, s)
    if DEDUPE:
        count = tl.zeros((BLOCK_C, BLOCK_W), dtype=tl.int32)
        for r in range(H):
            base = (n * H + r) * Lp
            qc = tl.load(CHUNK_OF + base + qi, mask=q_ok, other=0)
            kc = tl.load(CHUNK_OF + base + ki, mask=k_ok, other=-1)
            count += (kc[None, :] == qc[:, None]).to(tl.int32)
            if LOOK_BACK:
                count += (kc[None, :] == ((qc + C - 1) % C)[:, None]).to(tl.int32)
        s = s - tl.log(tl.maximum(count, 1).to(s.dtype))
    km = tl.load(MASK + n * Lp + ki, mask=k_ok, other=0) != 0
    s = tl.where(km[None, :], s, mask_score)
    s = tl.where(k_ok[None, :], s, float("-inf"))

    m = tl.max(s, axis=1)                                           # (BC,)
    p = tl.exp(s - m[:, None])
    z = tl.sum(p, axis=1)
    e = tl.arange(0, BLOCK_DV)
    e_ok = e < DV
    v = tl.load(V + (n * Lp + ki[:, None]) * DV + e[None, :], mask=k_ok[:, None] & e_ok[None, :], other=0.0)
    o = tl.sum(p[:, :, None] * v[None, :, :], axis=1) / z[:, None]  # (BC, BDV)
    rows = nr * Lp + qs
    tl.store(O + rows[:, None] * DV + e[None, :], o.to(O.dtype.element_ty), mask=q_ok[:, None] & e_ok[None, :])
    tl.store(LSE + rows, (m + tl.log(z)).to(LSE.dtype.element_ty), mask=q_ok)


def lsh_chunk_attention_triton(qk_scaled: Tensor, k: Tensor, v: Tensor, sidx: Tensor, chunk_of: Tensor,
                               mask: Tensor, chunk: int, self_score: float, dedupe: bool
                               ) -> tuple[Tensor, Tensor]:
    """Per-round chunked attention in sorted order.

    Args:
        qk_scaled: ``(N, Lp, d)`` queries already scaled by ``1/sqrt(d)``; k: ``(N, Lp, d)`` keys;
            v: ``(N, Lp, dv)``; all contiguous, ``Lp`` a multiple of ``chunk``.
        sidx: ``(N, H, Lp)`` int64, sorted position -> token, per round.
        chunk_of: ``(N, H, Lp)`` int64, token -> its chunk in each round.
        mask: ``(N, Lp)`` bool, True for real tokens.

    Returns:
        ``o (N, H, Lp, dv)`` and ``lse (N, H, Lp)`` in sorted order.
    """
    N, Lp, d = qk_scaled.shape
    H = sidx.shape[1]
    dv = v.shape[-1]
    C = Lp // chunk
    look_back = C > 1
    o = torch.empty(N, H, Lp, dv, dtype=v.dtype, device=v.device)
    lse = torch.empty(N, H, Lp, dtype=v.dtype, device=v.device)
    w = 2 * chunk if look_back else chunk
    _lsh_chunk_fwd[(N * H * C,)](
        qk_scaled.contiguous(), k.contiguous(), v.contiguous(), sidx.contiguous(),
        chunk_of.contiguous(), mask.to(torch.int8).contiguous(), o, lse,
        Lp, C, H, float(self_score), float(torch.finfo(v.dtype).min),
        CHUNK=chunk, D=d, DV=dv, LOOK_BACK=look_back, DEDUPE=dedupe and H > 1,
        BLOCK_C=triton.next_power_of_2(chunk), BLOCK_W=triton.next_power_of_2(w),
        BLOCK_D=triton.next_power_of_2(d), BLOCK_DV=triton.next_power_of_2(dv),
    )
    return o, lse
