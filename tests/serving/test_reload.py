"""Live model updates: the server follows the registry's production pointer.

A push or a rollback is served within ``serve.reload_s``; requests in flight finish on the
model they started on and none fails; a bundle that fails to load is logged in one line
and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import httpx
import pytest

from model_registry.registry import Registry
from serving.config import ServeConfig
from serving.predictor import RobeflowModel
from tests.serving.conftest import push_random_model, running_server

REQUEST = {"instances": [{"user_id": "u3", "item_ids": ["i1", "i4", "i7", "i10"]}]}


@pytest.fixture
def registry(site, tmp_path):
    """A copy of the site's registry (production v1), free to push to."""
    reg = tmp_path / "registry"
    shutil.copytree(site.registry, reg)
    return reg


def _by_item(response: dict) -> dict[str, float]:
    """item -> score (batched and single scoring differ in the last float bits, so the
    order of near ties may too)."""
    pred = response["predictions"][0]
    return dict(zip(pred["item_ids"], pred["scores"]))


def _same_model(a: dict, b: dict) -> bool:
    return _by_item(a).keys() == _by_item(b).keys() and all(
        abs(_by_item(a)[k] - _by_item(b)[k]) <= 1e-5 * abs(_by_item(b)[k]) for k in _by_item(a))


def test_reload_serves_a_push_and_a_rollback(site, registry, tmp_path):
    model = RobeflowModel(ServeConfig(), registry, site.repo)
    model.load()
    assert model.version == "v1"
    v1 = asyncio.run(model.predict(REQUEST))
    assert asyncio.run(model.reload()) is False   # the pointer did not move
    push_random_model(site.spec, tmp_path / "m2" / "model", registry, seed=1)
    assert asyncio.run(model.reload()) is True and model.version == "v2" and model.ready
    v2 = asyncio.run(model.predict(REQUEST))
    assert v2["model_version"] == "v2" and not _same_model(v2, v1)
    Registry(registry).rollback()
    assert asyncio.run(model.reload()) is True and model.version == "v1"
    back = asyncio.run(model.predict(REQUEST))
    assert back["model_version"] == "v1" and _same_model(back, v1)


def test_requests_in_flight_finish_on_the_model_they_started_on(site, registry, tmp_path):
    model = RobeflowModel(ServeConfig(), registry, site.repo)
    model.load()
    v1 = asyncio.run(model.predict(REQUEST))
    push_random_model(site.spec, tmp_path / "m2" / "model", registry, seed=1)

    async def run():
        before = [asyncio.create_task(model.predict(REQUEST)) for _ in range(40)]
        swap = asyncio.create_task(model.reload())
        await asyncio.sleep(0)
        after = [asyncio.create_task(model.predict(REQUEST)) for _ in range(10)]
        return await asyncio.gather(*before), await swap, await asyncio.gather(*after)

    before, swapped, after = asyncio.run(run())
    assert swapped is True
    # every request answered, each wholly by one model: its version and its scores agree
    for r in before + after:
        assert r["model_version"] in ("v1", "v2")
        if r["model_version"] == "v1":
            assert _same_model(r, v1)
    assert {r["model_version"] for r in before} == {"v1"}   # queued before the swap: the old model
    final = asyncio.run(model.predict(REQUEST))
    assert final["model_version"] == "v2" and not _same_model(final, v1)


def test_a_bundle_that_fails_to_load_is_logged_once_and_the_old_model_keeps_serving(
        site, registry, tmp_path, capsys):
    model = RobeflowModel(ServeConfig(), registry, site.repo)
    model.load()
    push_random_model(site.spec, tmp_path / "m2" / "model", registry, seed=1)
    (registry / "v2" / "model.safetensors").write_bytes(b"not a safetensors file")
    capsys.readouterr()
    assert asyncio.run(model.reload()) is False
    assert asyncio.run(model.reload()) is False   # the same broken pointer: not logged again
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load v2" in err[0] and "still serving v1" in err[0]
    assert model.ready and asyncio.run(model.predict(REQUEST))["model_version"] == "v1"
    # a rollback to a good bundle is served again
    Registry(registry).rollback()
    assert asyncio.run(model.reload()) is False and model.version == "v1"


def test_an_explicit_unload_is_not_undone_by_following_the_pointer(site, registry):
    model = RobeflowModel(ServeConfig(), registry, site.repo)
    model.load()

    async def run():
        follower = asyncio.create_task(model.follow(0.01))
        model.unload()
        await asyncio.sleep(0.2)   # many polls
        unloaded = model.ready
        await model.reload(retry_failed=True)   # what the load endpoint does
        follower.cancel()
        return unloaded

    assert asyncio.run(run()) is False
    assert model.ready and model.version == "v1"


