"""LSH attention (Reformer: Kitaev, Kaiser, Levskaya, ICLR 2020, https://arxiv.org/abs/2001.04451).

Pure PyTorch, vectorised over batch rows and hash rounds.

    for each hash round r (all rounds at once, as a batch dimension):
        bucket = argmax([x R_r ; -x R_r])             angular LSH, R_r a random rotation
        sort tokens by (bucket, position)             padding sorts after every bucket
        cut the sorted sequence into chunks of c      each chunk attends to itself and
                                                      the previous chunk (cyclically)
    combine the rounds with weights softmax_r(logsumexp of round r's scores)

Shared QK and the self/padding rules are those of :func:`full_attention`. A key that a
query sees in several rounds (or twice in one round) has its score lowered by the log of
that count (the paper's N_ij correction), so the combination is the exact softmax over the
union of keys the query saw: when every round sees the whole sequence (one chunk, or two),
LSH attention equals full attention.

Each batch row is sorted and chunked on its own: no row ever attends to another.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from gpu_ops.lsh_attention.reference import SELF_SCORE, check_qkv, shared_keys


# ----------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------

def num_buckets_for(length: int, bucket_size: int) -> int:
    """Buckets for a sequence of ``length`` tokens: about one chunk per bucket, even, >= 2."""
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    n = max(1, math.ceil(length / bucket_size))
    return max(2, n + (n % 2))


def random_rotations(dim: int, n_hashes: int, n_buckets: int, *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(dim, n_hashes, n_buckets // 2)`` Gaussian rotations, one set per hash round."""
    if n_buckets < 1 or (n_buckets > 1 and n_buckets % 2):
        raise ValueError(f"n_buckets must be 1 or an even number >= 2, got {n_buckets}")
    if n_hashes < 1:
        raise ValueError(f"n_hashes must be >= 1, got {n_hashes}")
    cols = max(1, n_buckets // 2)
    r = torch.randn(dim, n_hashes, cols, generator=generator, dtype=torch.float32)
    return r.to(device=device, dtype=dtype)


def lsh_buckets(x: Tensor, rotations: Tensor, n_buckets: int | None = None, *,
                block_elems: int = 1 << 24) -> Tensor:
    """Angular LSH buckets ``argmax([x R; -x R])``: ``(N, L, d)`` -> ``(N, n_hashes, L)`` int64.

    ``n_buckets = 1`` puts every token in bucket 0 (the rotations are then ignored). With
    about one bucket per chunk, ``x R`` has ``L * L / c`` entries per row and round; it is
    formed a slice of the sequence at a time (at most ``block_elems`` entries), so hashing
    needs no more memory than attention does.
    """
    if rotations.dim() != 3 or rotations.shape[0] != x.shape[-1]:
        raise ValueError(f"rotations must be (d={x.shape[-1]}, n_hashes, n_buckets/2), "
                         f"got {tuple(rotations.shape)}")
    N, L, _ = x.shape
    H, half = rotations.shape[1], rotations.shape[2]
    if n_buckets == 1:
        return torch.zeros(N, H, L, dtype=torch.int64, device=x.device)
    rot = rotations.to(x.dtype)
    step = max(1, block_elems // max(1, N * H * half))
    out = []
    for x_part in x.split(step, dim=1):
        r = torch.einsum("nld,dhr->nhlr", x_part, rot)                   # (N, H, l, nb/2)
        hi, hi_idx = r.max(dim=-1)
        lo, lo_idx = r.min(dim=-1)
        # argmax of [r; -r] (the first index on a tie, as argmax of the concatenation)
        out.append(torch.where(hi >= -lo, hi_idx, lo_idx + half))
    return torch.cat(out, dim=-1)                                         # (N, H, L)


# ----------------------------------------------------------------------------------------
# Bucketed, chunked attention
# ----------------------------------------------------------------------------------------

def _look_one_back(x: Tensor) -> Tensor:
    """(N, H, C, c, ...) chunks -> (N, H, C, 2c, ...): each chunk and the one before it."""
    if x.shape[2] == 1:   # a single chunk: its predecessor is itself, attend it once
        return x
    return torch.cat([x, x.roll(1, dims=2)], dim=3)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (N, L, e), idx (N, H, L') -> (N, H, L', e) rows of x picked per round."""
    N, L, e = x.shape
    H, Lq = idx.shape[1], idx.shape[2]
    return torch.gather(x[:, None].expand(N, H, L, e), 2, idx[..., None].expand(N, H, Lq, e))


def lsh_attention(qk: Tensor, v: Tensor, mask: Tensor | None = None, *, rotations: Tensor,
                  chunk_size: int, n_buckets: int | None = None, dedupe: bool = True,
                  backend: Literal["torch", "triton"] = "torch") -> Tensor:
    """Shared-QK LSH attention.

    Args:
        qk: ``(N, L, d)`` shared query/key vectors.
        v: ``(N, L, dv)`` values.
        mask: ``(N, L)`` bool, True for real tokens; None = no padding.
        rotations: ``(d, n_hashes, n_buckets // 2)`` from :func:`random_rotations`.
        chunk_size: tokens per chunk c (each query sees at most 2c keys per round).
        n_buckets: buckets; default ``2 * rotations.shape[2]``; 1 = no hashing.
        dedupe: lower repeated keys' scores by log(count) (exact union softmax); costs
            one integer comparison pass per round.
        backend: ``torch`` (differentiable) or ``triton`` (the forward kernel of ``kernel.py``:
            no autograd; checked in Triton's interpreter, not yet timed on a GPU, so opt-in).

    Returns:
        ``(N, L, dv)``; zeros at padded positions.
    """
    mask = check_qkv(qk, v, mask)
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and torch.is_grad_enabled() and (qk.requires_grad or v.requires_grad):
        raise ValueError("backend='triton' has no backward; use 'torch' when a gradient is needed")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if n_buckets is None:
        n_buckets = 2 * rotations.shape[2]
    N, L, d = qk.shape
    dv = v.shape[-1]
    H = rotations.shape[1]
    c = chunk_size
    Lp = -(-L // c) * c
    if Lp != L:   # pad to whole chunks with masked tokens
        qk = torch.nn.functional.pad(qk, (0, 0, 0, Lp - L))
        v = torch.nn.functional.pad(v, (0, 0, 0, Lp - L))
        mask = torch.nn.functional.pad(mask, (0, Lp - L), value=False)
    dev = qk.device

    with torch.no_grad():
        buckets = lsh_buckets(qk, rotations, n_buckets)                   # (N, H, Lp)
        buckets = buckets.masked_fill(~mask[:, None, :], n_buckets)        # padding sorts last
        pos = torch.arange(Lp, device=dev)
        sort_key = buckets * Lp + pos                                      # unique: a stable order
        sidx = sort_key.argsort(dim=-1)                                    # (N, H, Lp) sorted -> token
        undo = torch.empty_like(sidx).scatter_(-1, sidx, pos.expand_as(sidx))  # token -> sorted

    k = shared_keys(qk)
    if backend == "triton":
        from gpu_ops.lsh_attention.kernel import lsh_chunk_attention_triton

        o, lse = lsh_chunk_attention_triton(qk * (1.0 / math.sqrt(d)), k, v, sidx, undo // c, mask, c,
                                            SELF_SCORE, dedupe)
    else:
        o, lse = _chunk_attention(qk, k, v, mask, sidx, undo, c, dedupe)

    # back to token order, then weigh each round by how much mass it found
    o = torch.gather(o, 2, undo[..., None].expand(N, H, Lp, dv))            # (N, H, Lp, dv)
    lse = torch.gather(lse, 2, undo)                                        # (N, H, Lp)
    weight = torch.softmax(lse, dim=1)                                      # (N, H, Lp)
    out = (o * weight[..., None]).sum(dim=1)                                # (N, Lp, dv)
    out = out * mask[..., None].to(out.dtype)
    return out[:, :L]


def _chunk_attention(qk: Tensor, k: Tensor, v: Tensor, mask: Tensor, sidx: Tensor, undo: Tensor,
                     c: int, dedupe: bool) -> tuple[Tensor, Tensor]:
    """The PyTorch path: ``o (N, H, Lp, dv)`` and ``lse (N, H, Lp)`` of every round, sorted order."""
    N, Lp, d = qk.shape
    dv = v.shape[-1]
    H, C, dev = sidx.shape[1], Lp // c, qk.device
    sq = _gather_rows(qk * (1.0 / math.sqrt(d)), sidx).view(N, H, C, c, d)  # scaled once, on L rows
    sk = _look_one_back(_gather_rows(k, sidx).view(N, H, C, c, d))       # (N, H, C, w, d)
    sv = _look_one_back(_gather_rows(v, sidx).view(N, H, C, c, dv))      # (N, H, C, w, dv)

    s = torch.matmul(sq, sk.transpose(-1, -2))                            # (N, H, C, c, w)
    w = sk.shape[3]
    # a query's own key sits at the same index of its window (the window starts with its chunk)
    s = s.masked_fill(torch.eye(c, w, dtype=torch.bool, device=dev), SELF_SCORE)
    with torch.no_grad():
        qpos = sidx.view(N, H, C, c)
        kpos = _look_one_back(qpos[..., None]).squeeze(-1)                # (N, H, C, w)
        log_count = _log_counts(undo // c, qpos, kpos, C) if dedupe and H > 1 else None
        kmask = None
        if not bool(mask.all()):
            kmask = torch.gather(mask[:, None].expand(N, H, Lp), 2, kpos.reshape(N, H, -1)).view_as(kpos)
    if log_count is not None:
        s = s - log_count.to(s.dtype)
    if kmask is not None:
        s = s.masked_fill(~kmask[..., None, :], torch.finfo(s.dtype).min)

    lse = torch.logsumexp(s, dim=-1, keepdim=True)                          # (N, H, C, c, 1)
    o = torch.matmul(torch.exp(s - lse), sv)                                # (N, H, C, c, dv)
    return o.reshape(N, H, Lp, dv), lse.reshape(N, H, Lp)


def _log_counts(chunk_of: Tensor, qpos: Tensor, kpos: Tensor, C: int) -> Tensor:
    """log N_ij: how often key j is in query i's window, summed over all rounds.

    chunk_of ``(N, H, Lp)``: the chunk of each token in each round; qpos ``(N, H, C, c)`` and
    kpos ``(N, H, C, w)``: tokens of the query chunks and their windows. Returns
    ``(N, H, C, c, w)`` float (>= log 1, since the current round always counts).
    """
    N, H = chunk_of.shape[:2]
    chunk_of = chunk_of.to(torch.int16 if C < 2**15 else torch.int32)
    count = torch.zeros(*qpos.shape, kpos.shape[-1], dtype=torch.int16, device=qpos.device)
    for r in range(H):
        ch = chunk_of[:, r][:, None].expand(N, H, chunk_of.shape[-1])     # (N, H, Lp) round r's chunks
        qc = torch.gather(ch, 2, qpos.reshape(N, H, -1)).view_as(qpos)     # (N, H, C, c)
        kc = torch.gather(ch, 2, kpos.reshape(N, H, -1)).view_as(kpos)[..., None, :]  # (N, H, C, 1, w)
        # in round r, j is in i's window iff chunk(j) is chunk(i) or the one before it (cyclic);
        # a single chunk is its own window, once
        count += kc == qc[..., None]
        if C > 1:
            count += kc == ((qc - 1) % C)[..., None]
    return count.float().log()
