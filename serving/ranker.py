"""The ranker: a model bundle and an online feature reader -> scores of candidate items.

Per request it reads the user's and the items' features from the online store as plain
columns (:meth:`features.online.OnlineFeatures.columns`), computes the features with the
transform's core that training uses too (``features.transform.model_columns``), builds the
:class:`~contract.spec.ModelInput` with its one builder (``ModelInput.from_columns``), scores
all candidates in one batch and returns them best first. No pandas object is made per
request. Users and items the store does not know are still scored: their ids hash into
the embedding array and their missing features are filled as in training.

A model with the history tower also reads the user's last events from the online store
(:meth:`features.online.OnlineFeatures.history`), hashes them with the same transform,
encodes them once per request and scores every candidate against them; a user the store
does not know has an empty history, as id dropout taught the model. With a history cache
(``serve.history_cache_mb``, :mod:`serving.history_cache`) a user's hashed and encoded
history is kept and reused while the store returns the same history; each history is
then encoded on its own, so its encoding does not depend on the batch it came in.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from kserve.errors import InvalidInput

from contract.spec import ModelInput
from serving.history_cache import CachedHistory, HistoryCache, history_fingerprint
from serving.requests import ScoreRequest


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
    from model_registry.registry import Registry

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


def unseen_sources(doc: dict[str, Any], spec: Any) -> list[str]:
    """The id columns (``user_id``, ``item_id``) a bundle trained with id dropout
    (``train.id_dropout``) scores unknown entities of by its unseen id; none otherwise."""
    config = doc.get("config") or {}
    if not config.get("id_dropout"):
        return []
    names = {f.name for f in spec.sparse}
    sources = spec.extra.get("sources", {})
    return [sources.get(f, f) for f in config.get("id_dropout_features", []) if f in names]


class Ranker:
    """Scores candidates of :class:`ScoreRequest` s with a model and an online feature reader.

    Args:
        model: the DLRM (eval mode).
        spec: the FeatureSpec it was trained on.
        features: the online feature reader (a :class:`features.online.OnlineFeatures`):
            ``columns(user_id, item_ids, context)`` and, optionally, ``prefetched(rows)``.
        unseen: id columns whose entities the store does not know are scored as the
            model's unseen id (:func:`unseen_sources` of the bundle).
        history_cache_mb: a model with the history tower keeps users' encoded histories
            in this many MB (LRU, :class:`serving.history_cache.HistoryCache`); 0 = none.
    """

    def __init__(self, model: Any, spec: Any, features: Any, unseen: Sequence[str] = (),
                 history_cache_mb: float = 0.0):
        self.model, self.spec, self.features = model, spec, features
        self.unseen = tuple(unseen)
        self.reads_history = getattr(model, "history", None) is not None
        if isinstance(history_cache_mb, bool) or not isinstance(history_cache_mb, (int, float)) \
                or not history_cache_mb >= 0:
            raise ValueError(f"history_cache_mb = {history_cache_mb!r}; expected a number >= 0")
        max_bytes = int(history_cache_mb * 2**20)
        self.history_cache = HistoryCache(max_bytes) if self.reads_history and max_bytes >= 1 else None
        if self.reads_history and spec.history is None:
            raise ValueError("the model reads the user history but its feature spec records none")
        if self.reads_history and not hasattr(features, "history"):
            raise TypeError(f"the model reads the user history; the feature reader {type(features).__name__} "
                            "has no history(user_id)")

    def histories(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The users' histories from the online store, as the model reads them:
        ``(values (nnz, C), offsets (U + 1,))`` int64, newest first (see :func:`dlrm.bundle.predict`)."""
        return self._history_arrays([self._history(u) for u in user_ids])

    def _history(self, user_id: str) -> dict[str, list]:
        """The user's history as the online store holds it (empty lists for an unknown user)."""
        if not self.reads_history:
            return {}
        try:
            return self.features.history(user_id)
        except ValueError as e:
            raise InvalidInput(f"cannot read the history of user {user_id!r}: {e}") from None

    def _history_arrays(self, hists: Sequence[dict[str, list]]) -> tuple[np.ndarray, np.ndarray]:
        """The requests' raw histories -> ``(values (nnz, C), offsets (U + 1,))`` int64, ids
        hashed by the transform training used (``features.transform.model_columns``)."""
        from features.transform import model_columns

        names = self.spec.history.names
        raw = {name: [h.get(name) or [] for h in hists] for name in names}
        u = len(hists)
        raw["event_timestamp"] = np.zeros(u, dtype="datetime64[ns]")   # the transform needs one; unused here
        got = model_columns(raw, u, self.spec)
        lengths = np.array([len(a) for a in got[names[0]]], dtype=np.int64)
        offsets = np.zeros(u + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.stack([np.concatenate(got[n]) if u else np.zeros(0, np.int64) for n in names], axis=1)
        return values.astype(np.int64, copy=False), offsets

    def _columns(self, request: ScoreRequest) -> dict[str, Any]:
        try:
            if self.unseen:
                return self.features.columns(request.user_id, list(request.item_ids), request.context,
                                             unseen=self.unseen)
            return self.features.columns(request.user_id, list(request.item_ids), request.context)
        except ValueError as e:  # a context value the feature reader cannot use
            raise InvalidInput(f"cannot build features for user {request.user_id!r}: {e}") from None

    def _score_columns(self, parts: Sequence[dict[str, Any]], hists: Sequence[dict[str, list]] = (),
                       users: Sequence[str] = ()) -> list[np.ndarray]:
        """Scores the candidates of several requests in one transform and one model batch
        (``hists``: each request's user history and ``users`` its user, for a model with the
        history tower)."""
        import torch

        from dlrm.bundle import predict
        from features.transform import model_columns

        sizes = [len(p["item_id"]) for p in parts]
        columns = parts[0] if len(parts) == 1 else {
            key: (np.concatenate([p[key] for p in parts]) if isinstance(parts[0][key], np.ndarray)
                  else list(chain.from_iterable(p[key] for p in parts)))
            for key in parts[0]}
        # the transform and the model are row-wise, so batching requests changes no row's score
        inputs = ModelInput.from_columns(model_columns(columns, sum(sizes), self.spec), self.spec, history=False)
        batch = max(1, inputs.num_rows)
        if not self.reads_history:
            with torch.inference_mode():   # no autograd bookkeeping on the forward's ~50 small ops
                probs = predict(self.model, inputs, batch_size=batch)                              # (sum K,)
        elif self.history_cache is None:   # one history per request, encoded once for all its candidates
            values, offsets = self._history_arrays(hists)
            histories = (values, offsets, np.repeat(np.arange(len(parts)), sizes))
            probs = predict(self.model, inputs, batch_size=batch, histories=histories)
        else:
            probs = self._predict_cached(inputs, sizes, hists, users)
        bounds = np.cumsum([0, *sizes])
        return [probs[bounds[i]:bounds[i + 1]] for i in range(len(parts))]

    def _predict_cached(self, inputs: ModelInput, sizes: Sequence[int], hists: Sequence[dict[str, list]],
                        users: Sequence[str]) -> np.ndarray:
        """``predict`` with the users' histories from the cache where it holds them (the
        same history, by fingerprint), the others hashed and encoded now and kept."""
        import torch

        from dlrm.bundle import predict

        if len(users) != len(hists):
            raise ValueError(f"{len(users)} users for {len(hists)} histories")
        cache, names = self.history_cache, self.spec.history.names
        slot: dict[tuple[str, bytes], int] = {}   # (user, fingerprint) -> history index
        request_history = [slot.setdefault((str(u), history_fingerprint(h, names)), len(slot))
                           for u, h in zip(users, hists)]
        keys = list(slot)
        first: dict[int, int] = {}   # history index -> its first request
        for r, i in enumerate(request_history):
            first.setdefault(i, r)
        entries = [cache.get(u, fp) for u, fp in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        values_of: list[np.ndarray | None] = [None if e is None else e.values for e in entries]
        if missing:
            got, offsets = self._history_arrays([hists[first[i]] for i in missing])
            for j, i in enumerate(missing):
                part = got[offsets[j]:offsets[j + 1]]
                values_of[i] = part if len(missing) == 1 else part.copy()   # a kept entry holds only its rows
        lengths = np.array([len(v) for v in values_of], dtype=np.int64)
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = values_of[0] if len(keys) == 1 else np.concatenate(values_of, axis=0)
        known = [None if e is None else e.encoded for e in entries]
        rows = np.repeat(np.asarray(request_history, dtype=np.int64), sizes)
        with torch.inference_mode(), self.model.history.given_encodings(known):
            probs = predict(self.model, inputs, batch_size=max(1, inputs.num_rows),
                            histories=(values, offsets, rows))
        for i in missing:
            if known[i] is not None:
                cache.put(keys[i][0], CachedHistory(keys[i][1], values_of[i], known[i]))
        return probs

    def score_many(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray | InvalidInput]:
        """Per request: (K,) float32 probabilities in request order, or the InvalidInput
        that request raised (the others are still scored)."""
        out: list[np.ndarray | InvalidInput] = [InvalidInput("not scored")] * len(requests)
        good: list[int] = []
        parts, hists = [], []
        # a reader that can reads the features of all the batch's candidates at once
        batch_read = (self.features.prefetched([{"user_id": r.user_id, "item_id": i}
                                                for r in requests for i in r.item_ids])
                      if len(requests) > 1 and hasattr(self.features, "prefetched") else nullcontext())
        with batch_read:
            for i, request in enumerate(requests):
                try:
                    part, hist = self._columns(request), self._history(request.user_id)
                except InvalidInput as e:
                    out[i] = e
                    continue
                parts.append(part)
                hists.append(hist)
                good.append(i)
        if not parts:
            return out
        try:
            scored = self._score_columns(parts, hists, [requests[i].user_id for i in good])
        except ValueError:
            # one request's rows broke the shared transform: score them one by one, so
            # only that request gets its 400
            scored = []
            for part, hist, i in zip(parts, hists, good):
                try:
                    scored.append(self._score_columns([part], [hist], [requests[i].user_id])[0])
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
        items = request.item_ids
        return [items[i] for i in order.tolist()], scores[order].tolist()   # plain ints and floats: ~3x faster

    def rank(self, request: ScoreRequest) -> tuple[list[str], list[float]]:
        """The request's items best first, and their scores."""
        return self.ranked(request, self.scores(request))

    def rank_many(self, requests: Sequence[ScoreRequest]) -> list[tuple[list[str], list[float]] | InvalidInput]:
        """:meth:`rank` of several requests, scored in one batch."""
        return [s if isinstance(s, InvalidInput) else self.ranked(r, s)
                for r, s in zip(requests, self.score_many(requests))]
