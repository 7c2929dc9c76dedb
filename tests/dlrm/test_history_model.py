"""The history tower inside the DLRM: input plumbing (ModelInput, batches, streams, id
dropout), exact padding, training on planted data, the bundle."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from contract.spec import DenseFeature, FeatureSpec, HistoryColumn, HistorySpec, ModelInput, SparseFeature
from dlrm.bundle import load_model, predict, save_model
from dlrm.configs import EmbeddingConfig, HistoryConfig, ModelConfig, TrainConfig
from dlrm.data import EntityDrop, TensorData, drop_ids
from dlrm.metrics import auc
from dlrm.model import DLRM, history_inputs
from dlrm.train import train_model

ITEMS, USERS, CATS = 60, 400, 6
HIST = HistorySpec(length=8, columns=(HistoryColumn("hist_item", "item"), HistoryColumn("hist_cat", "category_l1"),
                                      HistoryColumn("hist_action"), HistoryColumn("hist_days")))
SPEC = FeatureSpec(dense=(DenseFeature("x"),),
                   sparse=(SparseFeature("user", USERS), SparseFeature("item", ITEMS),
                           SparseFeature("category_l1", CATS)),
                   extra={"sources": {"user": "user_id", "item": "item_id", "category_l1": "category_l1"}},
                   history=HIST)
TOWER = HistoryConfig(max_len=8, depth=1, heads=1, ff_mult=2, reversible=True, topk=4)


def _model_cfg(enabled: bool = True, backend: str = "robe") -> ModelConfig:
    return ModelConfig(embedding=EmbeddingConfig(backend=backend, dim=8, compression=10, block=4),
                       bottom_mlp=(8,), top_mlp=(16,), history=replace(TOWER, enabled=enabled))


def planted(n: int, seed: int) -> dict:
    """Rows whose label only the history explains: a candidate the user bought before (it is
    in their history as a purchase) is bought with probability 0.7, any other with 0.1. Users,
    items and the dense feature are pure noise."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, ITEMS, n)
    hist_item, hist_cat, hist_action, hist_days, rebuy = [], [], [], [], np.zeros(n, bool)
    for r in range(n):
        k = int(rng.integers(0, 9))
        events = rng.integers(0, ITEMS, k)
        action = (rng.random(k) < 0.5).astype(np.int64)
        if k and rng.random() < 0.4:       # the candidate was bought before
            j = int(rng.integers(0, k))
            events[j], action[j] = item[r], 1
        rebuy[r] = bool(((events == item[r]) & (action == 1)).any())
        hist_item.append(events)
        hist_cat.append(events % CATS)
        hist_action.append(action)
        hist_days.append(np.sort(rng.integers(1, 40, k)))
    label = (rng.random(n) < np.where(rebuy, 0.7, 0.1)).astype(np.float32)
    return {"x": rng.normal(size=n).astype(np.float32), "user": rng.integers(0, USERS, n), "item": item,
            "category_l1": item % CATS, "purchased": label, "hist_item": hist_item, "hist_cat": hist_cat,
            "hist_action": hist_action, "hist_days": hist_days}


def test_model_input_carries_the_history_and_rejects_bad_columns():
    cols = planted(20, 0)
    mi = ModelInput.from_columns(cols, SPEC)
    assert mi.has_history and mi.history_values.shape == (int(mi.history_offsets[-1]), 4)
    r = 3
    got = mi.history_values[mi.history_offsets[r]:mi.history_offsets[r + 1]]
    np.testing.assert_array_equal(got[:, 0], cols["hist_item"][r])
    np.testing.assert_array_equal(got[:, 3], cols["hist_days"][r])
    assert not ModelInput.from_columns(cols, SPEC, history=False).has_history
    part = mi.slice(5, 9, 3)
    np.testing.assert_array_equal(part.history_values, mi.history_values[mi.history_offsets[5]:mi.history_offsets[9]])
    bad = dict(cols, hist_action=[np.zeros(len(h) + 1, np.int64) for h in cols["hist_item"]])
    with pytest.raises(ValueError, match="hist_action"):
        ModelInput.from_columns(bad, SPEC)
    bad = dict(cols, hist_item=[h + ITEMS for h in cols["hist_item"]])
    with pytest.raises(ValueError, match="hist_item"):
        ModelInput.from_columns(bad, SPEC)
    with pytest.raises(ValueError, match="lacks user history"):
        ModelInput.from_columns({k: v for k, v in cols.items() if k != "hist_days"}, SPEC, history=True)


