"""The model-input directory: the one reader and writer of what the features step hands on.

Layout (``data/model_input``)::

    feature_spec.json        the FeatureSpec (see :mod:`contract.spec`)
    train.parquet            one model-ready table per split: a Parquet file, or a
    valid.parquet            directory of Parquet parts under that name (both read the
    test.parquet             same way)

Training, evaluation, monitoring and the benchmarks read it only through this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from contract.spec import FeatureSpec, ModelInput

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

SPLITS: tuple[str, ...] = ("train", "valid", "test")
SPEC_FILE = "feature_spec.json"


def split_path(data_dir: Path | str, split: str) -> Path:
    """``data_dir/<split>.parquet`` (a file or a folder of parts)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(data_dir) / f"{split}.parquet"


def read_spec(data_dir: Path | str) -> FeatureSpec:
    """``data_dir/feature_spec.json``; FileNotFoundError naming the path when absent."""
    path = Path(data_dir) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"feature spec {path} does not exist; run `robeflow features` first")
    return FeatureSpec.load(path)


def read_frame(data_dir: Path | str, split: str, columns: Sequence[str] | None = None) -> "pd.DataFrame":
    """One split's model-ready table as a DataFrame (all rows; ``columns`` to read fewer)."""
    import pandas as pd

    path = split_path(data_dir, split)
    if not path.exists():
        raise FileNotFoundError(f"model-ready table {path} does not exist (expected "
                                f"{', '.join(s + '.parquet' for s in SPLITS)} and {SPEC_FILE} in "
                                f"{data_dir}); run `robeflow features` first")
    return pd.read_parquet(path, columns=list(columns) if columns is not None else None)


def read_split(data_dir: Path | str, split: str, spec: FeatureSpec) -> tuple["pd.DataFrame", ModelInput]:
    """One split as (frame, ModelInput built with ``spec``)."""
    frame = read_frame(data_dir, split)
    return frame, ModelInput.from_frame(frame, spec)


def split_files(data_dir: Path | str, split: str) -> list[Path]:
    """The Parquet file(s) of one split: the file itself, or a folder's parts in name order
    (names starting with ``.`` or ``_`` skipped, as pyarrow does)."""
    path = split_path(data_dir, split)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"model-ready table {path} does not exist; run `robeflow features` first")
    files = sorted(f for f in path.rglob("*") if f.is_file()
                   and not any(p.startswith((".", "_")) for p in f.relative_to(path).parts))
    if not files:
        raise ValueError(f"model-ready folder {path} holds no Parquet parts")
    return files


def split_num_rows(data_dir: Path | str, split: str) -> int:
    """Rows of one split, from the Parquet footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in split_files(data_dir, split))


def iter_split_batches(data_dir: Path | str, split: str, columns: Sequence[str] | None,
                       batch_rows: int = 65536) -> "Iterator[pa.RecordBatch]":
    """One split's ``columns`` (None: all) as Arrow record batches of at most ``batch_rows``
    rows, file by file in :func:`split_files` order (memory: one batch, whatever the split's
    length)."""
    import pyarrow.parquet as pq

    for f in split_files(data_dir, split):
        pf = pq.ParquetFile(f)
        missing = [c for c in columns or () if c not in pf.schema_arrow.names]
        if missing:
            raise ValueError(f"model-ready table {f} lacks column(s) {missing}")
        yield from pf.iter_batches(batch_size=batch_rows, columns=None if columns is None else list(columns))


def write_model_input(out_dir: Path | str, tables: dict[str, "pd.DataFrame"], spec: FeatureSpec) -> None:
    """Writes ``{split}.parquet`` for each table and ``feature_spec.json`` into ``out_dir``
    (an existing, empty directory: callers wrap it in an atomic directory swap)."""
    unknown = sorted(set(tables) - set(SPLITS))
    if unknown:
        raise ValueError(f"model-input splits must be among {SPLITS}, got {unknown}")
    out_dir = Path(out_dir)
    for split, frame in tables.items():
        frame.to_parquet(split_path(out_dir, split), index=False)
    spec.save(out_dir / SPEC_FILE)
