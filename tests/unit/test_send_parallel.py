"""gateway.send.parallel: what worker threads post runs on the calling thread
(the one that owns the queue's database connection), in order per worker; a
worker's exception comes back as its result; a posted call's exception is
raised only after every worker has ended."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from gateway.send.parallel import Relay, run_on_threads


def test_posted_calls_run_on_the_calling_thread_in_order() -> None:
    caller = threading.get_ident()
    seen: list[tuple[str, int, bool]] = []
    both_running = threading.Barrier(2, timeout=10)

    def worker(name: str) -> Callable[[Relay], None]:
        def run(relay: Relay) -> None:
            both_running.wait()  # the two are on their own threads at once
            for i in range(50):
                relay.post(lambda i=i: seen.append((name, i, threading.get_ident() == caller)))
            relay.call(lambda: seen.append((name, 99, threading.get_ident() == caller)))

        return run

    errors = run_on_threads([worker("a"), worker("b")], "t")
    assert errors == [None, None]
    assert all(on_caller for _, _, on_caller in seen)
    for name in "ab":
        assert [i for n, i, _ in seen if n == name] == [*range(50), 99]


def test_a_worker_exception_is_its_result_and_the_others_finish() -> None:
    done: list[str] = []

    def bad(relay: Relay) -> None:
        raise ValueError("broken link")

    def good(relay: Relay) -> None:
        relay.post(lambda: done.append("good"))

    errors = run_on_threads([bad, good], "t")
    assert isinstance(errors[0], ValueError) and errors[1] is None
    assert done == ["good"]


def test_a_posted_call_failing_is_raised_after_every_worker_ended() -> None:
    ended = threading.Event()

    def failing(relay: Relay) -> None:
        relay.post(lambda: 1 / 0)  # type: ignore[func-returns-value]

    def slow(relay: Relay) -> None:
        relay.post(lambda: None)
        ended.set()

    with pytest.raises(ZeroDivisionError):
        run_on_threads([failing, slow], "t")
    assert ended.is_set()