def test_batches_gather_the_rows_histories():
    cols = planted(30, 1)
    data = TensorData(ModelInput.from_columns(cols, SPEC), 3)
    rows = torch.tensor([7, 2, 2, 29])
    b = data.batch(rows)
    for j, r in enumerate(rows.tolist()):
        got = b.history[b.history_offsets[j]:b.history_offsets[j + 1], 0].numpy()
        np.testing.assert_array_equal(got, cols["hist_item"][r])
    rb = data.range_batch(4, 9)
    np.testing.assert_array_equal(rb.history.numpy(), data.batch(torch.arange(4, 9)).history.numpy())


def test_id_dropout_of_the_user_empties_its_history_only():
    data = TensorData(ModelInput.from_columns(planted(64, 2), SPEC), 3)
    b = data.batch(torch.arange(64))
    torch.manual_seed(0)
    out = drop_ids(b, [EntityDrop(0, 5, history=True)], 3, 0.5)
    dropped = out.values[out.offsets[torch.arange(64) * 3]] == 5
    lens, before = out.history_offsets.diff(), b.history_offsets.diff()
    assert dropped.any() and (~dropped).any()
    assert (lens[dropped] == 0).all() and torch.equal(lens[~dropped], before[~dropped])
    keep = torch.repeat_interleave(~dropped, before)
    assert torch.equal(out.history, b.history[keep])
    cfg = TrainConfig(id_dropout=0.1)
    from dlrm.train import id_dropout_groups

    assert [(d.table, d.history) for d in id_dropout_groups(cfg, SPEC)] == [(0, True), (1, False)]


