"""STOW-RS throughput: `dicom-gateway queue flush` to a DICOMweb archive
against `curl` posting the same multipart/related body (built once, from the
same files, streamed with -T) and dicomweb-client's `store_instances`, to
the same server in the same run, alternating (curl, ours, dicomweb-client, …).

The server is the one the tests use: Orthanc 1.10 with its DICOMweb plugin
and basic auth, behind nginx terminating TLS with a client certificate
required. Orthanc is restarted on an empty database before every run, so
each tool stores into an empty archive, and a run counts only when the archive then holds every
instance. Data sets as in BENCHMARKS.md: `sc` (300 Secondary Capture,
≈1.44 MB) and `cine` (5 Ultrasound Multi-frame, ≈110 MB).

Environment: BENCH_PAIRS (default 5), BENCH_SC_COUNT (300), BENCH_CINE_COUNT (5).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tomli_w

from tests.benchmarks.bench_forward import fill_queue, reset_queue, sent_count
from tests.benchmarks.common import Comparison, Run, report, run_command, tool_version
from tests.support.dicomweb import PASSWORD, USER, Nginx, Orthanc
from tests.support.pki import PKI, make_pki
from tests.support.process import free_port

BOUNDARY = "bench-stow-boundary-7d3c1f"

DICOMWEB_CLIENT = """
import sys, requests, pydicom
from dicomweb_client.api import DICOMwebClient
url, ca, cert, key, user, password, *files = sys.argv[1:]
session = requests.Session()
session.verify = ca
session.cert = (cert, key)
session.auth = (user, password)
client = DICOMwebClient(url, session=session)
client.store_instances([pydicom.dcmread(f) for f in files])
"""


def empty(orthanc: Orthanc) -> None:
    """A freshly started Orthanc on an empty database (same port, so nginx
    stays): no run pays for another's deletions or database growth."""
    orthanc.stop()
    shutil.rmtree(orthanc.root / "db", ignore_errors=True)
    orthanc.start()
    assert orthanc.instance_count() == 0


def build_body(files: list[Path], out: Path) -> None:
    with open(out, "wb") as body:
        for i, f in enumerate(files):
            body.write((b"\r\n" if i else b"") + f"--{BOUNDARY}\r\n".encode())
            body.write(b"Content-Type: application/dicom\r\n\r\n")
            with open(f, "rb") as src:
                shutil.copyfileobj(src, body, 1 << 20)
        body.write(f"\r\n--{BOUNDARY}--\r\n".encode())


def curl_cmd(pki: PKI, url: str, body: Path) -> list[str]:
    return [
        "curl",
        "--http1.1",
        "-sS",
        "--fail",
        "--cacert",
        str(pki.ca.cert),
        "--cert",
        str(pki.client.cert),
        "--key",
        str(pki.client.key),
        "-u",
        f"{USER}:{PASSWORD}",
        "-X",
        "POST",
        "-T",
        str(body),  # streamed from the file (--data-binary @ would load it whole)
        "-H",
        "Expect:",  # no 100-continue round trip
        "-H",
        f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "-H",
        "Accept: application/dicom+json",
        "-o",
        "/dev/null",
        url + "/studies",
    ]


def write_config(path: Path, pki: PKI, url: str, queue: Path, secrets: Path) -> Path:
    password = secrets / "archive.pass"
    password.write_text(PASSWORD)
    data = {
        "station": {"ae_title": "EDGE1"},
        "destinations": [
            {
                "name": "pacs",
                "protocol": "stow-rs",
                "url": url,
                "tls": {
                    "ca": str(pki.ca.cert),
                    "cert": str(pki.client.cert),
                    "key": str(pki.client.key),
                },
                "http_auth": {"username": USER, "password_file": str(password)},
            }
        ],
        "queue": {"path": str(queue), "min_free_mb": 0},
    }
    path.write_text(tomli_w.dumps(data))
    return path


