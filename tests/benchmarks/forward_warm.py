"""The forwarder as the long-running service runs it (`dicom-gateway run`):
started and configured before the clock starts, then told to send. Prints one
JSON line: CPU seconds of the send, peak RSS (VmHWM) and objects sent.

Used by bench_forward; not a benchmark on its own (hence no `bench_` prefix).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from gateway.config import load_config
from gateway.queue.outbox import outbox_for
from gateway.send.forwarder import Forwarder


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    config = load_config(sys.argv[1])
    outbox = outbox_for(config)
    forwarder = Forwarder.from_config(outbox, config)
    print("ready", flush=True)
    sys.stdin.readline()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    report = forwarder.flush(timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        json.dumps({"wall": wall, "cpu": cpu, "rss_mib": vm_hwm_mib(), "sent": report.sent}),
        flush=True,
    )


if __name__ == "__main__":
    main()