def test_padding_and_other_rows_leave_a_rows_score_unchanged():
    torch.manual_seed(0)
    model = DLRM(_model_cfg(), 1, SPEC.table_sizes, history=history_inputs(_model_cfg(), SPEC)).eval()
    cols = planted(12, 3)
    cols["hist_item"][0] = np.array([4, 9], np.int64)          # row 0 short, row 1 longer: padding in row 0
    for c in ("hist_cat", "hist_action", "hist_days"):
        cols[c][0] = np.asarray(cols[c][0][:2] if len(cols[c][0]) >= 2 else [1, 1], np.int64)
    cols["hist_item"][2] = np.zeros(0, np.int64)              # an empty history
    for c in ("hist_cat", "hist_action", "hist_days"):
        cols[c][2] = np.zeros(0, np.int64)
    mi = ModelInput.from_columns(cols, SPEC)
    whole = predict(model, mi)
    for r in (0, 2):
        alone = predict(model, mi.slice(r, r + 1, 3))
        np.testing.assert_allclose(alone, whole[r:r + 1], rtol=1e-6, atol=1e-7)
    other = dict(cols, hist_item=[h if i in (0, 2) else (h + 1) % ITEMS for i, h in enumerate(cols["hist_item"])])
    changed = predict(model, ModelInput.from_columns(other, SPEC))
    np.testing.assert_allclose(changed[[0, 2]], whole[[0, 2]], rtol=1e-6, atol=1e-7)
    assert not np.allclose(changed, whole)                    # the other rows did read their histories
    # shared histories: rows pointing at one history score as if each carried it
    v, o = mi.history_values, mi.history_offsets
    shared = predict(model, mi, histories=(v[o[1]:o[2]], np.array([0, o[2] - o[1]]), np.zeros(12, np.int64)))
    own = dict(cols, **{c: [cols[c][1]] * 12 for c in HIST.names})
    np.testing.assert_allclose(shared, predict(model, ModelInput.from_columns(own, SPEC)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="user history"):
        predict(model, ModelInput.from_columns(cols, SPEC, history=False))


@pytest.mark.slow
def test_the_tower_learns_what_only_the_history_holds():
    train, valid, test = (ModelInput.from_columns(planted(n, s), SPEC) for n, s in ((2500, 10), (500, 11), (1500, 12)))
    aucs = {}
    for enabled in (True, False):
        cfg = TrainConfig(model=_model_cfg(enabled), batch_size=128, epochs=3, eval_every=0,
                          eval_rows=0, progress=False, id_dropout=0.05,
                          optim=replace(TrainConfig().optim, dense_lr=0.01))
        result = train_model(cfg, SPEC, train, valid)
        assert (result.model.history is not None) == enabled
        aucs[enabled] = auc(test.labels, predict(result.model, test))
    # the history explains AUC ~0.8 here (4 epochs of 4000 rows reach 0.81); without it only noise is left
    assert aucs[True] > 0.7 and aucs[False] < 0.58, aucs


def test_bundle_round_trip_with_the_tower_and_an_old_bundle_without(tmp_path):
    torch.manual_seed(0)
    cfg = _model_cfg()
    model = DLRM(cfg, 1, SPEC.table_sizes, history=history_inputs(cfg, SPEC)).eval()
    mi = ModelInput.from_columns(planted(50, 4), SPEC)
    save_model(model, tmp_path / "m", spec=SPEC, config={})
    loaded, doc = load_model(tmp_path / "m")
    assert loaded.history is not None and doc["history"]["columns"] == list(HIST.names)
    assert doc["model"]["history"]["depth"] == TOWER.depth
    np.testing.assert_array_equal(predict(loaded, mi), predict(model, mi))
    # a bundle written before the tower existed: no "history" keys anywhere
    plain_cfg = replace(cfg, history=replace(TOWER, enabled=False))
    old = DLRM(plain_cfg, 1, SPEC.table_sizes).eval()
    save_model(old, tmp_path / "old", spec=SPEC, config={})
    path = tmp_path / "old" / "config.json"
    doc = json.loads(path.read_text())
    del doc["history"], doc["model"]["history"]
    path.write_text(json.dumps(doc))
    loaded, _ = load_model(tmp_path / "old")
    assert loaded.history is None and not loaded.config.history.enabled
    np.testing.assert_array_equal(predict(loaded, mi), predict(old, mi))   # ignores the history it is given


def test_history_inputs_follow_the_config_and_the_spec():
    hi = history_inputs(_model_cfg(), SPEC)
    assert (hi.item_table, hi.item_column, hi.action_column, hi.days_column) == (1, 0, 2, 3)
    assert hi.match == ((0, 1), (1, 2))                        # same item, same category
    assert history_inputs(_model_cfg(enabled=False), SPEC) is None
    assert history_inputs(_model_cfg(), replace(SPEC, history=None)) is None
    with pytest.raises(ValueError, match="item_feature"):
        history_inputs(replace(_model_cfg(), history=replace(TOWER, item_feature="nope")), SPEC)


def test_streamed_batches_carry_the_same_histories(tmp_path):
    from dlrm.stream import ModelInputStream

    cols = planted(300, 5)
    frame = pd.DataFrame({k: list(v) if k.startswith("hist_") else v for k, v in cols.items()})
    frame.to_parquet(tmp_path / "train.parquet", index=False)
    SPEC.save(tmp_path / "feature_spec.json")
    stream = ModelInputStream(tmp_path, SPEC, batch_size=64, read_rows=50, history=True)
    got = [b for b in stream]
    hist = torch.cat([b.history for b in got])
    offs = torch.cat([b.history_offsets.diff() for b in got])
    mi = ModelInput.from_columns(cols, SPEC)
    np.testing.assert_array_equal(hist.numpy(), mi.history_values)
    np.testing.assert_array_equal(offs.numpy(), np.diff(mi.history_offsets))
    assert all(b.history is None for b in ModelInputStream(tmp_path, SPEC, batch_size=64))


def test_scoring_encodes_each_distinct_history_once_with_the_same_scores(monkeypatch):
    from dlrm.history import unique_histories

    torch.manual_seed(0)
    cfg = _model_cfg()
    model = DLRM(cfg, 1, SPEC.table_sizes, history=history_inputs(cfg, SPEC)).eval()
    cols = planted(10, 4)
    for r, src in ((3, 1), (5, 1), (7, 2), (9, 6)):           # rows sharing a history, candidates of their own
        for c in HIST.names:
            cols[c][r] = cols[c][src].copy()
    cols["hist_action"][9] = 1 - cols["hist_action"][9]        # the same items, other actions: a history of its own
    mi = ModelInput.from_columns(cols, SPEC)
    v, o = torch.from_numpy(mi.history_values), torch.from_numpy(mi.history_offsets)
    uv, uo, rows = unique_histories(v, o)
    want = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    for r, src in ((3, 1), (5, 1), (7, 2)):
        want[r] = want[src]
    assert torch.equal(rows, torch.tensor(want).unique(return_inverse=True)[1])
    for b in range(10):                                        # each row reads a history equal to its own
        assert torch.equal(uv[uo[rows[b]]:uo[rows[b] + 1]], v[o[b]:o[b + 1]])
    assert unique_histories(v[:o[3]], o[:4]) is None              # rows 0-2: nothing shared

    widths = []
    encode = model.history.encode
    monkeypatch.setattr(model.history, "encode", lambda h, *a, **k: widths.append(h.shape[0]) or encode(h, *a, **k))
    whole = predict(model, mi)
    assert widths == [7]                                       # 10 rows, 7 distinct histories
    alone = np.concatenate([predict(model, mi.slice(r, r + 1, 3)) for r in range(10)])
    np.testing.assert_allclose(whole, alone, rtol=1e-5, atol=1e-6)
    widths.clear()
    model.train()
    with torch.no_grad():                                      # training encodes every row's own history
        model(*TensorData(mi, 3).range_batch(0, 10).model_args())
    assert widths == [10]
