"""`robeflow validate`: a Great Expectations suite over the ingested transactions.

The suite is derived from :mod:`contract.schema` (see :func:`build_expectations`):
non-null values in every column but ``query``, unique ``event_id``, ``price >= 0``,
``position >= 1``, ``purchased`` in {0, 1}, known devices and countries, and
``event_timestamp`` inside the data window ``[window_start, window_end)`` (UTC). The
window comes from ``validate.window_start``/``window_end`` (params.yaml sets them to the
generator's window); when a bound is null the window is 2000-01-01 to one day after the
time of the run (so only absurd or future timestamps fail).

GX (Core 1.x, ephemeral context, pandas) runs the suite on batches of about
``batch_rows`` rows, taken from the day partitions in order, so memory stays bounded;
its result (counts and samples per expectation) is the record, ``gx_result.json``. The
row-level verdicts are computed column-wise with Arrow kernels by the same rules
(:func:`row_failures`), and every batch's failing-row count per expectation must equal
GX's (else the step fails). Rows that fail any expectation go to the quarantine dataset with a column
``failed_expectations`` (``;``-joined names like ``expect_column_values_to_be_in_set(device)``);
the others go to the validated dataset; both keep the ``day=YYYY-MM-DD`` layout.

Duplicate ``event_id``: the first row (in dataset order: days, then files, then rows)
that passes every other expectation is kept; every later row with that id is
quarantined as failing uniqueness, across batches too. Before the batches, DuckDB finds the
ids that occur more than once in the input (a grouping out of core, within
``validate.memory_limit``); only those ids are followed from batch to batch (as 64-bit
hashes), so memory follows the number of duplicated ids, not the rows. GX's own uniqueness
result (in ``gx_result.json``) counts every copy within a batch, the first included.

Accounting (``validation.json``): ``rows_in == rows_valid + rows_quarantined``, checked
against the row counts in the input files' Parquet footers. The step writes all its
outputs and then fails (exit 1, one line) when ``rows_quarantined / rows_in`` exceeds
``max_bad_fraction``; the report says so. A file that is not Parquet or lacks a column
or has a column of the wrong type is an error naming the file and the column, and then
nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract.background import BackgroundCalls, prefetched
from contract.io import StepError, atomic_dir, log, write_json
from contract.params import add_params_args, as_dict, load_config
from contract.schema import (
    COLUMNS, COUNTRIES, DEVICES, LABEL, NON_NULL_COLUMNS, PARTITION, arrow_schema,
)

FAILED_COLUMN = "failed_expectations"
UNIQUE = "expect_column_values_to_be_unique(event_id)"


@dataclass(frozen=True)
class ValidateConfig:
    max_bad_fraction: float = 0.05      # fail the stage when more rows than this are quarantined
    window_start: str | None = None     # first valid timestamp (UTC date/time); null: 2000-01-01
    window_end: str | None = None       # end of the window, exclusive; null: one day after now
    batch_rows: int = 500_000           # rows per GX run (bounds memory)
    memory_limit: str = "1GB"           # DuckDB's working memory for the duplicate-id pass (spills beyond)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"validate.max_bad_fraction = {self.max_bad_fraction}; expected 0..1")
        if self.batch_rows < 1:
            raise ValueError(f"validate.batch_rows = {self.batch_rows}; expected >= 1")
        start, end = self.window()
        if not start < end:
            raise ValueError(f"validate.window_start ({start}) must be before validate.window_end ({end})")

    def window(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """[start, end) in UTC, with the defaults for null bounds."""
        return (_utc(self.window_start, "window_start") if self.window_start else pd.Timestamp("2000-01-01", tz="UTC"),
                _utc(self.window_end, "window_end") if self.window_end
                else pd.Timestamp.now(tz="UTC").normalize() + pd.Timedelta(days=1))


def _utc(value: str, name: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise ValueError(f"validate.{name} = {value!r}; expected a date like 2026-10-01") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass
class ValidateResult:
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    failed_by_expectation: dict[str, int]   # expectation -> quarantined rows failing it
    bad_fraction: float
    passed: bool                            # bad_fraction <= max_bad_fraction
    window: tuple[str, str]
    batches: int
    per_day: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def reason(self, max_bad_fraction: float) -> str:
        top = max(self.failed_by_expectation.items(), key=lambda kv: kv[1], default=("", 0))
        return (f"{self.rows_quarantined} of {self.rows_in} rows ({self.bad_fraction:.2%}) failed validation, "
                f"more than validate.max_bad_fraction = {max_bad_fraction:.2%}; most common: {top[0]} ({top[1]} rows)")


# ---------------------------------------------------------------------------- the suite


def build_expectations(window: tuple[pd.Timestamp, pd.Timestamp]) -> list[tuple[str, Any]]:
    """(name, GX expectation) pairs of the suite, derived from the schema."""
    import great_expectations as gx

    E = gx.expectations
    start, end = window
    out: list[Any] = [E.ExpectColumnValuesToNotBeNull(column=c) for c in NON_NULL_COLUMNS]
    out += [
        E.ExpectColumnValuesToBeUnique(column="event_id"),
        E.ExpectColumnValuesToBeBetween(column="price", min_value=0),
        E.ExpectColumnValuesToBeBetween(column="position", min_value=1),
        E.ExpectColumnValuesToBeInSet(column=LABEL, value_set=[0, 1]),
        E.ExpectColumnValuesToBeInSet(column="device", value_set=list(DEVICES)),
        E.ExpectColumnValuesToBeInSet(column="country", value_set=list(COUNTRIES)),
        E.ExpectColumnValuesToBeBetween(column="event_timestamp", min_value=start.to_pydatetime(),
                                        max_value=end.to_pydatetime(), strict_max=True),
    ]
    return [(_name(e.expectation_type, e.column), e) for e in out]


def _name(kind: str, column: str) -> str:
    return f"{kind}({column})"


class _Runner:
    """One ephemeral GX context with the suite, run batch by batch."""

    def __init__(self, window: tuple[pd.Timestamp, pd.Timestamp]):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        from great_expectations.execution_engine import pandas_execution_engine

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        # GX fingerprints every in-memory batch under HASH_THRESHOLD bytes by hashing all its
        # values (pandas_data_fingerprint, a batch marker nothing here reads): that hash cost
        # more than the whole suite. Threshold 0: no fingerprint; the checks are unchanged.
        pandas_execution_engine.HASH_THRESHOLD = 0
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (self.context.data_sources.add_pandas("transactions")
                 .add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole"))
        self.expectations = build_expectations(window)
        suite = self.context.suites.add(gx.ExpectationSuite(
            name="transactions", expectations=[e for _, e in self.expectations]))
        self.definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name="transactions", data=batch, suite=suite))

    def run(self, df: pd.DataFrame) -> tuple[dict[str, int], dict]:
        """Per expectation name, GX's count of failing rows; and the JSON result."""
        res = self.definition.run(batch_parameters={"dataframe": df},
                                  result_format={"result_format": "BASIC"})
        counts: dict[str, int] = {}
        for r in res.results:
            cfg = r.expectation_config
            name = _name(cfg.type, cfg.kwargs["column"])
            raised = (r.exception_info or {}).get("raised_exception")
            if raised or "unexpected_count" not in r.result:
                msg = (r.exception_info or {}).get("exception_message", "no unexpected_count")
                raise StepError(f"expectation {name} could not be evaluated: {msg}")
            counts[name] = int(r.result["unexpected_count"])
        record = res.to_json_dict()
        for r in record["results"]:  # keep counts and samples, not every failing value
            for k in ("unexpected_list", "unexpected_index_list", "unexpected_index_query"):
                r["result"].pop(k, None)
        return counts, record


