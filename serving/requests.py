"""Scoring requests of the v1 and v2 (Open Inference Protocol) APIs, checked field by field.

Every problem raises :class:`kserve.errors.InvalidInput` (a ValueError), which the KServe
model server answers with HTTP 400 and the message.

v1 (``POST /v1/models/NAME:predict``)::

    {"instances": [{"user_id": "u42", "item_ids": ["i1", "i7"],
                    "context": {"query": "red shampoo", "device": "mobile",
                                "country": "DE", "hour": 20}}]}
    -> {"predictions": [{"user_id": "u42", "item_ids": ["i7", "i1"], "scores": [0.31, 0.02]}],
        "model_version": "v3"}

An instance without ``item_ids`` asks for recommendations from the whole catalogue
(retrieval, then ranking): ``{"user_id": "u42", "k": 5, "context": {...}}`` -> the top
``k`` items (default ``serve.retrieve_k``, at most ``serve.max_k``) with ``"retrieved":
true`` (see :mod:`serving.retrieval`). ``k`` belongs to such requests only.

v2 (``POST /v2/models/NAME/infer``): one user per request; tensors ``user_id`` (BYTES,
[1]), ``item_ids`` (BYTES, [K]; left out: recommend from the catalogue), ``k`` (INT32 or
INT64, [1]; only without ``item_ids``), optional ``query`` / ``device`` / ``country`` /
``timestamp`` (BYTES, [1]) and ``hour`` (INT32 or INT64, [1]). The response has
``item_ids`` (BYTES, [K]) and ``scores`` (FP32, [K]), best first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kserve.errors import InvalidInput

STRING_CONTEXT = ("query", "device", "country", "timestamp")
INT_CONTEXT = ("hour",)
CONTEXT_FIELDS = (*STRING_CONTEXT, *INT_CONTEXT)
INSTANCE_FIELDS = ("user_id", "item_ids", "k", "context")
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class ScoreRequest:
    """One user and the candidate items to rank for them, with the request's context."""

    user_id: str
    item_ids: tuple[str, ...]
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrieveRequest:
    """One user (and context) asking for the top ``k`` items of the whole catalogue."""

    user_id: str
    k: int
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrievalLimits:
    """What a retrieval request may ask for (from :class:`serving.config.ServeConfig`)."""

    default_k: int = 10   # k when the request gives none
    max_k: int = 100      # the largest k accepted (more is a 400)


def _check_k(value: Any, where: str, limits: RetrievalLimits) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{where} must be an integer in 1..{limits.max_k}, got {value!r:.40}")
    if not 1 <= value <= limits.max_k:
        raise InvalidInput(f"{where} = {value} is out of range: expected 1..{limits.max_k} "
                           f"(serve.max_k)")
    return value


def _check_id(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"{where} must be a non-empty string of at most {MAX_ID_CHARS} characters, "
                           f"got {len(value)} characters")
    return value


def _check_items(items: Any, where: str, max_candidates: int) -> tuple[str, ...]:
    if not isinstance(items, list):
        raise InvalidInput(f"{where} must be a list of item id strings, got {type(items).__name__}")
    if not items:
        raise InvalidInput(f"{where} is empty; give at least one candidate item")
    if len(items) > max_candidates:
        raise InvalidInput(f"{where} holds {len(items)} candidates; at most {max_candidates} per request")
    return tuple(_check_id(v, f"{where}[{i}]") for i, v in enumerate(items))


def _check_context(context: Any, where: str) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise InvalidInput(f"{where} must be an object, got {type(context).__name__}")
    unknown = sorted(set(context) - set(CONTEXT_FIELDS))
    if unknown:
        raise InvalidInput(f"{where} has unknown field(s) {unknown}; expected some of {list(CONTEXT_FIELDS)}")
    out: dict[str, Any] = {}
    for key, value in context.items():
        if value is None:
            continue
        if key in STRING_CONTEXT:
            if not isinstance(value, str) or len(value) > 1024:
                raise InvalidInput(f"{where}.{key} must be a string of at most 1024 characters, "
                                   f"got {type(value).__name__}")
            out[key] = value
        else:  # hour
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 23:
                raise InvalidInput(f"{where}.hour must be an integer in 0..23, got {value!r}")
            out[key] = value
    if "timestamp" in out:
        import pandas as pd

        try:
            ts = pd.Timestamp(out["timestamp"])
        except (ValueError, TypeError, OverflowError) as e:
            raise InvalidInput(f"{where}.timestamp {out['timestamp']!r:.80} is not an ISO-8601 time: {e}") from None
        if pd.isna(ts):   # "NaT", "nan", "" parse to a missing time
            raise InvalidInput(f"{where}.timestamp {out['timestamp']!r:.80} is not a time; give an ISO-8601 "
                               "time such as 2026-10-09T12:00:00Z, or leave it out (now)")
    return out


