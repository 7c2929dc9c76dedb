"""In-memory training data: whole windows as tensors, batches by vectorised gathers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contract.spec import ModelInput


@dataclass
class Batch:
    dense: torch.Tensor     # (B, D) float32
    values: torch.Tensor    # (nnz,) int64
    offsets: torch.Tensor   # (B*T + 1,) int64
    labels: torch.Tensor    # (B,) float32 (zeros when the data has no labels)
    # the user history (ModelInput.history_*): row b's events, newest first, are
    # history[history_offsets[b]:history_offsets[b + 1]]; None when the data has none
    history: torch.Tensor | None = None          # (nnz_h, C) int64
    history_offsets: torch.Tensor | None = None  # (B + 1,) int64

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(None if t is None else t.to(device, non_blocking=True)
                       for t in (self.dense, self.values, self.offsets, self.labels, self.history,
                                 self.history_offsets)))

    def model_args(self) -> tuple[torch.Tensor | None, ...]:
        """The DLRM's forward arguments: ``(dense, values, offsets, history, history_offsets)``."""
        return self.dense, self.values, self.offsets, self.history, self.history_offsets

    def empty(self) -> "Batch":
        """A batch of 0 rows with this batch's layout."""
        return Batch(self.dense[:0], self.values[:0], self.offsets[:1] * 0, self.labels[:0],
                     None if self.history is None else self.history[:0],
                     None if self.history_offsets is None else self.history_offsets[:1] * 0)


