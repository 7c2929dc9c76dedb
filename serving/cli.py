"""`robeflow serve`: the KServe predictor of the registry's production model.

Answers ``POST /v1/models/NAME:predict`` and ``POST /v2/models/NAME/infer``; readiness at
``GET /v1/models/NAME``, ``GET /v2/models/NAME/ready`` and ``GET /v2/health/ready`` (see
:mod:`serving.requests` for the request format). The production bundle is loaded before
the port opens; the server then follows the registry's production pointer every
``serve.reload_s`` seconds (a push or ``robeflow push --rollback`` takes effect without a
restart). The model repository endpoints (``/v2/repository/...``) are closed unless
``$ROBEFLOW_CONTROL_TOKEN`` (``serve.control_token_env``) holds a token.

Example::

    robeflow serve --registry registry --features data/features
    curl -s localhost:8080/v1/models/robeflow:predict -H 'Content-Type: application/json' \\
      -d '{"instances": [{"user_id": "u1", "item_ids": ["i1", "i2"], "context": {"device": "mobile"}}]}'
"""

from __future__ import annotations

import argparse
from pathlib import Path

from contract.io import StepError, log
from contract.params import add_params_args, load_config
from serving.config import ServeConfig

STEP = "serve"


def serve(cfg: ServeConfig, registry: str, features_repo: Path) -> None:
    """Loads the production bundle of ``registry`` and serves it (blocks until stopped)."""
    from serving.predictor import RobeflowModel
    from serving.server import run_server

    if not Path(features_repo, "feature_store.yaml").is_file():
        raise FileNotFoundError(f"{features_repo} is not a materialised Feast repo (no feature_store.yaml); "
                                "run `robeflow features` first")
    if cfg.workers < 1:
        raise ValueError(f"serve.workers = {cfg.workers}; expected >= 1 (server processes on the port)")
    if cfg.workers > 1 and cfg.grpc_port:
        raise ValueError(f"serve.grpc_port = {cfg.grpc_port} needs serve.workers = 1 (gRPC is served by one process)")
    if cfg.online_cache_s < 0:
        raise ValueError(f"serve.online_cache_s = {cfg.online_cache_s}; expected >= 0")
    if cfg.reload_s < 0:
        raise ValueError(f"serve.reload_s = {cfg.reload_s}; expected >= 0 (0 = never reload)")
    if cfg.max_candidates < 1:
        raise ValueError(f"serve.max_candidates = {cfg.max_candidates}; expected >= 1")
    if cfg.workers > 1:
        from model_registry.registry import Registry
        from serving.workers import serve_workers

        if Registry(registry).production() is None:   # said once here, not by every worker
            raise FileNotFoundError(f"registry {registry} has no production model (no 'production' pointer); "
                                    "run `robeflow push` first")
        status = serve_workers(cfg, registry, features_repo)
        if status:
            raise StepError("the server's workers kept dying; see the log above")
        return
    model = RobeflowModel(cfg, registry, features_repo)
    model.load()
    follows = f"following its production pointer every {cfg.reload_s:g} s" if cfg.reload_s > 0 else "not reloaded"
    log(STEP, f"model {cfg.model_name} = {model.version} of {registry} ({follows}); listening on "
              f"http://{cfg.host}:{cfg.http_port}")
    run_server(model, host=cfg.host, port=cfg.http_port, grpc_port=cfg.grpc_port or None)


def _main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.port is not None:
        overrides.append(f"serve.http_port={args.port}")
    if args.host is not None:
        overrides.append(f"serve.host={args.host}")
    cfg = load_config(ServeConfig, STEP, args.params, overrides)
    if not args.registry:
        raise StepError("give the registry (--registry DIR or URL)", exit_code=2)
    serve(cfg, args.registry, args.features)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="serve the production model (KServe v1/v2 REST)")
    p.add_argument("--registry", required=True, help="registry directory or fsspec URL (registry)")
    p.add_argument("--features", type=Path, required=True, help="materialised Feast repo (data/features)")
    p.add_argument("--port", type=int, help="HTTP port (default: serve.http_port)")
    p.add_argument("--host", help="listen address (default: serve.host)")
    add_params_args(p)
    p.set_defaults(func=_main)
