"""A full disk: captures are refused with a clear one-line reason, nothing
already queued is lost or evicted, and it all still reaches the PACS.

As root (as `make test` runs) the queue lives on a real 4 MiB tmpfs that
fills up; otherwise `queue.min_free_mb` is set above the free space."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.crash import acknowledged
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[bool]:
    path.mkdir()
    if os.geteuid() != 0:
        yield False
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_refuses_captures_and_keeps_the_queue(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    disk = tmp_path / "disk"
    with small_disk(disk) as real:
        data = gateway_config(tmp_path, pki, storescp.port)
        data["queue"] = {"path": str(disk / "queue"), "min_free_mb": 0}
        gw = Gateway(write_config(tmp_path / "gateway.toml", data))
        first = gw("capture", "--patient-id", "D1", "--patient-name", "Disk^Full", "--frames", "2")
        assert first.returncode == 0, first.stderr
        acked = acknowledged(first.stdout)
        if real:  # keep capturing until the file system is really full
            result = gw(
                "capture", "--patient-id", "D1", "--patient-name", "Disk^Full", "--frames", "40"
            )
            acked |= acknowledged(result.stdout)
            line = assert_one_line_error(result)
            assert "No space left on device" in line or "disk nearly full" in line, line
        else:
            data["queue"]["min_free_mb"] = shutil.disk_usage(tmp_path).free // 2**20 + 1000
            write_config(gw.config, data)
            line = assert_one_line_error(
                gw("capture", "--patient-id", "D1", "--patient-name", "Disk^Full")
            )
            assert "disk nearly full" in line and "nothing queued was removed" in line, line
        # The guard: with min_free_mb above what is left, refused before writing.
        data["queue"]["min_free_mb"] = 10**6
        write_config(gw.config, data)
        line = assert_one_line_error(
            gw("capture", "--patient-id", "D1", "--patient-name", "Disk^Full")
        )
        assert "disk nearly full" in line and "capture refused" in line, line
        rows = json.loads(gw("queue", "list", "--json", check=True).stdout)
        assert {r["sop_instance_uid"] for r in rows} == acked
        for row in rows:
            assert Path(row["path"]).stat().st_size == row["size"]
        storescp.start()
        gw("queue", "flush", "--timeout", "60", check=True)
        received = {p.name.split(".", 1)[1] for p in storescp.received()}
        assert acked <= received