def parse_v1(payload: Any, max_candidates: int, max_instances: int = 64,
             limits: RetrievalLimits = RetrievalLimits()) -> list[ScoreRequest | RetrieveRequest]:
    """The requests of a v1 body ``{"instances": [{user_id, item_ids?, k?, context?}, ...]}``:
    a :class:`ScoreRequest` per instance with ``item_ids``, a :class:`RetrieveRequest` per
    instance without."""
    if not isinstance(payload, dict):
        raise InvalidInput(f"the request body must be a JSON object with 'instances', got {type(payload).__name__}")
    unknown = sorted(set(payload) - {"instances"})
    if unknown:
        raise InvalidInput(f"the request body has unknown field(s) {unknown}; expected 'instances'")
    if "instances" not in payload:
        raise InvalidInput("the request body lacks 'instances' (a list of {user_id, item_ids, context})")
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list of {user_id, item_ids, context} objects")
    if len(instances) > max_instances:
        raise InvalidInput(f"'instances' holds {len(instances)} requests; at most {max_instances}")
    out = []
    for n, inst in enumerate(instances):
        where = f"instances[{n}]"
        if not isinstance(inst, dict):
            raise InvalidInput(f"{where} must be an object with user_id and item_ids, got {type(inst).__name__}")
        unknown = sorted(set(inst) - set(INSTANCE_FIELDS))
        if unknown:
            raise InvalidInput(f"{where} has unknown field(s) {unknown}; expected {list(INSTANCE_FIELDS)}")
        if "user_id" not in inst:
            raise InvalidInput(f"{where} lacks the field 'user_id'")
        user_id = _check_id(inst["user_id"], f"{where}.user_id")
        context = _check_context(inst.get("context"), f"{where}.context")
        if "item_ids" in inst:
            if "k" in inst:
                raise InvalidInput(f"{where}.k applies to recommendations (an instance without item_ids); "
                                   f"a ranking request returns all its items")
            out.append(ScoreRequest(user_id, _check_items(inst["item_ids"], f"{where}.item_ids", max_candidates),
                                    context))
        else:
            k = _check_k(inst["k"], f"{where}.k", limits) if "k" in inst else limits.default_k
            out.append(RetrieveRequest(user_id, k, context))
    return out


def _flatten(data: Any) -> list:
    out: list = []
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(reversed(x))
        else:
            out.append(x)
    return out


def _tensor_values(inp: Any) -> list:
    """The flat values of a v2 input tensor, checked against its shape."""
    name = inp.name
    shape = list(inp.shape or [])
    if any(isinstance(d, bool) or (not isinstance(d, int)) or d < 0 for d in shape):
        raise InvalidInput(f"input {name!r} has a bad shape {shape}")
    if len(shape) != 1:
        raise InvalidInput(f"input {name!r} must be a 1-D tensor (shape [1], or [K] for item_ids), "
                           f"got shape {shape}")
    data = inp.data
    if data is None:
        raise InvalidInput(f"input {name!r} has no data (binary tensors are not accepted; send JSON data)")
    values = _flatten(list(data) if not isinstance(data, list) else data)
    expected = math.prod(shape) if shape else 1
    if len(values) != expected:
        raise InvalidInput(f"input {name!r} has {len(values)} values but shape {shape} ({expected} values)")
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]


def parse_v2(request: Any, max_candidates: int,
             limits: RetrievalLimits = RetrievalLimits()) -> ScoreRequest | RetrieveRequest:
    """The request of a v2 :class:`kserve.InferRequest` (tensors named as in the module doc):
    a :class:`ScoreRequest` with ``item_ids``, a :class:`RetrieveRequest` without."""
    inputs = {}
    for inp in request.inputs:
        if inp.name in inputs:
            raise InvalidInput(f"input {inp.name!r} appears twice")
        inputs[inp.name] = inp
    allowed = ("user_id", "item_ids", "k", *CONTEXT_FIELDS)
    unknown = sorted(set(inputs) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; expected user_id, and optionally item_ids (else k) and "
                           f"{list(CONTEXT_FIELDS)}")
    if "user_id" not in inputs:
        raise InvalidInput("the request lacks the input 'user_id'")
    if "k" in inputs and "item_ids" in inputs:
        raise InvalidInput("input 'k' applies to recommendations (a request without item_ids); a ranking "
                           "request returns all its items")
    for name, inp in inputs.items():
        want = ("INT32", "INT64") if name in (*INT_CONTEXT, "k") else ("BYTES",)
        if inp.datatype not in want:
            raise InvalidInput(f"input {name!r} has datatype {inp.datatype}; expected {' or '.join(want)}")
    values = {name: _tensor_values(inp) for name, inp in inputs.items()}
    for name, vals in values.items():
        if name != "item_ids" and len(vals) != 1:
            raise InvalidInput(f"input {name!r} must hold exactly one value (shape [1]), got {len(vals)}")
    context = _check_context({k: values[k][0] for k in CONTEXT_FIELDS if k in values}, "context")
    user_id = _check_id(values["user_id"][0], "user_id")
    if "item_ids" in values:
        return ScoreRequest(user_id, _check_items(values["item_ids"], "item_ids", max_candidates), context)
    k = _check_k(values["k"][0], "k", limits) if "k" in values else limits.default_k
    return RetrieveRequest(user_id, k, context)
