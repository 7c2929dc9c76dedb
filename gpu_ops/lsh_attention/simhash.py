"""SimHash top-k retrieval for target attention (ETA: Chen et al., "Efficient Long Sequential
User Data Modeling for Click-Through Rate Prediction", 2022, https://arxiv.org/abs/2209.12212).

A vector's signature is the signs of its projections on m random hyperplanes (Charikar's
SimHash); the Hamming distance between signatures estimates the angle between vectors
(``P[bit differs] = angle / pi``). The candidate's top-k history items by Hamming distance
are the only ones its attention reads.
"""

from __future__ import annotations

import torch
from torch import Tensor


def simhash_signatures(x: Tensor, planes: Tensor) -> Tensor:
    """``(..., d)`` vectors and ``(d, m)`` hyperplanes -> ``(..., m)`` bool signatures."""
    if planes.dim() != 2 or planes.shape[0] != x.shape[-1]:
        raise ValueError(f"planes must be (d={x.shape[-1]}, m), got {tuple(planes.shape)}")
    return torch.matmul(x, planes.to(x.dtype)) > 0


_FLOAT32_EXACT = 1 << 24   # integers below this are exact float32 values
_CHUNK = 16   # signature bits packed per integer (a 2^16-entry popcount table)


def _signs(sig: Tensor) -> Tensor:
    """bool signatures -> float32 +-1 (exact: a dot product of m of them is an integer < 2^24)."""
    return sig.to(torch.float32).mul_(2).sub_(1)


def _pack(sig: Tensor) -> Tensor:
    """``(..., m)`` bool -> ``(..., ceil(m / 16))`` int64, 16 bits an integer."""
    m = sig.shape[-1]
    pad = (-m) % _CHUNK
    if pad:
        sig = torch.cat([sig, sig.new_zeros(*sig.shape[:-1], pad)], dim=-1)
    weights = 2 ** torch.arange(_CHUNK, device=sig.device, dtype=torch.int64)
    return (sig.view(*sig.shape[:-1], -1, _CHUNK).to(torch.int64) * weights).sum(-1)


_POPCOUNT: dict[torch.device, Tensor] = {}


def _popcount16(x: Tensor) -> Tensor:
    table = _POPCOUNT.get(x.device)
    if table is None:
        v = torch.arange(1 << _CHUNK, dtype=torch.int64)
        table = torch.zeros(1 << _CHUNK, dtype=torch.int64)
        for bit in range(_CHUNK):
            table += (v >> bit) & 1
        table = _POPCOUNT[x.device] = table.to(x.device)
    return table[x]


def hamming_distance(query_sig: Tensor, key_sig: Tensor) -> Tensor:
    """Bits in which ``(B, m)`` query and ``(B or 1, L, m)`` key signatures differ: ``(B, L)`` int64.

    Keys shared by all queries (``(1, L, m)``): one matrix product of the +-1 signatures,
    ``dist = (m - <q, k>) / 2``, exact in float32 for ``m < 2^24``. Keys of their own per
    query: XOR of the packed signatures and a popcount table, so no ``(B, L, m)`` float
    tensor is made (4 bytes a bit where the packed keys take 8 bytes per 16 bits)."""
    m = query_sig.shape[-1]
    if key_sig.shape[0] == 1 and m < _FLOAT32_EXACT:
        dot = torch.matmul(_signs(query_sig), _signs(key_sig[0]).T)        # (B, L)
        return (m - dot).div_(2).to(torch.int64)
    q, k = _pack(query_sig), _pack(key_sig)                                 # (B, c), (B, L, c)
    return _popcount16(q[:, None, :] ^ k).sum(-1)                           # (B, L)


def hamming_topk(query_sig: Tensor, key_sig: Tensor, mask: Tensor, k: int,
                 first: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` keys nearest to each query in Hamming distance, per batch row.

    Args:
        query_sig: ``(B, m)`` bool signatures of the queries.
        key_sig: ``(B, L, m)`` bool signatures of the keys (``(1, L, m)``: the same keys for all).
        mask: ``(B, L)`` bool, True for real keys (``(1, L)``: the same for all); padded keys
            are never picked while a real one is left.
        k: keys to pick (``k <= L``).
        first: ``(B, L)`` bool or None: real keys picked before all others (nearest first
            among themselves), e.g. the events that share the candidate's item (SIM's hard
            search ahead of ETA's soft one).

    Returns:
        ``(idx, valid)``, both ``(B, k)``: key positions, nearest first (ties: the later
        position first, i.e. the more recent event in an oldest-first history), and whether
        each picked key is real (False only when a row has fewer than k real keys).
    """
    B, L, m = query_sig.shape[0], key_sig.shape[1], key_sig.shape[2]
    if key_sig.dim() != 3 or key_sig.shape[0] not in (1, B):
        raise ValueError(f"key_sig must be (B={B} or 1, L, m), got {tuple(key_sig.shape)}")
    if not 1 <= k <= L:
        raise ValueError(f"k must be in [1, L={L}], got {k}")
    if query_sig.shape != (B, m) or mask.dim() != 2 or mask.shape[0] not in (1, B) or mask.shape[1] != L:
        raise ValueError(f"query_sig {tuple(query_sig.shape)} and mask {tuple(mask.shape)} do not "
                         f"fit key_sig {tuple(key_sig.shape)}")
    if first is not None and first.shape != (B, L):
        raise ValueError(f"first must be ({B}, {L}), got {tuple(first.shape)}")
    # one integer key per (query, key): (first or not,) distance, then recency; padding after
    # every real key:  rank = [not first] * span + dist * L + (L - 1 - pos),  span = (m + 1) * L
    span = (m + 1) * L
    pos = torch.arange(L, device=key_sig.device)
    if key_sig.shape[0] == 1 and 2 * span < _FLOAT32_EXACT:
        # shared keys, every rank an exact float32: one fused product, in-place passes;
        # dist * L = (m - <q, k>) * L / 2 with +-1 signatures, so rank = <q, k> * (-L / 2) + base
        base = (m * L / 2 + span + (L - 1) - pos).to(torch.float32)          # (L,)
        rank = torch.addmm(base, _signs(query_sig), _signs(key_sig[0]).T, alpha=-L / 2)   # (B, L)
        if first is not None:
            rank.add_(first, alpha=-span)                                   # first ones ahead of all others
        rank = rank.masked_fill_(~mask, 2 * span).to(torch.int32)
    else:
        dist = hamming_distance(query_sig, key_sig)                         # (B, L) in [0, m]
        rank = dist * L + (L - 1 - pos)                                     # < span
        if first is not None:
            rank = rank + (~first).to(torch.int64) * span
        rank = rank.masked_fill(~mask, 2 * span)
    idx = torch.topk(rank, k, dim=1, largest=False, sorted=True).indices  # (B, k)
    return idx, torch.gather(mask.expand(B, L), 1, idx)
