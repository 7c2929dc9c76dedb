"""A lean online-store read for serving: one store read per feature view, no response objects.

``FeatureStore.get_online_features`` builds a protobuf response and converts it back to
Python for every request, which costs more than the store read itself. :class:`LeanStore`
answers the same call (``get_online_features(features=service, entity_rows=[...])
.to_dict()``) straight from the online store's ``online_read``: it reads each feature view
of the service once for the distinct entity keys of the request and maps the values to
Python, with the same columns and values (null for unknown entities). Inside
:meth:`LeanStore.prefetched` the features of a whole batch of requests come from one
read per feature view.

:func:`lean_online_features` wraps it into the features package's
:class:`~features.online.OnlineFeatures`, so the context handling and the transform stay
the ones training uses.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence


class _Columns:
    def __init__(self, columns: dict[str, list]):
        self._columns = columns

    def to_dict(self) -> dict[str, list]:
        return self._columns


class LeanStore:
    """Proxy of a Feast ``FeatureStore`` whose ``get_online_features`` reads the online
    store directly (every other attribute is the store's own).

    Args:
        store: an open FeatureStore (a materialised repo).
        service: the feature service the reader serves (e.g. ``dlrm_v1``).
    """

    def __init__(self, store: Any, service: Any):
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        self._store, self._service = store, service
        self._EntityKey, self._Value = EntityKey, Value
        self._to_python = feast_value_type_to_python_type
        # the store's provider reads the online store (Provider.online_read is public API;
        # FeatureStore only hands the provider out through _get_provider)
        self._provider = store._get_provider()
        self._prefetched: dict[str, dict[str, list]] | None = None
        # (feature view, its join key, the requested feature names) in service order
        self._views = []
        for proj in service.feature_view_projections:
            view = store.get_feature_view(proj.name)
            keys = list(view.join_keys)
            if len(keys) != 1:
                raise ValueError(f"feature view {proj.name} has join keys {keys}; the lean reader "
                                 "handles views keyed by one entity")
            self._views.append((view, keys[0], [f.name for f in proj.features]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _key(self, join_key: str, value: str) -> Any:
        return self._EntityKey(join_keys=[join_key], entity_values=[self._Value(string_val=value)])

    def _read(self, view: Any, join_key: str, names: list[str], keys: Sequence[str]) -> dict[str, list]:
        """{key: [value of each feature in ``names``]} of the distinct ``keys`` (one store read)."""
        read = self._provider.online_read(config=self._store.config, table=view,
                                          entity_keys=[self._key(join_key, k) for k in keys],
                                          requested_features=names)
        out = {}
        for key, (_, feats) in zip(keys, read):
            feats = feats or {}
            out[key] = [self._to_python(feats[n]) if n in feats else None for n in names]
        return out

    def get_online_features(self, features: Any, entity_rows: Sequence[dict[str, Any]]) -> _Columns:
        """The columns Feast's ``get_online_features(...).to_dict()`` returns (join keys,
        then each view's features in service order; None where the store has no value)."""
        if features is not self._service and getattr(features, "name", None) != self._service.name:
            return self._store.get_online_features(features=features, entity_rows=list(entity_rows))
        rows = list(entity_rows)
        columns: dict[str, list] = {}
        for key in dict.fromkeys(k for row in rows for k in row):
            columns[key] = [row[key] for row in rows]
        for view, join_key, names in self._views:
            values = [str(v) for v in columns[join_key]]
            cached = (self._prefetched or {}).get(view.name, {})
            missing = [k for k in dict.fromkeys(values) if k not in cached]
            by_key = {**cached, **(self._read(view, join_key, names, missing) if missing else {})}
            for j, name in enumerate(names):
                columns[name] = [by_key[v][j] for v in values]
        return _Columns(columns)

    @contextmanager
    def prefetched(self, entity_rows: Sequence[dict[str, Any]]) -> Iterator[None]:
        """Reads the features of all ``entity_rows`` (e.g. every candidate of a batch of
        requests) with one store read per feature view; ``get_online_features`` calls in
        the block are answered from those values."""
        rows = list(entity_rows)
        cache: dict[str, dict[str, list]] = {}
        for view, join_key, names in self._views:
            keys = list(dict.fromkeys(str(r[join_key]) for r in rows if join_key in r))
            cache[view.name] = self._read(view, join_key, names, keys) if keys else {}
        self._prefetched = cache
        try:
            yield
        finally:
            self._prefetched = None


def lean_online_features(repo_dir: Path | str, spec: Any) -> Any:
    """An :class:`~features.online.OnlineFeatures` on ``repo_dir`` that reads through
    :class:`LeanStore` (same rows, model input and errors; less time per request)."""
    from features.online import OnlineFeatures

    online = OnlineFeatures(repo_dir, spec)
    online.store = LeanStore(online.store, online.service)
    return online
