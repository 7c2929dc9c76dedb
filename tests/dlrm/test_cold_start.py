"""Id dropout: the unseen id learns the average entity, so an unknown item scores near the prior."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from contract.hashing import UNSEEN, category_id
from contract.spec import DenseFeature, FeatureSpec, ModelInput, SparseFeature
from dlrm import predict
from dlrm.data import Batch, EntityDrop, drop_ids
from dlrm.synthetic import PLANTED_SPEC, planted_frame
from dlrm.train import id_dropout_groups, train_model
from tests.dlrm.test_train import small_cfg


def _wide_spec():
    """The planted spec with an item table of which only ids 0..119 occur, and whose
    unseen id is none of them."""
    size = next(s for s in range(1000, 2000) if category_id("item", UNSEEN, s) >= 120)
    sparse = tuple(replace(f, table_size=size) if f.name == "item" else f for f in PLANTED_SPEC.sparse)
    return replace(PLANTED_SPEC, sparse=sparse), category_id("item", UNSEEN, size)


def test_drop_ids_replaces_about_p_of_the_entities_with_their_features():
    torch.manual_seed(0)
    B, T = 4000, 3
    values = torch.arange(B * T, dtype=torch.int64)
    dense = torch.ones(B, 2)
    batch = Batch(dense, values, torch.arange(B * T + 1), torch.zeros(B))
    out = drop_ids(batch, [EntityDrop(1, -7, sparse=((2, -9),), dense=((0, 0.5),))], T, 0.1)
    grid = out.values.view(B, T)
    dropped = grid[:, 1] == -7
    assert 0.08 < dropped.float().mean().item() < 0.12
    # the dropped rows' entity features read as an unknown entity's; nothing else changes
    assert torch.equal(grid[:, 2] == -9, dropped) and torch.equal(out.dense[:, 0] == 0.5, dropped)
    assert torch.equal(grid[:, 0], values.view(B, T)[:, 0]) and bool((out.dense[:, 1] == 1).all())
    assert torch.equal(batch.values, values) and bool((batch.dense == 1).all())   # the input is not modified
    assert drop_ids(batch, [EntityDrop(1, -7)], T, 0.0) is batch


def test_dropout_features_are_checked():
    with pytest.raises(ValueError, match="multi-hot"):
        id_dropout_groups(small_cfg(id_dropout=0.1, id_dropout_features=["query"]), PLANTED_SPEC)
    with pytest.raises(ValueError, match="train.id_dropout"):
        id_dropout_groups(small_cfg(id_dropout=1.5), PLANTED_SPEC)
    drops = id_dropout_groups(small_cfg(id_dropout=0.1, id_dropout_features=["user", "item", "C1"]), PLANTED_SPEC)
    assert [d.table for d in drops] == [0, 1]   # features the spec lacks are skipped


def test_an_entity_drops_the_features_its_view_holds():
    """Features whose source column is named ``item_*`` belong to the item; the missing
    value's id and the transformed fill are what the server computes for an unknown item."""
    import math

    spec = FeatureSpec(
        dense=(DenseFeature("item_offers_7d", "log1p"), DenseFeature("user_offers_7d", "log1p"),
               DenseFeature("item_rate", "identity"), DenseFeature("price", "log1p")),
        sparse=(SparseFeature("user", 50), SparseFeature("item", 60), SparseFeature("brand", 7),
                SparseFeature("device", 4), SparseFeature("query", 9, multi_hot=True)),
        extra={"sources": {"user": "user_id", "item": "item_id", "brand": "item_brand", "device": "device",
                           "query": "query"},
               "fill": {"item_offers_7d": 3.0, "user_offers_7d": 0.0, "item_rate": 0.03, "price": 0.0},
               "missing_token": "<missing>"})
    user, item = id_dropout_groups(small_cfg(id_dropout=0.1, id_dropout_features=["user", "item"]), spec)
    assert (user.table, user.sparse, user.dense) == (0, (), ((1, 0.0),))
    assert item.table == 1 and item.unseen == category_id("item", UNSEEN, 60)
    assert item.sparse == ((2, category_id("brand", "<missing>", 7)),)
    assert item.dense == ((0, pytest.approx(math.log1p(3.0))), (2, 0.03))


def _unseen_item_scores(dropout: float) -> tuple[np.ndarray, float, float]:
    spec, unseen = _wide_spec()
    train_f, valid_f = planted_frame(6000, 1), planted_frame(1500, 2)
    cfg = small_cfg(epochs=3, id_dropout=dropout, id_dropout_features=["item"])
    result = train_model(cfg, spec, ModelInput.from_frame(train_f, spec), ModelInput.from_frame(valid_f, spec))
    base = float(train_f["purchased"].mean())
    as_unseen = predict(result.model, ModelInput.from_frame(valid_f.assign(item=unseen), spec))
    as_known = predict(result.model, ModelInput.from_frame(valid_f, spec))
    return as_unseen, base, float(as_known.mean())


def test_with_id_dropout_an_unknown_item_scores_near_the_prior():
    torch.manual_seed(0)
    unseen, base, known_mean = _unseen_item_scores(0.1)
    # every valid row with its item replaced by the unseen id: on average the prior
    assert abs(unseen.mean() - base) < 0.25 * base, (unseen.mean(), base, known_mean)
    torch.manual_seed(0)
    untrained, _, _ = _unseen_item_scores(0.0)   # the same id never trained: whatever its init gives
    # (measured: 0.42 with dropout, 0.60 without, prior 0.37)
    assert abs(unseen.mean() - base) < 0.5 * abs(untrained.mean() - base)
