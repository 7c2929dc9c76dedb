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


def hamming_topk(query_sig: Tensor, key_sig: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` keys nearest to each query in Hamming distance, per batch row.

    Args:
        query_sig: ``(B, m)`` bool signatures of the queries.
        key_sig: ``(B, L, m)`` bool signatures of the keys.
        mask: ``(B, L)`` bool, True for real keys; padded keys are never picked while a
            real one is left.
        k: keys to pick (``k <= L``).

    Returns:
        ``(idx, valid)``, both ``(B, k)``: key positions, nearest first (ties: the later
        position first, i.e. the more recent event in an oldest-first history), and whether
        each picked key is real (False only when a row has fewer than k real keys).
    """
    B, L, m = key_sig.shape
    if not 1 <= k <= L:
        raise ValueError(f"k must be in [1, L={L}], got {k}")
    if query_sig.shape != (B, m) or mask.shape != (B, L):
        raise ValueError(f"query_sig {tuple(query_sig.shape)} and mask {tuple(mask.shape)} do not "
                         f"fit key_sig {tuple(key_sig.shape)}")
    dist = (key_sig != query_sig[:, None, :]).sum(-1)                       # (B, L) in [0, m]
    # one integer key: distance first, then recency; padding after every real key
    pos = torch.arange(L, device=key_sig.device)
    rank = (dist.to(torch.int64) * L + (L - 1 - pos)).masked_fill(~mask, (m + 1) * L)
    idx = torch.topk(rank, k, dim=1, largest=False, sorted=True).indices  # (B, k)
    return idx, torch.gather(mask, 1, idx)
