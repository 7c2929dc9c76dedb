"""Criteo display-advertising data: read and write the TSV format MLPerf's DLRM uses.

One row per impression: ``label`` (0/1), 13 integer features ``I1..I13`` and 26
categorical features ``C1..C26`` (32-bit hashes written as 8 hex digits). The original
files are tab-separated without a header and an empty field is a missing value; the
Kaggle sample (``tests/data/criteo_sample_200.csv``) is comma-separated with a header.
:func:`read_criteo` accepts both; :func:`criteo_model_frame` turns the rows into a
model-ready table and its FeatureSpec (the transform training and evaluation share).

Example:
    >>> df = read_criteo("tests/data/criteo_sample_200.csv")
    >>> write_criteo(df, "day_0.tsv")
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from contract.hashing import stable_hash64
from contract.spec import DenseFeature, FeatureSpec, SparseFeature

LABEL = "label"
INT_COLUMNS: tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))
CAT_COLUMNS: tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))
COLUMNS: tuple[str, ...] = (LABEL, *INT_COLUMNS, *CAT_COLUMNS)


def sniff_criteo(path: Path | str) -> str | None:
    """``"tsv"`` (headerless, tab-separated), ``"csv"`` (header ``label,I1,...``) or None.

    Looks only at the first line, so it is cheap on big files.
    """
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    if first.split(",")[:2] == [LABEL, "I1"]:
        return "csv"
    fields = first.split("\t")
    if len(fields) == len(COLUMNS) and fields[0] in ("0", "1"):
        return "tsv"
    return None


def read_criteo(path: Path | str) -> pd.DataFrame:
    """Reads a Criteo file (headerless TSV or CSV with header) into canonical dtypes.

    Returns a frame with columns ``label`` (int64), ``I1..I13`` (float64, NaN = missing)
    and ``C1..C26`` (pandas ``string``, ``<NA>`` = missing).

    Raises:
        ValueError: the file is neither format, has the wrong number of fields, a
            non-numeric integer feature or a label outside {0, 1}; the message names the
            file and the column.
    """
    chunks = list(iter_criteo(path))
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def iter_criteo(path: Path | str, chunk_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """:func:`read_criteo` in chunks of ``chunk_rows`` rows (all at once when None).

    Criteo day files hold ~200M rows; reading them in chunks bounds memory.
    """
    path = Path(path)
    kind = sniff_criteo(path)
    if kind is None:
        raise ValueError(f"{path}: not a Criteo file (expected a header 'label,I1,...' "
                         f"or {len(COLUMNS)} tab-separated fields starting with a 0/1 label)")
    if kind == "csv":
        header = pd.read_csv(path, nrows=0).columns
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing Criteo column(s) {', '.join(missing)}")
        opts = dict(usecols=list(COLUMNS))
    else:
        opts = dict(sep="\t", header=None, names=list(COLUMNS), quoting=csv.QUOTE_NONE)
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=chunk_rows, **opts)
        if chunk_rows is None:
            yield _typed(reader[list(COLUMNS)], path)
            return
        for raw in reader:
            yield _typed(raw[list(COLUMNS)].reset_index(drop=True), path)
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: expected {len(COLUMNS)} {'tab-separated ' if kind == 'tsv' else ''}"
                         f"fields per line ({err})") from None


def _typed(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = pd.DataFrame(index=raw.index)
    label = pd.to_numeric(raw[LABEL], errors="coerce")
    if label.isna().any() or not label.isin([0, 1]).all():
        bad = raw[LABEL][label.isna() | ~label.isin([0, 1])].iloc[0]
        raise ValueError(f"{path}: column label has {bad!r}; expected 0 or 1")
    out[LABEL] = label.astype("int64")
    for c in INT_COLUMNS:
        s = raw[c].replace("", None)
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna()
        if bad.any():
            raise ValueError(f"{path}: column {c} has {s[bad].iloc[0]!r}; expected an integer or empty")
        out[c] = num.astype("float64")
    for c in CAT_COLUMNS:
        out[c] = raw[c].replace("", None).astype("string")
    return out


def write_criteo(df: pd.DataFrame, path: Path | str) -> Path:
    """Writes ``df`` (columns ``label, I1..I13, C1..C26``) as a headerless Criteo TSV.

    Integer features are written without a decimal point, missing values as empty fields.
    """
    path = Path(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"cannot write Criteo file {path}: missing column(s) {', '.join(missing)}")
    cols = {LABEL: df[LABEL].astype("int64").astype(str)}
    for c in INT_COLUMNS:
        v = pd.to_numeric(df[c], errors="raise").astype("float64")
        # (N,) integer text, "" where missing
        cols[c] = pd.Series(np.where(v.isna(), "", v.fillna(0).round().astype("int64").astype(str)), index=df.index)
    for c in CAT_COLUMNS:
        cols[c] = df[c].astype("string").fillna("")
    out = pd.DataFrame(cols)[list(COLUMNS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, sep="\t", header=False, index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")
    return path


# --------------------------------------------------------------------------- model-ready transform

def criteo_table_sizes(table_size: int | Sequence[int]) -> list[int]:
    """One table size per categorical feature from an int (all alike) or a list of 26."""
    sizes = [table_size] * len(CAT_COLUMNS) if isinstance(table_size, (int, np.integer)) else list(table_size)
    if len(sizes) != len(CAT_COLUMNS) or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
                                             for n in sizes):
        raise ValueError(f"criteo.table_size = {table_size!r}: expected an int >= 1, a list of "
                         f"{len(CAT_COLUMNS)} of them (C1..C26), or 'auto'")
    return [int(n) for n in sizes]


def criteo_spec(table_size: int | Sequence[int]) -> FeatureSpec:
    """The FeatureSpec of Criteo data: I1..I13 (log1p), C1..C26 hashed into ``table_size``
    rows (one size for all, or one per feature)."""
    sizes = criteo_table_sizes(table_size)
    return FeatureSpec(
        dense=tuple(DenseFeature(c, "log1p") for c in INT_COLUMNS),
        sparse=tuple(SparseFeature(c, n) for c, n in zip(CAT_COLUMNS, sizes)),
        label="label", version="criteo_v1",
    )


def criteo_model_frame(
    raw: pd.DataFrame, table_size: int | Sequence[int] | str
) -> tuple[pd.DataFrame, FeatureSpec]:
    """Criteo rows (``label, I1..I13, C1..C26`` as ``read_criteo`` gives them) -> a
    model-ready frame and its FeatureSpec.

    Dense: log1p(max(x, 0)), missing as 0. Categoricals: stable 64-bit hash of the hex
    string mod the feature's table size (a missing value hashes as the empty string).
    ``table_size``: one size for all 26 features, a list of 26, or ``"auto"``: each
    feature's number of distinct values in ``raw`` (the first pass of counts), so no
    table is larger than the values it can hold; the spec records the sizes, and data
    transformed later with ``[f.table_size for f in spec.sparse]`` gets the same ids.
    """
    missing = [c for c in ("label", *INT_COLUMNS, *CAT_COLUMNS) if c not in raw.columns]
    if missing:
        raise ValueError(f"Criteo data lacks column(s) {missing}")
    factorized = {c: pd.factorize(raw[c].fillna(""), sort=False) for c in CAT_COLUMNS}
    if isinstance(table_size, str):
        if table_size != "auto":
            raise ValueError(f"criteo.table_size = {table_size!r}: expected an int, a list of 26 or 'auto'")
        table_size = [max(1, len(uniques)) for _, uniques in factorized.values()]
    spec = criteo_spec(table_size)
    out = {"label": raw["label"].to_numpy(dtype=np.float32)}
    for c in INT_COLUMNS:
        x = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        out[c] = np.log1p(np.maximum(np.nan_to_num(x, nan=0.0), 0.0)).astype(np.float32)
    for f in spec.sparse:
        codes, uniques = factorized[f.name]
        # hash each distinct string once, then broadcast through the codes
        ids = (stable_hash64(map(str, uniques)) % np.uint64(f.table_size)).astype(np.int64)
        out[f.name] = ids[codes] if len(uniques) else np.zeros(len(raw), np.int64)
    return pd.DataFrame(out), spec


def read_criteo_frame(path: Path, table_size: int | Sequence[int] | str) -> tuple[pd.DataFrame, FeatureSpec]:
    """A Criteo file (TSV, or the CSV sample) -> model-ready frame + FeatureSpec."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Criteo file {path} does not exist")
    return criteo_model_frame(read_criteo(path), table_size)
