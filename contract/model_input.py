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
from typing import TYPE_CHECKING, Sequence

from contract.spec import FeatureSpec, ModelInput

if TYPE_CHECKING:
    import pandas as pd

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
