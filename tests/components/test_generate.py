import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pipelines.cli import main
from components.generate import CORRUPTIONS, GenerateConfig, generate
from generator.events import TERMS, PurchaseHistory, build_world, simulate_chunk, warm_history
from generator.world import REPEAT_LAG
from contract.schema import COLUMNS, COUNTRIES, DEVICES
from features.criteo import COLUMNS as CRITEO_COLUMNS, read_criteo


def _read(raw, truth):
    return pd.read_parquet(raw), pd.read_parquet(truth)


def test_same_seed_same_data_other_seed_other_data(tmp_path, make_config):
    cfg = make_config(rows=1500)
    generate(cfg, tmp_path / "a", tmp_path / "ta")
    generate(cfg, tmp_path / "b", tmp_path / "tb")
    generate(make_config(rows=1500, seed=8), tmp_path / "c", tmp_path / "tc")
    a, ta = _read(tmp_path / "a", tmp_path / "ta")
    b, tb = _read(tmp_path / "b", tmp_path / "tb")
    c, tc = _read(tmp_path / "c", tmp_path / "tc")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(ta, tb)
    assert not np.allclose(ta["purchase_prob"].to_numpy()[:100], tc["purchase_prob"].to_numpy()[:100])
    assert set(a["event_id"].dropna()).isdisjoint(set(c["event_id"].dropna()))


