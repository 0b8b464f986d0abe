"""The kiosk unit: systemd accepts it, and it shows the UI full screen in
Chromium under cage and comes back whenever it dies."""

from __future__ import annotations

import subprocess

from tests.conftest import REPO, require_tool

UNIT = REPO / "systemd" / "dicom-gateway-kiosk.service"


def test_kiosk_unit_verifies_and_restarts_forever() -> None:
    require_tool("cage")
    result = subprocess.run(
        [require_tool("systemd-analyze"), "verify", str(UNIT)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stderr, result.stderr
    text = UNIT.read_text()
    assert "Restart=always" in text and "StartLimitIntervalSec=0" in text
    start = text[text.index("ExecStart=") :]
    assert start.startswith("ExecStart=/usr/bin/cage ")
    assert "/usr/bin/chromium --kiosk" in start
    assert "http://${KIOSK_HOST}:${KIOSK_PORT}/" in start
