"""The inbound C-STORE SCP: a legacy modality (DCMTK storescu, plain TCP)
sends to the gateway; only allow-listed AE titles and addresses get in; what
is accepted is queued durably and forwarded over TLS to DCMTK storescp."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from pydicom import dcmread

from gateway.acquire.inbound import InboundService
from gateway.config import parse_config
from gateway.send.forwarder import Forwarder
from tests.support.dcmtk import StoreSCP
from tests.support.peers import small_object
from tests.support.pki import PKI
from tests.support.process import free_port, require_tool, wait_for_port
from tests.support.queue import new_outbox


def config(tmp_path: Path, pki: PKI, pacs_port: int, port: int, allowed: list[Any]) -> Any:
    return parse_config(
        {
            "station": {"ae_title": "EDGE1"},
            "destinations": [
                {
                    "name": "pacs",
                    "ae_title": "PACS",
                    "host": "localhost",
                    "port": pacs_port,
                    "tls": {
                        "ca": str(pki.ca.cert),
                        "cert": str(pki.client.cert),
                        "key": str(pki.client.key),
                    },
                }
            ],
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
            "inbound": {"enabled": True, "listen": f"127.0.0.1:{port}", "allowed": allowed},
        }
    )


def storescu(port: int, aet: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("storescu"), "-aet", aet, "-aec", "EDGE1", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_inbound_objects_are_queued_and_forwarded(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    storescp.start()
    port = free_port()
    cfg = config(
        tmp_path,
        pki,
        storescp.port,
        port,
        [
            {"ae_title": "MODALITY", "address": "127.0.0.0/8"},
            {"ae_title": "FAR", "address": "10.9.9.9"},
        ],
    )
    files = []
    for i in range(3):
        _uid, data = small_object()
        files.append(tmp_path / f"in{i}.dcm")
        files[-1].write_bytes(data)
    outbox = new_outbox(cfg.queue.path, ["pacs"])
    service = InboundService(outbox, cfg)
    service.start()
    try:
        wait_for_port(port)
        ok = storescu(port, "MODALITY", *files)
        assert ok.returncode == 0, ok.stderr
        assert len(outbox.objects()) == 3
        # Unknown AE title: the association is rejected.
        stranger = storescu(port, "INTRUDER", files[0])
        assert stranger.returncode != 0
        # Known AE title, but not from its listed address: refused at the request.
        storescu(port, "FAR", files[0])
        assert len(outbox.objects()) == 3
        # A resend of something we hold is harmless and answered with success.
        again = storescu(port, "MODALITY", files[1])
        assert again.returncode == 0 and len(outbox.objects()) == 3
    finally:
        service.stop()
    report = Forwarder(outbox, list(cfg.destinations), "EDGE1").flush(timeout=30)
    assert report.sent == 3
    received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in storescp.received()}
    for f in files:
        original = dcmread(f)
        assert received[original.SOPInstanceUID].PixelData == original.PixelData
    outbox.close()


def test_run_service_takes_inbound_objects_to_the_pacs(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    """`dicom-gateway run --only forwarder` as a real process: a modality sends
    to the inbound port, the object reaches DCMTK storescp over TLS."""
    import os
    import signal
    import sys
    import time

    from tests.support.gateway import gateway_config, write_config
    from tests.support.process import REPO

    storescp.start()
    port = free_port()
    data = gateway_config(tmp_path, pki, storescp.port)
    data["inbound"] = {
        "enabled": True,
        "listen": f"127.0.0.1:{port}",
        "allowed": [{"ae_title": "MODALITY", "address": "127.0.0.1"}],
    }
    data["forwarding"] = {"retry_base_s": 0.2, "retry_cap_s": 1.0}
    path = write_config(tmp_path / "gateway.toml", data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(path), "run", "--only", "forwarder"],
        cwd=REPO,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc)
        uid, obj = small_object()
        (tmp_path / "in.dcm").write_bytes(obj)
        assert storescu(port, "MODALITY", tmp_path / "in.dcm").returncode == 0
        deadline = time.monotonic() + 30
        while not storescp.received() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p.name for p in storescp.received()] == [f"SC.{uid}"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0


def test_inbound_tls_requires_a_client_certificate(tmp_path: Path, pki: PKI) -> None:
    """With [inbound.tls], a modality that presents a certificate from our CA
    gets in; plain TCP and a client without a certificate do not."""
    port = free_port()
    cfg = config(tmp_path, pki, 1, port, [{"ae_title": "MODALITY", "address": "127.0.0.1"}])
    tls = {"ca": str(pki.ca.cert), "cert": str(pki.server.cert), "key": str(pki.server.key)}
    cfg = cfg.model_copy(
        update={
            "inbound": parse_config(
                {"inbound": {**cfg.inbound.model_dump(), "tls": tls, "handshake_timeout_s": 2}}
            ).inbound
        }
    )
    _uid, data = small_object()
    obj = tmp_path / "in.dcm"
    obj.write_bytes(data)
    outbox = new_outbox(cfg.queue.path, ["pacs"])
    service = InboundService(outbox, cfg)
    service.start()
    tls_args = ["+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca.cert)]
    try:
        wait_for_port(port)
        plain = storescu(port, "MODALITY", obj)
        assert plain.returncode != 0 and outbox.objects() == []
        to_us = ["-aet", "MODALITY", "-aec", "EDGE1", "localhost", str(port), str(obj)]
        anonymous = subprocess.run(
            [require_tool("storescu"), "+tla", "+cf", str(pki.ca.cert), *to_us],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert anonymous.returncode != 0 and outbox.objects() == []
        ok = subprocess.run(
            [require_tool("storescu"), *tls_args, *to_us],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        assert len(outbox.objects()) == 1
    finally:
        service.stop()
        outbox.close()
