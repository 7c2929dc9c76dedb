"""`robeflow features`: model-ready splits by time, point-in-time values, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from contract.spec import FeatureSpec, ModelInput

DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def tables(built):
    spec = FeatureSpec.load(built.model_input / "feature_spec.json")
    return spec, {s: pd.read_parquet(built.model_input / f"{s}.parquet") for s in ("train", "valid", "test")}


def test_every_event_lands_in_exactly_one_split_by_time(built, events, tables):
    spec, parts = tables
    ids = pd.concat([p["event_id"] for p in parts.values()])
    assert sorted(ids) == sorted(events["event_id"]) and built.result.rows == len(events)
    days = sorted(events["event_timestamp"].dt.floor("D").unique())
    span = {s: (p["event_timestamp"].min().floor("D"), p["event_timestamp"].max().floor("D"))
            for s, p in parts.items()}
    assert span["test"] == (days[-2], days[-1])
    assert span["valid"] == (days[-4], days[-3])
    assert span["train"] == (days[0], days[-5])
    assert spec.extra["splits"]["test"] == [str(days[-2].date()), str(days[-1].date())]


def test_the_price_fill_is_the_median_offer_price(events, tables):
    spec, _ = tables
    assert spec.extra["fill"]["price"] == pytest.approx(round(float(events["price"].median()), 2))


def test_every_table_loads_as_model_input(tables):
    spec, parts = tables
    for name, part in parts.items():
        mi = ModelInput.from_frame(part, spec)
        assert mi.num_rows == len(part) and mi.labels is not None, name
        assert {"event_id", "event_timestamp", "user_id", "item_id"} <= set(part.columns)


def test_joined_values_are_those_of_the_events_before_the_event_day(events, tables):
    """Point-in-time join: each event reads the counts of its user/item before its day,
    recomputed here from the raw events (including offers shown on the same page)."""
    _, parts = tables
    frame = pd.concat(parts.values(), ignore_index=True).set_index("event_id")
    by_user, by_item = dict(tuple(events.groupby("user_id"))), dict(tuple(events.groupby("item_id")))
    same_page = events[events.duplicated(["user_id", "event_timestamp"], keep=False)]
    sample = pd.concat([events.sample(80, random_state=1), same_page.head(20)])
    for ev in sample.itertuples(index=False):
        start = ev.event_timestamp.floor("D")
        u, i = by_user[ev.user_id], by_item[ev.item_id]
        u30 = ((u["event_timestamp"] < start) & (u["event_timestamp"] >= start - 30 * DAY)).sum()
        i7 = i[(i["event_timestamp"] < start) & (i["event_timestamp"] >= start - 7 * DAY)]
        row = frame.loc[ev.event_id]
        assert row["user_offers_30d"] == pytest.approx(np.log1p(u30), rel=1e-6)
        assert row["item_purchases_7d"] == pytest.approx(np.log1p(i7["purchased"].sum()), rel=1e-6)
        assert row["price"] == pytest.approx(np.log1p(ev.price), rel=1e-6)
        assert row["purchased"] == ev.purchased


def run(*argv: str) -> int:
    return main(["features", *argv])


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    code = run("--input", str(tmp_path / "nope"), "--out", str(tmp_path / "f"),
               "--model-input", str(tmp_path / "m"))
    err = capsys.readouterr().err
    assert code != 0 and "nope does not exist" in err and "robeflow validate" in err
    assert not (tmp_path / "f").exists()


def test_empty_input_is_a_clear_error(tmp_path, events, capsys):
    (tmp_path / "empty").mkdir()
    code = run("--input", str(tmp_path / "empty"), "--out", str(tmp_path / "f"),
               "--model-input", str(tmp_path / "m"))
    assert code != 0 and "holds no Parquet files" in capsys.readouterr().err
    part = tmp_path / "zero" / "day=2026-10-01"
    part.mkdir(parents=True)
    events.iloc[:0].to_parquet(part / "part-0.parquet", index=False)
    code = run("--input", str(tmp_path / "zero"), "--out", str(tmp_path / "f"),
               "--model-input", str(tmp_path / "m"))
    assert code != 0 and "holds no transactions" in capsys.readouterr().err


def test_too_few_days_for_the_splits_is_a_clear_error(built, tmp_path, capsys):
    code = run("--input", str(built.validated), "--out", str(tmp_path / "f"),
               "--model-input", str(tmp_path / "m"), "-S", "features.test_days=10",
               "-S", "features.valid_days=4")
    err = capsys.readouterr().err
    assert code != 0 and "spans 14 day(s)" in err and "need at least 15" in err


def test_joining_at_day_starts_equals_joining_at_event_timestamps(built, events):
    """The step asks Feast once per (entity, day); on day-stamped tables that must give what
    a join at each event's own timestamp gives."""
    from features.repo import historical_rows, open_store

    store = open_store(built.repo)
    rows = events.sample(300, random_state=2)[["event_id", "event_timestamp", "user_id", "item_id"]]
    exact = historical_rows(store, rows)
    daily = historical_rows(store, rows, as_of_floor="D")
    pd.testing.assert_frame_equal(exact, daily)
    assert exact["user_offers_30d"].notna().all() and exact["item_brand"].notna().any()


