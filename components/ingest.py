"""`robeflow ingest`: raw transaction files -> canonical Parquet, partitioned by day.

Input: one file or a directory of part files (``.parquet``, ``.csv``; files whose name
starts with ``_`` or ``.`` are skipped), or Criteo files (headerless ``.tsv``/``.txt``, or
a CSV with header ``label,I1,...``).

Transactions are cast to the canonical dtypes of :mod:`contract.schema` (timestamps to
UTC; naive timestamps are taken as UTC) and written to
``<out>/day=YYYY-MM-DD/part-<source>-<batch>.parquet``. A value that cannot be cast (an
unparseable timestamp, ``"abc"`` as a price, ``1.5`` as a position) becomes null and the
row is kept, under ``day=unknown`` when it has no timestamp: validation quarantines it,
so rows in == rows valid + rows quarantined still holds. Columns of a type that cannot
hold the value at all (a list, a struct) are an error naming the file and column.

Idempotent: ``<source>`` is a fingerprint of the input file's bytes, and ingesting into
an existing output replaces that source's parts and keeps the other sources'. Ingesting
the same file twice gives the same dataset; ingesting another file adds it. The output
directory is replaced atomically, so a failed run leaves the old one untouched.

Criteo input becomes ``<out>/part-<source>-<batch>.parquet`` with columns
``label, I1..I13, C1..C26`` (no day partitions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pandas as pd

from contract.io import atomic_dir, log, write_json
from contract.params import add_params_args, load_config
from contract.schema import COLUMNS, PARTITION, UNKNOWN_DAY, arrow_schema

MANIFEST = "_ingest.json"
STRING_COLUMNS = tuple(c for c, t in COLUMNS.items() if t == "string")
INT_COLUMNS = tuple(c for c, t in COLUMNS.items() if t == "Int64")
FLOAT_COLUMNS = tuple(c for c, t in COLUMNS.items() if t == "float64")
TIMESTAMP_COLUMNS = tuple(c for c, t in COLUMNS.items() if t.startswith("datetime64"))


@dataclass(frozen=True)
class IngestConfig:
    input_format: Literal["auto", "parquet", "csv", "criteo"] = "auto"  # auto: by suffix and content
    batch_rows: int = 500_000  # rows read, cast and written at a time (bounds memory)

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise ValueError(f"ingest.batch_rows = {self.batch_rows}; expected >= 1")


@dataclass
class IngestResult:
    format: Literal["transactions", "criteo"]
    rows: int                              # rows read from the input (== rows written)
    files: list[Path]                      # part files written for this input
    days: list[str] = field(default_factory=list)  # day partitions this input touched
    coerced: dict[str, int] = field(default_factory=dict)  # column -> values made null by the cast
    kept_sources: int = 0                  # other sources' parts kept in the output


# ---------------------------------------------------------------------------- files


def input_files(path: Path) -> list[Path]:
    """The data files of ``path`` (a file, or a directory searched recursively), sorted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
                   and p.suffix.lower() in (".parquet", ".csv", ".tsv", ".txt"))
    if not files:
        raise ValueError(f"input directory {path} holds no .parquet, .csv, .tsv or .txt files")
    return files


def file_format(path: Path, declared: str) -> Literal["parquet", "csv", "criteo"]:
    """The format of one input file: ``declared`` unless it is ``auto``."""
    from features.criteo import sniff_criteo

    if declared != "auto":
        return declared  # type: ignore[return-value]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".tsv", ".txt"):
        return "criteo"
    return "criteo" if sniff_criteo(path) == "csv" else "csv"


