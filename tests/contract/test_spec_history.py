"""FeatureSpec.history: saved and loaded with the spec; specs without it still load."""

from __future__ import annotations

import json

from contract.spec import DenseFeature, FeatureSpec, HistoryColumn, HistorySpec, SparseFeature

HISTORY = HistorySpec(length=20, columns=(HistoryColumn("hist_item", "item"), HistoryColumn("hist_days")))
SPEC = FeatureSpec(dense=(DenseFeature("price", "log1p"),), sparse=(SparseFeature("item", 10),), history=HISTORY)


def test_history_round_trips_with_the_spec(tmp_path):
    SPEC.save(tmp_path / "spec.json")
    loaded = FeatureSpec.load(tmp_path / "spec.json")
    assert loaded == SPEC and loaded.history.names == ["hist_item", "hist_days"]
    assert loaded.history.columns[0].ids_of == "item" and loaded.history.columns[1].ids_of is None


def test_a_spec_written_before_histories_loads_without_one(tmp_path):
    d = json.loads(SPEC.to_json())
    del d["history"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = FeatureSpec.load(tmp_path / "old.json")
    assert old.history is None and old.dense == SPEC.dense
    old.check_compatible(SPEC)   # a model without histories reads data that has them
