"""The batcher: requests that arrive while a batch is being scored are scored together."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from serving.requests import ScoreRequest


class Batcher:
    """Collects the requests that arrive while a batch is being scored and scores them
    together (one online-store read per feature view, one transform, one model call), in
    one worker thread.

    Args:
        fn: requests -> one result (or an exception instance) per request.
        max_requests: most requests per batch.
        wait_s: how long a batch waits for company when the previous batch held more
            than one request (under one client at a time waiting only adds latency, and
            under load the requests that arrive during scoring fill the next batch anyway).
    """

    def __init__(self, fn: Callable[[list[ScoreRequest]], list[Any]], max_requests: int = 32,
                 wait_s: float = 0.001):
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        self._fn, self._max, self._wait = fn, max_requests, wait_s
        self._last_size = 1  # requests in the previous batch: >1 means concurrent clients
        self._pending: list[tuple[ScoreRequest, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None  # made on first use (fork-safe)

    async def submit(self, requests: Sequence[ScoreRequest]) -> list[Any]:
        """The results of ``requests``; raises the first request's error, if any."""
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
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robeflow-score")
        while self._pending:
            if self._wait > 0 and self._last_size > 1 and len(self._pending) < self._max:
                await asyncio.sleep(self._wait)
            batch, self._pending = self._pending[:self._max], self._pending[self._max:]
            self._last_size = len(batch)
            try:
                results = await loop.run_in_executor(self._executor, self._fn, [r for r, _ in batch])
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
        """Lets every request already submitted finish, then stops the scoring thread
        (a model swap retires the old batcher this way: nothing in flight fails)."""
        while self._pending or (self._worker is not None and not self._worker.done()):
            if self._worker is None or self._worker.done():
                # requests queued but no worker (cannot happen after submit; guard anyway)
                self._worker = asyncio.get_running_loop().create_task(self._drain())
            await asyncio.wait([self._worker])
        self.close()

    def close(self) -> None:
        """Stops the scoring thread at once (requests still queued are not scored)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
