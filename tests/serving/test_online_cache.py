"""The lean reader's cache: hot rows from memory, and the store's new values as soon as
it is written."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from features.online import OnlineFeatures
from features.lean_store import LeanStore

CONTEXT = {"hour": 5, "timestamp": "2026-10-09T00:00:00Z"}


@pytest.fixture()
def repo_copy(site, tmp_path):
    """A private copy of the materialised repo (these tests write to its online store)."""
    return shutil.copytree(site.repo, tmp_path / "features")


def latest_user_row(repo, user: str) -> pd.DataFrame:
    """The latest offline row of ``user`` in the user feature view's table."""
    frame = pd.read_parquet(repo / "store" / "offline" / "user_daily_stats.parquet")
    return frame[frame["user_id"] == user].sort_values("event_timestamp").tail(1)


def test_cached_reads_follow_writes_to_the_online_store(site, repo_copy):
    lean = OnlineFeatures(repo_copy, site.spec, reader="lean")
    feast_reader = OnlineFeatures(repo_copy, site.spec)   # another process's store, in effect
    user = str(site.events["user_id"].iloc[0])
    items = ["i1", "i2", "unknown-item"]
    first = lean.rows(user, items, CONTEXT)
    before = first["user_offers_30d"].iloc[0]
    provider_reads = []
    real = lean.lean._provider.online_read
    lean.lean._provider.online_read = lambda **kw: provider_reads.append(len(kw["entity_keys"])) or real(**kw)
    pd.testing.assert_frame_equal(lean.rows(user, items, CONTEXT), first)
    assert provider_reads == []  # every row (the unknown item too) came from the cache

    # materialisation elsewhere writes a new value for this user
    row = latest_user_row(repo_copy, user)
    assert len(row) == 1
    row = row.assign(user_offers_30d=int(before) + 1000, event_timestamp=pd.Timestamp.now(tz="UTC"))
    feast_reader.store.write_to_online_store("user_daily_stats", row)

    after = lean.rows(user, items, CONTEXT)
    assert after["user_offers_30d"].iloc[0] == before + 1000
    assert provider_reads  # the write emptied the cache
    want = feast_reader.rows(user, items, CONTEXT)
    pd.testing.assert_frame_equal(after[want.columns], want)


def test_without_cache_every_call_reads_and_bad_settings_are_refused(site):
    lean = OnlineFeatures(site.repo, site.spec, reader="lean", max_age_s=0)
    reads = []
    real = lean.lean._provider.online_read
    lean.lean._provider.online_read = lambda **kw: reads.append(1) or real(**kw)
    for _ in range(2):
        lean.rows("u1", ["i1"], {})
    assert len(reads) == 2 * len(lean.lean._views)
    with pytest.raises(ValueError, match="max_age_s"):
        LeanStore(lean.store, lean.service, max_age_s=-1)
