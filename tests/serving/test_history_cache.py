"""The ranker's cache of encoded histories: scores equal the uncached ranker's, cold and
warm; a changed history is re-encoded, never served stale; the LRU keeps to its bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _entry(fp: bytes, rows: int, dim: int = 4):
    from serving.history_cache import CachedHistory

    return CachedHistory(fp, np.zeros((rows, 2), dtype=np.int64), torch.zeros(rows, dim))


def test_fingerprint_follows_every_value_and_type():
    from serving.history_cache import history_fingerprint

    names = ("hist_item", "hist_days")
    h = {"hist_item": ["a", "b"], "hist_days": [1, 2]}
    fp = history_fingerprint(h, names)
    assert fp == history_fingerprint({"hist_item": ["a", "b"], "hist_days": [1, 2], "other": [9]}, names)
    one = "item-" + "x" * 3   # one object twice, or two equal objects: the same history
    assert history_fingerprint({"hist_item": [one, one], "hist_days": (1, 2)}, names) == \
        history_fingerprint({"hist_item": ["item-xxx", "".join(["item-", "xxx"])], "hist_days": [1, 2]}, names)
    for changed in ({"hist_item": ["a", "b", "c"], "hist_days": [1, 2]}, {"hist_item": ["b", "a"], "hist_days": [1, 2]},
                    {"hist_item": ["a", "b"], "hist_days": [1, 3]}, {"hist_item": ["a", "b"], "hist_days": ["1", "2"]},
                    {"hist_item": ["a", "b"], "hist_days": None}, {"hist_item": ["a"], "hist_days": ["b", 1, 2]}):
        assert history_fingerprint(changed, names) != fp, changed


def test_lru_keeps_to_its_bytes_and_drops_stale_entries():
    from serving.history_cache import HistoryCache

    size = _entry(b"x", 10).nbytes
    cache = HistoryCache(3 * size)
    for u in "abc":
        cache.put(u, _entry(b"1", 10))
    assert cache.get("a", b"1") is not None                                 # a is now the most recent
    cache.put("d", _entry(b"1", 10))                                        # b, the least recent, goes
    assert cache.get("b", b"1") is None and cache.get("a", b"1") is not None
    assert cache.nbytes == 3 * size and len(cache) == 3
    assert cache.get("c", b"2") is None                                     # another history: dropped
    assert cache.get("c", b"1") is None and len(cache) == 2
    cache.put("e", _entry(b"1", 10_000))                                    # larger than the budget: not kept
    assert cache.get("e", b"1") is None
    s = cache.stats()
    assert (s["hits"], s["stale"], s["evictions"], s["entries"]) == (2, 1, 1, 2) and s["bytes"] == 2 * size
    with pytest.raises(ValueError, match="max_bytes"):
        HistoryCache(0)


class _Histories:
    """The store's reader with the histories of chosen users replaced (a stream of new events)."""

    def __init__(self, online):
        self.online, self.replaced, self.reads = online, {}, 0

    def columns(self, *args, **kw):
        return self.online.columns(*args, **kw)

    def history(self, user_id):
        self.reads += 1
        return {k: list(v) for k, v in self.replaced.get(user_id, self.online.history(user_id)).items()}


@pytest.fixture(scope="module")
def rankers(site, tower_model):
    from features.online import OnlineFeatures
    from serving.ranker import Ranker

    model = tower_model(heads=2)
    reader = _Histories(OnlineFeatures(site.repo, site.spec, reader="lean", max_age_s=0))
    return Ranker(model, site.spec, reader), Ranker(model, site.spec, reader, history_cache_mb=16)


def test_cached_scores_equal_uncached_cold_and_warm(site, rankers):
    from serving.requests import ScoreRequest

    plain, cached = rankers
    assert plain.history_cache is None and cached.history_cache is not None
    items = tuple(sorted(site.events["item_id"].unique())[:10])
    users = [*site.events["user_id"].value_counts().index[:3], "nobody-at-all"]
    for rnd in range(2):   # the first round misses, the second hits
        for user in users:
            request = ScoreRequest(user, items, {"hour": 10})
            np.testing.assert_allclose(cached.scores(request), plain.scores(request), rtol=1e-5, atol=1e-6)
    s = cached.history_cache.stats()
    assert s["misses"] == len(users) and s["hits"] == len(users) and s["entries"] == len(users)
    # a batch with one user twice and one new: scored as one by one, the new user kept
    requests = [ScoreRequest(users[0], items[:4], {"hour": 10}), ScoreRequest("another-new-user", items, {"hour": 9}),
                ScoreRequest(users[0], items[4:], {"hour": 11})]
    for request, got in zip(requests, cached.score_many(requests)):
        np.testing.assert_allclose(got, plain.scores(request), rtol=1e-5, atol=1e-6)
    assert cached.history_cache.get("another-new-user", _fp(cached, "another-new-user")) is not None


def _fp(ranker, user):
    from serving.history_cache import history_fingerprint

    return history_fingerprint(ranker.features.history(user), ranker.spec.history.names)


def test_a_changed_history_is_encoded_again_not_served_stale(site, rankers):
    from serving.requests import ScoreRequest

    plain, cached = rankers
    reader = cached.features
    items = tuple(sorted(site.events["item_id"].unique())[:8])
    user = site.events["user_id"].value_counts().index[1]
    request = ScoreRequest(user, items, {"hour": 10})
    before = cached.scores(request)
    old = reader.online.history(user)
    newer = {k: list(v) for k, v in old.items()}
    for k in newer:   # one more event, the newest: the latest item again
        newer[k] = newer[k][:1] + newer[k]
    newer["hist_days"] = [1] + list(old["hist_days"])
    reader.replaced[user] = newer
    try:
        stale = cached.history_cache.stats()["stale"]
        after = cached.scores(request)
        assert cached.history_cache.stats()["stale"] == stale + 1
        np.testing.assert_allclose(after, plain.scores(request), rtol=1e-5, atol=1e-6)
        assert not np.allclose(after, before)
    finally:
        del reader.replaced[user]
    np.testing.assert_allclose(cached.scores(request), before, rtol=1e-5, atol=1e-6)


def test_cache_setting_is_checked(site, rankers):
    from serving.config import ServeConfig
    from serving.ranker import Ranker

    plain, _ = rankers
    for bad in (-1, "64", float("nan")):
        with pytest.raises(ValueError, match="history_cache_mb"):
            Ranker(plain.model, site.spec, plain.features, history_cache_mb=bad)
        with pytest.raises(ValueError, match="history_cache_mb"):
            ServeConfig(history_cache_mb=bad)
    assert Ranker(plain.model, site.spec, plain.features, history_cache_mb=0).history_cache is None
