"""Clock guard and certificate alarms on real files: the timesyncd flag, a
clock before the build, and the throwaway PKI's expired certificate."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.ops.certalarm import check_certificates, log_alarms
from gateway.ops.clock import ClockGuard, build_floor, clock_status, flagged_objects
from tests.support.gateway import Gateway, gateway_config, write_config
from tests.support.pki import PKI


def test_clock_untrusted_without_sync_and_before_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    flag = tmp_path / "synchronized"
    monkeypatch.setenv("DICOM_GATEWAY_TIMESYNC_FLAG", str(flag))
    status = clock_status()
    assert not status.synchronized and not status.trusted
    assert "not synchronised" in (status.reason or "")
    flag.touch()
    assert clock_status().trusted
    early = clock_status(now=build_floor().timestamp() - 86400)
    assert early.before_build and not early.trusted and "earlier than" in (early.reason or "")
    flag.unlink()
    guard = ClockGuard()
    with caplog.at_level(logging.INFO, "gateway.ops.clock"):
        guard.check()
        guard.check()  # unchanged: logged once
        flag.touch()
        guard.check()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("captures continue" in m for m in messages) == 1
    assert any("clock synchronised" in m for m in messages)


def test_expired_and_expiring_certificates_alarm(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config(
        {
            "destinations": [
                {
                    "name": "pacs",
                    "ae_title": "PACS",
                    "host": "localhost",
                    "port": 9,
                    "tls": {
                        "ca": str(pki.ca.cert),
                        "cert": str(pki.expired.cert),
                        "key": str(pki.expired.key),
                    },
                }
            ],
            "certificates": {"warn_days": 30},
        }
    )
    statuses = {s.name: s for s in check_certificates(config, probe_peers=False)}
    assert statuses["pacs/own"].days_left < 0 and statuses["pacs/own"].warn
    assert not statuses["pacs/ca"].warn
    with caplog.at_level(logging.WARNING, "gateway.ops.certalarm"):
        alarms = log_alarms(list(statuses.values()))
    assert [a.name for a in alarms] == ["pacs/own"]
    assert "expired" in caplog.records[0].getMessage()


def test_captures_with_an_unsynchronised_clock_are_flagged_in_the_queue(
    tmp_path: Path, pki: PKI
) -> None:
    flag = tmp_path / "synchronized"
    config = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, None))
    gw = Gateway(config, {"DICOM_GATEWAY_TIMESYNC_FLAG": str(flag)})
    result = gw("capture", "--patient-id", "P1", "--patient-name", "Doe^A", "--frames", "2")
    assert result.returncode == 0, result.stderr
    assert "captured with an unverified clock" in result.stderr
    flag.touch()
    gw("capture", "--patient-id", "P1", "--patient-name", "Doe^A", check=True)
    flagged = flagged_objects(tmp_path / "queue")
    assert sorted(flagged) == [1, 2]
    assert all("not synchronised" in reason for reason in flagged.values())
