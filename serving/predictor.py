"""The KServe predictor: ranks a user's candidate items with the production DLRM bundle.

Per request it reads the user's and the items' features from the Feast online store as
plain columns (``features.online.OnlineFeatures.columns``, reading through
:class:`serving.online.LeanStore`, which keeps hot entity rows until the store changes),
computes the features with the transform's core that training uses too
(``features.transform.model_columns``, under ``build_model_frame``), builds the
:class:`~features.spec.ModelInput` without a DataFrame (:func:`model_input`), scores all
candidates in one batch and returns them best first. No pandas object is made per
request. Requests that arrive while a batch is being scored are scored
together (:class:`Batcher`: one store read per feature view, one transform and one model
call for all of them; the transform and the model are row-wise, so no score changes).
Users and items the store does not know are still scored: their ids hash into the
embedding array and their missing features are filled as in training.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from serving.requests import ScoreRequest, parse_v1, parse_v2


@dataclass
class LoadedBundle:
    """A bundle loaded from the registry."""

    model: Any            # dlrm.model.DLRM in eval mode, on CPU
    doc: dict[str, Any]   # its config.json
    version: str          # registry version, e.g. "v3"


def load_production(registry: str | Path, version: str | None = None) -> LoadedBundle:
    """Loads the registry's production bundle (or ``version``) with safetensors + JSON only.

    A local registry is read in place; a remote one is copied to a temporary dir first.
    """
    from dlrm.bundle import load_model
    from serving.registry import Registry

    reg = Registry(registry)
    version = version or reg.production()
    if version is None:
        raise FileNotFoundError(f"registry {registry} has no production model (no 'production' pointer); "
                                "run `robeflow push` first")
    local = reg.local_dir(version)
    if local is not None:
        reg.files(version)  # checks that the version exists
        model, doc = load_model(local)
    else:
        with tempfile.TemporaryDirectory(prefix="robeflow-bundle-") as tmp:
            _, path = reg.fetch(version, Path(tmp))
            model, doc = load_model(path)
    return LoadedBundle(model=model, doc=doc, version=version)


def model_input(features: dict[str, Any], spec: Any) -> Any:
    """:func:`features.transform.model_columns` output -> :class:`features.spec.ModelInput`:
    the arrays ``ModelInput.from_frame`` builds from the model-ready table, built without
    the table (the same layout: bag ``j = n * T + t``; tests compare the two)."""
    from features.spec import ModelInput

    n, T = len(next(iter(features.values()))), len(spec.sparse)
    dense = np.empty((n, len(spec.dense)), dtype=np.float32)   # (N, D)
    for j, f in enumerate(spec.dense):
        dense[:, j] = features[f.name]
    if np.isnan(dense).any():
        bad = [f.name for j, f in enumerate(spec.dense) if np.isnan(dense[:, j]).any()]
        raise ValueError(f"dense feature column(s) {bad} hold missing values")
    lengths = np.ones((n, T), dtype=np.int64)                   # (N, T) bag sizes
    flat: dict[int, np.ndarray] = {}
    for t, f in enumerate(spec.sparse):
        if f.multi_hot:
            bags = features[f.name]
            lengths[:, t] = np.fromiter(map(len, bags), dtype=np.int64, count=n)
            flat[t] = np.concatenate(bags).astype(np.int64, copy=False) if n else np.zeros(0, np.int64)
        else:
            flat[t] = np.asarray(features[f.name], dtype=np.int64)
        if flat[t].size and (flat[t].min() < 0 or flat[t].max() >= f.table_size):
            raise ValueError(f"ids of sparse feature {f.name!r} must lie in [0, {f.table_size}), "
                             f"got range [{flat[t].min()}, {flat[t].max()}]")
    offsets = np.zeros(n * T + 1, dtype=np.int64)
    np.cumsum(lengths.reshape(-1), out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=np.int64)
    starts = offsets[:-1].reshape(n, T)                          # (N, T) first slot of each bag
    for t, f in enumerate(spec.sparse):
        if f.multi_hot:
            lens = lengths[:, t]
            first = np.repeat(np.cumsum(lens) - lens, lens)      # each id's bag start in flat
            values[np.repeat(starts[:, t], lens) + np.arange(flat[t].size) - first] = flat[t]
        else:
            values[starts[:, t]] = flat[t]
    labels = features.get(spec.label)
    return ModelInput(dense=dense, sparse_values=values, sparse_offsets=offsets,
                      labels=None if labels is None else np.asarray(labels, dtype=np.float32))


class Ranker:
    """Scores candidates of :class:`ScoreRequest` s with a model and an online feature reader.

    Args:
        model: the DLRM (eval mode).
        spec: the FeatureSpec it was trained on.
        features: a :class:`features.online.OnlineFeatures` (or one reading through
            :class:`serving.online.LeanStore`): ``columns(user_id, item_ids, context)``.
    """

    def __init__(self, model: Any, spec: Any, features: Any):
        self.model, self.spec, self.features = model, spec, features

    def _columns(self, request: ScoreRequest) -> dict[str, Any]:
        try:
            return self.features.columns(request.user_id, list(request.item_ids), request.context)
        except ValueError as e:  # a context value the feature reader cannot use
            raise InvalidInput(f"cannot build features for user {request.user_id!r}: {e}") from None

    def _score_columns(self, parts: Sequence[dict[str, Any]]) -> list[np.ndarray]:
        """Scores the candidates of several requests in one transform and one model batch."""
        from dlrm.bundle import predict
        from features.transform import model_columns

        sizes = [len(p["item_id"]) for p in parts]
        columns = parts[0] if len(parts) == 1 else {
            key: (np.concatenate([p[key] for p in parts]) if isinstance(parts[0][key], np.ndarray)
                  else list(chain.from_iterable(p[key] for p in parts)))
            for key in parts[0]}
        # the transform and the model are row-wise, so batching requests changes no row's score
        inputs = model_input(model_columns(columns, sum(sizes), self.spec), self.spec)
        probs = predict(self.model, inputs, batch_size=max(1, inputs.num_rows))   # (sum K,)
        bounds = np.cumsum([0, *sizes])
        return [probs[bounds[i]:bounds[i + 1]] for i in range(len(parts))]

    def score_many(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray | InvalidInput]:
        """Per request: (K,) float32 probabilities in request order, or the InvalidInput
        that request raised (the others are still scored)."""
        out: list[np.ndarray | InvalidInput] = [InvalidInput("not scored")] * len(requests)
        good: list[int] = []
        parts = []
        store = getattr(self.features, "store", None)
        # a lean store reads the features of all the batch's candidates at once
        batch_read = (store.prefetched([{"user_id": r.user_id, "item_id": i} for r in requests for i in r.item_ids])
                      if len(requests) > 1 and hasattr(store, "prefetched") else nullcontext())
        with batch_read:
            for i, request in enumerate(requests):
                try:
                    parts.append(self._columns(request))
                    good.append(i)
                except InvalidInput as e:
                    out[i] = e
        if not parts:
            return out
        try:
            scored = self._score_columns(parts)
        except ValueError:
            # one request's rows broke the shared transform: score them one by one, so
            # only that request gets its 400
            scored = []
            for part, i in zip(parts, good):
                try:
                    scored.append(self._score_columns([part])[0])
                except ValueError as e:
                    scored.append(InvalidInput(f"cannot score request for user {requests[i].user_id!r}: {e}"))
        for i, s in zip(good, scored):
            out[i] = s
        return out

    def scores(self, request: ScoreRequest) -> np.ndarray:
        """(K,) float32 purchase probabilities of the request's items, in request order."""
        (s,) = self.score_many([request])
        if isinstance(s, InvalidInput):
            raise s
        return s

    @staticmethod
    def ranked(request: ScoreRequest, scores: np.ndarray) -> tuple[list[str], list[float]]:
        """The request's items best first, and their scores."""
        order = np.argsort(-scores, kind="stable")
        return [request.item_ids[i] for i in order], [float(scores[i]) for i in order]

    def rank(self, request: ScoreRequest) -> tuple[list[str], list[float]]:
        """The request's items best first, and their scores."""
        return self.ranked(request, self.scores(request))

    def rank_many(self, requests: Sequence[ScoreRequest]) -> list[tuple[list[str], list[float]] | InvalidInput]:
        """:meth:`rank` of several requests, scored in one batch."""
        return [s if isinstance(s, InvalidInput) else self.ranked(r, s)
                for r, s in zip(requests, self.score_many(requests))]