def gather_jagged(values: torch.Tensor, offsets: torch.Tensor, bags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bags ``bags`` (b,) of a jagged array (``values (nnz, ...)``, ``offsets (n + 1,)``), in
    that order: ``(values (nnz', ...), offsets (b + 1,))``, without per-bag Python."""
    lens = offsets[1:][bags] - offsets[:-1][bags]                               # (b,)
    new = torch.zeros(bags.numel() + 1, dtype=torch.int64, device=bags.device)
    torch.cumsum(lens, 0, out=new[1:])
    nnz = int(new[-1])
    # value k of new bag j sits at starts[j] + (k - new[j]) in the source
    src = torch.repeat_interleave(offsets[:-1][bags] - new[:-1], lens, output_size=nnz)
    return values[src + torch.arange(nnz, device=bags.device)], new


class TensorData:
    """A whole window (N rows, T sparse features) held as tensors; ``batch(rows)`` gathers
    any set of rows without per-sample Python."""

    def __init__(self, inputs: ModelInput, num_tables: int):
        n, T = inputs.num_rows, num_tables
        if inputs.sparse_offsets.shape != (n * T + 1,):
            raise ValueError(f"sparse_offsets has shape {inputs.sparse_offsets.shape}; expected "
                             f"({n * T + 1},) for {n} rows and {T} sparse features")
        self.num_rows, self.num_tables = n, T
        self.dense = torch.from_numpy(np.ascontiguousarray(inputs.dense, dtype=np.float32))
        self.values = torch.from_numpy(np.ascontiguousarray(inputs.sparse_values, dtype=np.int64))
        self.offsets = torch.from_numpy(np.ascontiguousarray(inputs.sparse_offsets, dtype=np.int64))
        labels = inputs.labels if inputs.labels is not None else np.zeros(n, np.float32)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        self.lengths = (self.offsets[1:] - self.offsets[:-1]).view(n, T)  # (N, T) bag sizes
        # Single-hot data (every bag holds one id) is a plain (N, T) matrix: a cheaper gather.
        self.single_hot = self.values.numel() == n * T and bool((self.lengths == 1).all())
        self.has_labels = inputs.labels is not None
        self.history = self.history_offsets = None
        if inputs.history_offsets is not None:
            if inputs.history_offsets.shape != (n + 1,):
                raise ValueError(f"history_offsets has shape {inputs.history_offsets.shape}; expected ({n + 1},)")
            self.history = torch.from_numpy(np.ascontiguousarray(inputs.history_values, dtype=np.int64))
            self.history_offsets = torch.from_numpy(np.ascontiguousarray(inputs.history_offsets, dtype=np.int64))

    def batch(self, rows: torch.Tensor) -> Batch:
        """The rows ``rows`` (b,) int64, in that order, as one Batch."""
        b, T = rows.numel(), self.num_tables
        if self.single_hot:
            values = self.values.view(self.num_rows, T)[rows].reshape(-1)
            offsets = torch.arange(b * T + 1, dtype=torch.int64, device=rows.device)
        else:
            bags = (rows[:, None] * T + torch.arange(T, device=rows.device)).reshape(-1)   # (b*T,)
            values, offsets = gather_jagged(self.values, self.offsets, bags)
        hist = (None, None) if self.history is None else gather_jagged(self.history, self.history_offsets, rows)
        return Batch(self.dense[rows], values, offsets, self.labels[rows], *hist)

    def to(self, device: torch.device) -> "TensorData":
        """Moves the whole window to ``device`` (in place; returns self)."""
        for name in ("dense", "values", "offsets", "labels", "lengths", "history", "history_offsets"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def range_batch(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) as one Batch (a contiguous slice, no gather)."""
        T = self.num_tables
        off = self.offsets[start * T: stop * T + 1]
        hist = (None, None)
        if self.history is not None:
            hoff = self.history_offsets[start: stop + 1]
            hist = (self.history[hoff[0]:hoff[-1]], hoff - hoff[0])
        return Batch(self.dense[start:stop], self.values[off[0]:off[-1]], off - off[0],
                     self.labels[start:stop], *hist)



@dataclass(frozen=True)
class EntityDrop:
    """What id dropout replaces for one entity (a user, an item): its id by the unseen id,
    and the features the online store holds for it by what the server computes for an
    entity the store does not know (missing categories, filled numbers)."""

    table: int                                   # the id's sparse table
    unseen: int                                  # its unseen id
    sparse: tuple[tuple[int, int], ...] = ()     # (single-hot table, id of a missing value)
    dense: tuple[tuple[int, float], ...] = ()    # (dense column, transformed fill value)
    history: bool = False                        # the entity owns the user history: emptied too


def drop_ids(batch: Batch, drops: list[EntityDrop], num_tables: int, p: float) -> Batch:
    """Id dropout: for each entity of ``drops``, each row's entity is replaced with
    probability ``p`` by an unknown one (:class:`EntityDrop`), drawn from torch's global
    RNG (a resumed run draws the same). The unseen id then learns what an entity the model
    never saw is worth, with the features such an entity has at serving time."""
    if not drops or p <= 0:
        return batch
    rows = batch.dense.shape[0]
    values, dense = batch.values.clone(), batch.dense
    history, history_offsets = batch.history, batch.history_offsets
    drop = torch.rand(rows, len(drops), device=values.device) < p          # (B, k)
    for k, d in enumerate(drops):
        r = drop[:, k].nonzero().squeeze(1)
        values[batch.offsets[r * num_tables + d.table]] = d.unseen
        for t, missing in d.sparse:
            values[batch.offsets[r * num_tables + t]] = missing
        if d.dense:
            dense = dense.clone() if dense is batch.dense else dense
            for col, fill in d.dense:
                dense[r, col] = fill
        if d.history and history is not None:   # an unknown user has no history
            history, history_offsets = empty_histories(history, history_offsets, drop[:, k])
    return Batch(dense, values, batch.offsets, batch.labels, history, history_offsets)


def empty_histories(history: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The jagged histories with the rows where ``rows`` (B,) bool is True emptied."""
    lens = (offsets[1:] - offsets[:-1]).masked_fill(rows, 0)               # (B,)
    keep = torch.repeat_interleave(~rows, offsets[1:] - offsets[:-1], output_size=history.shape[0])
    new = torch.zeros_like(offsets)
    torch.cumsum(lens, 0, out=new[1:])
    return history[keep], new
