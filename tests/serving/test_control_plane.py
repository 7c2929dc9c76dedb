"""The closed control plane: repository load/unload refused without the token, readiness
false whenever no model is loaded, the served version on every response."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serving.config import ServeConfig
from serving.predictor import RobeflowModel
from serving.server import ControlPlane
from tests.serving.conftest import running_server

PREDICT = "/v1/models/robeflow:predict"
REQUEST = {"instances": [{"user_id": "u1", "item_ids": ["i1", "i2"]}]}
TOKEN_ENV = ServeConfig().control_token_env


@pytest.mark.parametrize("path", ["/v2/repository/models/robeflow/unload", "/v2/repository/models/robeflow/load",
                                  "/v2/repository/index", "/v2/repository/models/other/unload"])
def test_repository_endpoints_are_refused_without_a_token(server, path):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post(path)
        assert r.status_code == 403 and TOKEN_ENV in r.text
        # a guessed token is refused as well
        assert c.post(path, headers={"Authorization": "Bearer guess"}).status_code == 403
        assert c.get("/v2/health/ready").status_code == 200
        ok = c.post(PREDICT, json=REQUEST)
        assert ok.status_code == 200 and ok.json()["model_version"] == "v1"
    log = server.log.read_text()
    assert f"refused POST {path}" in log and "Traceback" not in log


def test_get_on_predict_is_405_not_an_unknown_model(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for path in (PREDICT, "/v2/models/robeflow/infer"):
            r = c.get(path)
            assert r.status_code == 405 and r.headers["allow"] == "POST"
            assert "does not exist" not in r.text


async def _inner(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"inner"})


def _get(app, path: str, method: str = "GET", headers: dict | None = None) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.request(method, path, headers=headers)

    return asyncio.run(go())


def test_readiness_is_false_whenever_no_model_is_loaded(site):
    model = RobeflowModel(ServeConfig(), site.registry, site.repo)
    app = ControlPlane(_inner, model, token="s3cret")
    r = _get(app, "/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False, "model_version": None}
    assert asyncio.run(model.healthy()) is False
    model.load()
    r = _get(app, "/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True, "model_version": "v1"}
    assert r.headers["x-model-version"] == "v1"
    # other responses pass through with the version added
    r = _get(app, "/v2/models/robeflow")
    assert r.text == "inner" and r.headers["x-model-version"] == "v1"
    # with the token, unload stops serving: not ready until a load
    r = _get(app, "/v2/repository/models/robeflow/unload", "POST", {"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json() == {"name": "robeflow", "unload": True}
    assert model.ready is False and _get(app, "/v2/health/ready").status_code == 503
    r = _get(app, "/v2/repository/models/robeflow/load", "POST", {"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["model_version"] == "v1" and model.ready


def test_repository_is_closed_when_the_token_variable_is_empty(site):
    model = RobeflowModel(ServeConfig(), site.registry, site.repo)
    app = ControlPlane(_inner, model, token="")
    r = _get(app, "/v2/repository/models/robeflow/unload", "POST", {"Authorization": "Bearer "})
    assert r.status_code == 403


@pytest.mark.slow
def test_with_the_token_unload_and_load_work_over_http(site, tmp_path):
    env = {TOKEN_ENV: "t0ken"}
    auth = {"Authorization": "Bearer t0ken"}
    with running_server(site, site.registry, tmp_path / "srv", "serve:\n  reload_s: 0\n", env) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.post("/v2/repository/models/robeflow/unload").status_code == 403
            r = c.post("/v2/repository/models/robeflow/unload", headers=auth)
            assert r.status_code == 200, r.text
            assert c.get("/v2/health/ready").status_code == 503
            assert c.get("/v2/models/robeflow/ready").status_code == 503
            r = c.post(PREDICT, json=REQUEST)
            assert r.status_code == 503, r.text
            r = c.post("/v2/repository/models/robeflow/load", headers=auth)
            assert r.status_code == 200 and r.json()["model_version"] == "v1"
            assert c.get("/v2/health/ready").json() == {"ready": True, "model_version": "v1"}
            assert c.post(PREDICT, json=REQUEST).json()["model_version"] == "v1"
