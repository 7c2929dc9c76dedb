"""`robeflow validate`: a Great Expectations suite over the ingested transactions.

The suite is derived from :mod:`contract.schema` (see :func:`build_expectations`):
non-null values in every column but ``query``, unique ``event_id``, ``price >= 0``,
``position >= 1``, ``purchased`` in {0, 1}, known devices and countries, and
``event_timestamp`` inside the data window ``[window_start, window_end)`` (UTC). The
window comes from ``validate.window_start``/``window_end`` (params.yaml sets them to the
generator's window); when a bound is null the window is 2000-01-01 to one day after the
time of the run (so only absurd or future timestamps fail).

GX (Core 1.x, ephemeral context, pandas) runs the suite on batches of about
``batch_rows`` rows, taken from the day partitions in order, so memory stays bounded.
Rows that fail any expectation go to the quarantine dataset with a column
``failed_expectations`` (``;``-joined names like ``expect_column_values_to_be_in_set(device)``);
the others go to the validated dataset; both keep the ``day=YYYY-MM-DD`` layout.

Duplicate ``event_id``: the first row (in dataset order: days, then files, then rows)
that passes every other expectation is kept; every later row with that id is
quarantined as failing uniqueness, across batches too (the ids kept so far are held as
64-bit hashes). GX's own uniqueness result (in ``gx_result.json``) counts every copy
within a batch, the first included.

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

from contract.io import StepError, atomic_dir, log, write_json
from contract.params import add_params_args, as_dict, load_config
from contract.schema import (
    COLUMNS, COUNTRIES, DEVICES, LABEL, NON_NULL_COLUMNS, PARTITION, arrow_schema, with_canonical_dtypes,
)

FAILED_COLUMN = "failed_expectations"
UNIQUE = "expect_column_values_to_be_unique(event_id)"


@dataclass(frozen=True)
class ValidateConfig:
    max_bad_fraction: float = 0.05      # fail the stage when more rows than this are quarantined
    window_start: str | None = None     # first valid timestamp (UTC date/time); null: 2000-01-01
    window_end: str | None = None       # end of the window, exclusive; null: one day after now
    batch_rows: int = 500_000           # rows per GX run (bounds memory)

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

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (self.context.data_sources.add_pandas("transactions")
                 .add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole"))
        self.expectations = build_expectations(window)
        suite = self.context.suites.add(gx.ExpectationSuite(
            name="transactions", expectations=[e for _, e in self.expectations]))
        self.definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name="transactions", data=batch, suite=suite))

    def run(self, df: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict]:
        """Per expectation name, the positions of the failing rows; and the JSON result."""
        res = self.definition.run(batch_parameters={"dataframe": df},
                                  result_format={"result_format": "COMPLETE"})
        failing: dict[str, np.ndarray] = {}
        for r in res.results:
            cfg = r.expectation_config
            name = _name(cfg.type, cfg.kwargs["column"])
            raised = (r.exception_info or {}).get("raised_exception")
            if raised or "unexpected_index_list" not in r.result:
                msg = (r.exception_info or {}).get("exception_message", "no row-level result")
                raise StepError(f"expectation {name} could not be evaluated: {msg}")
            failing[name] = np.asarray(r.result["unexpected_index_list"], dtype=np.int64)
        record = res.to_json_dict()
        for r in record["results"]:  # keep counts and samples, not every failing value
            for k in ("unexpected_list", "unexpected_index_list", "unexpected_index_query"):
                r["result"].pop(k, None)
        return failing, record


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


def _batches(dataset: Path, batch_rows: int):
    """Yields (frame, day per row) batches of about ``batch_rows`` rows in dataset order."""
    from contract.transactions import partitions

    frames, days, n = [], [], 0
    for day, files in partitions(dataset):
        for f in files:
            df = with_canonical_dtypes(pd.read_parquet(f))
            frames.append(df)
            days.append(np.full(len(df), day, dtype=object))
            n += len(df)
            if n >= batch_rows:
                yield pd.concat(frames, ignore_index=True), np.concatenate(days)
                frames, days, n = [], [], 0
    if frames:
        yield pd.concat(frames, ignore_index=True), np.concatenate(days)


# ---------------------------------------------------------------------------- core


def validate(cfg: ValidateConfig, input_dir: Path, out_dir: Path, quarantine_dir: Path,
             reports_dir: Path) -> ValidateResult:
    """Validates the day-partitioned dataset ``input_dir``; see the module docstring.

    Returns:
        The accounting; ``passed`` is False when the bad fraction is above the threshold
        (the outputs are written either way).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from contract.transactions import partitions

    t0 = time.perf_counter()
    parts = partitions(input_dir)
    if not parts:
        raise ValueError(f"{input_dir} holds no rows: no {PARTITION}=YYYY-MM-DD/*.parquet partitions (is it an ingested dataset?)")
    expected_rows = sum(_check_file(f) for _, files in parts for f in files)
    window = cfg.window()
    runner = _Runner(window)
    names = [n for n, _ in runner.expectations]
    seen = np.empty(0, dtype=np.uint64)  # sorted hashes of the event ids kept so far
    failed_by = {n: 0 for n in names}
    per_day: dict[str, dict[str, int]] = {}
    records = []
    rows_in = rows_valid = rows_bad = 0
    valid_schema = arrow_schema()
    bad_schema = valid_schema.append(pa.field(FAILED_COLUMN, pa.string()))

    with atomic_dir(out_dir) as out_tmp, atomic_dir(quarantine_dir) as q_tmp, atomic_dir(reports_dir) as r_tmp:
        for b, (df, day) in enumerate(_batches(input_dir, cfg.batch_rows)):
            n = len(df)
            failing, record = runner.run(df)
            fails = {k: np.zeros(n, dtype=bool) for k in names}
            for k, idx in failing.items():
                fails[k][idx] = True
            # uniqueness, keep-first: among rows passing everything else, a row fails when
            # its id was kept earlier in this batch or in an earlier batch
            other = np.zeros(n, dtype=bool)
            for k in names:
                if k != UNIQUE:
                    other |= fails[k]
            ids = df["event_id"]
            cand = ~other & ids.notna().to_numpy()
            h = np.zeros(n, dtype=np.uint64)
            h[cand] = pd.util.hash_array(ids[cand].to_numpy(dtype=object))
            dup = np.zeros(n, dtype=bool)
            dup[cand] = pd.Series(h[cand]).duplicated(keep="first").to_numpy() | np.isin(h[cand], seen)
            fails[UNIQUE] = dup
            seen = np.union1d(seen, h[cand & ~dup])
            bad = other | dup

            label = np.full(n, "", dtype=object)
            for k in names:
                if fails[k].any():
                    failed_by[k] += int(fails[k].sum())
                    label[fails[k]] = np.where(label[fails[k]] == "", k, label[fails[k]] + ";" + k)
            rows_in += n
            rows_bad += int(bad.sum())
            rows_valid += int((~bad).sum())
            for d in np.unique(day):
                sel = day == d
                good_rows, bad_rows = df[sel & ~bad], df[sel & bad]
                stats = per_day.setdefault(str(d), {"rows_in": 0, "rows_valid": 0, "rows_quarantined": 0})
                stats["rows_in"] += int(sel.sum())
                stats["rows_valid"] += len(good_rows)
                stats["rows_quarantined"] += len(bad_rows)
                name = f"part-{b:05d}.parquet"
                if len(good_rows):
                    (out_tmp / f"{PARTITION}={d}").mkdir(exist_ok=True)
                    pq.write_table(pa.Table.from_pandas(good_rows, schema=valid_schema, preserve_index=False),
                                   out_tmp / f"{PARTITION}={d}" / name)
                if len(bad_rows):
                    q = bad_rows.assign(**{FAILED_COLUMN: label[sel & bad]})
                    (q_tmp / f"{PARTITION}={d}").mkdir(exist_ok=True)
                    pq.write_table(pa.Table.from_pandas(q, schema=bad_schema, preserve_index=False),
                                   q_tmp / f"{PARTITION}={d}" / name)
            records.append({"batch": b, "rows": n, "days": sorted(map(str, np.unique(day))), "result": record})
            log("validate", f"batch {b}: {n} rows, {int(bad.sum())} quarantined")

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
