"""Protocol conformance: standard clients against v2, model metadata, malformed bodies.

tritonclient (JSON mode sends no Content-Type; binary mode sends binary tensors) and
generated bodies thrown at the server: only 2xx/4xx answers, each 4xx logged in one line,
and the server stays ready.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.requests import ScoreRequest

ITEMS = ["i2", "i9", "i4", "never-seen"]
V1 = "/v1/models/robeflow:predict"
V2 = "/v2/models/robeflow/infer"


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infers_in_json_and_binary_mode(server, ranker, binary):
    th = pytest.importorskip("tritonclient.http")

    client = th.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("robeflow")
    user = th.InferInput("user_id", [1], "BYTES")
    user.set_data_from_numpy(np.array([b"u7"], dtype=object), binary_data=binary)
    items = th.InferInput("item_ids", [len(ITEMS)], "BYTES")
    items.set_data_from_numpy(np.array([i.encode() for i in ITEMS], dtype=object), binary_data=binary)
    hour = th.InferInput("hour", [1], "INT64")
    hour.set_data_from_numpy(np.array([14], dtype=np.int64), binary_data=binary)
    outputs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("item_ids", "scores")]
    result = client.infer("robeflow", [user, items, hour], outputs=outputs)
    want_items, want_scores = ranker.rank(ScoreRequest("u7", tuple(ITEMS), {"hour": 14}))
    got_items = [i.decode() if isinstance(i, bytes) else str(i) for i in result.as_numpy("item_ids")]
    assert got_items == want_items
    np.testing.assert_allclose(result.as_numpy("scores"), want_scores, rtol=1e-6)
    assert result.get_response()["model_version"] == "v1"
    client.close()


def test_model_metadata_lists_input_and_output_tensors(client):
    meta = client.get("/v2/models/robeflow").json()
    inputs = {t["name"]: t for t in meta["inputs"]}
    outputs = {t["name"]: t for t in meta["outputs"]}
    assert inputs["user_id"] == {"name": "user_id", "datatype": "BYTES", "shape": [1]}
    assert inputs["item_ids"]["shape"] == [-1] and inputs["hour"]["datatype"] == "INT64"
    assert {"query", "device", "country", "timestamp"} <= set(inputs)
    assert outputs == {"item_ids": {"name": "item_ids", "datatype": "BYTES", "shape": [-1]},
                       "scores": {"name": "scores", "datatype": "FP32", "shape": [-1]}}


def _tensor(name, data, shape=None, datatype="BYTES"):
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


OK_V2 = [_tensor("user_id", ["u1"]), _tensor("item_ids", ["i1", "i2"])]
MALFORMED = [
    # (path, body, headers, status, the field the message names)
    (V1, json.dumps({"instances": [{"user_id": "u1", "item_ids": ["i1"]}]}), {}, 415, "Content-Type"),
    (V2, {"inputs": [OK_V2[0], _tensor("item_ids", [["i1", "i2"]], [1, 2])]}, None, 400, "'item_ids'"),
    (V2, {"inputs": [_tensor("user_id", [["u1"]], [1, 1]), OK_V2[1]]}, None, 400, "'user_id'"),
    (V1, {"instances": [{"user_id": "u1", "item_ids": ["i1"], "context": {"timestamp": "NaT"}}]}, None, 400,
     "context.timestamp"),
    (V2, {"inputs": [*OK_V2, _tensor("timestamp", ["nan"])]}, None, 400, "context.timestamp"),
    (V2, {"inputs": [*OK_V2, _tensor("hour", [3.5], datatype="FP32")]}, None, 400, "'hour'"),
    (V2, {"inputs": [*OK_V2, _tensor("hour", [True], datatype="INT64")]}, None, 400, "hour"),
]


@pytest.mark.parametrize("path, body, headers, status, field", MALFORMED,
                         ids=[f"{p.rsplit('/', 1)[-1]}-{i}" for i, (p, *_) in enumerate(MALFORMED)])
def test_malformed_requests_get_a_4xx_naming_the_field_and_one_log_line(client, server, path, body, headers,
                                                                        status, field):
    before = server.log.read_text()
    if isinstance(body, str):
        r = client.post(path, content=body.encode(), headers=headers)
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["error"]
    new = server.log.read_text()[len(before):]
    lines = [line for line in new.splitlines() if "[serve]" in line]
    assert len(lines) == 1, new
    assert str(status) in lines[0] or "refused" in lines[0]
    assert "Traceback" not in new


def test_tritonclient_json_mode_request_without_content_type(client):
    r = client.post(V2, content=json.dumps({"inputs": OK_V2}).encode(), headers={"content-type": ""})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "v1"


# ---- generated bodies -------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=12)
_names = st.sampled_from(["user_id", "item_ids", "query", "device", "country", "timestamp", "hour", "x"])
_datatypes = st.sampled_from(["BYTES", "INT64", "INT32", "FP32", "BOOL", "nope"])
_v2_tensor = st.fixed_dictionaries({"name": _names, "datatype": _datatypes,
                                    "shape": st.lists(st.integers(-1, 4), max_size=3),
                                    "data": st.one_of(st.lists(_scalars, max_size=4), _json)})
_v2_body = st.one_of(_json, st.fixed_dictionaries({"inputs": st.lists(_v2_tensor, max_size=5)}),
                     st.fixed_dictionaries({"id": st.text(max_size=6), "inputs": st.lists(_v2_tensor, max_size=5),
                                            "outputs": _json}))
_context = st.dictionaries(st.sampled_from(["query", "device", "country", "timestamp", "hour", "mood"]),
                           _scalars, max_size=4)
_instance = st.fixed_dictionaries({"user_id": _scalars, "item_ids": st.one_of(st.lists(_scalars, max_size=4), _json)},
                                  optional={"context": st.one_of(_context, _json)})
_v1_body = st.one_of(_json, st.fixed_dictionaries({"instances": st.one_of(st.lists(_instance, max_size=3), _json)}))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.one_of(st.tuples(st.just(V1), _v1_body), st.tuples(st.just(V2), _v2_body),
                 st.tuples(st.sampled_from([V1, V2]), st.binary(max_size=40))))
def test_generated_bodies_get_only_2xx_or_4xx(client, case):
    path, body = case
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert 200 <= r.status_code < 500, (path, body, r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json().get("error") or r.json().get("detail")


def test_the_server_is_ready_and_logged_no_traceback_after_the_generated_bodies(client, server):
    assert client.get("/v2/health/ready").json() == {"ready": True, "model_version": "v1"}
    ok = client.post(V2, json={"inputs": OK_V2})
    assert ok.status_code == 200
    assert "Traceback" not in server.log.read_text()


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_kserves_own_rest_client_infers(server, ranker, protocol):
    """KServe's InferenceRESTClient, unchanged, against both protocols."""
    import asyncio

    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol=protocol))
        try:
            if protocol == "v1":
                return await client.infer(server.url, {"instances": [
                    {"user_id": "u7", "item_ids": ITEMS, "context": {"hour": 14}}]}, model_name="robeflow")
            inputs = [InferInput("user_id", [1], "BYTES", ["u7"]), InferInput("item_ids", [len(ITEMS)], "BYTES", ITEMS),
                      InferInput("hour", [1], "INT64", [14])]
            return await client.infer(server.url, InferRequest("robeflow", inputs), model_name="robeflow")
        finally:
            await client.close()

    result = asyncio.run(call())
    want_items, want_scores = ranker.rank(ScoreRequest("u7", tuple(ITEMS), {"hour": 14}))
    if protocol == "v1":
        pred = result["predictions"][0]
        got_items, got_scores = pred["item_ids"], pred["scores"]
    else:
        out = {o.name: o for o in result.outputs}
        got_items = [i.decode() if isinstance(i, bytes) else str(i) for i in out["item_ids"].data]
        got_scores = out["scores"].data
    assert got_items == want_items
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
