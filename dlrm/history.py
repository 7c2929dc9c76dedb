"""The long-history tower: a user's last events -> one vector that joins the DLRM interaction.

    history item ids (B, L)  --embed-->  (B, L, D)       same ROBE array as the model's tables,
                                                          rows of their own table offset
      + recency embedding (0 = the latest event)
      --> N reversible blocks of LSH self-attention + chunked feed-forward   (Reformer;
          full self-attention below ``full_attn_below`` events)
      --> target attention of the candidate item over the encoded history:
          the top-k events by SimHash Hamming distance (ETA), or all of them
      --> (B, D)

References: Reformer (Kitaev et al., ICLR 2020, https://arxiv.org/abs/2001.04451);
ETA (Chen et al., 2022, https://arxiv.org/abs/2209.12212); SIM (Pi et al., CIKM 2020,
https://arxiv.org/abs/2006.05639) for long behaviour sequences in CTR models.

Histories are oldest first, left-aligned: row b holds ``lengths[b]`` real events in
``history[b, :lengths[b]]``; the rest is padding and never read. :func:`pad_history` builds
that layout from the jagged ``(values, offsets)`` form a model input carries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableSequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlrm.configs import HistoryConfig
from dlrm.data import gather_jagged
from dlrm.embeddings import PRIME, EmbeddingBackend, HashedTable, RobeArray
from gpu_ops import robe_lookup
from gpu_ops.lsh_attention import LSHEncoder, hamming_topk, simhash_signatures


# ----------------------------------------------------------------------------------------
# Input layout
# ----------------------------------------------------------------------------------------

def pad_history(values: Tensor, offsets: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """Jagged histories (oldest first) -> the ``max_len`` latest events of each, padded.

    Args:
        values: ``(nnz,)`` int64 item ids of all rows' histories, concatenated.
        offsets: ``(B + 1,)`` int64; row b's history is ``values[offsets[b]:offsets[b+1]]``.
        max_len: events kept per row (the most recent).

    Returns:
        ``history (B, Lmax)`` int64 (padding 0) and ``lengths (B,)`` int64, with
        ``Lmax = min(max_len, longest history)``.
    """
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be (B + 1,), got shape {tuple(offsets.shape)}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    lengths = (offsets[1:] - offsets[:-1]).clamp(max=max_len)               # (B,)
    start = offsets[1:] - lengths                                           # the latest events
    L = int(lengths.max()) if lengths.numel() else 0
    pos = torch.arange(L, device=values.device)
    mask = pos[None, :] < lengths[:, None]                                  # (B, L)
    idx = (start[:, None] + pos[None, :]).masked_fill(~mask, 0)
    hist = values[idx] if values.numel() else torch.zeros_like(idx)
    return hist.masked_fill(~mask, 0), lengths


def pad_recent(values: Tensor, offsets: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """Jagged histories stored newest first (as the model input holds them) -> the tower's
    layout: the ``max_len`` latest events of each row, oldest first, left-aligned.

    Args:
        values: ``(nnz, C)`` int64, the history columns of all rows' events, row after row,
            each row's events newest first.
        offsets: ``(B + 1,)`` int64; row b's events are ``values[offsets[b]:offsets[b+1]]``.
        max_len: events kept per row (the most recent).

    Returns:
        ``history (B, Lmax, C)`` int64 (padding 0) and ``lengths (B,)`` int64, with
        ``Lmax = max(1, min(max_len, longest history))``: at least one (masked) position, so
        every parameter of the tower takes part in every step, even on a batch of empty
        histories.
    """
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be (B + 1,), got shape {tuple(offsets.shape)}")
    if values.dim() != 2:
        raise ValueError(f"values must be (nnz, C), got shape {tuple(values.shape)}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    lengths = (offsets[1:] - offsets[:-1]).clamp(max=max_len)               # (B,)
    L = max(1, int(lengths.max()) if lengths.numel() else 0)
    pos = torch.arange(L, device=values.device)
    mask = pos[None, :] < lengths[:, None]                                  # (B, L)
    # oldest-first position p of row b is the (lengths[b] - 1 - p)-th newest event
    idx = (offsets[:-1, None] + lengths[:, None] - 1 - pos[None, :]).masked_fill(~mask, 0)
    hist = values[idx] if values.numel() else values.new_zeros(*idx.shape, values.shape[1])
    return hist.masked_fill(~mask[..., None], 0), lengths


def unique_histories(values: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Identical jagged histories stored once.

    Rows of one user on one day carry the same history (a scoring window holds ~5 rows per
    distinct history), and each is encoded alike: scoring them once is the same arithmetic.

    Args:
        values: ``(nnz, C)`` the rows' history columns, row after row.
        offsets: ``(B + 1,)``; row b's events are ``values[offsets[b]:offsets[b+1]]``.

    Returns:
        ``(values (nnz', C), offsets (U + 1,), rows (B,))``: the U distinct histories (each
        at its first row's place in order) and the one each row reads; None when no two rows
        share a history. Histories are equal when every column of every event is.
    """
    v, o = values.cpu().numpy(), offsets.cpu().numpy()
    B = o.size - 1
    index: dict[bytes, int] = {}
    rows, first = [], []                                                    # first: a row of each history
    for b in range(B):
        k = index.setdefault(v[o[b]:o[b + 1]].tobytes(), len(first))
        if k == len(first):
            first.append(b)
        rows.append(k)
    if len(first) == B:
        return None
    uv, uo = gather_jagged(values, offsets, torch.tensor(first, dtype=torch.int64, device=offsets.device))
    return uv, uo, torch.tensor(rows, dtype=torch.int64, device=offsets.device)


