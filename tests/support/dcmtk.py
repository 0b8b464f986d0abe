"""DCMTK's storescp as the PACS: TLS with mutual authentication, its own process."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gateway.ops.certs import Issued
from tests.support.process import free_port, require_tool, stop_process, wait_for_port


@dataclass
class StoreSCP:
    """DCMTK storescp with TLS and mutual authentication, in its own process."""

    directory: Path
    cert: Issued
    ca: Path
    ae_title: str = "PACS"
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            require_tool("storescp"),
            "--log-level",
            "warn",
            "+tls",
            str(self.cert.key),
            str(self.cert.cert),
            "-pw",
            "+cf",
            str(self.ca),
            "-aet",
            self.ae_title,
            "-od",
            str(self.directory),
            *self.extra,
            str(self.port),
        ]

    def start(self) -> StoreSCP:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())
