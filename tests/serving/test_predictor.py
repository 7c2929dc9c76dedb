"""The predictor in process: online scoring equals offline scoring, ranking, readiness."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from dlrm.bundle import predict
from features.repo import historical_rows, open_store
from contract.spec import ModelInput
from features.transform import build_model_frame
from kserve.errors import InvalidInput

from serving.batcher import Batcher
from serving.config import ServeConfig
from serving.predictor import RobeflowModel
from serving.ranker import load_production
from serving.requests import ScoreRequest


@pytest.fixture(scope="module")
def requests(site):
    """Five (user, 12 items, context) requests drawn from the data, at the snapshot time."""
    rng = np.random.default_rng(4)
    users = rng.choice(site.events["user_id"].unique(), 5, replace=False)
    items = site.events["item_id"].unique()
    contexts = [{"query": "red gift", "device": "mobile", "country": "DE"}, {"device": "app_ios"}, {},
                {"query": "kids", "country": "FR"}, {"query": ""}]
    return [ScoreRequest(str(u), tuple(str(i) for i in rng.choice(items, 12, replace=False)),
                         {**c, "timestamp": site.snapshot.isoformat()})
            for u, c in zip(users, contexts)]


def test_online_scores_equal_offline_scores_of_the_same_rows(site, ranker, requests):
    """Serving (online store) and the training path (offline point-in-time join at the
    snapshot) give the same model input, hence the same scores."""
    store = open_store(site.repo)
    model = load_production(site.registry).model
    for req in requests:
        online = ranker.scores(req)
        rows = ranker.features.rows(req.user_id, list(req.item_ids), req.context)
        context = rows[["user_id", "item_id", "event_timestamp", "query", "device", "country",
                        "position", "price"]]
        offline_frame = build_model_frame(historical_rows(store, context), site.spec)
        offline = predict(model, ModelInput.from_frame(offline_frame, site.spec))
        np.testing.assert_array_equal(online, offline)
        assert online.shape == (len(req.item_ids),) and np.all((online > 0) & (online < 1))


def test_rank_orders_all_candidates_by_score(ranker, requests):
    for req in requests:
        items, scores = ranker.rank(req)
        assert sorted(items) == sorted(req.item_ids)
        assert scores == sorted(scores, reverse=True)
        by_item = dict(zip(req.item_ids, ranker.scores(req).tolist()))
        assert scores == pytest.approx([by_item[i] for i in items])


def test_unknown_users_and_items_are_served_with_filled_features(site, ranker):
    req = ScoreRequest("never-seen-user", ("never-seen-item", "i1"), {"device": "mobile", "hour": 9})
    frame = ranker.features.frame(req.user_id, list(req.item_ids), req.context)
    fill = site.spec.extra["fill"]
    assert frame["user_offers_30d"].tolist() == [0.0, 0.0]
    assert frame["item_purchase_rate_30d"][0] == pytest.approx(fill["item_purchase_rate_30d"])
    assert frame["item_offers_30d"][1] > 0  # i1 is known
    items, scores = ranker.rank(req)
    assert sorted(items) == sorted(req.item_ids) and np.all(np.isfinite(scores))
    # different unknown ids hash to different rows, so they generally score differently
    other = ranker.scores(ScoreRequest("another-new-user", req.item_ids, req.context))
    assert not np.array_equal(other, ranker.scores(req))


def test_readiness_reflects_whether_a_model_is_loaded(site, tmp_path):
    empty = RobeflowModel(ServeConfig(), tmp_path / "no-registry", site.repo)
    assert empty.ready is False
    with pytest.raises(FileNotFoundError, match="no production model"):
        empty.load()
    assert empty.ready is False
    model = RobeflowModel(ServeConfig(), site.registry, site.repo)
    assert model.ready is False
    assert model.load() is True and model.ready is True
    assert model.version == "v1"


def test_v1_and_v2_payloads_give_the_same_ranking(site):
    from kserve.protocol.infer_type import InferInput, InferRequest

    model = RobeflowModel(ServeConfig(), site.registry, site.repo)
    model.load()
    items = ["i3", "i5", "i8", "nope"]
    v1 = asyncio.run(model.predict({"instances": [{"user_id": "u2", "item_ids": items, "context": {"hour": 10}}]}))
    request = InferRequest(model_name="robeflow", infer_inputs=[
        InferInput("user_id", [1], "BYTES", ["u2"]),
        InferInput("item_ids", [4], "BYTES", items),
        InferInput("hour", [1], "INT64", [10]),
    ])
    v2 = asyncio.run(model.predict(request))
    got = {o.name: o.data for o in v2.outputs}
    assert v1["predictions"][0]["item_ids"] == got["item_ids"]
    # both use the current time with hour 10, so the scores agree
    assert v1["predictions"][0]["scores"] == pytest.approx(got["scores"])
    assert v1["model_version"] == v2.model_version == "v1"


def test_lean_online_read_gives_the_rows_feast_gives(site, requests):
    from features.online import OnlineFeatures

    feast_reader = OnlineFeatures(site.repo, site.spec)
    lean = OnlineFeatures(site.repo, site.spec, reader="lean")
    extra = ScoreRequest("nobody", ("i1", "no-such-item", "i2"),
                         {"device": "mobile", "hour": 3, "timestamp": site.snapshot.isoformat()})
    for req in [*requests, extra]:
        want = feast_reader.rows(req.user_id, list(req.item_ids), req.context)
        got = lean.rows(req.user_id, list(req.item_ids), req.context)
        assert sorted(got.columns) == sorted(want.columns)
        pd.testing.assert_frame_equal(got[want.columns], want)
    # and from one read of every request's candidates at once
    everything = [{"user_id": r.user_id, "item_id": i} for r in [*requests, extra] for i in r.item_ids]
    with lean.prefetched(everything):
        for req in [*requests, extra]:
            want = feast_reader.rows(req.user_id, list(req.item_ids), req.context)
            got = lean.rows(req.user_id, list(req.item_ids), req.context)
            pd.testing.assert_frame_equal(got[want.columns], want)


def test_batched_scoring_equals_one_by_one_and_isolates_bad_requests(ranker, requests):
    bad = ScoreRequest("u1", ("i1",), {"timestamp": "2026-13-45"})
    batch = [*requests, bad, requests[0]]
    got = ranker.score_many(batch)
    assert isinstance(got[len(requests)], InvalidInput)
    for req, scores in zip([*requests, None, requests[0]], got):
        if req is not None:
            np.testing.assert_allclose(scores, ranker.score_many([req])[0], rtol=1e-6)


def test_batcher_scores_concurrent_requests_together(site):
    calls = []

    def fn(reqs):
        calls.append(len(reqs))
        return [InvalidInput("bad user") if r.user_id == "bad" else r.user_id.upper() for r in reqs]

    async def run():
        batcher = Batcher(fn, max_requests=8, wait_s=0.01)
        reqs = [ScoreRequest(f"u{k}", ("i",)) for k in range(5)]
        results = await asyncio.gather(*(batcher.submit([r]) for r in reqs),
                                       batcher.submit([ScoreRequest("bad", ("i",))]), return_exceptions=True)
        batcher.close()
        return results

    results = asyncio.run(run())
    assert results[:5] == [["U0"], ["U1"], ["U2"], ["U3"], ["U4"]]
    assert isinstance(results[5], InvalidInput)
    assert calls == [6]  # all six arrived within the wait and went in one batch


def test_batcher_waits_for_company_only_after_concurrent_requests(monkeypatch):
    waits = []
    real_sleep = asyncio.sleep

    async def sleep(delay, *args, **kwargs):
        if delay == 0.5:
            waits.append(delay)
        return await real_sleep(0, *args, **kwargs)   # the wait itself is not needed here

    monkeypatch.setattr(asyncio, "sleep", sleep)

    async def run():
        batcher = Batcher(lambda reqs: [r.user_id for r in reqs], max_requests=8, wait_s=0.5)
        one = [await batcher.submit([ScoreRequest(f"u{k}", ("i",))]) for k in range(3)]
        assert waits == []  # one client at a time: no batch waits
        burst = await asyncio.gather(*(batcher.submit([ScoreRequest(f"b{k}", ("i",))]) for k in range(4)))
        after = await batcher.submit([ScoreRequest("late", ("i",))])
        batcher.close()
        return one, burst, after

    one, burst, after = asyncio.run(run())
    assert one == [["u0"], ["u1"], ["u2"]] and burst == [["b0"], ["b1"], ["b2"], ["b3"]] and after == ["late"]
    assert waits == [0.5]  # the batch after the burst of 4 waited for company


def test_a_closed_batcher_answers_queued_requests_not_ready_instead_of_leaving_them_waiting():
    from kserve.errors import ModelNotReady

    async def run():
        batcher = Batcher(lambda reqs: [r.user_id for r in reqs], max_requests=8)
        first = asyncio.ensure_future(batcher.submit([ScoreRequest("u0", ("i",))]))
        await asyncio.sleep(0)   # queued; its batch has not run yet
        batcher.close()
        done = await asyncio.wait_for(asyncio.gather(first, return_exceptions=True), timeout=5)
        late = await asyncio.gather(batcher.submit([ScoreRequest("u1", ("i",))]), return_exceptions=True)
        return done[0], late[0]

    first, late = asyncio.run(run())
    assert isinstance(first, ModelNotReady) and isinstance(late, ModelNotReady)
