"""Serving-side features: online store reads -> the same model input training used.

Example (a server opens the store once, then calls per request)::

    spec = FeatureSpec.load("data/model_input/feature_spec.json")
    online = OnlineFeatures("data/features", spec)
    mi = online.model_input("u42", ["i1", "i7"], {"query": "red shampoo", "device": "mobile"})
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ContextManager, Mapping, Sequence

import numpy as np
import pandas as pd

from contract.hashing import UNSEEN
from contract.spec import FeatureSpec, ModelInput
from features.transform import build_model_frame

CONTEXT_KEYS = frozenset({"query", "device", "country", "timestamp", "event_timestamp",
                          "hour", "position", "price"})


class OnlineFeatures:
    """Reads ``dlrm_v1`` features of a user and candidate items from a materialised repo.

    Args:
        repo_dir: the directory ``robeflow features --out`` wrote (holds feature_store.yaml).
        spec: the feature spec the model was trained with (``feature_spec.json``).
        reader: ``feast`` reads through ``FeatureStore.get_online_features``; ``lean``
            through :class:`features.lean_store.LeanStore` (same values, less time per
            request, hot entity rows kept in memory until the store changes).
        max_age_s: lean reader: the most seconds an entity row is served from memory
            (0: every call reads the store).
    """

    def __init__(self, repo_dir: Path | str, spec: FeatureSpec, *, reader: str = "feast",
                 max_age_s: float = 60.0):
        from features.repo import open_store

        if reader not in ("lean", "feast"):
            raise ValueError(f"online reader = {reader!r}; expected 'lean' or 'feast'")
        self.spec = spec
        self.store = open_store(Path(repo_dir))
        self.service = self.store.get_feature_service(spec.extra.get("feature_service", spec.version))
        self.lean = None
        self._by_key: dict[str, list[str]] | None = None   # join key -> its views' features (first use)
        if reader == "lean":
            from features.lean_store import LeanStore

            self.lean = LeanStore(self.store, self.service, max_age_s=max_age_s)

    def prefetched(self, entity_rows: Sequence[Mapping[str, Any]]) -> ContextManager[None]:
        """A block in which :meth:`columns` of any of ``entity_rows`` is answered from one
        read per feature view (lean reader; the feast reader reads per call)."""
        return self.lean.prefetched(entity_rows) if self.lean is not None else nullcontext()

    def columns(self, user_id: str, item_ids: Sequence[str],
                context: Mapping[str, Any] | None = None, unseen: Sequence[str] = ()) -> dict[str, Any]:
        """:meth:`rows` as plain columns (name -> list of n values; ``event_timestamp`` a
        (n,) datetime64[ns] array in UTC), what :func:`~features.transform.model_columns`
        reads; no pandas objects, so a server pays no per-request frame overhead.

        ``unseen``: join keys (``user_id``, ``item_id``) whose entities the store does not
        know (no feature value in their view) read as :data:`contract.hashing.UNSEEN`, the
        id a model trained with ``train.id_dropout`` learned for entities it never saw."""
        context = dict(context or {})
        unknown = sorted(set(context) - CONTEXT_KEYS)
        if unknown:
            raise ValueError(f"unknown context key(s) {unknown}; expected some of {sorted(CONTEXT_KEYS)}")
        items = [str(i) for i in item_ids]
        n = len(items)
        ts = context.get("timestamp", context.get("event_timestamp")) or datetime.now(timezone.utc)
        ts = pd.Timestamp(ts)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        if "hour" in context:
            hour = int(context["hour"])
            if not 0 <= hour <= 23:
                raise ValueError(f"context hour must lie in 0..23, got {hour}")
            ts = ts.replace(hour=hour)
        columns: dict[str, Any] = {
            "user_id": [str(user_id)] * n,
            "item_id": items,
            "event_timestamp": np.full(n, ts.tz_convert(None).as_unit("ns").to_datetime64()),
            "query": [context.get("query") or ""] * n,
            "device": [context.get("device")] * n,
            "country": [context.get("country")] * n,
        }
        for key in ("position", "price"):
            value = context.get(key)
            if isinstance(value, (list, tuple)):
                if len(value) != n:
                    raise ValueError(f"context {key} holds {len(value)} values for {n} items")
                columns[key] = list(value)
            else:
                columns[key] = [value] * n
        if n == 0:
            return columns
        response = (self.lean or self.store).get_online_features(
            features=self.service,
            entity_rows=[{"user_id": str(user_id), "item_id": i} for i in items],
        )
        for name, values in response.to_dict().items():
            if name not in ("user_id", "item_id"):
                columns[name] = list(values)
        for key in unseen:
            names = self._view_features().get(key)
            if names is None:
                raise ValueError(f"{key!r} is not the join key of a feature view of {self.service.name}")
            known = [any(v is not None for v in vals) for vals in zip(*(columns[f] for f in names))]
            columns[key] = [v if k else UNSEEN for v, k in zip(columns[key], known)]
        return columns

    def _view_features(self) -> dict[str, list[str]]:
        """Join key -> the names of the service's features in views keyed by it."""
        if self._by_key is None:
            by_key: dict[str, list[str]] = {}
            for proj in self.service.feature_view_projections:
                for key in self.store.get_feature_view(proj.name).join_keys:
                    by_key.setdefault(key, []).extend(f.name for f in proj.features)
            self._by_key = by_key
        return self._by_key

    def history(self, user_id: str) -> dict[str, list]:
        """The user's history as the online store holds it (the snapshot: the last
        ``spec.history.length`` events before the snapshot day, newest first): the user
        history view's fields (``hist_item``, ``hist_cat``, ``hist_action``, ``hist_days``)
        -> lists, raw values as in the offline ``user_history`` table; empty lists for a
        user the store does not know.

        Raises:
            ValueError: the spec records no user history (data from before it existed).
        """
        if self.spec.history is None:
            raise ValueError("the feature spec records no user history; rerun `robeflow features`")
        reader = getattr(self, "_history_reader", None)
        if reader is None:
            service = self.store.get_feature_service(self.spec.history.feature_service)
            if self.lean is not None:
                from features.lean_store import LeanStore

                reader = (service, LeanStore(self.store, service, max_age_s=self.lean.max_age_s))
            else:
                reader = (service, self.store)
            self._history_reader = reader
        service, source = reader
        got = source.get_online_features(features=service, entity_rows=[{"user_id": str(user_id)}]).to_dict()
        return {c: list(got[c][0] or []) for c in self.spec.history.names}

    def rows(self, user_id: str, item_ids: Sequence[str],
             context: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """One row per candidate: the context columns and the online feature values.

        ``context`` may hold ``query``, ``device``, ``country``, ``timestamp`` (datetime or
        ISO string; default now, UTC) or ``hour`` (0-23, replaces the timestamp's hour),
        and ``position`` / ``price`` as a scalar or one value per item. Unknown keys raise
        ValueError. Users and items the store does not know get null feature values, which
        :func:`~features.transform.build_model_frame` fills as in training.
        """
        columns = self.columns(user_id, item_ids, context)
        ts = pd.DatetimeIndex(columns.pop("event_timestamp")).tz_localize("UTC")
        columns = {"user_id": columns.pop("user_id"), "item_id": columns.pop("item_id"),
                   "event_timestamp": pd.Series(ts, dtype="datetime64[ns, UTC]"), **columns}
        return pd.DataFrame(columns)

    def frame(self, user_id: str, item_ids: Sequence[str],
              context: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """The model-ready table of the candidates (same columns as the training tables)."""
        return build_model_frame(self.rows(user_id, item_ids, context), self.spec)

    def model_input(self, user_id: str, item_ids: Sequence[str],
                    context: Mapping[str, Any] | None = None) -> ModelInput:
        """The :class:`ModelInput` of the candidates, one row per item in order (no labels)."""
        return ModelInput.from_frame(self.frame(user_id, item_ids, context), self.spec)


def online_model_input(repo_dir: Path | str, spec: FeatureSpec, user_id: str,
                       item_ids: Sequence[str], context: Mapping[str, Any] | None = None) -> ModelInput:
    """One-off :meth:`OnlineFeatures.model_input` (opens the store each call; a server
    should keep an :class:`OnlineFeatures`)."""
    return OnlineFeatures(repo_dir, spec).model_input(user_id, item_ids, context)
