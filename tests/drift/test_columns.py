"""The monitor's building blocks: popularity buckets, id keys, sampling, the monitored tables,
reading Evidently's results, the config and the CLI's argument checks (no Evidently run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drift.columns import (BUCKETS, RARE, UNSEEN, column_drift, id_keys, metric_value, monitored_tables,
                              pool_rare, popularity_buckets, sample_positions)
from contract.spec import DenseFeature, FeatureSpec, SparseFeature


def zipf_ids(rng: np.random.Generator, n: int, ids: np.ndarray, a: float = 1.0) -> pd.Series:
    p = 1.0 / np.arange(1, len(ids) + 1) ** a
    return pd.Series(rng.choice(ids, size=n, p=p / p.sum()))


def shares(buckets: pd.Series) -> np.ndarray:
    return buckets.value_counts(normalize=True).reindex(list(BUCKETS), fill_value=0.0).to_numpy()


def test_buckets_follow_the_ranking_samples_cumulative_share():
    ranking = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["d"] * 10)
    got = popularity_buckets(ranking, pd.Series(["a", "b", "c", "d", "zz"]))
    # rows before each id in popularity order: a 0%, b 50%, c 80%, d 90% (ties by id); zz never seen
    assert got.tolist() == ["00-10%", "50-60%", "80-90%", "90-100%", UNSEEN]
    with pytest.raises(ValueError, match="empty"):
        popularity_buckets(pd.Series([], dtype=object), pd.Series(["a"]))


def test_independent_samples_of_one_population_share_their_bucket_mix():
    """Ranking on a separate sample keeps the reference and current samples comparable (unseen
    included); ranking on the reference itself would not (it never has unseen ids)."""
    rng = np.random.default_rng(0)
    ids = np.arange(20_000)                  # far more ids than rows: most are seen once or never
    ranking, ref, cur = (zipf_ids(rng, 6_000, ids) for _ in range(3))
    a, b = shares(popularity_buckets(ranking, ref)), shares(popularity_buckets(ranking, cur))
    assert np.abs(a - b).max() < 0.03
    assert a[-1] > 0.2                       # a real share of unseen ids on both sides
    biased = shares(popularity_buckets(ref, ref))
    assert biased[-1] == 0 and np.abs(biased - b).max() > 0.2


def test_a_popularity_shift_moves_rows_to_the_tail_and_unseen():
    rng = np.random.default_rng(1)
    ids = np.arange(5_000)
    ranking, ref = zipf_ids(rng, 8_000, ids), zipf_ids(rng, 4_000, ids)
    cur = zipf_ids(rng, 4_000, rng.permutation(ids))      # other ids are popular now
    a, b = shares(popularity_buckets(ranking, ref)), shares(popularity_buckets(ranking, cur))
    assert b[0] < a[0] / 3 and b[-1] > a[-1] + 0.2


def test_rare_and_reference_unseen_categories_are_pooled():
    ref = pd.Series(["a"] * 6 + ["b"] * 5 + ["c"] * 4)
    cur = pd.Series(["a", "b", "c", "d"])
    r, c = pool_rare(ref, cur, min_rows=5)
    assert r.value_counts().to_dict() == {"a": 6, "b": 5, RARE: 4}
    assert c.tolist() == ["a", "b", RARE, RARE]      # every category keeps >= 5 reference rows


def test_id_keys_of_bags_ignore_order_and_keep_empty_bags():
    frame = pd.DataFrame({"q": [[3, 1], [1, 3], [], None], "u": [5, 5, 7, 9]})
    assert id_keys(frame, "q", multi_hot=True).tolist() == ["1 3", "1 3", "", ""]
    assert id_keys(frame, "u", multi_hot=False).tolist() == [5, 5, 7, 9]



def test_sample_positions_are_seeded_bounded_disjoint_and_sorted():
    a = sample_positions(1_000, 700, 100, np.random.default_rng(3))
    b = sample_positions(1_000, 700, 100, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    picked, ranking, current = a
    assert len(picked) == 100 and len(ranking) == 900 and len(current) == 100
    assert np.union1d(picked, ranking).tolist() == list(range(1_000)) and not np.intersect1d(picked, ranking).size
    assert all((np.diff(x) > 0).all() for x in a)
    picked, ranking, current = sample_positions(10, 5, 100, np.random.default_rng(3))
    assert len(picked) == 5 and len(ranking) == 5 and current.tolist() == [0, 1, 2, 3, 4]  # half; all
    # a capped ranking: a random subset of the rest, the samples drawn as without the cap
    capped = sample_positions(1_000, 700, 100, np.random.default_rng(3), max_ranking_rows=50)
    assert np.array_equal(capped[0], a[0]) and np.array_equal(capped[2], a[2])
    assert len(capped[1]) == 50 and np.isin(capped[1], a[1]).all()
    with pytest.raises(ValueError, match="max_rows"):
        sample_positions(1_000, 700, 0, np.random.default_rng(3))
    with pytest.raises(ValueError, match="at least 2"):
        sample_positions(1, 700, 10, np.random.default_rng(3))


SPEC = FeatureSpec(dense=(DenseFeature("price", "log1p"),),
                   sparse=(SparseFeature("device", 64), SparseFeature("user", 10_000),
                           SparseFeature("day_of_week", 16), SparseFeature("query", 1_000, multi_hot=True)))


def window(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "price": rng.normal(3, 1, n).astype(np.float32),
        "device": rng.integers(0, 5, n),
        "user": rng.integers(0, 5_000, n),
        "day_of_week": rng.integers(0, 7, n),
        "query": [list(rng.integers(0, 50, rng.integers(1, 3))) for _ in range(n)],
        "purchased": (rng.random(n) < 0.1).astype(np.float32),
    })


def test_monitored_tables_sample_split_and_type_the_features():
    rng = np.random.default_rng(0)
    reference, current = window(rng, 3_000), window(rng, 5_000)
    ref, cur, cols, ref_rows, cur_rows = monitored_tables(
        reference, current, SPEC, max_rows=2_000, max_categories=100, exclude=("day_of_week",), rng=rng)
    assert len(ref) == len(ref_rows) == 1_500          # half the reference: the other half ranks ids
    assert len(cur) == len(cur_rows) == 2_000
    assert cols.numerical == ("price",) and cols.categorical == ("device",)
    assert cols.popularity == ("user", "query") and cols.excluded == ("day_of_week",)
    assert list(ref.columns) == ["price", "device", "user", "query", "purchased"]
    assert set(ref["user"]) | set(cur["query"]) <= {*BUCKETS, RARE}
    assert cur["price"].to_numpy() == pytest.approx(cur_rows["price"].to_numpy())
    with pytest.raises(ValueError, match="not features"):
        monitored_tables(reference, current, SPEC, max_rows=10, max_categories=100, exclude=("colour",), rng=rng)
    with pytest.raises(ValueError, match="current window has no rows"):
        monitored_tables(reference, current.iloc[:0], SPEC, max_rows=10, max_categories=100, exclude=(), rng=rng)


def test_labels_with_gaps_are_not_passed_on():
    rng = np.random.default_rng(0)
    reference, current = window(rng, 400), window(rng, 400)
    current.loc[3, "purchased"] = np.nan                 # labels not all arrived yet
    ref, cur, *_ = monitored_tables(reference, current, SPEC, max_rows=100, max_categories=100,
                                    exclude=(), rng=rng)
    assert "purchased" not in ref.columns and "purchased" not in cur.columns
    assert list(cur.columns) == ["price", "device", "user", "day_of_week", "query"]


def snapshot_dict(status_a: str = "FAIL") -> dict:
    def drift(col, score):
        return {"config": {"type": "evidently:metric_v2:ValueDrift", "column": col,
                           "method": "Jensen-Shannon distance", "threshold": 0.1}, "value": score}

    def test(col, status):
        return {"id": "drift", "status": status,
                "metric_config": {"params": {"type": "evidently:metric_v2:ValueDrift", "column": col}}}

    return {"metrics": [{"config": {"type": "evidently:metric_v2:DriftedColumnsCount"},
                         "value": {"count": 1.0, "share": 0.5}}, drift("a", 0.3), drift("b", float("nan"))],
            "tests": [test("a", status_a), test("b", "SUCCESS")]}


def test_column_drift_takes_the_verdict_from_evidentlys_tests():
    got = column_drift(snapshot_dict())
    assert got["a"] == {"method": "Jensen-Shannon distance", "score": 0.3, "threshold": 0.1, "drifted": True}
    assert got["b"]["drifted"] is False and got["b"]["score"] is None       # NaN becomes null in JSON
    assert column_drift(snapshot_dict("SUCCESS"))["a"]["drifted"] is False
    assert metric_value(snapshot_dict(), "DriftedColumnsCount") == {"count": 1.0, "share": 0.5}
    assert metric_value(snapshot_dict(), "RocAuc") is None
    no_tests = {**snapshot_dict(), "tests": []}
    with pytest.raises(ValueError, match="include_tests"):
        column_drift(no_tests)


@pytest.mark.parametrize("field, value", [("max_rows", 1), ("max_drift_share", 0.0), ("max_drift_share", 1.5),
                                          ("max_categories", 0), ("min_category_rows", 0), ("batch_size", 0),
                                          ("project", " ")])
def test_config_refuses_bad_values(field, value):
    from components.monitor import MonitorConfig

    with pytest.raises(ValueError, match=f"monitor.{field}"):
        MonitorConfig(**{field: value})


def test_cli_refuses_missing_paths_and_a_missing_dashboard_workspace(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["monitor", "--input", str(tmp_path)]) == 2
    assert "--html, --summary" in capsys.readouterr().err
    assert main(["monitor", "--dashboard", "--workspace", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["monitor", "--input", str(tmp_path), "--html", "h", "--summary", "s",
                 "--model", "m", "--registry", "r"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["monitor", "--input", str(tmp_path), "--html", str(tmp_path / "h"),
                 "--summary", str(tmp_path / "s"), "--params", str(tmp_path / "none.yaml")]) != 0


@pytest.mark.slow
def test_model_ready_windows_equal_the_features_steps_tables(tmp_path):
    """The in-memory windows (what the monitor tests and benchmark build) are the features
    step's model-ready tables, value for value, without its Feast point-in-time join."""
    from features.windows import model_ready_windows
    from components.features import FeaturesConfig, features
    from generator.config import GenerateConfig
    from generator.events import build_world, generate_chunk
    from contract.params import as_dict
    from contract.schema import COLUMNS
    from features.compute import StatsParams
    from features.transform import feature_spec

    gen = GenerateConfig(rows=3_000, users=300, items=150, days=10, seed=3, corrupt_fraction=0.0, chunk_rows=3_000)
    events = generate_chunk(gen, build_world(gen), 0)[0].astype(COLUMNS)
    for day, part in events.groupby(events["event_timestamp"].dt.strftime("%Y-%m-%d")):
        (tmp_path / "validated" / f"day={day}").mkdir(parents=True)
        part.reset_index(drop=True).to_parquet(tmp_path / "validated" / f"day={day}" / "part-0.parquet")
    cfg = FeaturesConfig(test_days=2, valid_days=2)
    features(cfg, tmp_path / "validated", tmp_path / "features", tmp_path / "model_input")
    stats = StatsParams(cfg.rate_prior, cfg.rate_prior_weight, cfg.days_since_cap)
    spec = feature_spec(as_dict(cfg.tables), stats, cfg.max_query_terms, cfg.default_position)
    ours = model_ready_windows(events, spec, stats, cfg.test_days, cfg.valid_days)
    for split, frame in ours.items():
        # the spec built here has no user history (the monitor does not read it): the step's
        # history columns are left out of the comparison
        step = pd.read_parquet(tmp_path / "model_input" / f"{split}.parquet")
        step = step.drop(columns=[c for c in step.columns if c.startswith("hist_")])
        step, frame = (f.sort_values("event_id", ignore_index=True) for f in (step, frame))
        assert list(step.columns) == list(frame.columns) and len(step) == len(frame) > 0
        for col in step.columns:
            if col == "query":
                assert [list(b) for b in step[col]] == [list(b) for b in frame[col]]
            elif col == "event_timestamp":
                assert (pd.to_datetime(step[col], utc=True) == pd.to_datetime(frame[col], utc=True)).all()
            else:
                pd.testing.assert_series_equal(step[col], frame[col], check_dtype=False, obj=f"{split}.{col}")
