"""contract.background: order kept, errors reach the caller, early stop ends the thread."""

import threading

import pytest

from contract.background import BackgroundCalls, prefetched


def test_prefetched_keeps_order_and_raises_the_producers_error():
    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in prefetched(broken()):
            got.append(x)
    assert got == [1]
    with pytest.raises(ValueError, match="depth"):
        next(prefetched([], depth=0))


def test_prefetched_stops_its_thread_when_the_consumer_stops():
    before = threading.active_count()
    it = prefetched(iter(range(10**6)), depth=1)
    assert next(it) == 0
    it.close()
    assert threading.active_count() == before


def test_background_calls_run_in_order_and_report_the_first_error():
    out = []
    with BackgroundCalls(depth=2) as calls:
        for i in range(20):
            calls.submit(out.append, i)
        calls.wait()
    assert out == list(range(20))

    def fail(x):
        raise RuntimeError(f"write {x} failed")

    with BackgroundCalls() as calls:
        calls.submit(fail, 1)
        calls.submit(out.append, "skipped")
        with pytest.raises(RuntimeError, match="write 1 failed"):
            calls.wait()
    assert "skipped" not in out
