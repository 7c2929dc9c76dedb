"""``serve.workers = 2``: two server processes on one port, both following the registry.

The supervisor binds the port once, starts the workers, starts a worker again when it
dies, and stops them all on SIGTERM (no process left listening).
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import httpx
import psutil
import pytest

from serving.workers import bind
from tests.serving.conftest import push_random_model, running_server
from tests.serving.test_reload import REQUEST, Load, _wait_for


@pytest.fixture
def registry(site, tmp_path):
    reg = tmp_path / "registry"
    shutil.copytree(site.registry, reg)
    return reg


def _workers(pid: int) -> list[psutil.Process]:
    """The supervisor's worker processes (its children other than multiprocessing's helper)."""
    return [c for c in psutil.Process(pid).children() if "resource_tracker" not in " ".join(c.cmdline())]


def _wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.2)


def _stopped(proc: psutil.Process) -> bool:
    return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def _two_workers_loaded(srv, version: str = "v1") -> list[psutil.Process]:
    """Waits until both workers have loaded (readiness answers once one is up); their processes."""
    _wait_until(lambda: srv.log.read_text().count(f" serves {version}") == 2, 120, "both workers loaded")
    workers = _workers(srv.proc.pid)
    assert len(workers) == 2
    return workers


def test_bind_names_the_address_it_cannot_listen_on():
    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    finally:
        taken.close()


def test_connections_accepted_on_the_shared_socket_send_without_delay():
    """asyncio sets TCP_NODELAY on an accepted socket only when its proto says TCP: without
    it, Nagle and delayed ACKs held ~8% of the workers' responses back by ~45 ms."""
    import asyncio
    import socket

    async def run() -> int:
        sock = bind("127.0.0.1", 0)
        seen = asyncio.get_running_loop().create_future()

        def on_connect(reader, writer):
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        nodelay = await asyncio.wait_for(seen, 10)
        writer.close()
        server.close()
        return nodelay

    assert asyncio.run(run()) != 0


@pytest.mark.slow
def test_two_workers_serve_follow_the_registry_restart_and_stop(site, registry, tmp_path):
    params = "serve:\n  workers: 2\n  reload_s: 0.5\n  max_candidates: 50\n"
    with running_server(site, registry, tmp_path / "srv", params) as srv:
        workers = _two_workers_loaded(srv)
        cpu_before = [w.cpu_times().user for w in workers]
        # a kept-alive connection stays with the worker that accepted it: with 4 of them all
        # land on one worker one time in 8, so each request comes on a new connection
        with Load(srv.url, clients=4, new_connections=True) as load:
            time.sleep(2.0)
            pushed = time.monotonic()
            push_random_model(site.spec, tmp_path / "m2" / "model", registry, seed=1)
            took = _wait_for(load, "v2", pushed, timeout=15)
            time.sleep(2.5)   # both workers have looked at the pointer by now
            steady = time.monotonic()
            time.sleep(1.0)
        # the kernel spread the connections over both workers
        assert all(w.cpu_times().user > c + 0.2 for w, c in zip(workers, cpu_before))
        failed = [r for r in load.results if r[1] != 200]
        assert not failed, failed[:5]
        assert {v for _, _, v, _, sent in load.results if sent >= steady} == {"v2"}

        # a worker that dies is started again; the other keeps answering meanwhile
        os.kill(workers[0].pid, signal.SIGKILL)
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.post("/v1/models/robeflow:predict", json=REQUEST).status_code == 200
        _wait_until(lambda: "starting it again" in srv.log.read_text(), 30, "the restart")
        _wait_until(lambda: srv.log.read_text().count(" serves v2") >= 1, 120, "the new worker loaded")
        survivors = _workers(srv.proc.pid)
        assert len(survivors) == 2 and workers[0].pid not in {w.pid for w in survivors}
        print(f"2 workers: v2 served {took:.2f} s after the push; {len(load.results)} requests, none failed")
    # SIGTERM to the supervisor stops every worker
    for w in survivors:
        try:
            w.wait(timeout=30)
        except psutil.NoSuchProcess:
            pass
        assert _stopped(w)
    assert srv.proc.returncode == 0, srv.log.read_text()[-2000:]


@pytest.mark.slow
def test_workers_stop_when_their_supervisor_is_killed(site, registry, tmp_path):
    params = "serve:\n  workers: 2\n  reload_s: 0\n"
    with running_server(site, registry, tmp_path / "srv", params) as srv:
        workers = _two_workers_loaded(srv)
        srv.proc.kill()   # SIGKILL: the supervisor cannot stop them itself
        srv.proc.wait()
        _wait_until(lambda: all(_stopped(w) for w in workers), 45, "the orphaned workers stopping")
