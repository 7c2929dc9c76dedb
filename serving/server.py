"""Starting KServe's model server with the robeflow predictor."""

from __future__ import annotations

import kserve

from serving.predictor import RobeflowModel


class ModelServer(kserve.ModelServer):
    """``kserve.ModelServer`` that listens on a chosen address.

    KServe's REST server binds 0.0.0.0 (right in a pod); benchmarks and tests bind
    127.0.0.1 only. The address is set on the REST server's uvicorn config after
    ``start`` has built it and before it serves.
    """

    def __init__(self, host: str = "0.0.0.0", **kwargs):
        super().__init__(**kwargs)
        self.host = host

    async def _serve(self):
        if self._rest_server is not None:
            self._rest_server.config.host = self.host
        await super()._serve()


def run_server(model: RobeflowModel, *, host: str, port: int, workers: int = 1,
               grpc_port: int | None = None) -> None:
    """Loads ``model`` and serves it until SIGINT/SIGTERM (blocks; main thread only).

    Args:
        model: the predictor (loaded here when it is not ready yet).
        host: address to listen on (``0.0.0.0`` in a pod, ``127.0.0.1`` locally).
        port: HTTP port of the v1/v2 REST APIs.
        workers: uvicorn worker processes.
        grpc_port: also serve the v2 gRPC API on this port (None: no gRPC).
    """
    if not model.ready:
        model.load()
    server = ModelServer(host=host, http_port=port, workers=workers,
                         enable_grpc=grpc_port is not None, grpc_port=grpc_port or 8081,
                         enable_latency_logging=False)
    server.start([model])