class Batcher:
    """Collects the requests that arrive while a batch is being scored and scores them
    together (one online-store read per feature view, one transform, one model call), in
    one worker thread.

    Args:
        fn: requests -> one result (or an exception instance) per request.
        max_requests: most requests per batch.
        wait_s: how long a batch waits for company when the previous batch held more
            than one request (under one client at a time waiting only adds latency, and
            under load the requests that arrive during scoring fill the next batch anyway).
    """

    def __init__(self, fn: Callable[[list[ScoreRequest]], list[Any]], max_requests: int = 32,
                 wait_s: float = 0.001):
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        self._fn, self._max, self._wait = fn, max_requests, wait_s
        self._last_size = 1  # requests in the previous batch: >1 means concurrent clients
        self._pending: list[tuple[ScoreRequest, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None  # made on first use (fork-safe)

    async def submit(self, requests: Sequence[ScoreRequest]) -> list[Any]:
        """The results of ``requests``; raises the first request's error, if any."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in requests]
        self._pending.extend(zip(requests, futures))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robeflow-score")
        while self._pending:
            if self._wait > 0 and self._last_size > 1 and len(self._pending) < self._max:
                await asyncio.sleep(self._wait)
            batch, self._pending = self._pending[:self._max], self._pending[self._max:]
            self._last_size = len(batch)
            try:
                results = await loop.run_in_executor(self._executor, self._fn, [r for r, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting request (HTTP 500), not swallowed
                results = [e] * len(batch)
            for (_, fut), res in zip(batch, results):
                if fut.done():  # the client went away
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


class RobeflowModel(kserve.Model):
    """KServe custom predictor of a robeflow DLRM, answering v1 and v2 requests.

    Args:
        name: the model name in the URL (``/v1/models/NAME:predict``).
        registry: registry dir or fsspec URL (the production bundle is loaded).
        features_repo: the materialised Feast repo (``data/features``).
        max_candidates: most items per request; more is a 400.
        torch_threads: intra-op threads of the model (1 suits per-request batches).
        online_reader: ``lean`` reads the online store directly (:mod:`serving.online`);
            ``feast`` through ``FeatureStore.get_online_features``. Same values.
        max_batch_requests: most concurrent requests scored together (1: no batching).
        batch_wait_ms: how long an idle server waits for more requests to batch.
        online_cache_s: lean reader: the most seconds an entity row is served from memory
            (it is dropped at once when the SQLite online store changes); 0 = no cache.
    """

    def __init__(self, name: str, registry: str | Path, features_repo: str | Path,
                 max_candidates: int = 1000, torch_threads: int = 1, online_reader: str = "lean",
                 max_batch_requests: int = 32, batch_wait_ms: float = 1.0, online_cache_s: float = 60.0):
        super().__init__(name)
        if online_reader not in ("lean", "feast"):
            raise ValueError(f"online_reader = {online_reader!r}; expected 'lean' or 'feast'")
        self.registry, self.features_repo = str(registry), Path(features_repo)
        self.max_candidates, self.torch_threads = max_candidates, torch_threads
        self.online_reader = online_reader
        self.max_batch_requests, self.batch_wait_ms = max_batch_requests, batch_wait_ms
        self.online_cache_s = online_cache_s
        self.ranker: Ranker | None = None
        self.batcher: Batcher | None = None
        self.version: str | None = None
        self.ready = False

    def load(self) -> bool:
        """Loads the production bundle, opens the online store and scores one warm-up
        request (the first call of the embedding op is slow); then sets ``ready``."""
        import torch

        from features.online import OnlineFeatures
        from features.spec import FeatureSpec
        from serving.online import lean_online_features

        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)
        bundle = load_production(self.registry)
        spec = FeatureSpec.from_dict(bundle.doc["feature_spec"])
        online = (lean_online_features(self.features_repo, spec, max_age_s=self.online_cache_s)
                  if self.online_reader == "lean"
                  else OnlineFeatures(self.features_repo, spec))
        ranker = Ranker(bundle.model, spec, online)
        ranker.rank(ScoreRequest("warm-up-user", ("warm-up-item",), {}))
        self.ranker, self.version = ranker, bundle.version
        self.batcher = Batcher(ranker.rank_many, self.max_batch_requests, self.batch_wait_ms / 1e3)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """Unloads (KServe calls this on shutdown): not ready, scoring thread stopped."""
        super().stop()
        if self.batcher is not None:
            self.batcher.close()

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        """v1: ``{"instances": [...]}`` -> ``{"predictions": [...]}``; v2: InferRequest -> InferResponse."""
        if self.batcher is None:
            raise RuntimeError(f"model {self.name} predicts before load()")
        if isinstance(payload, InferRequest):
            request = parse_v2(payload, self.max_candidates)
            (items, scores), = await self.batcher.submit([request])
            outputs = [
                InferOutput(name="item_ids", shape=[len(items)], datatype="BYTES", data=items),
                InferOutput(name="scores", shape=[len(scores)], datatype="FP32", data=scores),
            ]
            return InferResponse(response_id=payload.id or uuid.uuid4().hex, model_name=self.name,
                                 model_version=self.version, infer_outputs=outputs)
        if isinstance(payload, (bytes, bytearray)):
            raise InvalidInput("the request body must be JSON (Content-Type: application/json)")
        requests = parse_v1(payload, self.max_candidates)
        ranked = await self.batcher.submit(requests)
        return {
            "predictions": [{"user_id": r.user_id, "item_ids": items, "scores": scores}
                            for r, (items, scores) in zip(requests, ranked)],
            "model_version": self.version,
        }
