"""The batcher: requests that arrive while a batch is being scored are scored together."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

from kserve.errors import ModelNotReady

from serving.requests import ScoreRequest


class Batcher:
    """Collects the requests that arrive while a batch is being scored and scores them
    together (one online-store read per feature view, one transform, one model call).

    A batch is scored on the event loop's thread, between its I/O: the scoring holds the
    interpreter lock almost throughout, so a scoring thread would only add two thread
    hand-offs per batch (measured with ``benchmarks/serve_bench.py``: 494 against 311-370
    requests/s under 16 clients, and a lower p99 from 200 requests/s up). While a batch is
    scored the loop reads no sockets; the requests that came meanwhile form the next batch.

    Args:
        fn: requests -> one result (or an exception instance) per request. A coroutine
            function is awaited, so it can send its long part to a worker thread while the
            loop serves other requests (:meth:`serving.retrieval.Retriever.retrieve` does).
        max_requests: most requests per batch.
        wait_s: how long a batch waits for company when the previous batch held more
            than one request (under one client at a time waiting only adds latency, and
            under load the requests that arrive during scoring fill the next batch anyway).
    """

    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_requests: int = 32,
                 wait_s: float = 0.001):
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        self._fn, self._max, self._wait = fn, max_requests, wait_s
        self._last_size = 1  # requests in the previous batch: >1 means concurrent clients
        self._pending: list[tuple[ScoreRequest, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._closed = False

    async def submit(self, requests: Sequence[ScoreRequest]) -> list[Any]:
        """The results of ``requests``; raises the first request's error, if any."""
        if self._closed:
            raise ModelNotReady("robeflow", "this model was unloaded; send the request again")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in requests]
        self._pending.extend(zip(requests, futures))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    async def _drain(self) -> None:
        while self._pending and not self._closed:
            if self._wait > 0 and self._last_size > 1 and len(self._pending) < self._max:
                await asyncio.sleep(self._wait)
            batch, self._pending = self._pending[:self._max], self._pending[self._max:]
            self._last_size = len(batch)
            try:
                results = self._fn([r for r, _ in batch])
                if asyncio.iscoroutine(results):
                    results = await results
            except Exception as e:  # noqa: BLE001 - handed to every waiting request (HTTP 500), not swallowed
                results = [e] * len(batch)
            for (_, fut), res in zip(batch, results):
                if fut.done():  # the client went away
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    async def aclose(self) -> None:
        """Lets every request already submitted finish, then stops (a model swap retires
        the old batcher this way: nothing in flight fails)."""
        while self._pending or (self._worker is not None and not self._worker.done()):
            if self._worker is None or self._worker.done():
                # requests queued but no worker (cannot happen after submit; guard anyway)
                self._worker = asyncio.get_running_loop().create_task(self._drain())
            await asyncio.wait([self._worker])
        self.close()

    def close(self) -> None:
        """Stops at once: requests still queued are not scored (they fail with 503)."""
        self._closed = True
        pending, self._pending = self._pending, []
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(ModelNotReady("robeflow", "the model was unloaded before this request was scored"))
