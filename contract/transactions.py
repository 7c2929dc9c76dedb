"""The day-partitioned transactions dataset (``data/ingested``, ``data/validated``): its reader.

Layout: ``<dataset>/day=YYYY-MM-DD/part-*.parquet`` holding the canonical columns of
:mod:`contract.schema` (rows without a readable timestamp under ``day=unknown``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from contract.schema import COLUMNS, PARTITION, with_canonical_dtypes


def partitions(dataset: Path) -> list[tuple[str, list[Path]]]:
    """(day, part files) of a day-partitioned dataset, days and files sorted.

    The order is the dataset's canonical row order (used for "first occurrence").
    """
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise FileNotFoundError(f"dataset {dataset} does not exist or is not a directory")
    out = []
    for d in sorted(p for p in dataset.iterdir() if p.is_dir() and p.name.startswith(f"{PARTITION}=")):
        files = sorted(d.glob("*.parquet"))
        if files:
            out.append((d.name.split("=", 1)[1], files))
    return out


def read_dataset(dataset: Path, days: list[str] | None = None) -> pd.DataFrame:
    """Reads a day-partitioned transactions dataset (ingested/validated) into canonical dtypes.

    Args:
        dataset: the dataset directory (e.g. ``data/validated``).
        days: only these ``YYYY-MM-DD`` partitions (default: all).

    Returns:
        One frame with the canonical columns in dataset order (no ``day`` column).
    """
    frames = [pd.read_parquet(f) for d, files in partitions(dataset) if days is None or d in days for f in files]
    if not frames:
        return with_canonical_dtypes(pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()}))
    return with_canonical_dtypes(pd.concat(frames, ignore_index=True))
