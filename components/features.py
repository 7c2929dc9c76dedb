"""`robeflow features`: validated transactions -> Feast feature store and model-ready tables.

Computes the feature views' daily tables, applies the Feast repo, builds the training
frame with a point-in-time join (every event gets the feature values valid at its
timestamp), materialises the latest values into the online store, and writes the
model-ready train / valid / test tables (split by time) with ``feature_spec.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contract.io import StepError, atomic_dir, log
from features.windows import split_days
from contract.params import add_params_args, as_dict, load_config

if TYPE_CHECKING:
    import pandas as pd

STEP = "features"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TableSizes:
    """Virtual rows of each sparse feature's table (ids are hash mod size).

    The defaults total 947,528 rows: 60.6 MB as full float32 tables at dim 16, so the
    uncompressed baseline trains on a laptop; with ROBE raise them freely.
    """

    user: int = 500_000
    item: int = 200_000
    category_l1: int = 1_000
    category_l2: int = 5_000
    category_l3: int = 20_000
    brand: int = 20_000
    price_band: int = 64
    fav_category_l1: int = 1_000
    device: int = 64
    country: int = 256
    position: int = 64
    hour: int = 64
    day_of_week: int = 16
    query: int = 200_000


@dataclass(frozen=True)
class FeaturesConfig:
    test_days: int = 3              # the last days of data form the test window
    valid_days: int = 3             # the days before them form the validation window
    rate_prior: float = 0.03        # smoothed purchase rate of an entity without history (~ the data's rate)
    rate_prior_weight: float = 20.0  # pseudo-offers the prior counts as
    days_since_cap: int = 365       # days since last purchase of a user who never bought
    max_query_terms: int = 8        # distinct query terms kept per event
    default_position: int = 1       # position scored at serving when none is given
    tables: TableSizes = field(default_factory=TableSizes)


@dataclass
class FeaturesResult:
    rows: int                          # events in, = rows out over the three splits
    split_rows: dict[str, int]
    split_days: dict[str, list[str]]   # first and last day (YYYY-MM-DD) of each split
    feature_rows: dict[str, int]       # rows of each feature view's offline table
    online_entities: dict[str, int]    # users and items with latest values online
    snapshot: str                      # stamp of the materialised (latest) values
    seconds: float


def read_validated(input_dir: Path) -> "pd.DataFrame":
    """The validated transactions (Parquet partitioned by day=...), sorted by time."""
    import pandas as pd

    from contract.schema import COLUMNS

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise StepError(f"input directory {input_dir} does not exist; run `robeflow validate` first")
    files = sorted(input_dir.rglob("*.parquet"))
    if not files:
        raise StepError(f"input directory {input_dir} holds no Parquet files (expected day=YYYY-MM-DD/*.parquet)")
    events = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    missing = [c for c in COLUMNS if c not in events.columns]
    if missing:
        raise StepError(f"transactions in {input_dir} lack column(s) {missing}")
    events = events[list(COLUMNS)]
    if events.empty:
        raise StepError(f"input directory {input_dir} holds no transactions (all files are empty)")
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    if events["purchased"].isna().any():
        raise StepError(f"transactions in {input_dir} hold missing labels (purchased); validate them first")
    return events.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)


def _stamp(day: int) -> str:
    """Days since 1970-01-01 -> YYYY-MM-DD."""
    import numpy as np

    return str(np.datetime64(int(day), "D"))


def features(cfg: FeaturesConfig, input_dir: Path, out_dir: Path, model_input_dir: Path) -> FeaturesResult:
    """Runs the features step.

    Args:
        cfg: the ``features`` section of params.yaml.
        input_dir: validated transactions (``data/validated``).
        out_dir: the Feast repo and its data (``data/features``): replaced on success.
        model_input_dir: ``{train,valid,test}.parquet`` and ``feature_spec.json`` (``data/model_input``).
    """
    os.environ.setdefault("FEAST_USAGE", "False")
    import numpy as np
    import pandas as pd

    from contract.schema import TIMESTAMP
    from features.compute import StatsParams, compute_feature_tables, event_days
    from features.repo import (apply_repo, check_tables_match_views, historical_rows, install_repo,
                               materialize_latest, write_offline_tables)
    from features.transform import build_model_frame, feature_spec

    t0 = time.perf_counter()
    events = read_validated(input_dir)
    day = event_days(events["event_timestamp"])
    splits = split_days(pd.Series(day), cfg.test_days, cfg.valid_days)
    log(STEP, f"{len(events):,} events over {len(set(day))} days from {input_dir}")

    stats = StatsParams(cfg.rate_prior, cfg.rate_prior_weight, cfg.days_since_cap)
    tables = compute_feature_tables(events, stats)
    log(STEP, "feature tables: " + ", ".join(f"{n} {len(t):,} rows" for n, t in tables.items()))

    entity_cols = ["event_id", "event_timestamp", "user_id", "item_id", "query", "device",
                   "country", "position", "price", "purchased"]
    with atomic_dir(out_dir) as repo:
        install_repo(repo)
        write_offline_tables(tables, repo)
        store = apply_repo(repo)
        check_tables_match_views(store, tables)
        log(STEP, "feast apply done; point-in-time join of every event")
        # feature rows are daily snapshots, so ask Feast once per (entity, day)
        rows = historical_rows(store, events[entity_cols], as_of_floor="D")
        materialize_latest(store, tables)
        log(STEP, f"materialised the values as of {tables.snapshot} into the online store")
        del store

    spec = feature_spec(as_dict(cfg.tables), stats, cfg.max_query_terms, cfg.default_position,
                        extra={"splits": {s: [_stamp(d[0]), _stamp(d[-1])] for s, d in splits.items()},
                               "snapshot": str(tables.snapshot)})
    frame = build_model_frame(rows, spec)
    frame_day = event_days(frame[TIMESTAMP])
    split_rows = {}
    with atomic_dir(model_input_dir) as mdir:
        for name in SPLITS:
            part = frame[np.isin(frame_day, splits[name])].reset_index(drop=True)
            part.to_parquet(mdir / f"{name}.parquet", index=False)
            split_rows[name] = len(part)
        spec.save(mdir / "feature_spec.json")
    if sum(split_rows.values()) != len(events):
        raise StepError(f"splits hold {sum(split_rows.values())} rows for {len(events)} events")
    seconds = time.perf_counter() - t0
    log(STEP, "model input: " + ", ".join(f"{k} {v:,}" for k, v in split_rows.items())
        + f" rows in {model_input_dir} ({len(events) / seconds:,.0f} events/s)")
    return FeaturesResult(
        rows=len(events),
        split_rows=split_rows,
        split_days={s: [_stamp(d[0]), _stamp(d[-1])] for s, d in splits.items()},
        feature_rows={n: len(t) for n, t in tables.items()},
        online_entities={"user": int(tables.user_daily_stats["user_id"].nunique()),
                         "item": int(tables.item_daily_stats["item_id"].nunique())},
        snapshot=str(tables.snapshot),
        seconds=seconds,
    )


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(FeaturesConfig, STEP, args.params, args.overrides)
    features(cfg, args.input, args.out, args.model_input)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="compute features, fill the Feast stores, write the model-ready tables")
    p.add_argument("--input", type=Path, required=True, help="validated transactions (data/validated)")
    p.add_argument("--out", type=Path, required=True, help="Feast repo and its data (data/features)")
    p.add_argument("--model-input", type=Path, required=True,
                   help="model-ready tables and feature_spec.json (data/model_input)")
    add_params_args(p)
    p.set_defaults(func=_main)
