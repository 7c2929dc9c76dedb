"""The feature spec and the model input: the contract between features, training and serving.

The features step writes ``feature_spec.json`` beside the model-ready tables; training,
evaluation, serving and monitoring read it back with :meth:`FeatureSpec.load`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

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
class FeatureSpec:
    dense: tuple[DenseFeature, ...]
    sparse: tuple[SparseFeature, ...]
    label: str = "purchased"
    version: str = "dlrm_v1"
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. split windows)

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
        )

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

    @property
    def num_rows(self) -> int:
        return int(self.dense.shape[0])

    def slice(self, start: int, stop: int, num_tables: int) -> "ModelInput":
        """Rows [start, stop) as a new ModelInput (offsets rebased to 0)."""
        T = num_tables
        off = self.sparse_offsets[start * T: stop * T + 1]
        return ModelInput(
            dense=self.dense[start:stop],
            sparse_values=self.sparse_values[off[0]: off[-1]],
            sparse_offsets=off - off[0],
            labels=None if self.labels is None else self.labels[start:stop],
        )

    @classmethod
    def from_frame(cls, frame: "pd.DataFrame", spec: FeatureSpec) -> "ModelInput":
        """Model-ready table -> ModelInput.

        The table has one float column per dense feature (already transformed), one int64
        id column per single-hot sparse feature, one list-of-int64 column per multi-hot
        feature, and optionally the label column. Other columns (event_id, timestamps)
        are ignored.
        """
        missing = [f.name for f in (*spec.dense, *spec.sparse) if f.name not in frame.columns]
        if missing:
            raise ValueError(f"model-ready table lacks feature column(s) {missing}")
        n, T = len(frame), len(spec.sparse)
        dense = np.zeros((n, len(spec.dense)), dtype=np.float32)
        for j, f in enumerate(spec.dense):
            dense[:, j] = frame[f.name].to_numpy(dtype=np.float32, na_value=np.nan)
        if np.isnan(dense).any():
            bad = [f.name for j, f in enumerate(spec.dense) if np.isnan(dense[:, j]).any()]
            raise ValueError(f"dense feature column(s) {bad} hold missing values")
        lengths = np.ones((n, T), dtype=np.int64)           # (N, T) bag sizes
        per_table: list[np.ndarray] = []
        for t, f in enumerate(spec.sparse):
            col = frame[f.name]
            if f.multi_hot:
                bags = [np.asarray(b if b is not None else (), dtype=np.int64) for b in col.tolist()]
                lengths[:, t] = [len(b) for b in bags]
                per_table.append(bags)
            else:
                ids = col.to_numpy(dtype=np.int64)
                per_table.append(ids)
        for t, f in enumerate(spec.sparse):
            vals = np.concatenate(per_table[t]) if f.multi_hot and n else (
                per_table[t] if not f.multi_hot else np.zeros(0, np.int64))
            if vals.size and (vals.min() < 0 or vals.max() >= f.table_size):
                raise ValueError(f"ids of sparse feature {f.name!r} must lie in [0, {f.table_size}), "
                                 f"got range [{vals.min()}, {vals.max()}]")
        offsets = np.zeros(n * T + 1, dtype=np.int64)
        np.cumsum(lengths.reshape(-1), out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=np.int64)
        # Scatter each table's ids into sample-major bag order (bag j = n * T + t).
        starts = offsets[:-1].reshape(n, T)
        for t, f in enumerate(spec.sparse):
            if f.multi_hot:
                lens = lengths[:, t]
                flat = np.concatenate(per_table[t]) if n else np.zeros(0, np.int64)
                # position of each id: its bag's start + its rank inside the bag
                first = np.repeat(np.cumsum(lens) - lens, lens)
                values[np.repeat(starts[:, t], lens) + np.arange(flat.size) - first] = flat
            else:
                values[starts[:, t]] = per_table[t]
        labels = None
        if spec.label in frame.columns:
            labels = frame[spec.label].to_numpy(dtype=np.float32)
        return cls(dense=dense, sparse_values=values, sparse_offsets=offsets, labels=labels)
