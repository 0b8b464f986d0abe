"""Senders that use more than one connection to a destination at once (a
second C-STORE association, a second STOW-RS request): the connections run
on their own threads, and whatever they tell the forwarder (an object's
outcome, a conversion starting) runs on the calling thread, which owns the
queue's database connection. One way to do this for every sender, so
exactly-once claims and the outcome order per connection hold for all."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Relay:
    """What a worker thread hands to the calling thread."""

    _calls: queue.SimpleQueue[Callable[[], None] | None] = field(default_factory=queue.SimpleQueue)

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the calling thread, after what was posted before it."""
        self._calls.put(fn)

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the calling thread and wait until it has run (for a
        step that must be recorded before the worker goes on)."""
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._calls.put(run)
        done.wait()


# How often the calling thread says it is alive while its workers wait on
# the network (each wait there bounded by the destination's time-outs).
WAITING_EVERY_S = 5.0


def run_on_threads(
    workers: Sequence[Callable[[Relay], None]],
    name: str,
    waiting: Callable[[], None] = lambda: None,
    every: float = WAITING_EVERY_S,
) -> list[BaseException | None]:
    """Each worker on its own thread, given the one Relay; the calling thread
    runs what they post until every worker has ended, and calls `waiting`
    (the forwarder's heartbeat) every `every` seconds that nothing came.
    Returns what each worker raised (None: it ended normally). An exception
    from a posted call is raised here once every worker has ended, so no
    thread is left behind."""
    relay = Relay()
    errors: list[BaseException | None] = [None] * len(workers)

    def run(index: int, worker: Callable[[Relay], None]) -> None:
        try:
            worker(relay)
        except BaseException as exc:  # handed to the caller, which decides
            errors[index] = exc
        finally:
            relay._calls.put(None)

    threads = [
        threading.Thread(target=run, args=(i, w), name=f"{name}-{i + 1}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    problem: BaseException | None = None
    running = len(threads)
    while running:
        try:
            call = relay._calls.get(timeout=every)
        except queue.Empty:
            waiting()
            continue
        if call is None:
            running -= 1
            continue
        try:
            call()
        except BaseException as exc:  # raised after every worker has ended
            problem = problem or exc
    for thread in threads:
        thread.join()
    if problem is not None:
        raise problem
    return errors
