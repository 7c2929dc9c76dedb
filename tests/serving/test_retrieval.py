"""Retrieval -> ranking in one request: push carries the retrieval bundle, the server
recommends from the whole catalogue (v1 and v2), falls back to popular items, bounds k,
and a version without a retrieval model still ranks."""

from __future__ import annotations

import asyncio
import json
import pickle
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from components.push import RETRIEVAL_DIR, PushConfig, push, sha256_file
from components.retrieval import RetrievalStepConfig, retrieval
from contract.spec import FeatureSpec, ModelInput
from dlrm.bundle import WEIGHTS, load_retrieval, save_model
from dlrm.configs import EmbeddingConfig, ModelConfig
from dlrm.model import DLRM
from features.online import OnlineFeatures
from model_registry.registry import Registry
from serving.config import ServeConfig
from serving.predictor import RobeflowModel
from serving.requests import RetrieveRequest, ScoreRequest
from tests.serving.conftest import running_server

# tiny: the site's catalogue has 30 items, so retrieval keeps a third of it for the ranker
CFG = ServeConfig(retrieve_k=4, max_k=8, retrieve_candidates=10, reload_s=0)
CONTEXT = {"device": "mobile", "hour": 20, "query": "red gift"}


def _random_ranker(spec: FeatureSpec, out, seed: int):
    torch.manual_seed(seed)
    cfg = ModelConfig(embedding=EmbeddingConfig(backend="robe", dim=8, compression=1000, block=8, seed=seed),
                      bottom_mlp=(16,), top_mlp=(16,))
    save_model(DLRM(cfg, len(spec.dense), spec.table_sizes), out, spec=spec, config={"seed": seed})
    metrics = out.parent / f"metrics-{seed}.json"
    metrics.write_text(json.dumps({"auc": 0.8, "target_auc": 0.7, "gate": "target_auc", "passed": True,
                                   "model_sha256": sha256_file(out / WEIGHTS)}))
    return metrics


@pytest.fixture(scope="module")
def pushed(site, tmp_path_factory):
    """A registry whose production version (v1) holds a ranker and the retrieval model
    ``robeflow retrieval`` trained on the site's purchases."""
    root = tmp_path_factory.mktemp("retrieval-serving")
    cfg = RetrievalStepConfig(model={"method": "full", "epochs": 2, "batch_size": 32, "dim": 16, "tower": [32],
                                     "embedding": {"backend": "robe", "dim": 8, "compression": 10, "block": 4}})
    trained = retrieval(cfg, site.root / "model_input", root / "models" / "retrieval", root / "retrieval.json")
    metrics = _random_ranker(site.spec, root / "models" / "model", seed=0)
    result = push(PushConfig(force=True), root / "models" / "model", metrics, registry=str(root / "registry"),
                  retrieval_dir=root / "models" / "retrieval")
    assert result.pushed and result.version == "v1"
    return SimpleNamespace(root=root, registry=root / "registry", result=result, metrics=trained.metrics)


@pytest.fixture(scope="module")
def model(site, pushed):
    m = RobeflowModel(CFG, pushed.registry, site.repo)
    m.load()
    return m


def _v1(model, *instances):
    return asyncio.run(model.predict({"instances": list(instances)}))["predictions"]


def _exact_top(site, registry, user: str, context: dict, n: int) -> list[str]:
    """The retrieval model's exact top n for a user, its tower input built through the
    model-ready frame (the training data's path), not through the server's code."""
    model, items, doc = load_retrieval(Registry(registry).local_dir("v1") / RETRIEVAL_DIR)
    spec = FeatureSpec.from_dict(doc["feature_spec"])
    frame = OnlineFeatures(site.repo, site.spec).frame(user, [items[0]], context)
    inputs = ModelInput.from_frame(frame, spec)
    with torch.no_grad():
        h = model.tower(torch.from_numpy(inputs.sparse_values), torch.from_numpy(inputs.sparse_offsets))
        return [items[i] for i in model.head.scores(h)[0].topk(n).indices.tolist()]


# ---- push --------------------------------------------------------------------------------

