"""A reboot that keeps the PIDs, for real: each "boot" is a new PID namespace
(its first process is PID 1 again, as on an embedded box that boots the same
way every time) with its own boot id bind-mounted over
/proc/sys/kernel/random/boot_id. A forwarder claims a batch and dies with
the power; after the "reboot" the next forwarder has the very same PID. With
claims keyed by `hostname:pid` it took the claim for its own and the batch
stayed in flight forever; keyed by boot id, PID and start time, with a
lease, the claim is reset and the batch is sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.support.process import REPO, require_tool
from tests.support.queue import new_outbox

BOOT = """
import json, os, sys
from tests.support.queue import new_outbox
outbox = new_outbox(sys.argv[1], ["pacs"])
if sys.argv[2] == "claim":
    batch = outbox.claim("pacs")
    print(json.dumps({"pid": os.getpid(), "claimed": len(batch)}), flush=True)
    os._exit(0)  # the power goes: no release, no clean-up
report = outbox.recover()
print(json.dumps({"pid": os.getpid(), "reset": report.claims_reset,
                  "due": len(outbox.claim("pacs"))}), flush=True)
"""


def _boot(tmp_path: Path, queue: Path, step: str, boot_id: str) -> dict[str, int]:
    boot_file = tmp_path / f"boot_id-{boot_id}"
    boot_file.write_text(boot_id + "\n")
    script = (
        f"mount --bind {boot_file} /proc/sys/kernel/random/boot_id && "
        f"exec {sys.executable} -c '{BOOT}' {queue} {step}"
    )
    out = subprocess.run(
        [require_tool("unshare"), "--pid", "--fork", "--mount", "--mount-proc", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_claims_of_the_last_boot_are_reset_when_the_pids_repeat(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    with new_outbox(queue, ["pacs"]) as outbox:
        for n in range(3):
            outbox.add(
                b"DICM" * 10,
                sop_instance_uid=f"1.2.3.{n}",
                sop_class_uid="1.2.3",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                study_instance_uid="1.2.3.4",
            )
    boot = str(uuid.uuid4())
    first = _boot(tmp_path, queue, "claim", boot)
    assert first["claimed"] == 3
    # Same boot, same PID again (the forwarder restarted and got PID 1 back):
    # its start time differs, so the claim is not its own.
    again = _boot(tmp_path, queue, "recover", boot)
    assert again["pid"] == first["pid"] == 1, (first, again)
    assert again["reset"] == 3 and again["due"] == 3, again
    # That process claimed the batch again and lost power too; the next boot
    # (a new boot id, the same PID 1) resets the claims and sends them.
    after = _boot(tmp_path, queue, "recover", str(uuid.uuid4()))
    assert after["pid"] == 1 and after["reset"] == 3 and after["due"] == 3, after
