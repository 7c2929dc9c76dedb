"""Several server processes on one port: ``serve.workers > 1``.

One Python process scores and answers HTTP under one interpreter lock, so it uses about
one core however many the machine has. With ``serve.workers = N`` the supervisor (this
module, in the ``robeflow serve`` process) binds the listening socket once and starts N
worker processes (``spawn``: none inherits the supervisor's threads or torch state); each
loads the production bundle and its own online reader, follows the registry's production
pointer on its own (:meth:`serving.predictor.RobeflowModel.follow`), and serves KServe's
app on the shared socket, where the kernel hands each new connection to one of them.

A ROBE bundle is small, so N workers cost N copies of the Python runtime and of the
online reader's cache, not N copies of embedding tables.

The supervisor:

- forwards SIGTERM/SIGINT to the workers (as SIGTERM, repeated every second: a worker
  that is still starting may miss one) and waits ``GRACE_S`` for them (each finishes its
  requests in flight, as one server does), then kills what is left;
- starts a worker again when one dies, unless workers keep dying within
  ``CRASH_WINDOW_S`` of their start (then the supervisor stops everything and exits
  non-zero: a bundle that crashes on load must not restart forever);
- exits with the workers' status when all have stopped; a worker whose supervisor is gone
  (killed with SIGKILL) stops itself within a second.

KServe's own multi-process mode pickles the registered model into each worker and builds
each worker's app from an import string, so the control plane middleware and the
registry follower would not reach the workers; hence this supervisor.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from contract.io import log
from serving.config import ServeConfig

STEP = "serve"
GRACE_S = 30.0          # how long stopping workers may take before they are killed
CRASH_WINDOW_S = 60.0   # a worker that dies sooner than this after its start counts as a crash
MAX_CRASHES = 3         # crashes in a row (per worker slot) before the supervisor gives up


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on (host, port) that worker processes can share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says
    # TCP; without it Nagle and delayed ACKs held ~8% of responses back by ~45 ms
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """A daemon thread that stops this worker (SIGTERM to itself, then exit) once its
    supervisor is gone: a supervisor killed with SIGKILL leaves no worker serving."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(GRACE_S)
                os._exit(1)

    threading.Thread(target=watch, name="robeflow-parent-watch", daemon=True).start()


def _worker(cfg: ServeConfig, registry: str, features_repo: str, sock: socket.socket, index: int,
            parent: int) -> None:
    """One worker process: loads the production bundle and serves on ``sock``."""
    from serving.predictor import RobeflowModel
    from serving.server import run_server

    _exit_with_parent(parent)

    model = RobeflowModel(cfg, registry, Path(features_repo))
    model.load()
    log(STEP, f"worker {index} (pid {os.getpid()}) serves {model.version}")
    run_server(model, host=cfg.host, port=cfg.http_port, grpc_port=None, sockets=[sock])


class Supervisor:
    """Starts ``cfg.workers`` worker processes on one socket and keeps them running.

    Args:
        cfg: the ``serve`` section (``workers`` > 1).
        registry: registry dir or fsspec URL.
        features_repo: the materialised Feast repo.
    """

    def __init__(self, cfg: ServeConfig, registry: str, features_repo: Path):
        if cfg.workers < 2:
            raise ValueError(f"serve.workers = {cfg.workers}; the supervisor is for 2 or more workers")
        self.cfg, self.registry, self.features_repo = cfg, str(registry), str(features_repo)
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = []
        self._started: list[float] = []
        self._crashes: list[int] = []
        self._stopping = False

    def _start(self, sock: socket.socket, index: int) -> Any:
        proc = self._ctx.Process(target=_worker, name=f"robeflow-serve-{index}",
                                 args=(self.cfg, self.registry, self.features_repo, sock, index, os.getpid()))
        proc.start()
        return proc

    def _stop(self, signum: int, _frame: Any = None) -> None:
        if not self._stopping:
            log(STEP, f"stopping {len(self._procs)} workers ({signal.Signals(signum).name})")
        self._stopping = True
        self._signal_workers()

    def _signal_workers(self) -> None:
        for p in self._procs:
            if p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def run(self, sock: socket.socket) -> int:
        """Serves until SIGTERM/SIGINT; returns the exit status."""
        old = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            for i in range(self.cfg.workers):
                self._procs.append(self._start(sock, i))
                self._started.append(time.monotonic())
                self._crashes.append(0)
            log(STEP, f"{self.cfg.workers} worker processes on http://{self.cfg.host}:{self.cfg.http_port} "
                      f"(pids {', '.join(str(p.pid) for p in self._procs)})")
            while not self._stopping:
                time.sleep(0.2)
                for i, p in enumerate(self._procs):
                    if p.is_alive() or self._stopping:
                        continue
                    quick = time.monotonic() - self._started[i] < CRASH_WINDOW_S
                    self._crashes[i] = self._crashes[i] + 1 if quick else 1
                    if self._crashes[i] >= MAX_CRASHES:
                        log(STEP, f"worker {i} died {self._crashes[i]} times within {CRASH_WINDOW_S:g} s of its "
                                  f"start (last exit code {p.exitcode}); stopping the server")
                        status = 1
                        self._stop(signal.SIGTERM)
                        break
                    log(STEP, f"worker {i} (pid {p.pid}) exited with {p.exitcode}; starting it again")
                    self._procs[i] = self._start(sock, i)
                    self._started[i] = time.monotonic()
            deadline = time.monotonic() + GRACE_S
            while any(p.is_alive() for p in self._procs) and time.monotonic() < deadline:
                # again every second: a worker between KServe's signal handlers and uvicorn's
                # (it is starting) loses a SIGTERM; uvicorn takes a repeated one as the same stop
                self._signal_workers()
                for p in self._procs:
                    p.join(max(0.0, min(1.0 / len(self._procs), deadline - time.monotonic())))
            for p in self._procs:
                if p.is_alive():
                    log(STEP, f"worker pid {p.pid} did not stop within {GRACE_S:g} s; killing it")
                    p.kill()
                    p.join()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            sock.close()
        return status


def serve_workers(cfg: ServeConfig, registry: str, features_repo: Path) -> int:
    """Binds ``serve.host:serve.http_port`` and runs ``serve.workers`` worker processes on
    it until stopped; returns the exit status."""
    return Supervisor(cfg, registry, features_repo).run(bind(cfg.host, cfg.http_port))