def test_push_publishes_the_retrieval_bundle_inside_the_version(pushed, monkeypatch):
    reg = Registry(pushed.registry)
    assert reg.files("v1") == sorted(["MODEL_CARD.md", "config.json", "model.safetensors",
                                      "retrieval/config.json", "retrieval/items.json", "retrieval/model.safetensors"])
    for name in ("config.json", "items.json", "model.safetensors"):   # the bundle as the step wrote it
        assert (pushed.root / "models" / "retrieval" / name).read_bytes() == \
            (pushed.registry / "v1" / RETRIEVAL_DIR / name).read_bytes()
    doc = json.loads(reg.read_text("v1", "config.json"))
    assert doc["retrieval"]["items"] == 30 and doc["retrieval"]["method"] == "full"
    assert doc["retrieval"]["metrics"]["recall_at_100"] == pushed.metrics["recall_at_100"]
    card = reg.read_text("v1", "MODEL_CARD.md")
    assert "## Retrieval" in card and f"| Recall@10 | {pushed.metrics['recall_at_10']:.5f} |" in card

    def refuse(*a, **k):
        raise AssertionError("the retrieval bundle loader unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fetched = pushed.root / "fetched"
    Registry(f"file://{pushed.registry}").fetch("v1", fetched, under=RETRIEVAL_DIR)
    model, items, _ = load_retrieval(fetched)
    assert len(items) == 30 and model.num_items == 30
    # the same push again changes nothing; without the retrieval bundle it is a new version
    again = push(PushConfig(force=True), pushed.root / "models" / "model", pushed.root / "models" / "metrics-0.json",
                 registry=str(pushed.registry), retrieval_dir=pushed.root / "models" / "retrieval")
    assert not again.pushed and "already is production" in again.reason


def test_push_refuses_what_is_not_a_retrieval_bundle(pushed, tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks items.json"):
        push(PushConfig(force=True), pushed.root / "models" / "model", pushed.root / "models" / "metrics-0.json",
             registry=str(tmp_path / "reg"), retrieval_dir=pushed.root / "models" / "model")
    assert not (tmp_path / "reg").exists()


# ---- serving -----------------------------------------------------------------------------

def test_recommendations_are_k_distinct_catalogue_items_ranked_by_the_ranker(site, pushed, model):
    (pred,) = _v1(model, {"user_id": "u3", "k": 5, "context": CONTEXT})
    assert pred["retrieved"] is True and pred["fallback"] is None
    items, scores = pred["item_ids"], pred["scores"]
    catalogue = set(json.loads((pushed.registry / "v1" / RETRIEVAL_DIR / "items.json").read_text()))
    assert len(items) == 5 == len(set(items)) and set(items) <= catalogue
    assert scores == sorted(scores, reverse=True)
    # the candidates are the retrieval model's exact top 10, ranked by the ranker's scores
    candidates = _exact_top(site, pushed.registry, "u3", CONTEXT, CFG.retrieve_candidates)
    want_items, want_scores = model.ranker.rank(ScoreRequest("u3", tuple(candidates), CONTEXT))
    assert items == want_items[:5]
    np.testing.assert_allclose(scores, want_scores[:5], rtol=1e-6)
    (served,) = model.retriever.retrieve_many([RetrieveRequest("u3", 5, CONTEXT)])
    assert served.items == tuple(candidates) and served.fallback is None
    # the default k
    (default,) = _v1(model, {"user_id": "u3", "context": CONTEXT})
    assert default["item_ids"] == items[:CFG.retrieve_k]


def test_v2_recommends_the_same_items_and_says_it_retrieved(model):
    (v1,) = _v1(model, {"user_id": "u5", "k": 3, "context": {"device": "desktop", "hour": 9}})
    response = asyncio.run(model.predict(InferRequest(model_name="robeflow", infer_inputs=[
        InferInput("user_id", [1], "BYTES", ["u5"]), InferInput("k", [1], "INT64", [3]),
        InferInput("device", [1], "BYTES", ["desktop"]), InferInput("hour", [1], "INT64", [9])])))
    out = {o.name: o.data for o in response.outputs}
    assert out["item_ids"] == v1["item_ids"]
    np.testing.assert_allclose(out["scores"], v1["scores"], rtol=1e-6)
    assert response.parameters == {"retrieved": True}
    types = {t["name"]: t for t in model.get_input_types()}
    assert types["item_ids"]["parameters"] == {"optional": True}
    assert types["k"] == {"name": "k", "datatype": "INT64", "shape": [1], "parameters": {"optional": True}}


def test_an_unknown_user_without_context_gets_popular_items_and_is_told(pushed, model):
    (pred,) = _v1(model, {"user_id": "never-seen-user", "k": 6})
    assert pred["fallback"] == "popular" and pred["retrieved"] is True
    assert len(pred["item_ids"]) == 6 == len(set(pred["item_ids"]))
    metrics = json.loads((pushed.root / "retrieval.json").read_text())
    assert metrics["items"] == 30
    popularity = model.retriever.popular[:CFG.retrieve_candidates].tolist()
    assert set(pred["item_ids"]) <= {model.retriever.items[i] for i in popularity}
    # with some context the tower answers, not the fallback; a known user needs none
    (with_context,) = _v1(model, {"user_id": "never-seen-user", "k": 6, "context": {"device": "mobile"}})
    (known,) = _v1(model, {"user_id": "u3", "k": 6})
    assert with_context["fallback"] is None and known["fallback"] is None


def test_k_beyond_the_limit_is_a_400_naming_k(model):
    with pytest.raises(InvalidInput, match=r"instances\[0\]\.k = 9 is out of range: expected 1\.\.8"):
        _v1(model, {"user_id": "u3", "k": 9})
    with pytest.raises(InvalidInput, match=r"k = 50 is out of range"):
        asyncio.run(model.predict(InferRequest(model_name="robeflow", infer_inputs=[
            InferInput("user_id", [1], "BYTES", ["u3"]), InferInput("k", [1], "INT64", [50])])))


def test_lsh_tables_find_the_exact_candidates_when_the_search_cannot_miss(site, pushed):
    # every item sits in every table, every bit may flip (flip_bits = bits) and the miss is
    # tiny: every norm range the score bound leaves open is probed in all its likely buckets,
    # so the 30-item catalogue gives the same top 10 as exact search
    lsh = RobeflowModel(ServeConfig(**{**CFG.__dict__, "retrieval_index": "lsh", "lsh_bits": 4, "lsh_tables": 4,
                                       "lsh_flip_bits": 4, "lsh_miss": 1e-6, "lsh_budget": 1000}),
                        pushed.registry, site.repo)
    lsh.load()
    assert lsh.retriever.method == "lsh" and lsh.retriever.index is not None
    # the catalogue's vectors are held once: the index's copy, read by the retriever and the model's head
    ptr = lsh.retriever.index.weight.data_ptr()
    assert lsh.retriever.weight.data_ptr() == ptr and lsh.retriever.model.head.weight.data_ptr() == ptr
    exact = _exact_top(site, pushed.registry, "u3", CONTEXT, CFG.retrieve_candidates)
    (got,) = lsh.retriever.retrieve_many([RetrieveRequest("u3", 5, CONTEXT)])
    assert set(got.items) == set(exact)


def test_a_version_without_retrieval_still_ranks_and_says_why_it_cannot_recommend(site, pushed, model, tmp_path):
    plain = RobeflowModel(CFG, site.registry, site.repo)
    plain.load()
    assert plain.retriever is None
    (ranked,) = _v1(plain, {"user_id": "u3", "item_ids": ["i1", "i2", "i3"]})
    assert sorted(ranked["item_ids"]) == ["i1", "i2", "i3"] and "retrieved" not in ranked
    with pytest.raises(InvalidInput, match="published without a retrieval model"):
        _v1(plain, {"user_id": "u3"})
    # reload swaps the retrieval model with the ranker: push a ranker alone as v2, then roll back
    push(PushConfig(force=True), site.root / "models" / "model", next(site.root.glob("models/metrics-*.json")),
         registry=str(pushed.registry))
    follower = RobeflowModel(CFG, pushed.registry, site.repo)
    Registry(pushed.registry).rollback()
    follower.load()
    assert follower.version == "v1" and follower.retriever is not None
    Registry(pushed.registry).set_production("v2")
    assert asyncio.run(follower.reload()) is True and follower.version == "v2" and follower.retriever is None
    Registry(pushed.registry).rollback()
    assert asyncio.run(follower.reload()) is True and follower.retriever is not None


def test_over_http_v1_and_v2(site, pushed, model, tmp_path):
    params = "serve:\n  retrieve_k: 4\n  max_k: 8\n  retrieve_candidates: 10\n  reload_s: 0\n"
    with running_server(site, pushed.registry, tmp_path / "srv", params) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        r = client.post("/v1/models/robeflow:predict", json={"instances": [{"user_id": "u3", "context": CONTEXT}]})
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
        (local,) = _v1(model, {"user_id": "u3", "context": CONTEXT})
        assert pred["item_ids"] == local["item_ids"] and pred["retrieved"] is True
        r = client.post("/v1/models/robeflow:predict", json={"instances": [{"user_id": "u3", "k": 99}]})
        assert r.status_code == 400 and "k = 99" in r.text
        r = client.post("/v2/models/robeflow/infer", json={"inputs": [
            {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["nobody"]},
            {"name": "k", "shape": [1], "datatype": "INT64", "data": [2]}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["parameters"] == {"retrieved": True, "fallback": "popular"}
        assert len({o["name"]: o for o in body["outputs"]}["item_ids"]["data"]) == 2


@pytest.mark.parametrize("exact_on_loop", [1_000_000, 0])   # 30 items: on the loop / on a worker thread
def test_concurrent_requests_share_one_retrieval_batch_and_get_each_their_own_top(site, pushed, model, monkeypatch,
                                                                                  exact_on_loop):
    import threading

    import serving.retrieval as retrieval

    monkeypatch.setattr(retrieval, "EXACT_ON_LOOP", exact_on_loop)
    users = [("u3", CONTEXT), ("u5", {"device": "desktop"}), ("u7", CONTEXT)]
    calls, threads = [], []
    search, exact = model.retriever._search_async, model.retriever._exact

    async def counted(wanted):
        calls.append(len(wanted))
        return await search(wanted)

    def where(*args):
        threads.append(threading.current_thread() is threading.main_thread())
        return exact(*args)

    async def all_at_once():
        return await asyncio.gather(*(model.retriever.retrieve([RetrieveRequest(u, 5, c)]) for u, c in users))

    monkeypatch.setattr(model.retriever.batcher, "_fn", counted)
    monkeypatch.setattr(model.retriever, "_exact", where)
    got = asyncio.run(all_at_once())
    assert max(calls) >= 2 and sum(calls) == 3                       # batched: one tower call, one pass
    assert threads == [exact_on_loop > 0] * len(calls)               # the pass ran on the loop / off it
    for (user, context), (cand,) in zip(users, got):
        assert list(cand.items) == _exact_top(site, pushed.registry, user, context, CFG.retrieve_candidates)
