"""SIGKILL the capture and forwarder processes at random points (20 cycles
here, 200 in `make bench`): nothing acknowledged is lost, nothing is marked
sent that the PACS did not receive, and the queue keeps no orphans."""

from __future__ import annotations

from pathlib import Path

from tests.support.crash import run_cycles, summary
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI


def test_sigkill_during_capture_and_forwarding_loses_nothing(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    storescp.start()
    config = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, storescp.port))
    report = run_cycles(
        config,
        tmp_path / "queue",
        storescp.directory,
        cycles=20,
        seed=20261123,
        deadline_s=50,
    )
    assert report.problems == [], summary(report)
    assert report.cycles == 20
    assert report.kills >= 10, summary(report)
    assert report.acknowledged, "no capture was ever acknowledged: the test proved nothing"
    assert report.acknowledged <= report.received
