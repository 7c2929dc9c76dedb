"""Request checking of the v1 and v2 bodies: good ones parse, each bad kind names its problem."""

from __future__ import annotations

import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.requests import RetrievalLimits, RetrieveRequest, ScoreRequest, parse_v1, parse_v2

GOOD = {"user_id": "u1", "item_ids": ["i1", "i2"], "context": {"query": "red", "device": "mobile",
                                                               "country": "DE", "hour": 7}}


def test_v1_parses_instances():
    got = parse_v1({"instances": [GOOD, {"user_id": "u2", "item_ids": ["i9"]}]}, max_candidates=10)
    assert got == [ScoreRequest("u1", ("i1", "i2"), GOOD["context"]), ScoreRequest("u2", ("i9",), {})]


def test_an_instance_without_item_ids_asks_for_recommendations():
    limits = RetrievalLimits(default_k=7, max_k=20)
    got = parse_v1({"instances": [{"user_id": "u1"}, {"user_id": "u2", "k": 20, "context": {"hour": 3}}, GOOD]},
                   max_candidates=10, limits=limits)
    assert got == [RetrieveRequest("u1", 7, {}), RetrieveRequest("u2", 20, {"hour": 3}),
                   ScoreRequest("u1", ("i1", "i2"), GOOD["context"])]
    with pytest.raises(InvalidInput, match=r"k = 21 is out of range: expected 1..20 \(serve.max_k\)"):
        parse_v1({"instances": [{"user_id": "u1", "k": 21}]}, max_candidates=10, limits=limits)
    assert parse_v2(v2(USER), 10, limits) == RetrieveRequest("u1", 7, {})
    assert parse_v2(v2(USER, InferInput("k", [1], "INT32", [4]), InferInput("device", [1], "BYTES", ["mobile"])),
                    10, limits) == RetrieveRequest("u1", 4, {"device": "mobile"})


@pytest.mark.parametrize("payload, message", [
    ([GOOD], "JSON object with 'instances'"),
    ({}, "lacks 'instances'"),
    ({"instances": []}, "non-empty list"),
    ({"instances": GOOD}, "non-empty list"),
    ({"instances": [GOOD], "extra": 1}, "unknown field"),
    ({"instances": ["u1"]}, r"instances\[0\] must be an object"),
    ({"instances": [{"item_ids": ["i1"]}]}, "lacks the field 'user_id'"),
    ({"instances": [{"user_id": "u1", "k": 101}]}, r"instances\[0\]\.k = 101 is out of range: expected 1..100"),
    ({"instances": [{"user_id": "u1", "k": 0}]}, r"instances\[0\]\.k = 0 is out of range"),
    ({"instances": [{"user_id": "u1", "k": "5"}]}, r"instances\[0\]\.k must be an integer"),
    ({"instances": [{"user_id": "u1", "k": True}]}, r"instances\[0\]\.k must be an integer"),
    ({"instances": [{**GOOD, "k": 1}]}, r"k applies to recommendations"),
    ({"instances": [{**GOOD, "user_id": 7}]}, "user_id must be a string"),
    ({"instances": [{**GOOD, "user_id": ""}]}, "non-empty string"),
    ({"instances": [{**GOOD, "item_ids": "i1"}]}, "must be a list"),
    ({"instances": [{**GOOD, "item_ids": []}]}, "is empty"),
    ({"instances": [{**GOOD, "item_ids": ["i1", 2]}]}, r"item_ids\[1\] must be a string"),
    ({"instances": [{**GOOD, "item_ids": [f"i{k}" for k in range(11)]}]}, "11 candidates; at most 10"),
    ({"instances": [{**GOOD, "context": "mobile"}]}, "context must be an object"),
    ({"instances": [{**GOOD, "context": {"weather": "rain"}}]}, r"unknown field\(s\) \['weather'\]"),
    ({"instances": [{**GOOD, "context": {"hour": 24}}]}, "hour must be an integer in 0..23"),
    ({"instances": [{**GOOD, "context": {"hour": "7"}}]}, "hour must be an integer"),
    ({"instances": [{**GOOD, "context": {"hour": True}}]}, "hour must be an integer"),
    ({"instances": [{**GOOD, "context": {"device": 3}}]}, "device must be a string"),
    ({"instances": [{**GOOD, "context": {"timestamp": "yesterday-ish"}}]}, "not an ISO-8601 time"),
    ({"instances": [GOOD] * 65}, "at most 64"),
])
def test_v1_bad_requests_name_the_problem(payload, message):
    with pytest.raises(InvalidInput, match=message):
        parse_v1(payload, max_candidates=10)