def row_failures(table, window: tuple[pd.Timestamp, pd.Timestamp]) -> dict[str, np.ndarray]:
    """Per expectation of the suite but uniqueness, the (n,) bool mask of the rows of an
    Arrow table (canonical schema) that fail it, computed column-wise with Arrow kernels.

    The rules are those of GX: a null fails only the not-null expectations (and NaN
    counts as null); the others judge the non-null values.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    def mask(expr) -> np.ndarray:
        return expr.fill_null(False).to_numpy(zero_copy_only=False).astype(bool, copy=False)

    def not_in(column: str, values: list, type_) -> np.ndarray:
        col = table.column(column)
        return mask(pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=pa.array(values, type_)))))

    out: dict[str, np.ndarray] = {}
    for c in NON_NULL_COLUMNS:
        col = table.column(c)
        nulls = pc.is_null(col, nan_is_null=True) if pa.types.is_floating(col.type) else pc.is_null(col)
        out[_name("expect_column_values_to_not_be_null", c)] = mask(nulls)
    between = "expect_column_values_to_be_between"
    in_set = "expect_column_values_to_be_in_set"
    out[_name(between, "price")] = mask(pc.less(table.column("price"), 0.0))
    out[_name(between, "position")] = mask(pc.less(table.column("position"), 1))
    out[_name(in_set, LABEL)] = not_in(LABEL, [0, 1], pa.int64())
    out[_name(in_set, "device")] = not_in("device", list(DEVICES), pa.string())
    out[_name(in_set, "country")] = not_in("country", list(COUNTRIES), pa.string())
    ts = table.column("event_timestamp")
    start, end = (pa.scalar(t.value, pa.int64()).cast(ts.type) for t in window)
    out[_name(between, "event_timestamp")] = mask(pc.or_(pc.less(ts, start), pc.greater_equal(ts, end)))
    return out


# ---------------------------------------------------------------------------- reading


def _check_file(path: Path) -> int:
    """Row count of a part file; ValueError naming the file/column if it is not canonical."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    schema, want = meta.schema_arrow, arrow_schema()
    for f in want:
        if f.name not in schema.names:
            raise ValueError(f"{path}: missing column {f.name} (expected {f.type})")
        got = schema.field(f.name).type
        if got != f.type and not (pa.types.is_null(got)):
            raise ValueError(f"{path}: column {f.name} has type {got}; expected {f.type}")
    return meta.metadata.num_rows


