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
    reload_s: float = 10.0         # seconds between looks at the registry's production pointer (0 = never)
    control_token_env: str = "ROBEFLOW_CONTROL_TOKEN"  # env var whose value opens /v2/repository/* (unset: closed)