def days_bucket(days: Tensor, buckets: int) -> Tensor:
    """``floor(log2(max(days, 1)))`` capped at ``buckets - 1``: 1 day -> 0, 2-3 -> 1, 4-7 -> 2, ..."""
    d = days.clamp(min=1).to(torch.float64)
    return torch.floor(torch.log2(d)).to(torch.int64).clamp(max=buckets - 1)


# ----------------------------------------------------------------------------------------
# The tower
# ----------------------------------------------------------------------------------------

# attend(rows=...) over several histories gathers each candidate's copy of its history's
# encoding up to this size (one batched attention), else goes one history at a time
GATHER_MAX_BYTES = 64 << 20

# (tower, per-history encodings) while HistoryTower.given_encodings is open; a context
# variable, so threads and asyncio tasks each see only their own
_GIVEN: ContextVar[tuple["HistoryTower", MutableSequence[Tensor | None]] | None] = ContextVar(
    "history_given_encodings", default=None)


class HistoryTower(nn.Module):
    """History ids + candidate item id -> one ``(B, D)`` vector.

    Args:
        cfg: the tower's config.
        dim: embedding width D (the DLRM's ``embedding.dim``).
        embedding: the DLRM's embedding backend. A ``robe`` (or ``hashing``) backend also holds
            the history rows: global row ``table_start + id`` of the same array and hash, as an
            extra table after the model's own. Other backends (``full``, ``qr``) or None: the
            tower keeps its own ``nn.Embedding(cfg.table_size, dim)``.
        table_start: global row of history id 0; default ``sum(embedding.table_sizes)``.
        match_codes: how many match codes :meth:`attend` may be given (0: none; see there).

    ``forward(history (B, L), lengths (B,), candidate (B,))`` -> ``(B, D)``; a row with no
    history gets the output projection's bias (a learned "no history" vector).
    The backend is not registered as a submodule (the DLRM owns it and its state).
    """

    def __init__(self, cfg: HistoryConfig, dim: int, embedding: EmbeddingBackend | None = None,
                 table_start: int | None = None, match_codes: int = 0):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if cfg.heads > dim:
            raise ValueError(f"history.heads={cfg.heads} exceeds the embedding dim {dim}")
        if embedding is not None and embedding.dim != dim:
            raise ValueError(f"embedding backend dim {embedding.dim} != tower dim {dim}")
        self.config, self.dim = cfg, dim
        shares = isinstance(embedding, (RobeArray, HashedTable))
        self._backend = (embedding,) if shares else ()   # a tuple: not a registered submodule
        self.table_start = int(table_start if table_start is not None else
                               (sum(embedding.table_sizes) if embedding is not None else 0))
        if not shares and cfg.table_size < 1:
            raise ValueError("history.table_size must be set (>= 1) when the tower keeps its own table "
                             f"(backend {type(embedding).__name__})")
        self.own_table = None if shares else nn.Embedding(cfg.table_size, dim)
        if self.own_table is not None:
            nn.init.uniform_(self.own_table.weight, -1 / math.sqrt(dim), 1 / math.sqrt(dim))
        self.recency = nn.Embedding(cfg.max_len, dim) if cfg.recency else None
        if self.recency is not None:
            nn.init.normal_(self.recency.weight, std=0.02)
        self.action = nn.Embedding(2, dim) if cfg.actions else None         # offered / purchased
        self.days = nn.Embedding(cfg.days_buckets, dim) if cfg.days_buckets else None
        for emb in (self.action, self.days):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        self.encoder = LSHEncoder(
            dim, cfg.depth, reversible=cfg.reversible, ff_mult=cfg.ff_mult, ff_chunks=cfg.ff_chunks,
            dropout=cfg.dropout, heads=cfg.heads, bucket_size=cfg.bucket_size, n_hashes=cfg.n_hashes,
            full_attn_below=cfg.full_attn_below, seed=cfg.seed)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.match = nn.Embedding(match_codes, dim) if match_codes else None
        if self.match is not None:
            nn.init.normal_(self.match.weight, std=0.1)
        planes = torch.randn(dim, cfg.simhash_bits, generator=torch.Generator().manual_seed(cfg.seed))
        self.register_buffer("planes", planes)   # persistent: scoring must hash as training did

    # -- embedding --------------------------------------------------------------------

    def embed(self, ids: Tensor) -> Tensor:
        """History-table embeddings of item ids: ``ids.shape`` -> ``ids.shape + (D,)``."""
        if self.own_table is not None:
            return self.own_table(ids)
        backend = self._backend[0]
        flat = ids.reshape(-1)
        if isinstance(backend, RobeArray):
            start = torch.tensor([self.table_start], dtype=torch.int64, device=ids.device)
            out = robe_lookup(backend.weight, flat[:, None], table_offsets=start, dim=self.dim,
                              block=backend.block, hash_abc=backend.hash_abc, validate=False,
                              sparse_grad=backend.sparse_grad)[:, 0]
        else:   # the hashing trick's shared table, same hash as HashedTable.forward
            g = (flat + self.table_start) % PRIME
            out = backend.weight[(g * backend.hash_a + backend.hash_b) % PRIME % backend.rows]
        return out.view(*ids.shape, self.dim)

    # -- forward ----------------------------------------------------------------------

    def encode(self, history: Tensor, lengths: Tensor, action: Tensor | None = None,
               days: Tensor | None = None) -> Tensor:
        """The encoded history ``(B, L, D)`` (zeros at padding): depends on the user only, so
        a request scoring many candidates of one user encodes once and expands the result.

        ``action`` (0 offered, 1 purchased) and ``days`` (days before the row's day) are
        ``(B, L)`` int64 in the layout of ``history``; each adds its learned embedding when
        the config has it (``actions``, ``days_buckets``) and the caller gives it.

        Inside :meth:`given_encodings` the rows' encodings come from (and go to) the list
        given there."""
        B, L = history.shape
        if L > self.config.max_len:
            raise ValueError(f"history has {L} events per row; history.max_len is "
                             f"{self.config.max_len} (cut it with pad_history)")
        if lengths.shape != (B,):
            raise ValueError(f"lengths must be ({B},), got {tuple(lengths.shape)}")
        if B and (int(lengths.min()) < 0 or int(lengths.max()) > L):
            raise ValueError(f"lengths must lie in [0, {L}] (the history width), got "
                             f"[{int(lengths.min())}, {int(lengths.max())}]")
        for ids in (action, days):
            if ids is not None and ids.shape != history.shape:
                raise ValueError(f"history side columns must be {tuple(history.shape)}, got {tuple(ids.shape)}")
        given = _GIVEN.get()
        if B and given is not None and given[0] is self:
            return self._encode_given(given[1], history, lengths, action, days)
        return self._encode(history, lengths, action, days)

    @contextmanager
    def given_encodings(self, known: MutableSequence[Tensor | None]) -> Iterator[MutableSequence[Tensor | None]]:
        """While open, :meth:`encode` of ``U = len(known)`` histories (in this thread or task)
        takes history u's encoding from ``known[u]``, a ``(lengths[u], D)`` tensor that
        :meth:`encode` made from that very history, and encodes each history whose entry
        is None on its own (at its own length, so its encoding does not depend on the
        other histories of the batch), writing the result into ``known[u]``.

        What a serving cache of encoded histories needs: a user's history is encoded once
        and read by every later request until it changes. The caller answers for
        ``known[u]`` being history u's; a wrong length raises ValueError. Yields ``known``.
        """
        token = _GIVEN.set((self, known))
        try:
            yield known
        finally:
            _GIVEN.reset(token)

    def encodings_given(self) -> bool:
        """Whether :meth:`given_encodings` is open for this tower (in this thread or task)."""
        given = _GIVEN.get()
        return given is not None and given[0] is self

    def _encode_given(self, known: MutableSequence[Tensor | None], history: Tensor, lengths: Tensor,
                      action: Tensor | None, days: Tensor | None) -> Tensor:
        B, L = history.shape
        if len(known) != B:
            raise ValueError(f"{len(known)} given encodings for {B} histories")
        counts = lengths.tolist()
        for u, n in enumerate(counts):
            if known[u] is None:
                w = max(1, n)   # at least one (masked) position, as pad_recent gives
                part = [None if t is None else t[u:u + 1, :w] for t in (action, days)]
                known[u] = self._encode(history[u:u + 1, :w], lengths[u:u + 1], *part)[0, :n]   # (n, D)
            elif tuple(known[u].shape) != (n, self.dim):
                raise ValueError(f"the encoding given for history {u} is {tuple(known[u].shape)}; "
                                 f"that history encodes to ({n}, {self.dim})")
        if B == 1 and counts[0] == L:
            return known[0][None]                                           # (1, L, D), no copy
        out = history.new_zeros(B, L, self.dim, dtype=known[0].dtype)
        for u, n in enumerate(counts):
            out[u, :n] = known[u]
        return out                                                          # (B, L, D)

    def _encode(self, history: Tensor, lengths: Tensor, action: Tensor | None,
                days: Tensor | None) -> Tensor:
        B, L = history.shape
        pos = torch.arange(L, device=history.device)
        mask = pos[None, :] < lengths[:, None]                              # (B, L)
        x = self.embed(history.masked_fill(~mask, 0))                       # (B, L, D)
        if self.recency is not None and L:
            rank = (lengths[:, None] - 1 - pos[None, :]).clamp(min=0)        # 0 = latest event
            x = x + self.recency(rank)
        for emb, ids in ((self.action, None if action is None else action.clamp(0, 1)),
                         (self.days, None if days is None or self.days is None
                          else days_bucket(days, self.config.days_buckets))):
            if emb is not None and ids is not None:
                x = x + emb(ids.masked_fill(~mask, 0))                      # (B, L, D)
        return self.encoder(x, mask) if L else x                            # (B, L, D)

    def attend(self, encoded: Tensor, lengths: Tensor, candidate: Tensor, match: Tensor | None = None,
               rows: Tensor | None = None) -> Tensor:
        """Target attention of the candidates ``(B,)`` over encoded histories.

        Args:
            encoded: ``(U, L, D)`` encoded histories (:meth:`encode`), ``lengths (U,)``.
            candidate: ``(B,)`` item ids.
            match: ``(B, L)`` int64 in ``[0, match_codes)`` or None: what each event shares
                with its row's candidate (e.g. bit 0 the same item, bit 1 the same category).
                Its learned embedding joins the event's key and value, so the candidate can
                find and read the events of its own item (a re-buy) whatever the hashed
                embeddings collide with; with SimHash top-k, matching events are picked first.
            rows: ``(B,)`` the history each candidate reads (None: row b reads history b,
                U = B). Keys and values are projected once per history, not per candidate,
                except over several histories whose per-candidate copies stay under
                ``GATHER_MAX_BYTES``: those are gathered and read as row b's own.

        Returns:
            ``(B, D)``; a row with an empty history gets the output bias.
        """
        U, L, _ = encoded.shape
        B = candidate.shape[0]
        if lengths.shape != (U,) or candidate.shape != (B,) or (rows is None and U != B):
            raise ValueError(f"lengths {tuple(lengths.shape)} must be ({U},) and candidate {tuple(candidate.shape)} "
                             f"({U},) unless rows maps the candidates to the histories")
        if rows is not None and (rows.shape != (B,) or (B and (int(rows.min()) < 0 or int(rows.max()) >= U))):
            raise ValueError(f"rows must be ({B},) indices of the {U} histories, got shape {tuple(rows.shape)}")
        if match is not None and self.match is None:
            raise ValueError("match codes given to a tower built with match_codes=0")
        if match is not None and match.shape != (B, L):
            raise ValueError(f"match must be ({B}, {L}), got {tuple(match.shape)}")
        if rows is not None and U > 1:   # several histories: each with its own candidates
            if B * L * self.dim * encoded.element_size() <= GATHER_MAX_BYTES:
                return self.attend(encoded[rows], lengths[rows], candidate, match)
            return self._attend_by_history(encoded, lengths, candidate, match, rows)
        q = self.to_q(self.embed(candidate))                                # (B, D)
        if L == 0:
            return self.to_out(torch.zeros_like(q))

        k_u, v_u = self.to_k(encoded), self.to_v(encoded)                   # (U, L, D) once per history
        pos = torch.arange(L, device=encoded.device)
        mask_u = pos[None, :] < lengths[:, None]                            # (U, L)
        lengths = lengths if rows is None else lengths.expand(B)            # (B,)
        if self.config.target == "simhash" and L > self.config.topk:
            key_sig = simhash_signatures(k_u, self.planes)                  # (U, L, m): U = B, or 1 for all
            idx, mask = hamming_topk(simhash_signatures(q, self.planes), key_sig, mask_u, self.config.topk,
                                     first=None if match is None else match > 0)   # (B, k)
            # the picked events' keys and values: rows of the (U * L, D) projections
            owner = torch.arange(B, device=idx.device) if rows is None else rows
            flat = (idx + (owner * L)[:, None]).reshape(-1)                 # (B * k,)
            k = k_u.reshape(U * L, self.dim).index_select(0, flat).view(B, -1, self.dim)   # (B, k, D)
            v = v_u.reshape(U * L, self.dim).index_select(0, flat).view(B, -1, self.dim)
            match = None if match is None else torch.gather(match, 1, idx)
            s = torch.bmm(k, q[:, :, None])[..., 0]                         # (B, k)
        elif rows is None:
            v, mask = v_u, mask_u                                           # (B, L, D), (B, L)
            s = torch.bmm(k_u, q[:, :, None])[..., 0]                       # (B, L)
        else:   # all candidates read one history: its keys and values once
            v, mask = v_u[0], mask_u.expand(B, L)                           # (L, D), (B, L)
            s = q @ k_u[0].T                                                # (B, L)
        if match is not None:
            # to_k(e + c) = to_k(e) + to_k(c): a code adds <q, to_k(c)> to the score and, weighted
            # by the attention, to_v(c) to the output; no (B, n, D) tensor of sums is made
            codes_k = F.linear(self.match.weight, self.to_k.weight)          # (C, D)
            s = s + torch.gather(q @ codes_k.T, 1, match)                   # (B, n)
        s = (s / math.sqrt(self.dim)).masked_fill(~mask, torch.finfo(s.dtype).min)
        p = torch.softmax(s, dim=-1)                                        # (B, n)
        att = p @ v if v.dim() == 2 else torch.bmm(p[:, None], v)[:, 0]     # (B, D)
        if match is not None:
            weight = torch.zeros(B, self.match.num_embeddings, dtype=p.dtype, device=p.device)
            weight = weight.scatter_add(1, match, p)                        # (B, C) each code's share
            att = att + weight @ F.linear(self.match.weight, self.to_v.weight)
        att = att * (lengths > 0)[:, None].to(att.dtype)                    # empty history: 0
        return self.to_out(att)

    def _attend_by_history(self, encoded: Tensor, lengths: Tensor, candidate: Tensor, match: Tensor | None,
                           rows: Tensor) -> Tensor:
        """:meth:`attend` of candidates spread over several histories, one history at a time,
        so no per-candidate copy of a history's ``(L, ...)`` tensors is ever made."""
        B = candidate.shape[0]
        order = torch.argsort(rows, stable=True)
        counts = torch.bincount(rows, minlength=encoded.shape[0]).tolist()
        parts, start = [], 0
        for u, n in enumerate(counts):
            if n == 0:
                continue
            sel = order[start:start + n]
            start += n
            parts.append(self.attend(encoded[u:u + 1], lengths[u:u + 1], candidate[sel],
                                     None if match is None else match[sel], rows=rows.new_zeros(n)))
        out = torch.cat(parts)                                              # (B, D) in history order
        return out[torch.argsort(order)] if B else out

    def forward(self, history: Tensor, lengths: Tensor, candidate: Tensor) -> Tensor:
        """``history (B, L)`` int64, ``lengths (B,)``, ``candidate (B,)`` item ids -> ``(B, D)``."""
        return self.attend(self.encode(history, lengths), lengths, candidate)
