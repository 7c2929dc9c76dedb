"""Splitting events into train / valid / test windows by day, and model-ready windows
built in memory (no Feast repo) for monitoring, tests and benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from contract.io import StepError

if TYPE_CHECKING:
    import pandas as pd

    from contract.spec import FeatureSpec


def split_days(days: "pd.Series", test_days: int, valid_days: int) -> dict[str, list]:
    """Distinct days -> {split: days}: the last ``test_days`` are test, the ``valid_days``
    before them validation, all earlier days training."""
    if test_days < 1 or valid_days < 1:
        raise ValueError(f"features.test_days and features.valid_days must be >= 1, "
                         f"got {test_days} and {valid_days}")
    uniq = sorted(days.unique())
    if len(uniq) < test_days + valid_days + 1:
        raise StepError(f"the data spans {len(uniq)} day(s); test_days={test_days} and "
                        f"valid_days={valid_days} need at least {test_days + valid_days + 1}")
    return {"train": uniq[: -(test_days + valid_days)],
            "valid": uniq[-(test_days + valid_days): -test_days],
            "test": uniq[-test_days:]}


def model_ready_windows(events: "pd.DataFrame", spec: "FeatureSpec", stats: "Any",
                        test_days: int, valid_days: int) -> dict[str, "pd.DataFrame"]:
    """Validated transactions -> model-ready ``{train, valid, test}`` tables, without a Feast repo.

    Joins every event with the feature tables' rows stamped at the start of its day (the
    tables hold a row per entity and event day, computed from strictly earlier days), which
    is what the features step's point-in-time join returns; then applies the shared
    transform and splits by day as the features step does. For monitoring transactions that
    have not been through the features step, and for tests and benchmarks on small data.

    Args:
        events: transactions in the canonical schema (tz-aware ``event_timestamp``).
        spec: the feature spec (``feature_spec.json`` of the features step).
        stats: the :class:`features.compute.StatsParams` the spec's fill values come from.
        test_days, valid_days: the split (``features.test_days``, ``features.valid_days``).
    """
    import pandas as pd

    from features.compute import compute_feature_tables, event_days
    from features.transform import build_model_frame

    tables = compute_feature_tables(events, stats)
    rows = events.reset_index(drop=True).copy()
    rows["_day"] = pd.to_datetime(rows["event_timestamp"], utc=True).dt.floor("D")
    for name, table in tables.items():
        key = "user_id" if name.startswith("user") else "item_id"
        table = table.rename(columns={"event_timestamp": "_day"})
        table["_day"] = table["_day"].astype(rows["_day"].dtype)
        rows = rows.merge(table, on=[key, "_day"], how="left", validate="many_to_one")
    frame = build_model_frame(rows.drop(columns="_day"), spec)
    day = event_days(frame["event_timestamp"])
    splits = split_days(pd.Series(day), test_days, valid_days)
    return {name: frame[np.isin(day, days)].reset_index(drop=True) for name, days in splits.items()}
