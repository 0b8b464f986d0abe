"""Fuzzing profiles (hypothesis): `bounded` inside `make test` (every fuzzer
together well under 60 s), `long` for `make fuzz` (FUZZ_EXAMPLES examples
per fuzzer). Executions per fuzzer are counted and printed at the end."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "bounded",
    max_examples=int(os.environ.get("FUZZ_BOUNDED_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
settings.load_profile(os.environ.get("FUZZ_PROFILE", "bounded"))

EXECUTIONS: Counter[str] = Counter()
SECONDS: Counter[str] = Counter()


def executed(name: str) -> None:
    """Called by each fuzz target once per input."""
    EXECUTIONS[name] += 1


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest) -> Iterator[None]:
    start = time.monotonic()
    yield
    SECONDS[request.node.name] += time.monotonic() - start


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not EXECUTIONS:
        return
    terminalreporter.write_sep("-", "fuzzing")
    for name, count in sorted(EXECUTIONS.items()):
        terminalreporter.write_line(f"{name}: {count} executions")
    terminalreporter.write_line(
        f"in all: {sum(EXECUTIONS.values())} executions in {sum(SECONDS.values()):.1f} s"
    )
