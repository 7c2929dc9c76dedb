"""In-memory training data: whole windows as tensors, batches by vectorised gathers, and
the Criteo TSV -> model-ready table conversion."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from features.spec import DenseFeature, FeatureSpec, ModelInput, SparseFeature

CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, 27))
SPLITS = ("train", "valid", "test")


@dataclass
class Batch:
    dense: torch.Tensor     # (B, D) float32
    values: torch.Tensor    # (nnz,) int64
    offsets: torch.Tensor   # (B*T + 1,) int64
    labels: torch.Tensor    # (B,) float32 (zeros when the data has no labels)

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.dense, self.values,
                                                                  self.offsets, self.labels)))


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

    def batch(self, rows: torch.Tensor) -> Batch:
        """The rows ``rows`` (b,) int64, in that order, as one Batch."""
        b, T = rows.numel(), self.num_tables
        if self.single_hot:
            values = self.values.view(self.num_rows, T)[rows].reshape(-1)
            offsets = torch.arange(b * T + 1, dtype=torch.int64, device=rows.device)
        else:
            lens = self.lengths[rows].reshape(-1)                           # (b*T,)
            starts = self.offsets[:-1].view(self.num_rows, T)[rows].reshape(-1)
            offsets = torch.zeros(b * T + 1, dtype=torch.int64, device=rows.device)
            torch.cumsum(lens, 0, out=offsets[1:])
            nnz = int(offsets[-1])
            # value k of new bag j sits at starts[j] + (k - offsets[j]) in the source
            src = torch.repeat_interleave(starts - offsets[:-1], lens, output_size=nnz)
            values = self.values[src + torch.arange(nnz, device=rows.device)]
        return Batch(self.dense[rows], values, offsets, self.labels[rows])

    def to(self, device: torch.device) -> "TensorData":
        """Moves the whole window to ``device`` (in place; returns self)."""
        for name in ("dense", "values", "offsets", "labels", "lengths"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def range_batch(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) as one Batch (a contiguous slice, no gather)."""
        T = self.num_tables
        off = self.offsets[start * T: stop * T + 1]
        return Batch(self.dense[start:stop], self.values[off[0]:off[-1]], off - off[0],
                     self.labels[start:stop])


# --------------------------------------------------------------------------- model-ready dirs

def read_split(data_dir: Path, split: str, spec: FeatureSpec) -> tuple[pd.DataFrame, ModelInput]:
    """``data_dir/<split>.parquet`` as (frame, ModelInput)."""
    path = Path(data_dir) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"model-ready table {path} does not exist (expected {', '.join(SPLITS)} "
                                f".parquet and feature_spec.json in {data_dir})")
    frame = pd.read_parquet(path)
    return frame, ModelInput.from_frame(frame, spec)


def read_spec(data_dir: Path) -> FeatureSpec:
    """``data_dir/feature_spec.json``."""
    path = Path(data_dir) / "feature_spec.json"
    if not path.exists():
        raise FileNotFoundError(f"feature spec {path} does not exist")
    return FeatureSpec.load(path)


# --------------------------------------------------------------------------- Criteo

def stable_hash64(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (blake2b, 8 bytes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def criteo_spec(table_size: int) -> FeatureSpec:
    """The FeatureSpec of Criteo data: I1..I13 (log1p), C1..C26 hashed into ``table_size`` rows."""
    if table_size < 1:
        raise ValueError(f"criteo.table_size must be >= 1, got {table_size}")
    return FeatureSpec(
        dense=tuple(DenseFeature(c, "log1p") for c in CRITEO_DENSE),
        sparse=tuple(SparseFeature(c, table_size) for c in CRITEO_SPARSE),
        label="label", version="criteo_v1",
    )


def criteo_model_frame(raw: pd.DataFrame, table_size: int) -> tuple[pd.DataFrame, FeatureSpec]:
    """Criteo rows (``label, I1..I13, C1..C26`` as ``read_criteo`` gives them) -> a
    model-ready frame and its FeatureSpec.

    Dense: log1p(max(x, 0)), missing as 0. Categoricals: stable 64-bit hash of the hex
    string mod ``table_size`` (a missing value hashes as the empty string).
    """
    missing = [c for c in ("label", *CRITEO_DENSE, *CRITEO_SPARSE) if c not in raw.columns]
    if missing:
        raise ValueError(f"Criteo data lacks column(s) {missing}")
    spec = criteo_spec(table_size)
    out = {"label": raw["label"].to_numpy(dtype=np.float32)}
    for c in CRITEO_DENSE:
        x = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        out[c] = np.log1p(np.maximum(np.nan_to_num(x, nan=0.0), 0.0)).astype(np.float32)
    for c in CRITEO_SPARSE:
        codes, uniques = pd.factorize(raw[c].fillna(""), sort=False)
        # hash each distinct string once, then broadcast through the codes
        ids = np.array([stable_hash64(str(u)) % table_size for u in uniques], dtype=np.int64)
        out[c] = ids[codes] if len(uniques) else np.zeros(len(raw), np.int64)
    return pd.DataFrame(out), spec


def read_criteo_frame(path: Path, table_size: int) -> tuple[pd.DataFrame, FeatureSpec]:
    """A Criteo file (TSV, or the CSV sample) -> model-ready frame + FeatureSpec."""
    from features.criteo import read_criteo  # the data engineers' reader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Criteo file {path} does not exist")
    return criteo_model_frame(read_criteo(path), table_size)
