"""The thin KServe adapter: v1/v2 requests -> the batcher -> the ranker -> responses.

The work is done by :class:`serving.ranker.Ranker` (bundle + features -> scores) and
:class:`serving.batcher.Batcher` (requests that arrive together are scored together);
this class maps KServe's protocol onto them and is configured by one
:class:`serving.config.ServeConfig`. A request without ``item_ids`` is first given its
candidates by the version's retrieval model (:class:`serving.retrieval.Retriever`), then
ranked the same way; a version published without one answers such requests 400.

Live updates: :meth:`RobeflowModel.follow` looks at the registry's ``production`` pointer
every ``serve.reload_s`` seconds; when it names another version, that bundle is loaded
and warmed up beside the serving one, then one reference (ranker, retriever, batcher,
version) is swapped. A request takes that reference once, so it is scored and answered entirely by
the model it started on; the old batcher finishes what it holds before it stops. A bundle
that fails to load is logged once and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import kserve
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from contract.io import log
from serving.batcher import Batcher
from serving.config import ServeConfig
from serving.ranker import Ranker, load_production, unseen_sources
from serving.requests import (CONTEXT_FIELDS, INT_CONTEXT, RetrievalLimits, RetrieveRequest, ScoreRequest, parse_v1,
                              parse_v2)
from serving.retrieval import Retriever, load_retriever

VERSION_HEADER = "x-model-version"   # every predict response names the version that scored it
STEP = "serve"


@dataclass(frozen=True)
class Served:
    """What answers requests now: swapped as one reference."""

    version: str
    ranker: Ranker
    batcher: Batcher
    retriever: Retriever | None = None   # the version's retrieval model (None: it has none)


def settle_heap(freeze: bool = True) -> None:
    """Collects what a model swap (or an unload) dropped, then freezes the survivors (a
    served 1M-item model: ~510K objects) out of the garbage collector's reach: a full
    collection over them takes 0.2-0.5 s, a pause a request would otherwise meet at random;
    frozen, collections scan only what requests allocate. The next swap unfreezes first, so
    an old version's cycles are collected then and nothing leaks; an unload leaves the heap
    unfrozen (``freeze`` False), so shutdown frees everything as usual."""
    import atexit
    import gc

    gc.unfreeze()
    gc.collect()
    if freeze:
        gc.freeze()
        # at exit the interpreter frees the frozen objects like any others (extensions such
        # as Triton's report the ones still alive at their teardown as leaks)
        atexit.unregister(gc.unfreeze)
        atexit.register(gc.unfreeze)


class RobeflowModel(kserve.Model):
    """KServe custom predictor of a robeflow DLRM, answering v1 and v2 requests.

    Args:
        cfg: the ``serve`` section (model name, limits, threads, batching, online reader,
            reload interval).
        registry: registry dir or fsspec URL (its production bundle is served).
        features_repo: the materialised Feast repo (``data/features``).
        online: spec -> online feature reader (default: a
            :class:`features.online.OnlineFeatures` on ``features_repo`` with
            ``cfg.online_reader``).
    """

    def __init__(self, cfg: ServeConfig, registry: str | Path, features_repo: str | Path,
                 online: Callable[[Any], Any] | None = None):
        self._served: Served | None = None
        super().__init__(cfg.model_name, return_response_headers=True)
        if cfg.online_reader not in ("lean", "feast"):
            raise ValueError(f"serve.online_reader = {cfg.online_reader!r}; expected 'lean' or 'feast'")
        if cfg.reload_s < 0:
            raise ValueError(f"serve.reload_s = {cfg.reload_s}; expected >= 0 (0 = never reload)")
        self.cfg = cfg
        self.limits = RetrievalLimits(default_k=cfg.retrieve_k, max_k=cfg.max_k)
        self.registry, self.features_repo = str(registry), Path(features_repo)
        self.online = online or self._open_online
        self._failed: tuple[str, Any] | None = None   # (version, pointer time) that failed to load
        self._following = True   # False after an explicit unload, until the next explicit load
        self._reload_lock: asyncio.Lock | None = None

    # ---- state -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True exactly while a model is loaded."""
        return self._served is not None

    @ready.setter
    def ready(self, value: bool) -> None:
        # kserve.Model sets this in __init__/start/stop; readiness follows the loaded model only
        if not value and self._served is not None:
            self.unload()

    @property
    def version(self) -> str | None:
        """The registry version served now (None when none is loaded)."""
        return None if self._served is None else self._served.version

    @property
    def ranker(self) -> Ranker | None:
        return None if self._served is None else self._served.ranker

    @property
    def batcher(self) -> Batcher | None:
        return None if self._served is None else self._served.batcher

    @property
    def retriever(self) -> Retriever | None:
        return None if self._served is None else self._served.retriever

    async def healthy(self) -> bool:
        return self.ready

    def start(self) -> None:
        """KServe calls this on registering: readiness stays as the loaded model says."""

    def _open_online(self, spec: Any) -> Any:
        from features.online import OnlineFeatures

        return OnlineFeatures(self.features_repo, spec, reader=self.cfg.online_reader,
                              max_age_s=self.cfg.online_cache_s)

    # ---- loading -----------------------------------------------------------------------

    def _build(self, version: str | None = None) -> Served:
        """Loads a bundle (default: production) and its retrieval model if it has one, opens
        its online reader and answers one warm-up request (the first call of the embedding
        op is slow)."""
        import torch

        from contract.spec import FeatureSpec

        if self.cfg.torch_threads > 0:
            torch.set_num_threads(self.cfg.torch_threads)
        bundle = load_production(self.registry, version)
        spec = FeatureSpec.from_dict(bundle.doc["feature_spec"])
        ranker = Ranker(bundle.model, spec, self.online(spec), unseen=unseen_sources(bundle.doc, spec),
                        history_cache_mb=self.cfg.history_cache_mb)
        ranker.rank(ScoreRequest("warm-up-user", ("warm-up-item",), {}))
        retriever = load_retriever(self.registry, bundle.version, spec, ranker.features, self.cfg)
        if retriever is not None:
            (warm,) = retriever.retrieve_many([RetrieveRequest("warm-up-user", 1, {"hour": 0})])
            if not isinstance(warm, Exception):
                ranker.rank(ScoreRequest("warm-up-user", warm.items, {"hour": 0}))
        batcher = Batcher(ranker.rank_many, self.cfg.max_batch_requests, self.cfg.batch_wait_ms / 1e3)
        return Served(bundle.version, ranker, batcher, retriever)

    def load(self) -> bool:
        """Loads the production bundle (blocking); then the model is ready."""
        served = self._build()
        self._following = True
        old, self._served = self._served, served
        if old is not None:
            old.batcher.close()
        del old
        settle_heap()
        return self.ready

    def unload(self) -> None:
        """Stops serving: not ready, predictions answer 503 until a model is loaded
        (:meth:`follow` does not load one again on its own: an explicit load does)."""
        self._following = False
        old, self._served = self._served, None
        if old is not None:
            old.batcher.close()
        del old
        settle_heap(freeze=False)

    def stop(self) -> None:
        """Unloads (KServe calls this on shutdown)."""
        self.unload()

    def _production(self) -> tuple[str | None, Any]:
        """(version, updated_at) of the registry's production pointer, read afresh."""
        from model_registry.registry import Registry

        doc = Registry(self.registry).pointer(fresh=True)
        return (None, None) if doc is None else (str(doc["version"]), doc.get("updated_at"))

    async def reload(self, retry_failed: bool = False) -> bool:
        """Serves the registry's production version if it is not the one served: loads it
        in a thread while the old model keeps answering, then swaps. A bundle that fails
        to load is logged once (one line) and the old model keeps serving.

        Args:
            retry_failed: an explicit load: try again a version that failed to load
                before (else it is tried again only once the pointer moves), and follow
                the pointer again after an :meth:`unload`.

        Returns:
            True when the served model changed.
        """
        if retry_failed:
            self._failed = None
            self._following = True
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            try:
                version, stamp = await asyncio.to_thread(self._production)
            except Exception as e:  # noqa: BLE001 - a registry read error must not stop serving
                key = ("pointer", f"{type(e).__name__}: {e}")
                if self._failed != key:
                    log(STEP, f"cannot read the production pointer of {self.registry}: {key[1]}; "
                              f"still serving {self.version}")
                    self._failed = key
                return False
            if version is None or version == self.version or self._failed == (version, stamp):
                return False
            try:
                served = await asyncio.to_thread(self._build, version)
            except Exception as e:  # noqa: BLE001 - logged in one line, the old model keeps serving
                self._failed = (version, stamp)
                log(STEP, f"cannot load {version} of {self.registry} ({type(e).__name__}: {e}); "
                          f"still serving {self.version}")
                return False
            old, self._served = self._served, served
            self._failed = None
            log(STEP, f"now serving {served.version} (was {old.version if old else 'none'})")
        if old is not None:
            await old.batcher.aclose()   # requests it holds finish on the old model
        del old
        settle_heap()
        return True

    async def follow(self, interval_s: float | None = None) -> None:
        """Calls :meth:`reload` every ``interval_s`` (default ``serve.reload_s``) seconds,
        forever (cancel the task to stop), except while unloaded by :meth:`unload`; does
        nothing when the interval is 0."""
        interval = self.cfg.reload_s if interval_s is None else interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            if self._following:
                await self.reload()

    # ---- protocol ----------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata of the request tensors (-1: any length). Without ``item_ids`` the
        server recommends ``k`` items of the whole catalogue."""
        return [
            {"name": "user_id", "datatype": "BYTES", "shape": [1]},
            {"name": "item_ids", "datatype": "BYTES", "shape": [-1], "parameters": {"optional": True}},
            {"name": "k", "datatype": "INT64", "shape": [1], "parameters": {"optional": True}},
            *({"name": k, "datatype": "INT64" if k in INT_CONTEXT else "BYTES", "shape": [1],
               "parameters": {"optional": True}} for k in CONTEXT_FIELDS),
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata of the response tensors: the items best first and their scores."""
        return [{"name": "item_ids", "datatype": "BYTES", "shape": [-1]},
                {"name": "scores", "datatype": "FP32", "shape": [-1]}]

    async def _answer(self, served: Served, requests: list[ScoreRequest | RetrieveRequest]) -> list[dict[str, Any]]:
        """Per request ``{"item_ids", "scores"}`` best first; a retrieval request's answer is
        its top k and adds ``"retrieved": True`` and ``"fallback"`` (None or "popular")."""
        found: dict[int, Any] = {}
        wanted = [i for i, r in enumerate(requests) if isinstance(r, RetrieveRequest)]
        if wanted:
            if served.retriever is None:
                raise InvalidInput(f"model version {served.version} was published without a retrieval model, so it "
                                   "cannot recommend without candidates: send item_ids to rank them, or publish one "
                                   "with `robeflow push --retrieval models/retrieval`")
            for i, got in zip(wanted, await served.retriever.retrieve([requests[i] for i in wanted])):
                if isinstance(got, Exception):
                    raise got
                found[i] = got
        scored = [ScoreRequest(r.user_id, found[i].items, r.context) if i in found else r
                  for i, r in enumerate(requests)]
        out = []
        for i, (r, (items, scores)) in enumerate(zip(requests, await served.batcher.submit(scored))):
            if i in found:
                out.append({"item_ids": items[:r.k], "scores": scores[:r.k], "retrieved": True,
                            "fallback": found[i].fallback})
            else:
                out.append({"item_ids": items, "scores": scores})
        return out

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        """v1: ``{"instances": [...]}`` -> ``{"predictions": [...]}``; v2: InferRequest -> InferResponse."""
        served = self._served   # one model answers the whole request, even across a swap
        if served is None:
            raise ModelNotReady(self.name, "no model is loaded")
        if response_headers is not None:
            response_headers[VERSION_HEADER] = served.version
        if isinstance(payload, InferRequest):
            request = parse_v2(payload, self.cfg.max_candidates, self.limits)
            (answer,) = await self._answer(served, [request])
            items, scores = answer["item_ids"], answer["scores"]
            outputs = [
                InferOutput(name="item_ids", shape=[len(items)], datatype="BYTES", data=items),
                InferOutput(name="scores", shape=[len(scores)], datatype="FP32", data=scores),
            ]
            parameters = None
            if answer.get("retrieved"):
                parameters = {"retrieved": True, **({"fallback": answer["fallback"]} if answer["fallback"] else {})}
            return InferResponse(response_id=payload.id or uuid.uuid4().hex, model_name=self.name,
                                 model_version=served.version, infer_outputs=outputs, parameters=parameters)
        if isinstance(payload, (bytes, bytearray)):
            raise InvalidInput("the request body must be JSON (Content-Type: application/json)")
        requests = parse_v1(payload, self.cfg.max_candidates, limits=self.limits)
        return {
            "predictions": [{"user_id": r.user_id, **answer}
                            for r, answer in zip(requests, await self._answer(served, requests))],
            "model_version": served.version,
        }