def _repeated_ids(files: list[Path], memory_limit: str) -> np.ndarray:
    """Sorted 64-bit hashes (``pd.util.hash_array``, as the batches hash) of the event ids
    that occur more than once in ``files``: DuckDB groups the ids out of core, spilling to a
    scratch directory beyond ``memory_limit``."""
    import tempfile

    import duckdb

    with tempfile.TemporaryDirectory(prefix="robeflow-validate-") as scratch:
        config = {"memory_limit": str(memory_limit), "temp_directory": scratch,
                  "preserve_insertion_order": False}
        try:
            con = duckdb.connect(config=config)
        except duckdb.Error as err:
            raise ValueError(f"DuckDB refused validate.memory_limit = {memory_limit!r}: {err}") from None
        try:
            paths = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
            ids = con.sql(f"SELECT event_id FROM read_parquet({paths}) WHERE event_id IS NOT NULL "
                          "GROUP BY event_id HAVING count(*) > 1").to_arrow_table().column("event_id")
        finally:
            con.close()
    return np.unique(pd.util.hash_array(ids.to_numpy(zero_copy_only=False).astype(object)))


def _member(sorted_set: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(n,) whether each of ``h`` is in the sorted array ``sorted_set``."""
    if not len(sorted_set):
        return np.zeros(len(h), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, h), len(sorted_set) - 1)
    return sorted_set[pos] == h


def _batches(dataset: Path, batch_rows: int):
    """Yields (Arrow table, day per row) batches of about ``batch_rows`` rows in dataset
    order (whole files, in the canonical schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contract.transactions import partitions

    schema = arrow_schema()
    tables, days, n = [], [], 0
    for day, files in partitions(dataset):
        for f in files:
            t = pq.read_table(f, columns=schema.names).cast(schema)
            tables.append(t)
            days.append(np.full(t.num_rows, day, dtype=f"<U{max(len(day), 1)}"))
            n += t.num_rows
            if n >= batch_rows:
                yield pa.concat_tables(tables).combine_chunks(), np.concatenate(days)
                tables, days, n = [], [], 0
    if tables:
        yield pa.concat_tables(tables).combine_chunks(), np.concatenate(days)


def _write_rows(table, rows: np.ndarray, schema, path: Path, failed: np.ndarray | None = None) -> None:
    """Writes the rows of ``table`` selected by the (n,) bool mask ``rows`` to the Parquet
    file ``path`` in ``schema``, with the column ``failed_expectations`` (their labels,
    ``failed``) for quarantined rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = table.filter(pa.array(rows))
    if failed is not None:
        part = part.append_column(pa.field(FAILED_COLUMN, pa.string()), pa.array(failed, pa.string()))
    pq.write_table(part.cast(schema), path)


def _with_pandas_metadata(schema):
    """``schema`` with the pandas metadata of a frame in the canonical dtypes (text as
    ``string``, ints as ``Int64``), so ``pd.read_parquet`` gives readers those dtypes."""
    import pyarrow as pa

    empty = pd.DataFrame({f.name: pd.Series(dtype=COLUMNS.get(f.name, "object")) for f in schema})
    return pa.Table.from_pandas(empty, schema=schema, preserve_index=False).schema


def _gx_frame(table) -> pd.DataFrame:
    """The batch as the pandas frame GX reads, in the dtypes GX checks fastest with the
    same verdicts: text as ``category`` (dictionary-encoded by Arrow; ``event_id``, unique,
    as Arrow-backed ``string``), integers as ``int64`` (``float64`` when the batch has
    nulls: exact below 2**53, and GX's vectorised between/in-set paths take both; nullable
    ``Int64`` sends ``expect_column_values_to_be_between`` through a Python call per row),
    timestamps as ``datetime64[ns, UTC]``. Nulls stay nulls (NaN / NaT / missing category)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols: dict[str, Any] = {}
    for f in table.schema:
        col = table.column(f.name)
        if pa.types.is_string(f.type) and f.name != "event_id":
            enc = pc.dictionary_encode(col).combine_chunks()
            codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            cats = pd.Index(enc.dictionary.to_numpy(zero_copy_only=False), dtype=object)
            cols[f.name] = pd.Categorical.from_codes(codes, categories=cats, validate=False)
        elif pa.types.is_string(f.type):
            cols[f.name] = col.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
        elif pa.types.is_integer(f.type):
            values = col.to_numpy(zero_copy_only=False)  # float64 with NaN where null
            cols[f.name] = values.astype(np.float64 if col.null_count else np.int64, copy=False)
        else:
            cols[f.name] = col.to_pandas()
    return pd.DataFrame(cols)


# ---------------------------------------------------------------------------- core


def validate(cfg: ValidateConfig, input_dir: Path, out_dir: Path, quarantine_dir: Path,
             reports_dir: Path) -> ValidateResult:
    """Validates the day-partitioned dataset ``input_dir``; see the module docstring.

    Returns:
        The accounting; ``passed`` is False when the bad fraction is above the threshold
        (the outputs are written either way).
    """
    import pyarrow as pa
    from contract.transactions import partitions

    t0 = time.perf_counter()
    parts = partitions(input_dir)
    if not parts:
        raise ValueError(f"{input_dir} holds no rows: no {PARTITION}=YYYY-MM-DD/*.parquet partitions (is it an ingested dataset?)")
    expected_rows = sum(_check_file(f) for _, files in parts for f in files)
    window = cfg.window()
    runner = _Runner(window)
    names = [n for n, _ in runner.expectations]
    repeated = _repeated_ids([f for _, files in parts for f in files], cfg.memory_limit)
    log("validate", f"{len(repeated)} event ids occur more than once")
    seen = np.empty(0, dtype=np.uint64)  # sorted hashes of the repeated ids kept so far
    failed_by = {n: 0 for n in names}
    per_day: dict[str, dict[str, int]] = {}
    records = []
    rows_in = rows_valid = rows_bad = 0
    valid_schema = _with_pandas_metadata(arrow_schema())
    bad_schema = _with_pandas_metadata(arrow_schema().append(pa.field(FAILED_COLUMN, pa.string())))

    # the next batch is read and the last one's files written on threads while GX checks one
    with atomic_dir(out_dir) as out_tmp, atomic_dir(quarantine_dir) as q_tmp, atomic_dir(reports_dir) as r_tmp, \
            BackgroundCalls(depth=1) as writes:
        for b, (table, day) in enumerate(prefetched(_batches(input_dir, cfg.batch_rows), depth=1)):
            n = table.num_rows
            gx_counts, record = runner.run(_gx_frame(table))
            fails = row_failures(table, window)
            if set(fails) | {UNIQUE} != set(names):
                raise StepError(f"the row-level rules {sorted(fails)} do not match the suite {names}")
            for k, mask in fails.items():  # the row-level rules and the GX record must agree
                if int(mask.sum()) != gx_counts[k]:
                    raise StepError(f"expectation {k}: Great Expectations counts {gx_counts[k]} failing rows "
                                    f"in batch {b}, the row-level check {int(mask.sum())}")
            # uniqueness, keep-first: among rows passing everything else, a row fails when
            # its id was kept earlier in this batch or in an earlier batch
            other = np.zeros(n, dtype=bool)
            for mask in fails.values():
                other |= mask
            ids = table.column("event_id")
            cand = ~other & ids.is_valid().to_numpy(zero_copy_only=False)
            h = pd.util.hash_array(ids.filter(pa.array(cand)).to_numpy(zero_copy_only=False))
            first = ~pd.Series(h).duplicated(keep="first").to_numpy()
            known = _member(seen, h)
            dup = np.zeros(n, dtype=bool)
            dup[cand] = ~first | known
            fails[UNIQUE] = dup
            kept = np.sort(h[first & ~known & _member(repeated, h)])  # an id seen once cannot come back
            seen = np.insert(seen, np.searchsorted(seen, kept), kept)  # sorted
            bad = other | dup

            bad_idx = np.flatnonzero(bad)
            label = np.full(len(bad_idx), "", dtype=object)
            for k in names:
                f = fails[k][bad_idx]
                if f.any():
                    failed_by[k] += int(f.sum())
                    label[f] = np.where(label[f] == "", k, label[f] + ";" + k)
            labels = np.full(n, None, dtype=object)
            labels[bad_idx] = label
            rows_in += n
            rows_bad += len(bad_idx)
            rows_valid += n - len(bad_idx)
            day_names, day_code = np.unique(day, return_inverse=True)
            for i, d in enumerate(day_names):
                sel = day_code.reshape(-1) == i
                good, quarantined = sel & ~bad, sel & bad
                stats = per_day.setdefault(str(d), {"rows_in": 0, "rows_valid": 0, "rows_quarantined": 0})
                stats["rows_in"] += int(sel.sum())
                stats["rows_valid"] += int(good.sum())
                stats["rows_quarantined"] += int(quarantined.sum())
                name = f"part-{b:05d}.parquet"
                if good.any():
                    (out_tmp / f"{PARTITION}={d}").mkdir(exist_ok=True)
                    writes.submit(_write_rows, table, good, valid_schema, out_tmp / f"{PARTITION}={d}" / name)
                if quarantined.any():
                    (q_tmp / f"{PARTITION}={d}").mkdir(exist_ok=True)
                    writes.submit(_write_rows, table, quarantined, bad_schema, q_tmp / f"{PARTITION}={d}" / name,
                                  labels[quarantined])
            records.append({"batch": b, "rows": n, "days": sorted(map(str, day_names)), "result": record})
            log("validate", f"batch {b}: {n} rows, {len(bad_idx)} quarantined")

        writes.wait()
        # exact accounting, against the input's own footers
        assert rows_in == rows_valid + rows_bad, (rows_in, rows_valid, rows_bad)
        if rows_in != expected_rows:
            raise StepError(f"read {rows_in} rows from {input_dir} but its Parquet footers count {expected_rows}")
        bad_fraction = rows_bad / rows_in if rows_in else 0.0
        result = ValidateResult(
            rows_in=rows_in, rows_valid=rows_valid, rows_quarantined=rows_bad,
            failed_by_expectation={k: v for k, v in failed_by.items() if v},
            bad_fraction=bad_fraction, passed=bad_fraction <= cfg.max_bad_fraction,
            window=(window[0].isoformat(), window[1].isoformat()), batches=len(records),
            per_day=dict(sorted(per_day.items())), seconds=time.perf_counter() - t0,
        )
        summary = {
            "rows_in": result.rows_in, "rows_valid": result.rows_valid,
            "rows_quarantined": result.rows_quarantined, "bad_fraction": round(result.bad_fraction, 6),
            "max_bad_fraction": cfg.max_bad_fraction, "passed": result.passed,
            "failed_by_expectation": result.failed_by_expectation, "batches": result.batches,
        }
        # The DVC metric stays flat and short (`dvc metrics show`); the rest goes beside it.
        details = {"expectations": names, "window": list(result.window), "per_day": result.per_day,
                   "params": as_dict(cfg)}
        write_json(r_tmp / "validation.json", summary)
        write_json(r_tmp / "validation_details.json", details)
        write_json(r_tmp / "gx_result.json", {"suite": "transactions", "batches": records})
        (r_tmp / "report.md").write_text(_report(result, cfg, names, input_dir, out_dir, quarantine_dir))
    return result


def _report(res: ValidateResult, cfg: ValidateConfig, names: list[str], input_dir: Path,
            out_dir: Path, quarantine_dir: Path) -> str:
    status = "PASSED" if res.passed else "FAILED"
    lines = [
        "# Validation report", "",
        f"**{status}**: {res.rows_quarantined} of {res.rows_in} rows quarantined ({res.bad_fraction:.3%}); "
        f"threshold `validate.max_bad_fraction` = {cfg.max_bad_fraction:.2%}.", "",
        f"- input: `{input_dir}`", f"- validated: `{out_dir}` ({res.rows_valid} rows)",
        f"- quarantine: `{quarantine_dir}` ({res.rows_quarantined} rows, column `{FAILED_COLUMN}`)",
        f"- timestamp window: {res.window[0]} to {res.window[1]} (end exclusive)",
        f"- checked in {res.batches} batch(es) with Great Expectations; details in `gx_result.json`", "",
        "## Expectations", "", "| expectation | quarantined rows failing it |", "|---|---:|",
    ]
    lines += [f"| `{n}` | {res.failed_by_expectation.get(n, 0)} |" for n in names]
    lines += ["", "A row can fail several expectations; each row is quarantined once.", "",
              "## Per day", "", "| day | in | valid | quarantined |", "|---|---:|---:|---:|"]
    lines += [f"| {d} | {s['rows_in']} | {s['rows_valid']} | {s['rows_quarantined']} |" for d, s in res.per_day.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- CLI


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(ValidateConfig, "validate", args.params, args.overrides)
    res = validate(cfg, args.input, args.out, args.quarantine, args.reports)
    log("validate", f"{res.rows_in} rows in, {res.rows_valid} valid -> {args.out}, {res.rows_quarantined} "
                    f"quarantined -> {args.quarantine}; report {args.reports / 'report.md'} ({res.seconds:.1f}s)")
    if not res.passed:
        raise StepError(res.reason(cfg.max_bad_fraction))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check ingested transactions with Great Expectations; quarantine bad rows")
    p.add_argument("--input", type=Path, required=True, help="ingested dataset (data/ingested)")
    p.add_argument("--out", type=Path, required=True, help="validated dataset (data/validated)")
    p.add_argument("--quarantine", type=Path, required=True, help="quarantined rows (data/quarantine)")
    p.add_argument("--reports", type=Path, required=True, help="report directory (reports/validation)")
    add_params_args(p)
    p.set_defaults(func=_main)
