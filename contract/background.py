"""Overlap of I/O with computation in the streaming steps, on threads.

Arrow/Parquet reads and writes and engine queries release the GIL, so on a machine with
a few cores a step can read its next batch and write its last one while it computes the
current one. Order is kept and errors of the background work reach the caller.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """The items of ``items``, produced by a thread up to ``depth`` ahead of the consumer
    (each waiting item is held in memory). An exception of the producer is raised here;
    closing the iterator early stops the producer after its current item."""
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((True, _DONE))
        except BaseException as err:  # handed to the consumer
            q.put((False, err))

    thread = threading.Thread(target=work, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class BackgroundCalls:
    """Runs submitted calls one at a time, in order, on a thread, at most ``depth`` calls
    behind the caller (their arguments are held in memory until they run). An error of a
    call is raised by the next :meth:`submit` or :meth:`wait`; later calls are skipped.
    Use as a context manager: leaving it waits for the calls already submitted."""

    def __init__(self, depth: int = 1):
        if depth < 1:
            raise ValueError(f"background depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="background-calls", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    fn, args = item
                    fn(*args)
            except BaseException as err:  # handed to the caller
                self._error = err
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queues ``fn(*args)``; raises the error of an earlier call, if any."""
        self._raise()
        self._queue.put((fn, args))

    def wait(self, raise_errors: bool = True) -> None:
        """Returns when every submitted call has run (raising the first error, if any)."""
        self._queue.join()
        if raise_errors:
            self._raise()

    def __enter__(self) -> "BackgroundCalls":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._queue.join()
        self._queue.put(None)
        self._thread.join()
