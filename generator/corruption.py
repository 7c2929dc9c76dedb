"""Corruption: broken rows of every kind validation must catch, planted on request."""

from __future__ import annotations

import numpy as np
import pandas as pd

from contract.schema import KEY_COLUMNS

CORRUPTIONS: tuple[str, ...] = (
    "null_key", "negative_price", "bad_label", "bad_timestamp", "unknown_device",
    "duplicate_event_id", "bad_position", "unknown_country", "timestamp_out_of_window",
)


def corrupt(frame: pd.DataFrame, truth: pd.DataFrame, fraction: float, rng: np.random.Generator,
            kind_offset: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Breaks ``round(len * fraction)`` rows, the kinds of :data:`CORRUPTIONS` in turn.

    Takes the clean frame (datetime timestamps) and returns the raw frame
    (``event_timestamp`` as ISO text, nullable ints), the truth without the ids of rows
    overwritten by duplicates, and the number of rows per kind.
    """
    n = len(frame)
    raw = frame.copy()
    secs = raw["event_timestamp"].dt.tz_convert(None).to_numpy().astype("datetime64[s]")
    raw["event_timestamp"] = np.char.add(np.datetime_as_string(secs), "Z").astype(object)
    for c in ("position", "purchased"):
        raw[c] = raw[c].astype("Int64")
    for c in ("event_id", "user_id", "item_id", "device", "country"):
        raw[c] = raw[c].astype(object)
    counts = {k: 0 for k in CORRUPTIONS}
    n_bad = int(round(n * fraction))
    if n_bad == 0 or n < 2:
        return raw, truth, counts
    rows = rng.choice(n, size=min(n_bad, n - 1), replace=False)
    clean = np.setdiff1d(np.arange(n), rows)
    dup_rows: list[int] = []
    dup_srcs: list[int] = []
    for j, row in enumerate(rows):
        kind = CORRUPTIONS[(kind_offset + j) % len(CORRUPTIONS)]
        counts[kind] += 1
        if kind == "null_key":
            raw.iat[row, raw.columns.get_loc(KEY_COLUMNS[(kind_offset + j) // len(CORRUPTIONS) % len(KEY_COLUMNS)])] = None
        elif kind == "negative_price":
            raw.iat[row, raw.columns.get_loc("price")] = -round(float(rng.uniform(0.5, 50)), 2)
        elif kind == "bad_label":
            raw.iat[row, raw.columns.get_loc("purchased")] = int(rng.choice([2, -1, 7]))
        elif kind == "bad_timestamp":
            raw.iat[row, raw.columns.get_loc("event_timestamp")] = str(
                rng.choice(["not-a-timestamp", "2026-13-45T99:00:00Z", "yesterday", "1700000000x"]))
        elif kind == "timestamp_out_of_window":
            raw.iat[row, raw.columns.get_loc("event_timestamp")] = str(
                rng.choice(["2019-03-14T09:26:53Z", "2031-01-01T00:00:00Z"]))
        elif kind == "unknown_device":
            raw.iat[row, raw.columns.get_loc("device")] = str(rng.choice(["smart_fridge", "console", "MOBILE"]))
        elif kind == "unknown_country":
            raw.iat[row, raw.columns.get_loc("country")] = str(rng.choice(["XX", "ZZ", "de"]))
        elif kind == "bad_position":
            raw.iat[row, raw.columns.get_loc("position")] = int(rng.choice([0, -3]))
        elif kind == "duplicate_event_id":
            # the same event logged twice: an exact copy of a clean row replaces this one
            dup_rows.append(row)
            dup_srcs.append(int(rng.choice(clean)))
    if dup_rows:
        dropped_ids = raw["event_id"].to_numpy()[dup_rows]
        for c in raw.columns:
            raw.loc[raw.index[dup_rows], c] = raw[c].iloc[dup_srcs].to_numpy()
        truth = truth[~truth["event_id"].isin(dropped_ids)].reset_index(drop=True)
    return raw, truth, counts
