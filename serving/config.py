"""The ``serve`` section of params.yaml: everything the server is configured by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ServeConfig:
    """The ``serve`` section of params.yaml."""

    model_name: str = "robeflow"   # the NAME in /v1/models/NAME:predict
    host: str = "127.0.0.1"        # listen address (the pod's manifest sets 0.0.0.0)
    http_port: int = 8080          # KServe's default
    grpc_port: int = 0             # 0 = no gRPC server
    workers: int = 1               # server processes on the port (serving.workers); replicas scale out
    max_candidates: int = 1000     # most items per request (more is a 400)
    torch_threads: int = 1         # intra-op threads; 1 suits per-request batches of ~100 rows
    online_reader: Literal["lean", "feast"] = "lean"  # lean: direct online-store read, same values
    max_batch_requests: int = 32   # concurrent requests scored in one batch (1 = none)
    batch_wait_ms: float = 1.0     # an idle server waits this long for requests to batch
    online_cache_s: float = 60.0   # lean reader: seconds an entity row may be served from memory (0 = no cache)
    history_cache_mb: float = 256.0  # history tower: MB of users' encoded histories kept (LRU, by user and a
                                     # fingerprint of the history: a changed history is re-encoded); 0 = none
    reload_s: float = 10.0         # seconds between looks at the registry's production pointer (0 = never)
    control_token_env: str = "ROBEFLOW_CONTROL_TOKEN"  # env var whose value opens /v2/repository/* (unset: closed)
    # recommendations from the whole catalogue (a request without item_ids; serving/retrieval.py)
    retrieve_k: int = 10               # items returned when the request gives no k
    max_k: int = 100                   # the largest k a request may ask for (more is a 400)
    retrieve_candidates: int = 200     # items the retrieval model hands to the ranker (at least k)
    retrieval_index: Literal["auto", "exact", "lsh"] = "auto"  # auto: exact up to exact_max_items, else lsh
    exact_max_items: int = 100_000     # auto: exact inner products over catalogues up to this size
    lsh_bits: int = 14                 # lsh: K bits per table (2^K buckets; every item sits in every table)
    lsh_tables: int = 32               # lsh: L tables over the item vectors
    lsh_flip_bits: int = 8             # lsh: multi-probe flips up to this many least certain bits per table
    lsh_norm_ranges: int = 9           # lsh: norm ranges (half of the items, a quarter, ...), searched top down
    lsh_miss: float = 0.5              # lsh: per range, chance an item at the threshold angle is in no probed bucket
    lsh_budget: int = 100_000          # lsh: most items scored exactly per request (a latency guard)
    lsh_seed: int = 0                  # lsh: hash functions' seed

    def __post_init__(self) -> None:
        for name in ("retrieve_k", "max_k", "retrieve_candidates", "exact_max_items", "lsh_bits", "lsh_tables",
                     "lsh_norm_ranges", "lsh_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serve.{name} = {value!r}; expected an integer >= 1")
        for name in ("lsh_flip_bits",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"serve.{name} = {value!r}; expected an integer >= 0")
        if isinstance(self.lsh_miss, bool) or not isinstance(self.lsh_miss, (int, float)) \
                or not 0 < self.lsh_miss < 1:
            raise ValueError(f"serve.lsh_miss = {self.lsh_miss!r}; expected a probability in (0, 1)")
        if self.lsh_bits > 24 or self.lsh_flip_bits > self.lsh_bits:
            raise ValueError(f"serve.lsh_bits = {self.lsh_bits}, serve.lsh_flip_bits = {self.lsh_flip_bits}; "
                             "expected lsh_flip_bits <= lsh_bits <= 24")
        if isinstance(self.history_cache_mb, bool) or not isinstance(self.history_cache_mb, (int, float)) \
                or not self.history_cache_mb >= 0:
            raise ValueError(f"serve.history_cache_mb = {self.history_cache_mb!r}; expected a number >= 0")
        if self.retrieve_k > self.max_k:
            raise ValueError(f"serve.retrieve_k = {self.retrieve_k} exceeds serve.max_k = {self.max_k}")
        if self.retrieval_index not in ("auto", "exact", "lsh"):
            raise ValueError(f"serve.retrieval_index = {self.retrieval_index!r}; expected auto, exact or lsh")