def compare(kind: str, count: int, pairs: int, work: Path, pki: PKI) -> None:
    queue = work / f"queue-{kind}"
    fill_queue(queue, kind, count).close()
    files = sorted((queue / "objects").iterdir())
    total = sum(p.stat().st_size for p in files)
    body = work / f"{kind}.body"
    build_body(files, body)
    # The fairest by-hand rival of two connections: the files split in two
    # bodies, posted by two curls at once.
    halves = [work / f"{kind}.half{i}.body" for i in range(2)]
    for i, half in enumerate(halves):
        build_body(files[i::2], half)
    orthanc = Orthanc(work / f"orthanc-{kind}").start()
    nginx = Nginx(work / f"nginx-{kind}", pki, orthanc.port, free_port()).start()
    url = nginx.url()
    config = write_config(work / f"{kind}.toml", pki, url, queue, work)
    ours_cmd = [sys.executable, "-m", "gateway", "--config", str(config), "queue", "flush"]
    dwc_cmd = [
        sys.executable,
        "-c",
        DICOMWEB_CLIENT,
        url,
        str(pki.ca.cert),
        str(pki.client.cert),
        str(pki.client.key),
        USER,
        PASSWORD,
        *map(str, files),
    ]
    # requests lets these replace a session's own CA: point them at ours so
    # the reference can run at all (the gateway ignores them).
    dwc_env = {"REQUESTS_CA_BUNDLE": str(pki.ca.cert), "CURL_CA_BUNDLE": str(pki.ca.cert)}

    def stored_all(run: Run, what: str) -> Run:
        held = orthanc.instance_count()
        if held != count:
            raise RuntimeError(f"{what}: the archive holds {held} of {count}; run discarded")
        return run

    def curl() -> Run:
        empty(orthanc)
        return stored_all(run_command(curl_cmd(pki, url, body), timeout=900), "curl")

    def ours() -> Run:
        empty(orthanc)
        reset_queue(queue)
        run = run_command(ours_cmd, timeout=900)
        if sent_count(queue) != count:
            raise RuntimeError("queue flush did not send everything; run discarded")
        return stored_all(run, "queue flush")

    def two_curls() -> Run:
        empty(orthanc)
        return stored_all(run_parallel([curl_cmd(pki, url, h) for h in halves]), "two curls")

    def dicomweb_client() -> Run:
        empty(orthanc)
        return stored_all(run_command(dwc_cmd, env=dwc_env, timeout=900), "dicomweb-client")

    dataset = (
        f"{kind}: {count} objects, {total / 1e6:.0f} MB, HTTPS (TLS 1.3, client certificate) "
        "through nginx to Orthanc 1.10 + DICOMweb 1.7, loopback"
    )
    vs_curl = Comparison(
        f"stow_{kind}_vs_curl",
        dataset,
        tool_version(["curl", "--version"]),
        extra={"reference_how": "curl -T of the multipart body built once (one request)"},
    )
    vs_dwc = Comparison(
        f"stow_{kind}_vs_dicomweb_client",
        dataset,
        "dicomweb-client " + _version("dicomweb_client"),
        extra={"reference_how": "store_instances(all datasets), one request, body in memory"},
    )
    vs_two = Comparison(
        f"stow_{kind}_vs_two_curls",
        dataset,
        tool_version(["curl", "--version"]),
        extra={
            "reference_how": "two curl -T at once, each posting half the files "
            "(bodies built once): not a target, the by-hand rival of two connections"
        },
    )
    try:
        for _ in range(pairs):
            vs_curl.theirs.append(curl())
            mine = ours()
            for comp in (vs_curl, vs_dwc, vs_two):
                comp.ours.append(mine)
            vs_dwc.theirs.append(dicomweb_client())
            vs_two.theirs.append(two_curls())
    finally:
        nginx.stop()
        orthanc.stop()
    mb = total / 1e6
    for comp in (vs_curl, vs_dwc, vs_two):
        summary: dict[str, Any] = comp.summary()
        summary["ours"] = (
            "dicom-gateway queue flush (a new process: start-up included), "
            "destinations.connections = 2 (the default)"
        )
        summary["throughput_ratio_median_ours_over_reference"] = 1 / summary["median_ratio"]
        summary["throughput_ratio_min"] = 1 / summary["max_ratio"]
        summary["throughput_ratio_max"] = 1 / summary["min_ratio"]
        summary["ours_median_MB_per_s"] = mb / summary["ours_median_wall_s"]
        summary["reference_median_MB_per_s"] = mb / summary["reference_median_wall_s"]
        report(summary)
    shutil.rmtree(queue)
    for path in (body, *halves):
        path.unlink()


def run_parallel(commands: list[list[str]]) -> Run:
    """Commands started together, each as `run_command` starts one: the wall
    time until the last has ended, their CPU summed and the largest peak RSS."""
    start = time.perf_counter()
    with ThreadPoolExecutor(len(commands)) as pool:
        runs = list(pool.map(lambda c: run_command(c, timeout=900), commands))
    wall = time.perf_counter() - start
    return Run(wall, sum(r.cpu for r in runs), max(r.max_rss_mib for r in runs))


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module.replace("_", "-"))


def main() -> None:
    pairs = int(os.environ.get("BENCH_PAIRS", "5"))
    sc_count = int(os.environ.get("BENCH_SC_COUNT", "300"))
    cine_count = int(os.environ.get("BENCH_CINE_COUNT", "5"))
    start = time.monotonic()
    subprocess.run(["curl", "--version"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="bench-stow-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        compare("sc", sc_count, pairs, work, pki)
        compare("cine", cine_count, pairs, work, pki)
    print(f"bench_stow: total {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
