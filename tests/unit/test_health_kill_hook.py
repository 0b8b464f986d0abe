"""The test hook tests/image uses to kill one loop's thread on the booted
appliance: off unless its variable is set, and then only the named loop."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gateway.ops.health import KILL_HOOK_ENV, Health


def test_a_loop_whose_kill_file_appears_ends_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KILL_HOOK_ENV, str(tmp_path))
    health = Health(limit=0.05)
    victim, bystander = health.beater("control"), health.beater("ui")
    victim()
    (tmp_path / "kill-control").write_text("1\n")  # another process: lives on
    victim()
    (tmp_path / "kill-control").write_text(f"{os.getpid()}\n")
    bystander()
    ended: list[BaseException] = []

    def loop() -> None:
        try:
            victim()
        except BaseException as exc:  # what ends the thread
            ended.append(exc)

    t = threading.Thread(target=loop)
    t.start()
    t.join(timeout=5)
    assert ended and isinstance(ended[0], SystemExit)
    assert "loop control killed" in str(ended[0])


def test_without_the_variable_no_file_is_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KILL_HOOK_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kill-control").write_text(f"{os.getpid()}\n")
    health = Health()
    health.beater("control")()
    assert health.stale() == []
