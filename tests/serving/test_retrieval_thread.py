"""Retrieval off the event loop: a batcher whose function is a coroutine that sends its
work to a worker thread lets the loop keep serving (ranking other requests) while a slow
search runs."""

from __future__ import annotations

import asyncio
import threading

from serving.batcher import Batcher


def _on_a_thread(fn):
    async def run(requests):
        return await asyncio.to_thread(fn, requests)
    return run


def test_batches_sent_to_a_thread_leave_the_loop_free_while_they_run() -> None:
    release, loop_ran = threading.Event(), []

    def slow(requests: list[str]) -> list[str]:
        # finishes only once a coroutine on the loop has run: on the loop's own thread this
        # would wait out the timeout and answer "blocked"
        ok = release.wait(timeout=10)
        return [f"{r}:{'free' if ok else 'blocked'}" for r in requests]

    async def main() -> list[str]:
        batcher = Batcher(_on_a_thread(slow), max_requests=8, wait_s=0.0)
        search = asyncio.create_task(batcher.submit(["a", "b"]))

        async def other_request() -> None:
            await asyncio.sleep(0.01)
            loop_ran.append(threading.current_thread() is threading.main_thread())
            release.set()

        await other_request()
        return await search

    assert asyncio.run(main()) == ["a:free", "b:free"]
    assert loop_ran == [True]


def test_batches_sent_to_a_thread_take_the_requests_that_came_meanwhile_and_pass_errors_on() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def fn(requests: list[int]) -> list[object]:
        if not seen:
            gate.wait(timeout=10)
        seen.append(list(requests))
        return [ValueError(f"bad {r}") if r < 0 else r * 10 for r in requests]

    async def main() -> tuple[list[int], list[int], str]:
        batcher = Batcher(_on_a_thread(fn), max_requests=8, wait_s=0.0)
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.submit([2]))
        third = asyncio.create_task(batcher.submit([3, -4]))
        await asyncio.sleep(0.01)
        gate.set()
        try:
            await third
            err = ""
        except ValueError as e:
            err = str(e)
        return await first, await second, err

    first, second, err = asyncio.run(main())
    assert (first, second, err) == ([10], [20], "bad -4")
    assert seen == [[1], [2, 3, -4]]   # the two that queued behind the first became one batch


def test_a_coroutine_function_is_awaited_once_per_batch() -> None:
    seen: list[list[int]] = []

    async def fn(requests: list[int]) -> list[int]:
        seen.append(list(requests))
        await asyncio.sleep(0)
        return [r + 1 for r in requests]

    async def main() -> list[list[int]]:
        batcher = Batcher(fn, max_requests=8, wait_s=0.0)
        return await asyncio.gather(batcher.submit([1]), batcher.submit([2, 3]))

    assert asyncio.run(main()) == [[2], [3, 4]]
    assert seen == [[1, 2, 3]]
