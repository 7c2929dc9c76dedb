"""Recommendations from the whole catalogue: the retrieval model's candidates for the ranker.

A request without ``item_ids`` is answered in two stages, retrieval then ranking:

1. **Retrieval.** The user's row is read from the online store by the ranker's own reader,
   and the retrieval tower's context features (``user``, ``query``, ``fav_category_l1``,
   ``device``, ``country``, ``hour``, ``day_of_week`` by default) are computed by the
   transform training used (``features.transform.model_columns``, with the ranker's feature
   spec: the sources, query terms and hashing of the same model-ready data). The tower maps
   them to the user vector h; item i scores ``h . w_i + b_i``. The top
   ``serve.retrieve_candidates`` items (at least k) are found

   - exactly (``exact``): one (B, d) x (d, N) product and a top-k. ``auto`` picks it for
     catalogues up to ``serve.exact_max_items`` (100K): there it costs a few milliseconds
     at most (measured on one core here: ~0.1 ms at 5K items, ~4 ms at 100K, 45-70 ms at
     1M on a loaded box: the pass over 256 MB of item vectors is memory-bound) and finds
     the true top, which hashing only approximates; or
   - through LSH tables (``lsh``; :class:`gpu_ops.lsh.multiprobe.ProbeIndex`, built from
     the item vectors when the bundle loads, with the ``serve.lsh_*`` settings): SimHash
     codes of the angle of ``[w_i, b_i]`` (the bias scaled to spread like a direction of
     w) in the item vectors' principal directions, every item in every table, cut into
     ``serve.lsh_norm_ranges`` norm ranges (half of the items, a quarter, ...). The query
     ``[h, 1]`` visits the ranges from the largest norm down; with tau the
     ``retrieve_candidates``-th best exact score so far, an item of range r can only beat tau
     within the angle ``arccos(tau / (M_r |h, 1|))``, so each range probes the buckets where
     an item at that angle would most likely fall (across tables, until it is missed
     everywhere with probability ``serve.lsh_miss``), scores them exactly, and the search
     stops at the first range whose largest norm cannot reach tau. The work grows with the
     items near the query, not with N (``serve.lsh_budget`` caps the items scored).
     ``auto`` picks it above ``serve.exact_max_items``. When the tables return fewer items
     than needed, the most popular items fill the list.

   Concurrent requests are retrieved as one batch (one tower call, one pass over the
   items). Above ``EXACT_ON_LOOP`` items the exact pass (one product and one top-k: a
   handful of interpreter-lock hand-offs) runs on a worker thread, so the server's event
   loop keeps reading sockets and ranking other requests meanwhile; everything else
   (online store, tower, LSH probes: a few milliseconds) stays on the loop, where a
   thread would wait for the interpreter lock at each small torch call while the loop
   ranks. The price on a busy machine: the pass now shares the CPU with the ranking it no
   longer holds up, so under a recommending and a ranking client at once the ranking
   client waits far less and the recommending one longer (measured with
   ``benchmarks/retrieve_bench.py --mixed``).

2. **Ranking.** The DLRM ranker scores those candidates as it scores a request's
   ``item_ids`` (:class:`serving.ranker.Ranker`); the best ``k`` are answered.

A user the online store does not know, sent without any context, gives the tower nothing
but a hashed id it never saw: such a request gets the most purchased items of the
retrieval model's training data as candidates (still ranked by the ranker), and the
response says ``"fallback": "popular"``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from kserve.errors import InvalidInput

from contract.spec import FeatureSpec, ModelInput
from serving.batcher import Batcher
from serving.config import ServeConfig
from serving.requests import RetrieveRequest

EXACT_ON_LOOP = 20_000  # exact search over up to this many items stays on the loop (< ~1 ms)
FOLDER = "retrieval"   # the retrieval bundle's folder inside a registry version (components/push.py)
POPULAR = "popular"


@dataclass(frozen=True)
class Candidates:
    """The items retrieval hands to the ranker, best first, and why these."""

    items: tuple[str, ...]
    fallback: str | None = None   # "popular": neither a known user nor any context


class Retriever:
    """The retrieval model of a served version: requests -> candidate items.

    Args:
        model: a :class:`dlrm.retrieval.RetrievalModel` (eval mode).
        items: the catalogue's item ids, one per output row.
        spec: the tower's context features (the retrieval bundle's ``feature_spec``).
        popularity: ``(N,)`` training purchases per item.
        ranker_spec: the ranker's FeatureSpec, whose transform settings compute the context.
        features: the online feature reader (the ranker's), ``columns(user_id, item_ids, context)``.
        cfg: the ``serve`` section.
    """

    def __init__(self, model: Any, items: Sequence[str], spec: FeatureSpec, popularity: Any,
                 ranker_spec: FeatureSpec, features: Any, cfg: ServeConfig):
        import torch

        sources = ranker_spec.extra.get("sources", {})
        unknown = [f.name for f in spec.sparse if f.name not in sources]
        if unknown:
            raise ValueError(f"the retrieval model reads context feature(s) {unknown} that the ranker's feature "
                             f"spec cannot compute (it computes {sorted(sources)})")
        if len(items) != model.num_items or len(popularity) != model.num_items:
            raise ValueError(f"{len(items)} item ids and {len(popularity)} popularities for a retrieval model of "
                             f"{model.num_items} items")
        self.model, self.cfg, self.features = model, cfg, features
        self.items = list(map(str, items))
        # the tower's features, computed with the ranker's transform settings
        self.spec = FeatureSpec(dense=(), sparse=spec.sparse, label=spec.label, version=spec.version,
                                extra=ranker_spec.extra)
        self.weight = model.head.weight.detach().float().contiguous()   # (N, d)
        self.bias = model.head.bias.detach().float().contiguous()       # (N,)
        pop = torch.as_tensor(np.asarray(popularity), dtype=torch.float64)
        self.popular = torch.sort(-pop, stable=True).indices             # (N,) most purchased first
        self.anchor = self.items[int(self.popular[0])]   # the reader reads user and item rows together
        n = len(self.items)
        self.method = cfg.retrieval_index if cfg.retrieval_index != "auto" else \
            ("exact" if n <= cfg.exact_max_items else "lsh")
        self.index = None
        if self.method == "lsh":
            from gpu_ops.lsh.multiprobe import ProbeIndex

            self.index = ProbeIndex(self.weight.shape[1], bits=cfg.lsh_bits, tables=cfg.lsh_tables,
                                    ranges=cfg.lsh_norm_ranges, flip_bits=cfg.lsh_flip_bits, seed=cfg.lsh_seed)
            self.index.build(self.weight, self.bias)
            # the index scores its own copy of the item vectors (in huge pages); the exact scan
            # and the model's head read that copy too, so the catalogue is held once
            self.weight = self.index.weight
            head = getattr(model.head, "weight", None)
            if isinstance(head, torch.Tensor) and head.shape == self.weight.shape and head.dtype == torch.float32:
                head.data = self.weight
        # concurrent retrievals are batched; the exact pass over the item matrix runs on a
        # worker thread, so the server's event loop keeps answering meanwhile
        self.batcher = Batcher(self._search_async, max_requests=cfg.max_batch_requests,
                               wait_s=cfg.batch_wait_ms / 1000.0)

    @property
    def num_items(self) -> int:
        return len(self.items)

    # ---- candidates ----------------------------------------------------------------------

    def _popular(self, n: int) -> tuple[str, ...]:
        return tuple(self.items[i] for i in self.popular[:n].tolist())

    def top(self, hidden: Any, n: int) -> list[int]:
        """The ``n`` best catalogue rows (or all, if fewer) for one user vector ``(1, d)``, best first."""
        return self.top_many(hidden, [n])[0]

    def _exact(self, hidden: Any, n: int) -> Any:
        """``(B, n)`` rows of the best exact scores of each vector of ``hidden`` ``(B, d)``, best first:
        one product and one top-k (few interpreter-lock hand-offs when run on a worker thread)."""
        import torch

        with torch.no_grad():
            return torch.addmm(self.bias, hidden, self.weight.t()).topk(min(n, self.num_items), dim=1).indices

    def top_many(self, hidden: Any, ns: Sequence[int]) -> list[list[int]]:
        """Per user vector of ``hidden`` ``(B, d)``: its ``ns[j]`` best catalogue rows, best first.

        Exact: the B vectors share one pass over the item matrix (at a million items the
        pass is memory-bound, so B users cost little more than one). LSH: each vector's best
        rows that the tables find (:meth:`ProbeIndex.search`, scored exactly); when the tables
        give too few, the most popular other items fill up.
        """
        import torch

        out: list[list[int]] = []
        with torch.no_grad():
            if self.index is None:
                for s in range(0, hidden.shape[0], 8):                             # (8, N) scores at a time
                    rows = self._exact(hidden[s:s + 8], max(ns[s:s + 8])).tolist()
                    out += [r[:n] for r, n in zip(rows, ns[s:s + 8])]
                return out
            for j, n in enumerate(ns):
                n = min(n, self.num_items)
                found = self.index.search(hidden[j], n, miss=self.cfg.lsh_miss,
                                          budget=self.cfg.lsh_budget).rows.tolist()      # best first
                if len(found) < n:   # the tables returned too few: the most popular others fill up
                    seen = set(found)
                    found += [i for i in self.popular[:n + len(found)].tolist() if i not in seen][:n - len(found)]
                out.append(found)
        return out

    def _known(self, columns: dict[str, Any]) -> bool:
        """True when the online store holds a row for the user (some user feature has a value)."""
        return any(v[0] is not None for name, v in columns.items() if name.startswith("user_") and name != "user_id")

    def _read(self, request: RetrieveRequest) -> Candidates | InvalidInput | dict[str, Any]:
        """The request's online features (the tower's input), or its answer without the tower:
        popular items for a request with neither a known user nor context, or an InvalidInput."""
        try:
            columns = self.features.columns(request.user_id, [self.anchor], request.context)
        except ValueError as e:  # a context value the feature reader cannot use
            return InvalidInput(f"cannot build features for user {request.user_id!r}: {e}")
        if not request.context and not self._known(columns):
            return Candidates(self._popular(max(self.cfg.retrieve_candidates, request.k)), POPULAR)
        return columns

    def _hidden(self, wanted: Sequence[tuple[RetrieveRequest, dict[str, Any]]]) -> Any:
        """``(B, d)`` user vectors of the requests from their features (one tower call), or
        the InvalidInput of each when the features cannot be built."""
        import torch

        from features.transform import model_columns

        parts = [columns for _, columns in wanted]
        columns = parts[0] if len(parts) == 1 else {
            key: (np.concatenate([p[key] for p in parts]) if isinstance(parts[0][key], np.ndarray)
                  else list(chain.from_iterable(p[key] for p in parts)))
            for key in parts[0]}
        try:
            inputs = ModelInput.from_columns(model_columns(columns, len(parts), self.spec), self.spec)
        except ValueError as e:
            return [InvalidInput(f"cannot build the retrieval features of user {r.user_id!r}: {e}") for r, _ in wanted]
        with torch.inference_mode():
            return self.model.tower(torch.from_numpy(inputs.sparse_values),
                                    torch.from_numpy(inputs.sparse_offsets)).float()   # (B, d)

    def _search(self, wanted: Sequence[tuple[RetrieveRequest, dict[str, Any]]]) -> list[Candidates | InvalidInput]:
        """Per (request, its features): its candidates; the users' vectors come from one tower call."""
        hidden = self._hidden(wanted)
        if isinstance(hidden, list):
            return hidden
        ns = [max(self.cfg.retrieve_candidates, r.k) for r, _ in wanted]
        return [Candidates(tuple(self.items[i] for i in rows)) for rows in self.top_many(hidden, ns)]

    async def _search_async(self, wanted: Sequence[tuple[RetrieveRequest, dict[str, Any]]]
                            ) -> list[Candidates | InvalidInput]:
        """:meth:`_search` with the exact pass over the item matrix on a worker thread (the tower,
        the LSH probes and the answers stay on the loop: they take a few milliseconds)."""
        import asyncio

        if self.index is not None or self.num_items <= EXACT_ON_LOOP:
            return self._search(wanted)
        hidden = self._hidden(wanted)
        if isinstance(hidden, list):
            return hidden
        ns = [max(self.cfg.retrieve_candidates, r.k) for r, _ in wanted]
        rows = (await asyncio.to_thread(self._exact, hidden, max(ns))).tolist()
        return [Candidates(tuple(self.items[i] for i in r[:n])) for r, n in zip(rows, ns)]

    def retrieve_many(self, requests: Sequence[RetrieveRequest]) -> list[Candidates | InvalidInput]:
        """Per request: its candidates (``max(serve.retrieve_candidates, k)`` items, best
        first), or the InvalidInput it raised; the users' vectors come from one tower call."""
        out = [self._read(r) for r in requests]
        towered = [i for i, got in enumerate(out) if isinstance(got, dict)]
        if towered:
            for i, got in zip(towered, self._search([(requests[i], out[i]) for i in towered])):
                out[i] = got
        return out  # type: ignore[return-value]

    async def retrieve(self, requests: Sequence[RetrieveRequest]) -> list[Candidates]:
        """The requests' candidates, as :meth:`retrieve_many`, batched with the requests that
        arrive meanwhile (:meth:`_search_async`: above ``EXACT_ON_LOOP`` items the exact pass
        runs on a worker thread). Raises the first request's InvalidInput."""
        out = [self._read(r) for r in requests]
        for got in out:
            if isinstance(got, InvalidInput):
                raise got
        towered = [i for i, got in enumerate(out) if isinstance(got, dict)]
        if towered:
            for i, got in zip(towered, await self.batcher.submit([(requests[i], out[i]) for i in towered])):
                out[i] = got
        return out  # type: ignore[return-value]


