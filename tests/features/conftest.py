"""Fixtures of the feature tests: small seeded transactions in the canonical schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contract.schema import COLUMNS, COUNTRIES, DEVICES

L1 = ("beauty", "garden", "books", "toys")
TERMS = ("shampoo", "men", "red", "kids", "gift", "organic", "sale", "large")


def make_events(rows: int = 3000, users: int = 60, items: int = 40, days: int = 14,
                start: str = "2026-10-01", seed: int = 0) -> pd.DataFrame:
    """Transactions in the canonical schema with the canonical dtypes, sorted by time."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, items, rows)
    l1 = np.array(L1)[item % len(L1)]
    l2 = np.char.add(l1, np.char.add(">", (item % 7).astype(str)))
    l3 = np.char.add(l2, np.char.add(">", (item % 11).astype(str)))
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(rng.uniform(0, days * 86400, rows), unit="s")
    n_terms = rng.integers(0, 4, rows)
    query = [" ".join(rng.choice(TERMS, k)) for k in n_terms]
    df = pd.DataFrame({
        "event_id": [f"e{i:06d}" for i in range(rows)],
        "event_timestamp": ts,
        "user_id": [f"u{u}" for u in rng.integers(0, users, rows)],
        "item_id": [f"i{i}" for i in item],
        "query": query,
        "category_l1": l1,
        "category_l2": l2,
        "category_l3": l3,
        "brand": [f"b{i % 9}" for i in item],
        "price": np.round(5 + (item * 3.7) % 120 + rng.normal(0, 1, rows).clip(-2, 2), 2),
        "position": rng.integers(1, 40, rows),
        "device": rng.choice(DEVICES, rows),
        "country": rng.choice(COUNTRIES, rows),
        "purchased": (rng.random(rows) < 0.08 + 0.1 * (item % 3 == 0)).astype(int),
    })
    # every tenth offer is shown on the same page as the one before: same user, same instant
    page = np.arange(1, rows, 10)
    df.loc[page, ["user_id", "event_timestamp"]] = df.loc[page - 1, ["user_id", "event_timestamp"]].to_numpy()
    df = df.astype(COLUMNS)
    return df.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def write_validated(events: pd.DataFrame, root) -> None:
    """Writes ``events`` as data/validated does: Parquet partitioned by day=YYYY-MM-DD."""
    day = events["event_timestamp"].dt.strftime("%Y-%m-%d")
    for d, part in events.groupby(day, sort=True):
        out = root / f"day={d}"
        out.mkdir(parents=True, exist_ok=True)
        part.reset_index(drop=True).to_parquet(out / "part-0.parquet", index=False)


@pytest.fixture(scope="session")
def events() -> pd.DataFrame:
    return make_events()


@pytest.fixture(scope="session")
def built(tmp_path_factory, events):
    """One run of the features step on ``events``, shared by the tests that read its outputs.

    Returns a namespace with ``validated``, ``repo``, ``model_input`` (paths), ``result``
    and ``cfg``.
    """
    from types import SimpleNamespace

    from components.features import FeaturesConfig, features

    root = tmp_path_factory.mktemp("features_step")
    validated = root / "validated"
    write_validated(events, validated)
    cfg = FeaturesConfig(test_days=2, valid_days=2)
    result = features(cfg, validated, root / "features", root / "model_input")
    return SimpleNamespace(validated=validated, repo=root / "features", model_input=root / "model_input",
                           result=result, cfg=cfg)