def fingerprint(path: Path) -> str:
    """12 hex digits of the SHA-1 of the file's bytes (names the file's parts in the output)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------- reading


def _parquet_batches(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    _check_arrow_schema(path, pf.schema_arrow)
    columns = [c for c in COLUMNS if c in pf.schema_arrow.names]
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        yield batch.to_pandas()


def _check_arrow_schema(path: Path, schema) -> None:
    import pyarrow.types as pt

    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected the canonical "
                         f"columns {', '.join(COLUMNS)}")
    for c in COLUMNS:
        t = schema.field(c).type
        if pt.is_dictionary(t):
            t = t.value_type
        if c in TIMESTAMP_COLUMNS:
            ok = pt.is_timestamp(t) or pt.is_string(t) or pt.is_large_string(t) or pt.is_date(t) or pt.is_null(t)
            want = "a timestamp or ISO-8601 text"
        elif c in STRING_COLUMNS:
            ok = pt.is_string(t) or pt.is_large_string(t) or pt.is_integer(t) or pt.is_null(t)
            want = "text"
        else:
            ok = (pt.is_integer(t) or pt.is_floating(t) or pt.is_string(t) or pt.is_large_string(t)
                  or pt.is_null(t) or pt.is_decimal(t))
            want = "a number"
        if not ok:
            raise ValueError(f"{path}: column {c} has type {t}; expected {want}")


def _csv_batches(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split(",")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 CSV file") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected a header with "
                         f"{', '.join(COLUMNS)}")
    try:
        # everything as text: the cast below decides what is valid, value by value
        yield from pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                               usecols=list(COLUMNS), chunksize=batch_rows)
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: malformed CSV ({err})") from None


# ---------------------------------------------------------------------------- casting


def cast_canonical(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Casts a raw batch to the canonical dtypes; uncastable values become null.

    Returns the cast frame (canonical column order) and, per column, how many non-null
    values the cast turned into nulls. Empty text counts as missing, except in ``query``,
    where missing becomes ``""`` (no search terms).
    """
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    coerced: dict[str, int] = {}
    df = df.reset_index(drop=True)
    for c in COLUMNS:
        s = df[c]
        if c == "query":
            v = s.astype("string").fillna("")  # no search: "" (CSV cannot tell "" from missing)
        elif c in STRING_COLUMNS:
            v = s.astype("string")
            v = v.mask(v == "")  # an empty id, category or device is a missing one
        elif c in TIMESTAMP_COLUMNS:
            v = _to_utc(s)
        else:
            num = pd.to_numeric(s, errors="coerce")
            if c in INT_COLUMNS:
                num = num.where(np.isfinite(num) & (num == np.round(num)))
                v = num.astype("Int64")
            else:
                v = num.astype("float64")
        lost = int((v.isna() & s.notna()).sum())
        if lost:
            coerced[c] = lost
        out[c] = v
    return out, coerced


def _to_utc(s: pd.Series) -> pd.Series:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(s.dtype):
        return s.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    import pyarrow as pa
    import pyarrow.compute as pc

    text = s.astype("string[pyarrow]").str.strip()
    # parse offset-bearing and naive texts apart: in one call pandas applies one text's
    # offset to the naive ones
    found = pc.match_substring_regex(pa.array(text), r"(?:Z|[+-]\d{2}:?\d{2})$")
    aware = found.fill_null(False).to_numpy(zero_copy_only=False)
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    if aware.any():
        out[aware] = pd.to_datetime(text[aware], utc=True, errors="coerce", format="ISO8601")
    if (~aware).any():
        naive = pd.to_datetime(text[~aware], errors="coerce", format="ISO8601")
        if isinstance(naive.dtype, pd.DatetimeTZDtype):  # cannot happen for naive texts; be safe
            naive = naive.dt.tz_convert(None)
        out[~aware] = naive.dt.tz_localize("UTC")
    return out


# ---------------------------------------------------------------------------- core


