"""The booted appliance, shared by the tests of one module in file order
(a boot under TCG costs a minute or two): a PKI whose PACS certificate
names the address the guest reaches it at, storescp on the host with mutual
TLS, and the VM after its first boot from an identity file on the boot
partition."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.ops.certs import Issued, make_authority
from tests.image.vm import ARCH, PACS_GUEST_ADDR, VM
from tests.support.dcmtk import StoreSCP

AE_TITLE = "EDGE7"
PIN = "471108"
# Guest time the watchdog must hold with every loop running (10 min; shorter
# only by choice, e.g. IMAGE_WATCHDOG_MINUTES=3 while working on the image).
WATCHDOG_MINUTES = float(os.environ.get("IMAGE_WATCHDOG_MINUTES", "10"))
# At least one: the power-cut check is never turned off, only made shorter.
POWER_CUTS = max(1, int(os.environ.get("IMAGE_POWER_CUTS", "3")))


@dataclass
class Appliance:
    vm: VM
    pacs: StoreSCP
    ca: Path
    client: Issued
    first_boot_wall: float
    ready_wall: float
    workdir: Path


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    work = tmp_path_factory.mktemp(f"appliance-{ARCH}")
    ca = make_authority(work / "pki", "ca")
    server = ca.issue(work / "pki", "pacs", hosts=(PACS_GUEST_ADDR,))
    client = ca.issue(work / "pki", "gateway", hosts=("dicom-gateway",))
    pacs = StoreSCP(work / "pacs", server, ca.cert).start()
    vm = VM(work / "vm", pacs_port=pacs.port)
    boot = work / "boot"
    boot.mkdir()
    (boot / "gateway-identity.toml").write_text(
        f'ae_title = "{AE_TITLE}"\nstation_name = "TRUCK-2"\ninstitution = "Example Clinic"\n'
        f'modality = "US"\npin = "{PIN}"\n'
        'ca_pem = "ca.pem"\ncert_pem = "gateway.pem"\nkey_pem = "gateway.key"\n'
        f'pacs_ae_title = "PACS"\npacs_host = "{PACS_GUEST_ADDR}"\npacs_port = "2762"\n'
    )
    (boot / "ca.pem").write_bytes(ca.cert.read_bytes())
    (boot / "gateway.pem").write_bytes(client.cert.read_bytes())
    (boot / "gateway.key").write_bytes(client.key.read_bytes())
    (boot / "authorized_keys").write_bytes(vm.key.with_suffix(".pub").read_bytes())
    for f in sorted(boot.iterdir()):
        vm.put_boot_file(f)
    t0 = time.monotonic()
    try:
        ssh_wall = vm.start()
        vm.wait_active(
            ["dicom-gateway.service", "dicom-gateway-forwarder.service", "graphical.target"]
        )
        ready_wall = time.monotonic() - t0
        print(f"\nfirst boot ({ARCH}): SSH after {ssh_wall:.0f} s, READY after {ready_wall:.0f} s")
        yield Appliance(vm, pacs, ca.cert, client, ssh_wall, ready_wall, work)
    finally:
        vm.stop()
        pacs.stop()
