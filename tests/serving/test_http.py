"""The model server over real HTTP on loopback: v1, v2, readiness, and 4xx for bad requests."""

from __future__ import annotations

import httpx
import pytest

from serving.requests import ScoreRequest

JSON = {"Content-Type": "application/json"}
ITEMS = ["i1", "i4", "i7", "i10", "unknown-item"]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_readiness_endpoints_say_the_model_is_loaded(client):
    assert client.get("/v1/models/robeflow").json() == {"name": "robeflow", "ready": True}
    assert client.get("/v2/models/robeflow/ready").json()["ready"] is True
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v1/models/absent").status_code == 404


def test_v1_predict_ranks_with_online_features(client, ranker, site):
    context = {"query": "red gift", "device": "mobile", "country": "DE", "timestamp": site.snapshot.isoformat()}
    r = client.post("/v1/models/robeflow:predict", headers=JSON,
                    json={"instances": [{"user_id": "u3", "item_ids": ITEMS, "context": context}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "v1"
    (pred,) = body["predictions"]
    items, scores = ranker.rank(ScoreRequest("u3", tuple(ITEMS), context))
    assert pred["user_id"] == "u3" and pred["item_ids"] == items
    assert pred["scores"] == pytest.approx(scores, rel=1e-6)


def test_v2_infer_ranks_with_online_features(client, ranker, site):
    ts = site.snapshot.isoformat()
    r = client.post("/v2/models/robeflow/infer", headers=JSON, json={"id": "req-1", "inputs": [
        {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u5"]},
        {"name": "item_ids", "shape": [len(ITEMS)], "datatype": "BYTES", "data": ITEMS},
        {"name": "timestamp", "shape": [1], "datatype": "BYTES", "data": [ts]},
        {"name": "device", "shape": [1], "datatype": "BYTES", "data": ["desktop"]},
    ]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == "robeflow"
    out = {o["name"]: o for o in body["outputs"]}
    items, scores = ranker.rank(ScoreRequest("u5", tuple(ITEMS), {"timestamp": ts, "device": "desktop"}))
    assert out["item_ids"]["datatype"] == "BYTES" and out["item_ids"]["data"] == items
    assert out["scores"]["datatype"] == "FP32" and out["scores"]["shape"] == [len(ITEMS)]
    assert out["scores"]["data"] == pytest.approx(scores, rel=1e-6)


V1 = "/v1/models/robeflow:predict"
V2 = "/v2/models/robeflow/infer"
OK_INSTANCE = {"user_id": "u1", "item_ids": ["i1"]}
BAD = [
    # (path, raw body or JSON, content type, status, part of the message)
    (V1, b"{not json", "application/json", 400, "Unrecognized request format"),
    (V1, b"", "application/json", 400, "Unrecognized request format"),
    (V1, b"5", "application/json", 400, "JSON object with 'instances'"),
    (V1, b"plain words", "text/plain", 400, "must be JSON"),
    # no item_ids: a recommendation, which a version published without a retrieval model cannot give
    (V1, {"instances": [{"user_id": "u1"}]}, None, 400, "published without a retrieval model"),
    (V1, {"instances": [{"user_id": 42, "item_ids": ["i1"]}]}, None, 400, "user_id must be a string"),
    (V1, {"instances": [{"user_id": "u1", "item_ids": []}]}, None, 400, "is empty"),
    (V1, {"instances": [{"user_id": "u1", "item_ids": [f"i{k}" for k in range(51)]}]}, None, 400,
     "51 candidates; at most 50"),
    (V1, {"instances": [{**OK_INSTANCE, "context": {"hour": 31}}]}, None, 400, "0..23"),
    (V1, {"instances": [{**OK_INSTANCE, "context": {"mood": "happy"}}]}, None, 400, "unknown field"),
    (V2, b"{not json", "application/json", 422, "JSON decode error"),
    (V2, {"inputs": "nope"}, None, 422, "valid list"),
    (V2, {"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u1"]}]}, None, 400,
     "published without a retrieval model"),
    (V2, {"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u1"]},
                     {"name": "item_ids", "shape": [3], "datatype": "BYTES", "data": ["i1"]}]}, None, 400,
     "1 values but shape [3]"),
    ("/v1/models/other:predict", {"instances": [OK_INSTANCE]}, None, 404, "does not exist"),
]


@pytest.mark.parametrize("path, body, ctype, status, message", BAD,
                         ids=[f"{p.rsplit('/', 1)[-1]}-{i}" for i, (p, *_) in enumerate(BAD)])
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(
        client, server, path, body, ctype, status, message):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"Content-Type": ctype})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.text
    assert server.proc.poll() is None
    ok = client.post(V1, json={"instances": [OK_INSTANCE]})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["item_ids"] == ["i1"]
