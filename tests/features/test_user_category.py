"""User x category features: the engine's pick for model-ready rows equals the transform's
pick from the view's lists (what serving does), and the values carry the user's history."""

from __future__ import annotations

import numpy as np
import pandas as pd

from contract.spec import FeatureSpec
from features.sql import UCAT_LEVELS, UCAT_ROW_COLUMNS
from features.transform import user_category_values


def test_model_ready_rows_hold_the_entry_of_their_items_category(built):
    spec = FeatureSpec.load(built.model_input / "feature_spec.json")
    offline = built.repo / "store" / "offline"
    lists = pd.read_parquet(offline / "user_category_stats.parquet").set_index(["user_id", "event_timestamp"])
    attrs = pd.read_parquet(offline / "item_attributes.parquet").set_index(["item_id", "event_timestamp"])
    rows = pd.read_parquet(built.model_input / "train.parquet").sample(n=300, random_state=0)
    day = pd.to_datetime(rows["event_timestamp"], utc=True).dt.floor("D")
    columns: dict[str, list] = {c: [] for c in lists.columns}
    columns.update({f"item_category_{lv}": [] for lv in UCAT_LEVELS})
    for user, item, d in zip(rows["user_id"], rows["item_id"], day):
        for c in lists.columns:
            columns[c].append(lists.at[(user, d), c])
        for lv in UCAT_LEVELS:
            columns[f"item_category_{lv}"].append(attrs.at[(item, d), f"item_category_{lv}"])
    picked = user_category_values(columns, len(rows))
    assert sorted(picked) == sorted(UCAT_ROW_COLUMNS)
    fill, transform = spec.extra["fill"], {f.name: f.transform for f in spec.dense}
    for name in UCAT_ROW_COLUMNS:
        raw = np.array([fill[name] if v is None else v for v in picked[name]], dtype=np.float64)
        want = np.log1p(raw) if transform[name] == "log1p" else raw
        np.testing.assert_allclose(rows[name].to_numpy(np.float64), want, rtol=1e-6, err_msg=name)
    # most offers come from categories the user browsed before: the features are not all fill
    assert (rows["ucat_l1_offers_30d"] > 0).mean() > 0.3
    assert (rows["ucat_l2_offers_30d"] > 0).mean() > 0.1


def test_an_unlisted_category_or_an_unknown_user_reads_as_missing():
    columns = {
        "ucat_l1_keys": [["a", "c"], ["a", "c"], None, ["a"]],
        "item_category_l1": ["c", "b", "a", None],
        **{f"ucat_l1_{st}_list": [[1, 2], [1, 2], None, [5]]
           for st in ("offers_7d", "purchases_7d", "offers_30d", "purchases_30d", "purchase_rate_30d")},
    }
    got = user_category_values(columns, 4)
    assert sorted(got) == [n for n in sorted(UCAT_ROW_COLUMNS) if n.startswith("ucat_l1_")]
    assert got["ucat_l1_offers_30d"] == [2, None, None, None]
    assert user_category_values({"user_offers_7d": [1]}, 1) == {}
