"""A lean online-store read: one store read per feature view, no response objects.

``FeatureStore.get_online_features`` builds a protobuf response and converts it back to
Python for every request, which costs more than the store read itself. :class:`LeanStore`
answers the same call (``get_online_features(features=service, entity_rows=[...])
.to_dict()``) straight from the online store's ``online_read``: it reads each feature view
of the service once for the distinct entity keys of the request and maps the values to
Python, with the same columns and values (null for unknown entities). Inside
:meth:`LeanStore.prefetched` the features of a whole batch of requests come from one
read per feature view.

Entity rows read once are kept in process (unknown entities too), so hot users and items
cost a dict lookup. The online store changes only when it is materialised, and the cache
is emptied as soon as it does: for the SQLite store the check is exact and costs a
``stat`` and a ``PRAGMA data_version`` per call (both change whenever another connection
commits, or the file is replaced); for any store the cache is also emptied after
``max_age_s`` seconds.

:class:`~features.online.OnlineFeatures` reads through it with ``reader="lean"`` (what the
server uses), so the context handling and the transform stay the ones training uses.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence


class _Columns:
    def __init__(self, columns: dict[str, list]):
        self._columns = columns

    def to_dict(self) -> dict[str, list]:
        return self._columns


class LeanStore:
    """Answers a Feast ``FeatureStore``'s ``get_online_features`` for one feature service
    by reading the online store directly.

    Args:
        store: an open FeatureStore (a materialised repo).
        service: the feature service the reader serves (e.g. ``dlrm_v1``).
        max_age_s: cached entity rows are dropped after this many seconds at the latest
            (0: no cache, every call reads the store).
        max_entries: most entity rows cached per feature view (the view's cache is
            emptied when full).
    """

    def __init__(self, store: Any, service: Any, max_age_s: float = 60.0, max_entries: int = 200_000):
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        self._store, self._service = store, service
        self._EntityKey, self._Value = EntityKey, Value
        self._to_python = feast_value_type_to_python_type
        self._provider = store.provider  # its online_read reads the online store
        if max_age_s < 0 or max_entries < 1:
            raise ValueError(f"max_age_s must be >= 0 and max_entries >= 1, got {max_age_s}, {max_entries}")
        self.max_age_s, self.max_entries = float(max_age_s), int(max_entries)
        # view name -> {entity key: [value of each requested feature]} (None values: unknown)
        self._cache: dict[str, dict[str, list]] = {}
        self._cached_at = time.monotonic()
        self._version: Any = None
        self._db_path, self._db = _sqlite_path(store), None
        self._prefetching = 0  # inside prefetched(): the batch's rows are read already
        # (feature view, its join key, the requested feature names) in service order
        self._views = []
        for proj in service.feature_view_projections:
            view = store.get_feature_view(proj.name)
            keys = list(view.join_keys)
            if len(keys) != 1:
                raise ValueError(f"feature view {proj.name} has join keys {keys}; the lean reader "
                                 "handles views keyed by one entity")
            self._views.append((view, keys[0], [f.name for f in proj.features]))

    def _key(self, join_key: str, value: str) -> Any:
        return self._EntityKey(join_keys=[join_key], entity_values=[self._Value(string_val=value)])

    def _store_version(self) -> Any:
        """What changes whenever the online store does (SQLite: the file's identity and
        mtime and the database's data_version); None where that cannot be told."""
        if self._db_path is None:
            return None
        try:
            st = os.stat(self._db_path)
        except OSError:
            return None
        if self._db is None or self._db[0] != st.st_ino:
            # our own read-only connection: data_version moves when any other connection commits
            conn = sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True, check_same_thread=False)
            self._db = (st.st_ino, conn)
        (data_version,) = self._db[1].execute("PRAGMA data_version").fetchone()
        return st.st_ino, st.st_mtime_ns, st.st_size, data_version

    def _refresh(self) -> None:
        """Empties the cache when the store changed or it is older than ``max_age_s``."""
        version = self._store_version()
        now = time.monotonic()
        if version is None or version != self._version or now - self._cached_at > self.max_age_s:
            self._cache = {}
            self._version, self._cached_at = version, now

    def _read(self, view: Any, join_key: str, names: list[str], keys: Sequence[str]) -> dict[str, list]:
        """{key: [value of each feature in ``names``]} of the distinct ``keys``: the cached
        ones from the cache, the others from one store read."""
        cache = self._cache.setdefault(view.name, {})
        missing = [k for k in keys if k not in cache]
        if missing:
            read = self._provider.online_read(config=self._store.config, table=view,
                                              entity_keys=[self._key(join_key, k) for k in missing],
                                              requested_features=names)
            fresh = {}
            for key, (_, feats) in zip(missing, read):
                feats = feats or {}
                fresh[key] = [self._to_python(feats[n]) if n in feats else None for n in names]
            if self.max_age_s == 0:
                return {k: fresh[k] if k in fresh else cache[k] for k in keys}
            if len(cache) + len(fresh) > self.max_entries:
                cache.clear()
            cache.update(fresh)
            return {k: cache[k] for k in keys}
        return {k: cache[k] for k in keys}

    def get_online_features(self, features: Any, entity_rows: Sequence[dict[str, Any]]) -> _Columns:
        """The columns Feast's ``get_online_features(...).to_dict()`` returns (join keys,
        then each view's features in service order; None where the store has no value)."""
        if features is not self._service and getattr(features, "name", None) != self._service.name:
            return self._store.get_online_features(features=features, entity_rows=list(entity_rows))
        rows = list(entity_rows)
        columns: dict[str, list] = {}
        for key in dict.fromkeys(k for row in rows for k in row):
            columns[key] = [row[key] for row in rows]
        if self._prefetching == 0:
            self._refresh()
        for view, join_key, names in self._views:
            values = [str(v) for v in columns[join_key]]
            by_key = self._read(view, join_key, names, list(dict.fromkeys(values)))
            # (rows, features) -> (features, rows)
            for name, col in zip(names, zip(*[by_key[v] for v in values]) if values else [()] * len(names)):
                columns[name] = list(col)
        return _Columns(columns)

    @contextmanager
    def prefetched(self, entity_rows: Sequence[dict[str, Any]]) -> Iterator[None]:
        """Reads the features of all ``entity_rows`` (e.g. every candidate of a batch of
        requests) with one store read per feature view; ``get_online_features`` calls in
        the block are answered from those values."""
        rows = list(entity_rows)
        self._refresh()
        for view, join_key, names in self._views:
            keys = list(dict.fromkeys(str(r[join_key]) for r in rows if join_key in r))
            if keys:
                self._read(view, join_key, names, keys)
        self._prefetching += 1
        try:
            yield
        finally:
            self._prefetching -= 1


def _sqlite_path(store: Any) -> str | None:
    """The file of a SQLite online store (None for other stores)."""
    config = store.config
    if getattr(config.online_store, "type", None) != "sqlite":
        return None
    path = Path(config.online_store.path)
    return str(path if path.is_absolute() or not config.repo_path else Path(config.repo_path) / path)
