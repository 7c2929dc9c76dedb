"""The ranker of a model with the history tower: the user's history comes from the online
store, is encoded once per request and scores every candidate; an unknown user has none."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tower_ranker(site, tower_model):
    from features.online import OnlineFeatures
    from serving.ranker import Ranker

    model = tower_model(heads=1)
    online = OnlineFeatures(site.repo, site.spec, reader="lean", max_age_s=0)
    return Ranker(model, site.spec, online)


def _offline_scores(ranker, user, items, history):
    """The candidates' scores with the history repeated on every row, built by the transform."""
    from contract.spec import ModelInput
    from dlrm.bundle import predict
    from features.transform import model_columns

    cols = ranker.features.columns(user, items, {"hour": 10})
    cols.update({name: [values] * len(items) for name, values in history.items()})
    inputs = ModelInput.from_columns(model_columns(cols, len(items), ranker.spec), ranker.spec, history=True)
    return predict(ranker.model, inputs)


def test_ranks_with_the_users_history_from_the_online_store(site, tower_ranker):
    from serving.requests import ScoreRequest

    items = sorted(site.events["item_id"].unique())[:12]
    users = site.events["user_id"].value_counts().index[:3]
    for user in users:
        history = tower_ranker.features.history(user)
        assert len(history["hist_item"]) > 0
        got = tower_ranker.scores(ScoreRequest(user, tuple(items), {"hour": 10}))
        np.testing.assert_allclose(got, _offline_scores(tower_ranker, user, items, history), rtol=1e-5, atol=1e-6)
        empty = {name: [] for name in history}
        assert not np.allclose(got, _offline_scores(tower_ranker, user, items, empty))   # the history counts
    # batched requests of several users score as one by one
    requests = [ScoreRequest(u, tuple(items[:5]), {"hour": 10}) for u in users]
    for r, s in zip(requests, tower_ranker.score_many(requests)):
        np.testing.assert_allclose(s, tower_ranker.scores(r), rtol=1e-5, atol=1e-6)


def test_an_unknown_user_is_ranked_with_an_empty_history(site, tower_ranker):
    from serving.requests import ScoreRequest

    items = tuple(sorted(site.events["item_id"].unique())[:6])
    history = tower_ranker.features.history("nobody-at-all")
    assert all(len(v) == 0 for v in history.values())
    got = tower_ranker.scores(ScoreRequest("nobody-at-all", items, {"hour": 10}))
    np.testing.assert_allclose(got, _offline_scores(tower_ranker, "nobody-at-all", list(items), history),
                               rtol=1e-5, atol=1e-6)
    ranked, scores = tower_ranker.rank(ScoreRequest("nobody-at-all", items, {"hour": 10}))
    assert sorted(ranked) == sorted(items) and scores == sorted(scores, reverse=True)


def test_histories_are_the_stores_hashed_by_the_transform(site, tower_ranker):
    from features.transform import model_columns

    user = site.events["user_id"].value_counts().index[0]
    values, offsets = tower_ranker.histories([user, "nobody-at-all"])
    raw = tower_ranker.features.history(user)
    n = len(raw["hist_item"])
    assert offsets.tolist() == [0, n, n] and values.shape == (n, len(site.spec.history.names))
    cols = model_columns({**{k: [v] for k, v in raw.items()}, "event_timestamp": np.zeros(1, "datetime64[ns]")},
                         1, site.spec)
    for j, name in enumerate(site.spec.history.names):
        np.testing.assert_array_equal(values[:, j], cols[name][0])


def test_a_reader_without_histories_is_refused(site, tower_ranker):
    from serving.ranker import Ranker

    class NoHistory:
        def columns(self, *args, **kw):
            raise AssertionError("not reached")

    with pytest.raises(TypeError, match="history"):
        Ranker(tower_ranker.model, site.spec, NoHistory())