def v2(*inputs):
    return InferRequest(model_name="robeflow", infer_inputs=list(inputs))


USER = InferInput("user_id", [1], "BYTES", ["u1"])
ITEMS = InferInput("item_ids", [3], "BYTES", ["i1", "i2", "i3"])


def test_v2_parses_tensors():
    got = parse_v2(v2(USER, InferInput("item_ids", [3], "BYTES", ["i1", "i2", "i3"]),
                      InferInput("hour", [1], "INT32", [5]), InferInput("query", [1], "BYTES", ["red gift"])),
                   max_candidates=10)
    assert got == ScoreRequest("u1", ("i1", "i2", "i3"), {"hour": 5, "query": "red gift"})


@pytest.mark.parametrize("request_, message", [
    (v2(ITEMS), "lacks the input 'user_id'"),
    (v2(USER, InferInput("k", [1], "INT64", [101])), r"k = 101 is out of range: expected 1..100"),
    (v2(USER, InferInput("k", [1], "FP32", [3.0])), "input 'k' has datatype FP32"),
    (v2(USER, InferInput("k", [2], "INT64", [3, 4])), "'k' must hold exactly one value"),
    (v2(USER, ITEMS, InferInput("k", [1], "INT64", [3])), "'k' applies to recommendations"),
    (v2(USER, ITEMS, InferInput("color", [1], "BYTES", ["red"])), r"unknown input\(s\) \['color'\]"),
    (v2(USER, ITEMS, ITEMS), "appears twice"),
    (v2(InferInput("user_id", [1], "INT32", [1]), ITEMS), "datatype INT32; expected BYTES"),
    (v2(USER, InferInput("item_ids", [4], "BYTES", ["a", "b"])), "2 values but shape"),
    (v2(USER, InferInput("item_ids", [0], "BYTES", [])), "is empty"),
    (v2(USER, InferInput("item_ids", [11], "BYTES", [str(k) for k in range(11)])), "at most 10"),
    (v2(InferInput("user_id", [2], "BYTES", ["u1", "u2"]), ITEMS), "exactly one value"),
    (v2(USER, ITEMS, InferInput("hour", [1], "FP32", [1.5])), "datatype FP32"),
    (v2(USER, ITEMS, InferInput("hour", [1], "INT32", [99])), "0..23"),
    # tensors are 1-D, as the model metadata says: [1, K] is not a list of K items
    (v2(USER, InferInput("item_ids", [1, 3], "BYTES", [["i1", "i2", "i3"]])), r"'item_ids' must be a 1-D tensor"),
    (v2(InferInput("user_id", [1, 1], "BYTES", [["u1"]]), ITEMS), r"'user_id' must be a 1-D tensor"),
    (v2(USER, ITEMS, InferInput("timestamp", [1], "BYTES", ["NaT"])), "timestamp 'NaT' is not a time"),
    (v2(USER, ITEMS, InferInput("timestamp", [1], "BYTES", ["nan"])), "timestamp 'nan' is not a time"),
])
def test_v2_bad_requests_name_the_problem(request_, message):
    with pytest.raises(InvalidInput, match=message):
        parse_v2(request_, max_candidates=10)