def test_reload_interval_is_checked(site, registry):
    with pytest.raises(ValueError, match="serve.reload_s"):
        RobeflowModel(ServeConfig(reload_s=-1), registry, site.repo)


class Load:
    """Clients posting REQUEST in a loop from threads; records (answered at, status,
    version in the body, version in the header, sent at). ``new_connections``: every
    request on a connection of its own (kept-alive connections otherwise), so a server with
    several workers sharing a port gets each request wherever the kernel hands it."""

    def __init__(self, url: str, clients: int = 4, new_connections: bool = False):
        self.url, self.results, self._stop = url, [], threading.Event()
        self.headers = {"Connection": "close"} if new_connections else {}
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/v1/models/robeflow:predict", json=REQUEST, headers=self.headers)
                    version = r.json().get("model_version") if r.status_code == 200 else r.text
                    self.results.append((time.monotonic(), r.status_code, version, r.headers.get("x-model-version"),
                                         sent))
                except httpx.HTTPError as e:
                    self.results.append((time.monotonic(), 0, repr(e), None, sent))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def first(self, version: str, since: float) -> float | None:
        times = [t for t, status, v, _, _ in self.results if t >= since and status == 200 and v == version]
        return min(times) if times else None


def _wait_for(load: Load, version: str, since: float, timeout: float) -> float:
    deadline = since + timeout
    while time.monotonic() < deadline:
        t = load.first(version, since)
        if t is not None:
            return t - since
        time.sleep(0.05)
    raise AssertionError(f"{version} not served {timeout} s after the pointer moved; "
                         f"last answers {load.results[-3:]}")


@pytest.mark.slow
def test_a_running_server_serves_a_push_and_a_rollback_under_load_without_failed_requests(
        site, registry, tmp_path):
    reload_s = 0.5
    params = f"serve:\n  reload_s: {reload_s}\n  max_candidates: 50\n"
    with running_server(site, registry, tmp_path / "srv", params) as srv:
        with Load(srv.url) as load:
            time.sleep(1.0)
            pushed = time.monotonic()
            push_random_model(site.spec, tmp_path / "m2" / "model", registry, seed=1)
            # loading the bundle (and its warm-up) comes on top of the interval
            took_push = _wait_for(load, "v2", pushed, timeout=reload_s + 10)
            time.sleep(1.0)
            rolled = time.monotonic()
            Registry(registry).rollback()
            took_rollback = _wait_for(load, "v1", rolled, timeout=reload_s + 10)
            time.sleep(0.5)
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            ready = c.get("/v2/health/ready")
            assert ready.status_code == 200 and ready.json()["model_version"] == "v1"
            assert c.get("/v2/models/robeflow/ready").headers["x-model-version"] == "v1"
        log = srv.log.read_text()
    failed = [r for r in load.results if r[1] != 200]
    assert not failed, failed[:5]
    assert len(load.results) > 20
    # the body and the header name the same version, the one that scored the request
    assert all(v == h for _, _, v, h, _ in load.results)
    # once v2 answered, every request sent later (and answered before the rollback) is v2's;
    # a request answered by v1 after that was in flight on v1 when the swap came
    after_push = [v for t, _, v, _, sent in load.results if pushed + took_push <= sent and t < rolled]
    assert after_push and set(after_push) == {"v2"}
    assert "now serving v2 (was v1)" in log and "now serving v1 (was v2)" in log
    print(f"served v2 {took_push:.2f} s after the push, v1 {took_rollback:.2f} s after the rollback "
          f"(reload_s {reload_s}); {len(load.results)} requests, none failed")


def test_a_swap_frees_the_old_model_and_freezes_the_new_one_out_of_the_collector(site, registry, tmp_path):
    """After a load the served model's objects are frozen (full collections skip them);
    after a swap the old version is freed, cycles and all."""
    import gc
    import weakref

    model = RobeflowModel(ServeConfig(), registry, site.repo)
    model.load()
    frozen = gc.get_freeze_count()
    assert frozen > 1_000
    old = weakref.ref(model._served.ranker.model)
    push_random_model(site.spec, tmp_path / "m2" / "model", registry, seed=1)
    assert asyncio.run(model.reload()) is True and model.version == "v2"
    assert old() is None and gc.get_freeze_count() > 1_000
    assert asyncio.run(model.predict(REQUEST))["model_version"] == "v2"
    model.unload()
    assert gc.get_freeze_count() == 0
