"""Starting KServe's model server with the robeflow predictor, its control plane closed.

:class:`ControlPlane` (ASGI middleware in front of KServe's app):

- ``/v2/repository/...`` (KServe's model repository extension: load, unload, index) is
  refused with 403 unless the environment variable ``serve.control_token_env`` holds a
  token and the request carries ``Authorization: Bearer <token>``; with it, ``load``
  serves the registry's production version now and ``unload`` stops serving;
- ``/v2/health/ready`` is 200 only while a model is loaded (KServe's says ready with
  none), and names the version;
- every response carries ``x-model-version``: the version that scored a prediction, the
  version served now elsewhere;
- a method other than POST on ``:predict`` / ``/infer`` is a 405, not "model not found";
- a v2 ``/infer`` body without ``Inference-Header-Content-Length`` is JSON whatever its
  Content-Type (tritonclient's JSON mode sends none); a v1 ``:predict`` without a
  Content-Type is a 415.

Refused requests (400/404/503 from the predictor) are logged in one line, without a
traceback (KServe logs each with its traceback).

The predictor follows the registry's production pointer every ``serve.reload_s`` seconds
(:meth:`serving.predictor.RobeflowModel.follow`), as a task beside the HTTP server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
from typing import Any

import kserve
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from contract.io import log
from serving.predictor import STEP, VERSION_HEADER, RobeflowModel

REPOSITORY = "/v2/repository"
PREDICT_PATH = re.compile(r"^/v1/models/[^/]+:(predict|explain)$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


async def _answer(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode("utf-8")
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


class ControlPlane:
    """ASGI middleware: closed repository endpoints, honest readiness, the served version
    on every response (see the module doc).

    Args:
        app: the KServe ASGI app.
        model: the served predictor.
        token: the bearer token that opens ``/v2/repository/*`` (None or "": closed).
    """

    def __init__(self, app: Any, model: RobeflowModel, token: str | None = None):
        self.app, self.model, self.token = app, model, token or None

    def _authorised(self, scope: dict[str, Any]) -> bool:
        if self.token is None:
            return False
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), self.token.encode())

    async def _repository(self, scope: dict[str, Any], send: Any) -> None:
        if not self._authorised(scope):
            log(STEP, f"refused {scope['method']} {scope['path']} (model repository endpoints are closed"
                      f"{'' if self.token else '; no control token is set'})")
            await _answer(send, 403, {"error": "the model repository endpoints are closed: they need "
                                               f"'Authorization: Bearer <token>' with the token of "
                                               f"${self.model.cfg.control_token_env}"})
            return
        m = re.fullmatch(r"/v2/repository/models/([^/]+)/(load|unload)", scope["path"])
        if m is None or scope["method"] != "POST":
            await _answer(send, 404, {"error": f"no repository action {scope['method']} {scope['path']}"})
            return
        name, action = m.groups()
        if name != self.model.name:
            await _answer(send, 404, {"error": f"Model with name {name} does not exist."})
            return
        if action == "unload":
            self.model.unload()
            log(STEP, f"model {name} unloaded through the repository endpoint")
            await _answer(send, 200, {"name": name, "unload": True})
            return
        await self.model.reload(retry_failed=True)
        if not self.model.ready:
            await _answer(send, 503, {"error": f"model {name} could not be loaded; see the server log"})
            return
        await _answer(send, 200, {"name": name, "load": True, "model_version": self.model.version},
                      {VERSION_HEADER: self.model.version})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == REPOSITORY or path.startswith(REPOSITORY + "/"):
            await self._repository(scope, send)
            return
        if path == "/v2/health/ready" and method == "GET":
            version = self.model.version
            await _answer(send, 200 if version else 503, {"ready": version is not None, "model_version": version},
                          {VERSION_HEADER: version} if version else None)
            return
        if PREDICT_PATH.match(path):
            if method != "POST":
                await _answer(send, 405, {"error": f"{path} takes POST, not {method}"}, {"allow": "POST"})
                return
            headers = [(k.lower(), v) for k, v in scope.get("headers") or []]
            names = {k for k, _ in headers}
            if path.startswith("/v2/") and b"inference-header-content-length" not in names:
                # no binary tensors: the body is the JSON inference request
                headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", b"application/json")]
                scope = {**scope, "headers": headers}
            elif path.startswith("/v1/") and b"content-type" not in names:
                log(STEP, f"refused POST {path}: no Content-Type")
                await _answer(send, 415, {"error": "the request has no Content-Type header; send the JSON body "
                                                   "with 'Content-Type: application/json'"})
                return
        version = self.model.version   # for responses the predictor does not label itself

        async def send_with_version(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and version is not None:
                headers = list(message.get("headers") or [])
                if not any(k.lower() == VERSION_HEADER.encode() for k, _ in headers):
                    headers.append((VERSION_HEADER.encode(), version.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)


def _one_line(status: int):
    """An exception handler answering ``status`` with the message, logged in one line."""
    from fastapi.responses import JSONResponse

    async def handler(request: Any, exc: Exception) -> Any:
        message = " ".join(str(exc).split())
        log(STEP, f"{status} {request.method} {request.url.path}: {message[:300]}")
        return JSONResponse(status_code=status, content={"error": str(exc)})

    return handler


def quiet_exception_handlers(app: Any) -> None:
    """Refused requests logged in one line (KServe's handlers log a traceback each)."""
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady

    for exc, status in ((InvalidInput, 400), (ModelNotFound, 404), (ModelNotReady, 503)):
        app.add_exception_handler(exc, _one_line(status))


class ClosedRepository(ModelRepositoryExtension):
    """KServe's model repository extension with load and unload refused (the gRPC
    server's; the REST ones are answered by :class:`ControlPlane`)."""

    async def load(self, model_name: str) -> None:
        raise PermissionError(f"loading {model_name} through the model repository API is disabled")

    async def unload(self, model_name: str) -> None:
        raise PermissionError(f"unloading {model_name} through the model repository API is disabled")


class ModelServer(kserve.ModelServer):
    """``kserve.ModelServer`` on a chosen address, with :class:`ControlPlane` in front and
    the predictor following the registry.

    KServe's REST server binds 0.0.0.0; the address is set on its uvicorn config after
    ``start`` has built it and before it serves.
    """

    def __init__(self, host: str = "127.0.0.1", sockets: list[Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.host, self.sockets = host, sockets
        self.model_repository_extension = ClosedRepository(self.registered_models)
        self._followers: list[RobeflowModel] = []

    def start(self, models: list[Any]) -> None:
        from kserve.model_server import app

        for model in models:
            if isinstance(model, RobeflowModel):
                token = os.environ.get(model.cfg.control_token_env) or None
                app.add_middleware(ControlPlane, model=model, token=token)
                self._followers.append(model)
        super().start(models)

    async def _serve(self):
        if self._rest_server is not None:
            rest = self._rest_server
            rest.config.host = self.host
            add_handlers = rest._add_exception_handlers   # KServe's, run when the app is built

            def add_quiet_handlers(app: Any) -> None:
                add_handlers(app)
                quiet_exception_handlers(app)

            rest._add_exception_handlers = add_quiet_handlers
            if not rest.access_log_format:
                # KServe's only other middleware times each request for trace-level log lines
                # (CPU time read twice per request: ~9% of a request's CPU under load)
                rest._add_middlewares = lambda app: None
            if self.sockets:
                # a worker of serve.workers > 1: the supervisor's listening socket, not a new one
                serve_on = rest._server.serve
                rest._server.serve = lambda sockets=None: serve_on(sockets=self.sockets)
        tasks = [asyncio.create_task(m.follow()) for m in self._followers]
        try:
            await super()._serve()
        finally:
            for t in tasks:
                t.cancel()


def run_server(model: RobeflowModel, *, host: str, port: int, grpc_port: int | None = None,
               sockets: list[Any] | None = None) -> None:
    """Loads ``model`` and serves it until SIGINT/SIGTERM (blocks; main thread only).

    Args:
        model: the predictor (loaded here when it is not ready yet); it follows the
            registry's production pointer every ``model.cfg.reload_s`` seconds.
        host: address to listen on (``0.0.0.0`` in a pod, ``127.0.0.1`` locally).
        port: HTTP port of the v1/v2 REST APIs.
        grpc_port: also serve the v2 gRPC API on this port (None: no gRPC).
        sockets: serve on these listening sockets instead of binding ``host:port`` (a
            worker process of :mod:`serving.workers`).
    """
    if not model.ready:
        model.load()
    server = ModelServer(host=host, sockets=sockets, http_port=port, workers=1,
                         enable_grpc=grpc_port is not None, grpc_port=grpc_port or 8081,
                         enable_latency_logging=False)
    server.start([model])
