"""The crash soak: 200 cycles of SIGKILL to capture and forwarder processes
(see tests/crash_harness.py), against DCMTK storescp over mutual TLS. Prints
cycles, kills, acknowledged and received counts and any broken promise."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.ops.certs import make_authority
from tests.benchmarks.common import machine, report
from tests.support.crash import run_cycles
from tests.support.process import free_port, wait_for_port


def main() -> None:
    cycles = int(os.environ.get("BENCH_CRASH_CYCLES", "200"))
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp:
        root = Path(tmp)
        ca = make_authority(root, "ca")
        server, client = ca.issue(root, "pacs"), ca.issue(root, "gateway")
        port = free_port()
        received = root / "pacs"
        received.mkdir()
        scp = subprocess.Popen(
            [
                "storescp",
                "+tls",
                str(server.key),
                str(server.cert),
                "-pw",
                "+cf",
                str(ca.cert),
                "-aet",
                "PACS",
                "-od",
                str(received),
                str(port),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, scp)
        config = root / "gateway.toml"
        config.write_text(
            f"""[station]
ae_title = "EDGE1"
[capture]
driver = "testpattern"
compression = "none"
[capture.options]
width = 320
height = 240
realtime = false
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "localhost"
port = {port}
[destinations.tls]
ca = "{ca.cert}"
cert = "{client.cert}"
key = "{client.key}"
[queue]
path = "{root / "queue"}"
min_free_mb = 10
"""
        )
        start = time.monotonic()
        try:
            result = run_cycles(config, root / "queue", received, cycles, seed=7, deadline_s=3600)
        finally:
            scp.terminate()
            scp.wait(timeout=10)
        report(
            {
                "name": "crash_soak",
                "cycles": result.cycles,
                "sigkills": result.kills,
                "acknowledged_captures": len(result.acknowledged),
                "received_at_storescp": len(result.received),
                "problems": len(result.problems),
                "problem_samples": result.problems[:10],
                "seconds": time.monotonic() - start,
                "machine": machine(),
            }
        )
        if result.problems:
            raise AssertionError(f"{len(result.problems)} broken promise(s)")