def _splits_by_day(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, pd.DataFrame]:
    day = frame["event_timestamp"].dt.strftime("%Y-%m-%d")
    out = {}
    for name, (first, last) in spec.extra["splits"].items():
        out[name] = frame[(day >= first) & (day <= last)].reset_index(drop=True)
    return out


def test_model_ready_tables_equal_feasts_point_in_time_join_and_the_shared_transform(built, events, tables):
    """The SQL join and the vectorised transform give exactly what Feast's own
    point-in-time join (its DuckDB offline store) of every event (dlrm_v1 and the user history), through
    ``build_model_frame``, gives."""
    from features.repo import historical_rows, open_store
    from features.transform import build_model_frame

    spec, parts = tables
    cols = ["event_id", "event_timestamp", "user_id", "item_id", "query", "device", "country",
            "position", "price", "purchased"]
    ordered = events.sort_values(["event_timestamp", "event_id"], kind="stable")[cols]
    store = open_store(built.repo)
    assert store.config.offline_store.type == "duckdb"   # Feast's own join, on its DuckDB store
    rows = historical_rows(store, ordered.reset_index(drop=True), as_of_floor="D")
    rows = historical_rows(store, rows, service=spec.history.feature_service, as_of_floor="D")
    want = _splits_by_day(build_model_frame(rows, spec), spec)
    for name, part in parts.items():
        pd.testing.assert_frame_equal(part, want[name], check_exact=True, obj=name)


def test_small_batches_and_a_small_memory_limit_give_the_same_tables(built, tables, tmp_path):
    """Rows streamed in parts of 97 (part boundaries inside days and inside pages of
    offers shown at one instant), each day queried in runs of hours of at most 40 events,
    under a 64 MB engine limit: the same tables; and what a killed run left beside the
    outputs is removed."""
    from dataclasses import replace

    from components.features import features

    spec, parts = tables
    out, model_input = tmp_path / "features", tmp_path / "model_input"
    leftovers = [tmp_path / ".model_input.tmp-dead0001", tmp_path / ".model_input.work-dead0002",
                 tmp_path / ".features.tmp-dead0003"]
    for d in leftovers:
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "part.parquet").write_text("half written")
    features(replace(built.cfg, batch_rows=97, query_rows=40, memory_limit="64MB", threads=1), built.validated,
             out, model_input)
    assert not any(d.exists() for d in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "model_input"]
    import pyarrow.parquet as pq

    for name, part in parts.items():
        path = model_input / f"{name}.parquet"
        assert pq.ParquetFile(path).metadata.num_row_groups > 1, name   # written in parts
        pd.testing.assert_frame_equal(pd.read_parquet(path), part, check_exact=True, obj=name)
    assert FeatureSpec.load(model_input / "feature_spec.json") == spec


def test_day_spans_cover_the_day_in_runs_of_whole_hours():
    from components.features import day_spans
    from features.sql import DAY_NS, HOUR_NS

    day = 20_000
    hours = [(day * 24 - 1, 9), (day * 24 + 3, 30), (day * 24 + 4, 15), (day * 24 + 9, 70), (day * 24 + 23, 5),
             (day * 24 + 24, 8)]
    assert day_spans(hours, day, 120) == [None]                 # 120 events fit one query
    spans = day_spans(hours, day, 40)
    assert spans == [(day * DAY_NS, (day * 24 + 4) * HOUR_NS),   # hour 3 (30); with hour 4 it would be 45
                     ((day * 24 + 4) * HOUR_NS, (day * 24 + 9) * HOUR_NS),
                     ((day * 24 + 9) * HOUR_NS, (day * 24 + 23) * HOUR_NS),  # 70 > 40: an hour alone
                     ((day * 24 + 23) * HOUR_NS, (day + 1) * DAY_NS)]


def test_engine_settings_are_checked():
    from components.features import FeaturesConfig

    with pytest.raises(ValueError, match="features.engine = 'sparkle'"):
        FeaturesConfig(engine="sparkle")
    with pytest.raises(ValueError, match="features.batch_rows"):
        FeaturesConfig(batch_rows=0)
    with pytest.raises(ValueError, match="features.query_rows = 0"):
        FeaturesConfig(query_rows=0)