def load_retriever(registry: str | Path, version: str, ranker_spec: FeatureSpec, features: Any,
                   cfg: ServeConfig) -> Retriever | None:
    """The retrieval model published in ``version`` of the registry (its ``retrieval/``
    folder; safetensors + JSON, no pickle), or None when the version has none.

    A local registry is read in place; a remote one is copied to a temporary dir first.
    """
    from model_registry.registry import Registry

    reg = Registry(registry)
    if not reg.has(version, f"{FOLDER}/config.json"):
        return None
    local = reg.local_dir(version)
    if local is not None:
        return _load(local / FOLDER, ranker_spec, features, cfg)
    with tempfile.TemporaryDirectory(prefix="robeflow-retrieval-") as tmp:
        _, path = reg.fetch(version, Path(tmp), under=FOLDER)
        return _load(path, ranker_spec, features, cfg)


def _load(bundle_dir: Path, ranker_spec: FeatureSpec, features: Any, cfg: ServeConfig) -> Retriever:
    from safetensors import safe_open

    from dlrm.bundle import WEIGHTS, load_retrieval

    model, items, doc = load_retrieval(bundle_dir)
    with safe_open(str(bundle_dir / WEIGHTS), framework="pt") as fh:
        popularity = fh.get_tensor("items.popularity")
    return Retriever(model, items, FeatureSpec.from_dict(doc["feature_spec"]), popularity.numpy(), ranker_spec,
                     features, cfg)
