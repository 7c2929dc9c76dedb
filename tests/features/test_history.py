"""The user history (``user_history`` view, ``hist_*`` columns): each row sees the user's last
events strictly before its day, newest first, truncated; offline, model-ready and online agree."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contract.spec import FeatureSpec
from features.categorize import hash_ids
from features.compute import compute_feature_tables

L = 7   # short enough that many rows are truncated on the test data


def brute_history(events: pd.DataFrame, user: str, stamp: pd.Timestamp, length: int) -> dict[str, list]:
    """The user's last ``length`` events before ``stamp`` (a day start), newest first, by a
    plain scan; events at one instant are ordered as the (time-sorted) frame orders them."""
    ev = events.reset_index(drop=True)
    past = ev[(ev["user_id"] == user) & (ev["event_timestamp"] < stamp)]
    past = past.assign(_pos=past.index).sort_values(["event_timestamp", "_pos"], ascending=False).head(length)
    return {
        "hist_item": past["item_id"].astype(str).tolist(),
        "hist_cat": past["category_l1"].astype(str).tolist(),
        "hist_action": past["purchased"].astype(int).tolist(),
        "hist_days": [(stamp - t.floor("D")).days for t in past["event_timestamp"]],
    }


def as_lists(row) -> dict[str, list]:
    return {c: [v.item() if hasattr(v, "item") else v for v in row[c]]
            for c in ("hist_item", "hist_cat", "hist_action", "hist_days")}


@pytest.fixture(scope="module")
def history(events) -> pd.DataFrame:
    return compute_feature_tables(events, history_len=L).user_history


def test_history_rows_equal_a_brute_force_recount(events, history):
    """Every (user, day) row: the last L events strictly before the day, newest first."""
    assert len(history) == len(compute_feature_tables(events).user_daily_stats)
    truncated = empty = 0
    for row in history.itertuples(index=False):
        want = brute_history(events, row.user_id, row.event_timestamp, L)
        assert as_lists(row._asdict()) == want, (row.user_id, row.event_timestamp)
        n_past = int(((events["user_id"] == row.user_id) & (events["event_timestamp"] < row.event_timestamp)).sum())
        truncated += n_past > L
        empty += n_past == 0
        assert len(row.hist_item) == min(n_past, L)
    assert truncated > 100 and empty >= 1          # both edges are exercised
    days = np.concatenate([np.asarray(d) for d in history["hist_days"] if len(d)])
    assert days.min() >= 1                          # never the row's own day
    assert all(np.all(np.diff(np.asarray(d)) >= 0) for d in history["hist_days"])   # newest first


def test_an_event_on_the_rows_day_never_enters_its_history(events):
    """Adding events on day D (and later) changes no history row stamped at or before D."""
    last = events["event_timestamp"].max().floor("D")
    extra = events[events["event_timestamp"] >= last].copy()
    extra["event_id"] = "x" + extra["event_id"].astype(str)
    extra["item_id"] = "new-item"
    both = pd.concat([events, extra]).sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    a = compute_feature_tables(events, history_len=L).user_history
    b = compute_feature_tables(both, history_len=L).user_history
    keep = lambda h: h[h["event_timestamp"] <= last].reset_index(drop=True)   # noqa: E731
    pd.testing.assert_frame_equal(keep(a), keep(b))
    snap = b[b["event_timestamp"] > last]
    assert snap["hist_item"].map(lambda h: "new-item" in list(h)).any()   # the snapshot row sees them


@pytest.fixture(scope="module")
def model_rows(built):
    spec = FeatureSpec.load(built.model_input / "feature_spec.json")
    frame = pd.concat([pd.read_parquet(built.model_input / f"{s}.parquet") for s in ("train", "valid", "test")],
                      ignore_index=True)
    return spec, frame


def test_model_ready_rows_carry_the_hashed_history_before_their_day(events, model_rows):
    spec, frame = model_rows
    assert spec.history is not None and spec.history.length == 20
    assert spec.history.names == ["hist_item", "hist_cat", "hist_action", "hist_days"]
    sizes = {f.name: f.table_size for f in spec.sparse}
    frame = frame.set_index("event_id")
    sample = events.sample(120, random_state=4)
    first = events.groupby("user_id")["event_timestamp"].transform("min").dt.floor("D")
    sample = pd.concat([sample, events[events["event_timestamp"].dt.floor("D") == first].head(5)])
    n_empty = 0
    for ev in sample.itertuples(index=False):
        want = brute_history(events, ev.user_id, ev.event_timestamp.floor("D"), spec.history.length)
        row = frame.loc[ev.event_id]
        assert row["hist_item"].tolist() == hash_ids(want["hist_item"], "item", sizes["item"]).tolist()
        assert row["hist_cat"].tolist() == hash_ids(want["hist_cat"], "category_l1", sizes["category_l1"]).tolist()
        assert row["hist_action"].tolist() == want["hist_action"]
        assert row["hist_days"].tolist() == want["hist_days"]
        n_empty += len(want["hist_item"]) == 0
    assert n_empty >= 5                                     # a new user's rows: empty lists
    assert frame["hist_item"].map(len).max() == spec.history.length


def test_the_spec_records_the_history_and_readers_still_work(model_rows):
    from dataclasses import replace

    from contract.spec import ModelInput

    spec, frame = model_rows
    mi = ModelInput.from_frame(frame, spec)
    assert mi.num_rows == len(frame) and mi.sparse_offsets[-1] == len(mi.sparse_values)
    no_history = replace(spec, history=None)
    no_history.check_compatible(spec)           # a model without the tower takes data with a history
    with pytest.raises(ValueError, match="no user history"):
        spec.check_compatible(no_history)      # a model reading histories refuses data without
    other = replace(spec, history=replace(spec.history, columns=spec.history.columns[:2]))
    with pytest.raises(ValueError, match="history columns"):
        spec.check_compatible(other)


@pytest.mark.parametrize("reader", ["lean", "feast"])
def test_online_history_equals_the_offline_snapshot_row(built, events, reader):
    from features.online import OnlineFeatures

    spec = FeatureSpec.load(built.model_input / "feature_spec.json")
    online = OnlineFeatures(built.repo, spec, reader=reader)
    offline = pd.read_parquet(built.repo / "store/offline/user_history.parquet")
    snapshot = pd.Timestamp(built.result.snapshot)
    latest = offline[offline["event_timestamp"] == snapshot].set_index("user_id")
    assert len(latest) == events["user_id"].nunique()
    for user in sorted(events["user_id"].unique())[:12]:
        got = online.history(user)
        assert got == as_lists(latest.loc[user])
        assert got == brute_history(events, user, snapshot, spec.history.length)
    assert online.history("nobody-123") == {c: [] for c in spec.history.names}


def test_history_hashed_once_per_row_equals_hashing_in_the_model_rows(history):
    """history_id_batch (what the step joins) == model_batch's own hashing of the raw lists."""
    import pyarrow as pa

    from components.features import TableSizes
    from contract.params import as_dict
    from features.compute import StatsParams
    from features.transform import feature_spec, history_id_batch, model_batch

    spec = feature_spec(as_dict(TableSizes()), StatsParams(), history_len=L)
    raw = pa.Table.from_pandas(history.head(300), preserve_index=False)
    raw = raw.set_column(raw.schema.get_field_index("hist_item"), "hist_item",
                         pa.array([None] + raw.column("hist_item").to_pylist()[1:], raw.schema.field("hist_item").type))
    hashed = history_id_batch(raw, spec)
    assert hashed.column_names == raw.column_names
    sizes = {f.name: f.table_size for f in spec.sparse}
    for got, want in zip(hashed.column("hist_item").to_pylist()[1:5], raw.column("hist_item").to_pylist()[1:5]):
        assert got == hash_ids(want, "item", sizes["item"]).tolist()
    assert hashed.column("hist_item")[0].as_py() == []                  # null list: empty
    rows = raw.append_column("ts_ns", pa.array(np.arange(raw.num_rows, dtype=np.int64)))
    rows = rows.append_column("item_id", pa.array(["i1"] * raw.num_rows))
    want = model_batch(rows.combine_chunks().to_batches()[0], spec)
    rows_hashed = hashed.append_column("ts_ns", rows.column("ts_ns")).append_column("item_id", rows.column("item_id"))
    got = model_batch(rows_hashed.combine_chunks().to_batches()[0], spec, hashed_history=True)
    assert got.equals(want)