def ingest(cfg: IngestConfig, input_path: Path, out_dir: Path) -> IngestResult:
    """Ingests ``input_path`` (file or directory) into ``out_dir``; see the module docstring."""
    files = input_files(input_path)
    out_res = Path(out_dir).resolve()
    if any(out_res == f.resolve() or out_res in f.resolve().parents for f in files):
        raise ValueError(f"output {out_dir} contains the input {input_path}; ingest into another directory")
    formats = {f: file_format(f, cfg.input_format) for f in files}
    kinds = {"criteo" if v == "criteo" else "transactions" for v in formats.values()}
    if len(kinds) > 1:
        crit = next(f for f, v in formats.items() if v == "criteo")
        raise ValueError(f"input {input_path} mixes Criteo files ({crit}) with transaction files")
    kind = kinds.pop()
    prints = {f: fingerprint(f) for f in files}

    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest and manifest.get("format") != kind:
        raise ValueError(f"output {out_dir} holds a {manifest.get('format')} dataset; cannot add {kind} input "
                         f"from {input_path}")
    written: list[Path] = []
    days: set[str] = set()
    coerced: dict[str, int] = {}
    sources: dict[str, dict] = {}
    rows = 0
    with atomic_dir(out_dir) as tmp:
        kept = _keep_other_sources(out_dir, tmp, set(prints.values()))
        sources.update({k: v for k, v in manifest.get("sources", {}).items() if k in kept})
        for f in files:
            src, n_file = prints[f], 0
            batches = _criteo_batches(f, cfg.batch_rows) if kind == "criteo" else (
                _parquet_batches(f, cfg.batch_rows) if formats[f] == "parquet" else _csv_batches(f, cfg.batch_rows))
            for b, raw in enumerate(batches):
                name = f"part-{src}-{b:05d}.parquet"
                n_file += len(raw)
                if kind == "criteo":
                    raw.to_parquet(tmp / name, index=False)
                    written.append(out_dir / name)
                    continue
                df, lost = cast_canonical(raw)
                for c, k in lost.items():
                    coerced[c] = coerced.get(c, 0) + k
                written += _write_days(df, tmp, out_dir, name, days)
            sources[src] = {"path": str(f), "rows": n_file}
            rows += n_file
        write_json(tmp / MANIFEST, {"format": kind, "sources": sources})
    return IngestResult(format=kind, rows=rows, files=written, days=sorted(days), coerced=coerced,
                        kept_sources=len(kept))


def _criteo_batches(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    from features.criteo import iter_criteo

    if path.suffix.lower() == ".parquet":
        raise ValueError(f"{path}: Criteo input must be TSV or CSV, not Parquet")
    yield from iter_criteo(path, batch_rows)


def _write_days(df: pd.DataFrame, tmp: Path, out_dir: Path, name: str, days: set[str]) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    # (N,) calendar day of each row; NaT for rows without a timestamp
    day = df["event_timestamp"].dt.tz_convert(None).to_numpy().astype("datetime64[D]")
    written = []
    missing = np.isnat(day)
    groups = [(str(v), day == v) for v in np.unique(day[~missing])]
    if missing.any():
        groups.append((UNKNOWN_DAY, missing))
    for d, rows in groups:
        part = df[rows]
        sub = tmp / f"{PARTITION}={d}"
        sub.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False), sub / name)
        written.append(out_dir / f"{PARTITION}={d}" / name)
        days.add(str(d))
    return written


def _read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON; remove {out_dir} and ingest again") from None


def _keep_other_sources(out_dir: Path, tmp: Path, new_sources: set[str]) -> set[str]:
    """Links the parts of sources other than ``new_sources`` from ``out_dir`` into ``tmp``.

    Returns the fingerprints of the sources kept.
    """
    kept: set[str] = set()
    if not out_dir.is_dir():
        return kept
    for p in sorted(out_dir.rglob("part-*.parquet")):
        src = p.name.split("-")[1] if p.name.count("-") >= 2 else ""
        if src in new_sources:
            continue
        dest = tmp / p.relative_to(out_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, dest)  # same file system: no copy
        except OSError:
            shutil.copy2(p, dest)
        kept.add(src)
    return kept


# ---------------------------------------------------------------------------- reading back


# ---------------------------------------------------------------------------- CLI


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(IngestConfig, "ingest", args.params, args.overrides)
    res = ingest(cfg, args.input, args.out)
    extra = f"; kept {res.kept_sources} other source(s)" if res.kept_sources else ""
    if res.format == "criteo":
        log("ingest", f"{res.rows} Criteo rows -> {args.out} ({len(res.files)} part files){extra}")
        return 0
    bad = ", ".join(f"{c}={k}" for c, k in sorted(res.coerced.items())) or "none"
    log("ingest", f"{res.rows} rows -> {args.out} ({len(res.days)} day partitions, {len(res.files)} part files); "
                  f"values made null by the cast: {bad}{extra}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="cast raw CSV/Parquet/Criteo files to canonical Parquet partitioned by day")
    p.add_argument("--input", type=Path, required=True, help="a file or a directory of part files (data/raw)")
    p.add_argument("--out", type=Path, required=True, help="output dataset directory (data/ingested)")
    add_params_args(p)
    p.set_defaults(func=_main)
