"""Users and items the online store does not know are scored as the model's unseen id
when the bundle was trained with id dropout (and as their own hashed id otherwise)."""

from __future__ import annotations

import pytest

from contract.hashing import UNSEEN
from serving.ranker import unseen_sources


@pytest.mark.parametrize("reader", ["lean", "feast"])
def test_ids_the_store_does_not_know_read_as_unseen(site, reader):
    from features.online import OnlineFeatures

    online = OnlineFeatures(site.repo, site.spec, reader=reader)
    user = str(site.events["user_id"].iloc[0])
    item = str(site.events["item_id"].iloc[0])
    cols = online.columns(user, [item, "zzz-new-item"], {"device": "mobile"}, unseen=("user_id", "item_id"))
    assert cols["item_id"] == [item, UNSEEN] and cols["user_id"] == [user, user]
    cols = online.columns("new-user", [item], unseen=("user_id", "item_id"))
    assert cols["user_id"] == [UNSEEN] and cols["item_id"] == [item]
    assert online.columns("new-user", [item])["user_id"] == ["new-user"]   # not asked: unchanged
    with pytest.raises(ValueError, match="not the join key"):
        online.columns(user, [item], unseen=("query",))


def test_only_a_bundle_trained_with_id_dropout_maps_unknown_ids(site):
    assert {"user", "item"} <= {f.name for f in site.spec.sparse}
    assert unseen_sources({"config": {"id_dropout": 0.0}}, site.spec) == []
    assert unseen_sources({}, site.spec) == []
    assert unseen_sources({"config": {"id_dropout": 0.05, "id_dropout_features": ["user", "item", "C1"]}},
                          site.spec) == ["user_id", "item_id"]