def test_layout_schema_and_truth(chain):
    files = sorted(p.name for p in chain.raw.iterdir())
    assert files == ["_generate.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    raw, truth = _read(chain.raw, chain.truth)
    assert list(raw.columns) == list(COLUMNS)
    assert len(raw) == chain.gen.rows
    assert str(truth["event_id"].dtype) == "string" and truth["purchase_prob"].dtype == np.float64
    assert truth["event_id"].is_unique
    assert truth["purchase_prob"].between(0, 1).all()
    # a realistic few-percent purchase rate near base_rate (repeat purchases add a little),
    # and labels drawn from the planted probabilities
    base = chain.gen.base_rate
    assert 0.5 * base < truth["purchase_prob"].mean() < 1.6 * base
    labels = raw["purchased"][raw["purchased"].isin([0, 1])]
    assert 0.5 * base < labels.mean() < 1.6 * base
    meta = json.loads((chain.raw / "_generate.json").read_text())
    assert meta["rows"] == chain.gen.rows and meta["params"]["seed"] == chain.gen.seed


def test_clean_rows_are_valid_and_inside_the_window(chain):
    raw, truth = _read(chain.raw, chain.truth)
    ts = pd.to_datetime(raw["event_timestamp"], utc=True, errors="coerce", format="ISO8601")
    start, end = chain.gen.window
    ok = (raw[list(COLUMNS)].drop(columns="query").notna().all(axis=1) & ts.between(start, end, inclusive="left")
          & (raw["price"] >= 0) & (raw["position"] >= 1) & raw["purchased"].isin([0, 1])
          & raw["device"].isin(DEVICES) & raw["country"].isin(COUNTRIES))
    n_bad = sum(chain.generated.corrupted.values())
    # every row but the corrupted ones is valid; duplicates are valid-looking copies
    assert (~ok).sum() == n_bad - chain.generated.corrupted["duplicate_event_id"]
    assert raw.loc[ok, "event_id"].duplicated().sum() == chain.generated.corrupted["duplicate_event_id"]
    # truth covers every distinct id of the data
    assert set(raw["event_id"].dropna()) <= set(truth["event_id"])


def test_every_corruption_kind_is_present(chain):
    counts = chain.generated.corrupted
    assert set(counts) == set(CORRUPTIONS)
    assert all(v >= 3 for v in counts.values()), counts
    assert sum(counts.values()) == round(chain.gen.corrupt_fraction * chain.gen.chunk_rows) * 3


def test_planted_signal_is_learnable_but_not_by_a_simple_model(tmp_path, make_config):
    cfg = make_config(rows=24_000, users=2000, items=1000, days=14, chunk_rows=24_000, corrupt_fraction=0.0)
    generate(cfg, tmp_path / "raw", tmp_path / "truth")
    raw, truth = _read(tmp_path / "raw", tmp_path / "truth")
    df = raw.merge(truth, on="event_id", validate="one_to_one")
    ts = pd.to_datetime(df["event_timestamp"], utc=True)
    onehot = pd.get_dummies(pd.DataFrame({
        "hour": ts.dt.hour.astype(str), "weekday": ts.dt.weekday.astype(str), "device": df["device"],
        "country": df["country"], "l1": df["category_l1"], "l2": df["category_l2"], "l3": df["category_l3"],
    }), dtype=float)
    x = pd.concat([np.log1p(df["price"]), np.log(df["position"].astype(float)),
                   (df["query"] != "").astype(float), onehot], axis=1).to_numpy()
    y = df["purchased"].astype(int).to_numpy()
    half = len(y) // 2
    simple = LogisticRegression(max_iter=2000).fit(x[:half], y[:half])
    simple_auc = roc_auc_score(y[half:], simple.predict_proba(x[half:])[:, 1])
    oracle_auc = roc_auc_score(y[half:], df["purchase_prob"].to_numpy()[half:])
    assert oracle_auc > 0.8
    assert simple_auc > 0.6            # the raw columns carry some signal ...
    assert oracle_auc - simple_auc > 0.06  # ... but most needs ids, history and interactions


def test_drift_shifts_prices_popularity_and_category_mix(tmp_path, make_config):
    frames = {}
    for drift in (0.0, 1.0):
        cfg = make_config(rows=6000, days=10, drift_days=4, drift=drift, corrupt_fraction=0.0, chunk_rows=6000)
        generate(cfg, tmp_path / f"r{drift}", tmp_path / f"t{drift}")
        df = pd.read_parquet(tmp_path / f"r{drift}")
        df["late"] = pd.to_datetime(df["event_timestamp"], utc=True) >= cfg.window[1] - pd.Timedelta(days=4)
        frames[drift] = df
    base, drifted = frames[0.0], frames[1.0]
    early_ratio = drifted.loc[~drifted.late, "price"].median() / base.loc[~base.late, "price"].median()
    late_ratio = drifted.loc[drifted.late, "price"].mean() / base.loc[base.late, "price"].mean()
    assert 0.85 < early_ratio < 1.15
    assert late_ratio > 1.3

    def mix(df, col):
        return df.loc[df.late, col].value_counts(normalize=True)

    l1 = pd.concat([mix(base, "category_l1"), mix(drifted, "category_l1")], axis=1).fillna(0)
    assert 0.5 * (l1.iloc[:, 0] - l1.iloc[:, 1]).abs().sum() > 0.15  # total variation distance
    top_base = set(base.loc[base.late, "item_id"].value_counts().index[:20])
    top_drift = set(drifted.loc[drifted.late, "item_id"].value_counts().index[:20])
    assert len(top_base & top_drift) < 12


def test_csv_and_criteo_formats(tmp_path, make_config):
    cfg = make_config(rows=1200, chunk_rows=600)
    generate(cfg, tmp_path / "pq", tmp_path / "tpq")
    generate(GenerateConfig(**{**cfg.__dict__, "format": "csv"}), tmp_path / "csv", tmp_path / "tcsv")
    csv = pd.concat([pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in sorted((tmp_path / "csv").glob("*.csv"))])
    pq = pd.read_parquet(tmp_path / "pq")
    assert list(csv.columns) == list(COLUMNS) and len(csv) == len(pq)
    assert (csv["event_id"].fillna("") == pq["event_id"].fillna("").to_numpy()).all()

    res = generate(GenerateConfig(**{**cfg.__dict__, "format": "criteo"}), tmp_path / "cr", tmp_path / "tcr")
    assert [p.suffix for p in res.files] == [".tsv", ".tsv"]
    first = (tmp_path / "cr" / "part-00000.tsv").read_text().splitlines()[0].split("\t")
    assert len(first) == 40 and first[0] in ("0", "1")
    df = pd.concat([read_criteo(p) for p in res.files], ignore_index=True)
    assert list(df.columns) == list(CRITEO_COLUMNS) and len(df) == cfg.rows
    assert df["label"].isin([0, 1]).all() and 0.005 < df["label"].mean() < 0.08
    assert df["C1"].str.fullmatch(r"[0-9a-f]{8}").all()
    truth = pd.read_parquet(tmp_path / "tcr")
    assert len(truth) == cfg.rows  # one planted probability per Criteo row, in row order
    assert roc_auc_score(df["label"], truth["purchase_prob"]) > 0.7


@pytest.mark.parametrize("override, word", [("generate.drift=2", "generate.drift"),
                                             ("generate.rows=0", "generate.rows"),
                                             ("generate.start_date=someday", "start_date")])
def test_bad_parameters_are_one_line_errors(tmp_path, capsys, override, word):
    (tmp_path / "params.yaml").write_text("generate:\n  rows: 100\n")
    code = main(["generate", "--out", str(tmp_path / "raw"), "--truth", str(tmp_path / "truth"),
                 "--params", str(tmp_path / "params.yaml"), "-S", override])
    err = capsys.readouterr().err
    assert code != 0 and word in err and "Traceback" not in err
    assert not (tmp_path / "raw").exists()


def test_cli_writes_data_and_truth(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("generate:\n  rows: 800\n  users: 50\n  items: 40\n  chunk_rows: 300\n")
    code = main(["generate", "--out", str(tmp_path / "raw"), "--truth", str(tmp_path / "truth"),
                 "--params", str(params), "-S", "generate.seed=3"])
    assert code == 0
    assert len(pd.read_parquet(tmp_path / "raw")) == 800
    assert len(list((tmp_path / "truth").glob("part-*.parquet"))) == 3
    assert "800 rows" in capsys.readouterr().err


def _simulate(cfg, warm=False):
    """All chunks of ``cfg`` in memory: (offers, terms, labels) concatenated in time order,
    from an empty purchase history or (``warm``) the one generate starts from."""
    world = build_world(cfg)
    history = warm_history(cfg, world) if warm else PurchaseHistory(cfg.items)
    draws = [simulate_chunk(cfg, world, c, history) for c in range(-(-cfg.rows // cfg.chunk_rows))]
    cat = lambda parts: np.concatenate(parts)  # noqa: E731
    ev = {k: cat([d.ev[k] for d in draws]) for k in draws[0].ev}
    terms = {k: cat([d.terms[k] for d in draws]) for k in TERMS}
    return world, ev, terms, cat([d.label for d in draws]), cat([d.prob for d in draws])


def test_every_planted_term_carries_signal_and_the_logit_is_their_sum(make_config):
    cfg = make_config(rows=30_000, users=1500, items=600, days=35, chunk_rows=10_000, corrupt_fraction=0.0)
    world, ev, terms, y, prob = _simulate(cfg)
    z = sum(terms.values())
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-(world.intercept + z))))
    oracle = roc_auc_score(y, z)
    assert oracle > 0.85
    for name in ("category_taste", "item_taste", "user_taste", "query_match"):
        # the oracle on the same rows without the term: the id-only terms are worth > 0.01 each
        assert oracle - roc_auc_score(y, z - terms[name]) > 0.01, name
    for name in TERMS:
        assert oracle - roc_auc_score(y, z - terms[name]) > 0, name
    off = make_config(rows=3000, users=300, items=200, days=35, item_taste=0.0, user_taste=0.0, replenish=0.0)
    _, _, off_terms, _, _ = _simulate(off)
    assert not off_terms["item_taste"].any() and not off_terms["user_taste"].any() and not off_terms["repeat"].any()


def test_chunks_are_contiguous_in_time_and_repeat_purchases_span_them(make_config):
    cfg = make_config(rows=30_000, users=800, items=300, days=35, chunk_rows=5_000, corrupt_fraction=0.0)
    world, ev, terms, y, prob = _simulate(cfg)
    offset = ev["day"] * 86_400 + ev["hour"] * 3_600 + ev["second"]
    chunks = np.arange(len(y)) // cfg.chunk_rows
    for c in range(chunks.max() + 1):
        assert (np.diff(offset[chunks == c]) >= 0).all()  # sorted within a chunk
    assert (np.diff(ev["day"]) >= 0).all()  # and chunks follow each other day by day
    # the lag of each offer is the days since the user last bought that item, from the labels
    key = ev["user"].astype(np.int64) * cfg.items + ev["item"]
    last: dict[int, int] = {}
    lag = np.full(len(y), np.inf)
    # a day split between two chunks is simulated in two steps (the second sees the first's buys)
    day_starts = np.flatnonzero(np.r_[True, (ev["day"][1:] != ev["day"][:-1]) | (chunks[1:] != chunks[:-1]), True])
    for a, b in zip(day_starts[:-1], day_starts[1:]):
        for r in range(a, b):
            if int(key[r]) in last:
                lag[r] = ev["day"][r] - last[int(key[r])]
        for r in range(a, b):
            if y[r]:
                last[int(key[r])] = int(ev["day"][r])
    np.testing.assert_array_equal(lag, ev["lag"])
    in_lag = (lag >= REPEAT_LAG[0]) & (lag <= REPEAT_LAG[1])
    assert in_lag.sum() > 100
    first_chunk_buys = {int(k) for k in key[:cfg.chunk_rows][y[:cfg.chunk_rows] == 1]}
    assert any(int(k) in first_chunk_buys for k in key[cfg.chunk_rows:][in_lag[cfg.chunk_rows:]])
    # consumables bought 20-60 days ago sell better again, durables worse
    l1 = world.leaf_l1[world.item_leaf[ev["item"]]]
    assert (terms["repeat"][in_lag] != 0).any() and not terms["repeat"][~in_lag].any()
    grocery = list(world.l1_replenish).index(max(world.l1_replenish))
    assert y[in_lag & (l1 == grocery)].mean() > 2 * y[~np.isfinite(lag) & (l1 == grocery)].mean()
    # generate starts from the purchases of the 60 days before: repeats from the first day on
    _, warm_ev, _, _, _ = _simulate(cfg, warm=True)
    first_week = warm_ev["day"] < 7
    warm_lag = warm_ev["lag"][first_week]
    assert ((warm_lag >= REPEAT_LAG[0]) & (warm_lag <= REPEAT_LAG[1])).mean() > 0.01
    cold = lag[ev["day"] < 7]  # from an empty history no purchase is 20 days old in week one
    assert not ((cold >= REPEAT_LAG[0]) & (cold <= REPEAT_LAG[1])).any()


def test_activity_per_user_is_heavy_tailed(make_config):
    cfg = make_config(rows=40_000, users=4000, items=500, chunk_rows=40_000, corrupt_fraction=0.0)
    _, ev, _, _, _ = _simulate(cfg)
    per_user = np.bincount(ev["user"], minlength=cfg.users)
    per_user = per_user[per_user > 0]
    assert per_user.max() > 50 * np.median(per_user)  # heavy users: hundreds of offers
    assert np.sort(per_user)[::-1][: len(per_user) // 100].sum() > 0.1 * per_user.sum()


@pytest.mark.parametrize("name", ["item_taste", "user_taste", "replenish", "user_zipf"])
def test_planted_weights_out_of_range_are_refused(name):
    with pytest.raises(ValueError, match=f"generate.{name}"):
        GenerateConfig(**{name: -1.0})
