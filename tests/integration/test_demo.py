"""`dicom-gateway demo` with nothing configured: worklist → capture → MPPS →
TLS forward, all on loopback, and the objects it delivers are valid."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.process import REPO, require_tool


def test_demo_runs_end_to_end_with_no_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DICOM_GATEWAY_CONFIG"}
    env["XDG_STATE_HOME"] = str(tmp_path)
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "picked Demo^Patient, accession DEMO0001" in out
    assert "MPPS at the RIS: IN PROGRESS → COMPLETED" in out
    assert out.rstrip().endswith("demo: OK")
    arrived = re.findall(r"demo: arrived (\S+\.dcm)", out)
    assert len(arrived) == 3
    for path in arrived:
        check = subprocess.run([require_tool("dciodvfy"), path], capture_output=True, text=True)
        errors = [x for x in (check.stdout + check.stderr).splitlines() if x.startswith("Error")]
        assert errors == [], errors
    assert "Traceback" not in result.stderr
