"""The feature spec and the model input: the contract between features, training and serving.

The features step writes ``feature_spec.json`` beside the model-ready tables; training,
evaluation, serving and monitoring read it back with :meth:`FeatureSpec.load`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class DenseFeature:
    name: str
    transform: Literal["log1p", "identity"] = "identity"  # applied before the model sees it


@dataclass(frozen=True)
class SparseFeature:
    name: str
    table_size: int            # virtual rows; ids are hash(name=value) mod table_size
    multi_hot: bool = False    # a bag of ids per row (e.g. query terms), summed by the model


@dataclass(frozen=True)
class HistoryColumn:
    name: str                  # the model-ready list column (e.g. "hist_item")
    ids_of: str | None = None  # the sparse feature whose hash and table size its ids share;
                               # None: small integers as they are (action, days ago)


@dataclass(frozen=True)
class HistorySpec:
    """The user's last events before the row's day, as list columns of the model-ready
    tables (newest first, at most ``length`` per row; empty for a user without any).

    Readers that do not use them ignore the columns (:meth:`ModelInput.from_columns` does).
    """

    length: int                          # most events per row (``features.history_len``)
    columns: tuple[HistoryColumn, ...]
    feature_view: str = "user_history"   # the Feast view holding them (raw values, per user and day)
    feature_service: str = "user_history_v1"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @classmethod
    def from_dict(cls, d: dict) -> "HistorySpec":
        return cls(length=int(d["length"]), columns=tuple(HistoryColumn(**c) for c in d["columns"]),
                   feature_view=d.get("feature_view", "user_history"),
                   feature_service=d.get("feature_service", "user_history_v1"))


@dataclass(frozen=True)
class FeatureSpec:
    dense: tuple[DenseFeature, ...]
    sparse: tuple[SparseFeature, ...]
    label: str = "purchased"
    version: str = "dlrm_v1"
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. split windows)
    history: HistorySpec | None = None         # the user history list columns, when the data has them

    @property
    def table_sizes(self) -> list[int]:
        return [s.table_size for s in self.sparse]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(
            dense=tuple(DenseFeature(**x) for x in d["dense"]),
            sparse=tuple(SparseFeature(**x) for x in d["sparse"]),
            label=d.get("label", "purchased"),
            version=d.get("version", "dlrm_v1"),
            extra=d.get("extra", {}),
            history=HistorySpec.from_dict(d["history"]) if d.get("history") else None,
        )

    def check_compatible(self, other: "FeatureSpec", what: str = "the data") -> None:
        """Raises ValueError naming the first difference when ``other`` (the spec of
        ``what``) does not feed the same model inputs as this one (same dense features
        and transforms, same sparse features, table sizes and bag kinds, in order; and,
        when this spec reads a user history, the same history columns and ids: data with
        a history feeds a model that ignores it, not the other way round)."""
        for kind, mine, theirs in (("dense", self.dense, other.dense), ("sparse", self.sparse, other.sparse)):
            if mine == theirs:
                continue
            if len(mine) != len(theirs):
                raise ValueError(f"{what} has {len(theirs)} {kind} feature(s); the model expects {len(mine)}")
            for a, b in zip(mine, theirs):
                if a != b:
                    raise ValueError(f"{what}'s {kind} feature {b} differs from the model's {a}")
        if self.history is not None:
            if other.history is None:
                raise ValueError(f"{what} has no user history; the model reads {self.history.names}")
            if other.history.columns != self.history.columns:
                raise ValueError(f"{what}'s user history columns {other.history.columns} differ from "
                                 f"the model's {self.history.columns}")

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path | str) -> "FeatureSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class ModelInput:
    """What the model consumes, for N rows and T = len(spec.sparse) sparse features.

    All sparse features are jagged bags (a single-hot feature is a bag of one id):
    bag ``j = n * T + t`` holds ``sparse_values[sparse_offsets[j]:sparse_offsets[j + 1]]``,
    ids local to feature t's table (0 <= id < table_size).
    """

    dense: np.ndarray            # (N, n_dense) float32, already transformed
    sparse_values: np.ndarray    # (nnz,) int64
    sparse_offsets: np.ndarray   # (N * T + 1,) int64, non-decreasing, last == nnz
    labels: np.ndarray | None = None  # (N,) float32
    # the user history (spec.history): row n's events are history_values[history_offsets[n]:
    # history_offsets[n + 1]], newest first, one column per spec.history.columns (ids hashed
    # as their sparse feature's); None when the input carries no history
    history_values: np.ndarray | None = None   # (nnz_h, C) int64
    history_offsets: np.ndarray | None = None  # (N + 1,) int64, non-decreasing, last == nnz_h

    @property
    def num_rows(self) -> int:
        return int(self.dense.shape[0])

    def slice(self, start: int, stop: int, num_tables: int) -> "ModelInput":
        """Rows [start, stop) as a new ModelInput (offsets rebased to 0)."""
        T = num_tables
        off = self.sparse_offsets[start * T: stop * T + 1]
        hist = {}
        if self.history_offsets is not None:
            hoff = self.history_offsets[start: stop + 1]
            hist = dict(history_values=self.history_values[hoff[0]: hoff[-1]], history_offsets=hoff - hoff[0])
        return ModelInput(
            dense=self.dense[start:stop],
            sparse_values=self.sparse_values[off[0]: off[-1]],
            sparse_offsets=off - off[0],
            labels=None if self.labels is None else self.labels[start:stop],
            **hist,
        )

    @property
    def has_history(self) -> bool:
        """Whether the input carries the user history columns."""
        return self.history_offsets is not None

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any], spec: FeatureSpec,
                     history: bool | None = None) -> "ModelInput":
        """The one builder of model input: feature columns -> ModelInput.

        ``columns`` maps each feature of ``spec`` to its n values: a float array (or
        sequence) per dense feature, already transformed; an int array of ids per
        single-hot sparse feature; a sequence of id arrays (None: an empty bag) per
        multi-hot feature; optionally the label. Other keys are ignored. Training,
        evaluation, monitoring, the Criteo reader and the server all come through here.

        The user history (``spec.history``): one sequence of n int arrays per history column
        (None: no events; the columns of a row hold equally many), newest first. ``history``
        None reads it when ``columns`` holds all its columns, True requires it (ValueError
        when absent), False leaves it out.

        Example:
            >>> spec = FeatureSpec(dense=(DenseFeature("x"),), sparse=(SparseFeature("u", 10),))
            >>> ModelInput.from_columns({"x": [0.5, 1.0], "u": [3, 7]}, spec).sparse_values.tolist()
            [3, 7]
        """
        if not spec.sparse and not spec.dense:
            raise ValueError("the feature spec names no features")
        missing = [f.name for f in (*spec.dense, *spec.sparse) if f.name not in columns]
        if missing:
            raise ValueError(f"model input lacks feature column(s) {missing}")
        n, T = (len(columns[spec.sparse[0].name]) if spec.sparse else len(columns[spec.dense[0].name])), len(spec.sparse)
        dense = np.empty((n, len(spec.dense)), dtype=np.float32)   # (N, D)
        for j, f in enumerate(spec.dense):
            dense[:, j] = np.asarray(columns[f.name], dtype=np.float32)
        if np.isnan(dense).any():
            bad = [f.name for j, f in enumerate(spec.dense) if np.isnan(dense[:, j]).any()]
            raise ValueError(f"dense feature column(s) {bad} hold missing values")
        lengths = np.ones((n, T), dtype=np.int64)                   # (N, T) bag sizes
        flat: dict[int, np.ndarray] = {}
        for t, f in enumerate(spec.sparse):
            if f.multi_hot:
                bags = [() if b is None else b for b in columns[f.name]]
                lengths[:, t] = np.fromiter(map(len, bags), dtype=np.int64, count=n)
                flat[t] = (np.concatenate([np.asarray(b, dtype=np.int64) for b in bags])
                           if n else np.zeros(0, np.int64))
            else:
                flat[t] = np.asarray(columns[f.name], dtype=np.int64)
            if flat[t].size and (flat[t].min() < 0 or flat[t].max() >= f.table_size):
                raise ValueError(f"ids of sparse feature {f.name!r} must lie in [0, {f.table_size}), "
                                 f"got range [{flat[t].min()}, {flat[t].max()}]")
        offsets = np.zeros(n * T + 1, dtype=np.int64)
        np.cumsum(lengths.reshape(-1), out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=np.int64)
        # Scatter each table's ids into sample-major bag order (bag j = n * T + t).
        starts = offsets[:-1].reshape(n, T)                          # (N, T) first slot of each bag
        for t, f in enumerate(spec.sparse):
            if f.multi_hot:
                lens = lengths[:, t]
                first = np.repeat(np.cumsum(lens) - lens, lens)      # each id's bag start in flat
                values[np.repeat(starts[:, t], lens) + np.arange(flat[t].size) - first] = flat[t]
            else:
                values[starts[:, t]] = flat[t]
        labels = columns.get(spec.label)
        hist_values = hist_offsets = None
        if _reads_history(columns, spec, history):
            hist_values, hist_offsets = _history_arrays(columns, spec, n)
        return cls(dense=dense, sparse_values=values, sparse_offsets=offsets,
                   labels=None if labels is None else np.asarray(labels, dtype=np.float32),
                   history_values=hist_values, history_offsets=hist_offsets)

    @classmethod
    def from_frame(cls, frame: "pd.DataFrame", spec: FeatureSpec, history: bool | None = None) -> "ModelInput":
        """Model-ready table -> ModelInput (through :meth:`from_columns`).

        The table has one float column per dense feature (already transformed), one int64
        id column per single-hot sparse feature, one list-of-int64 column per multi-hot
        feature, and optionally the label column; the user history's list columns are read
        as :meth:`from_columns` says (``history``). Other columns (event_id, timestamps)
        are ignored.
        """
        missing = [f.name for f in (*spec.dense, *spec.sparse) if f.name not in frame.columns]
        if missing:
            raise ValueError(f"model-ready table lacks feature column(s) {missing}")
        columns: dict[str, Any] = {}
        for f in spec.dense:
            columns[f.name] = frame[f.name].to_numpy(dtype=np.float32, na_value=np.nan)
        for f in spec.sparse:
            columns[f.name] = frame[f.name].tolist() if f.multi_hot else frame[f.name].to_numpy(dtype=np.int64)
        if spec.label in frame.columns:
            columns[spec.label] = frame[spec.label].to_numpy(dtype=np.float32)
        if spec.history is not None and history is not False:
            for name in spec.history.names:
                if name in frame.columns:
                    columns[name] = frame[name].to_numpy(dtype=object)
        return cls.from_columns(columns, spec, history)


def _reads_history(columns: Mapping[str, Any], spec: FeatureSpec, history: bool | None) -> bool:
    """Whether :meth:`ModelInput.from_columns` builds the history (see its ``history``)."""
    if history is False:
        return False
    if spec.history is None:
        if history:
            raise ValueError("history=True but the feature spec records no user history")
        return False
    missing = [c for c in spec.history.names if c not in columns]
    if missing and history:
        raise ValueError(f"model input lacks user history column(s) {missing}")
    return not missing


def _history_arrays(columns: Mapping[str, Any], spec: FeatureSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The history list columns -> ``(values (nnz_h, C) int64, offsets (n + 1,) int64)``."""
    assert spec.history is not None
    sizes = {f.name: f.table_size for f in spec.sparse}
    cols = spec.history.columns
    lengths = None
    flat = []
    for c in cols:
        bags = [() if b is None else b for b in columns[c.name]]
        if len(bags) != n:
            raise ValueError(f"user history column {c.name!r} has {len(bags)} rows; expected {n}")
        lens = np.fromiter(map(len, bags), dtype=np.int64, count=n)
        if lengths is None:
            lengths = lens
        elif not np.array_equal(lens, lengths):
            bad = int(np.flatnonzero(lens != lengths)[0])
            raise ValueError(f"user history column {c.name!r} holds {lens[bad]} events in row {bad}; "
                             f"{cols[0].name!r} holds {lengths[bad]}")
        ids = (np.concatenate([np.asarray(b, dtype=np.int64) for b in bags]) if n and lens.sum()
               else np.zeros(0, np.int64))
        low, high = 0, (sizes.get(c.ids_of) if c.ids_of is not None else None)
        if ids.size and (ids.min() < low or (high is not None and ids.max() >= high)):
            raise ValueError(f"user history column {c.name!r} must hold values in [0, {high or 'inf'}), got "
                             f"range [{ids.min()}, {ids.max()}]")
        flat.append(ids)
    offsets = np.zeros(n + 1, dtype=np.int64)
    if lengths is not None:
        np.cumsum(lengths, out=offsets[1:])
    values = np.stack(flat, axis=1) if flat else np.zeros((0, 0), np.int64)   # (nnz_h, C)
    return values, offsets
