"""What the UI tests share: a real RIS (DCMTK's wlmscpfs, optionally behind
stunnel with client certificates) holding entries on several dates and at
two stations, and checks on a page (targets too small for a gloved finger,
destructive buttons too close to others, waiting for a state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tests.support.dcmtk import StoreSCP
from tests.support.gateway import UIGateway
from tests.support.pki import PKI
from tests.support.wlm import AE, Stunnel, WlmSCP, write_entry


@dataclass(frozen=True)
class Scheduled:
    """One worklist entry the test RIS holds."""

    name: str
    patient_id: str
    accession: str
    days: int  # from today
    time: str = "091500"
    station: str = "EDGE1"
    description: str = "Ultrasound abdomen"

    @property
    def study_uid(self) -> str:
        digits = "".join(str(ord(c)) for c in self.accession or self.patient_id)[:24]
        return f"1.2.826.0.1.3680043.10.1.{digits}.{self.days + 10}"


# Today at this station: Roe, Poe (no accession), Müller (with a middle name)
# and Haydn twice, differing only by procedure; yesterday, tomorrow and at
# another station one each, to be found by Search.
ENTRIES = (
    Scheduled("Roe^Anna", "100", "ACC100", 0, "091500"),
    Scheduled("Poe^Bob", "200", "", 0, "100000"),
    Scheduled("Müller^Jürgen^Maria", "500", "ACC500", 0, "103000"),
    Scheduled("HAYDN^FRANZ^JOSEPH", "HF", "ACC-HF1", 0, "110000", description="Shoulder left"),
    Scheduled("HAYDN^FRANZ^JOSEPH", "HF", "ACC-HF2", 0, "111500", description="Shoulder right"),
    Scheduled("Yester^Day", "Y1", "ACC-YEST", -1, "080000"),
    Scheduled("Tomorrow^Tom", "T1", "ACC-TMRW", 1, "140000"),
    Scheduled("Other^Station", "OS1", "ACC-OTHER", 0, "120000", station="EDGE2"),
)


def write_entries(db: Path, entries: tuple[Scheduled, ...] = ENTRIES) -> None:
    today = date.today()
    for i, e in enumerate(entries):
        write_entry(
            db / f"entry{i}.wl",
            name=e.name,
            patient_id=e.patient_id,
            accession=e.accession,
            study_uid=e.study_uid,
            day=today + timedelta(days=e.days),
            time=e.time,
            station=e.station,
            step_id=f"SPS{i}",
            description=e.description,
        )


@dataclass
class RisPeer:
    """wlmscpfs with `ENTRIES`, counting what it saw; with `pki`, reached
    over stunnel (TLS 1.2+, client certificate required)."""

    root: Path
    pki: PKI | None = None
    wlm: WlmSCP = field(init=False)
    tunnel: Stunnel | None = None

    def __post_init__(self) -> None:
        self.wlm = WlmSCP(self.root / "ris", log=self.root / "wlmscpfs.log")

    def start(self) -> RisPeer:
        self.wlm.prepare(examples=False)
        write_entries(self.wlm.db)
        self.wlm.start()
        if self.pki is not None:
            self.tunnel = Stunnel(
                self.root / "stunnel",
                self.wlm.port,
                self.pki.server.cert,
                self.pki.server.key,
                self.pki.ca.cert,
                debug=5,
            ).start()
        return self

    def stop(self) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
        self.wlm.stop()

    def resume(self) -> None:
        self.wlm.start()
        if self.tunnel is not None:
            self.tunnel.start()

    def connections(self) -> int:
        """TLS connections the RIS's tunnel accepted: every try the gateway
        made, answered or not (with `pki`)."""
        return self.tunnel.connections() if self.tunnel is not None else 0

    @property
    def port(self) -> int:
        return self.tunnel.port if self.tunnel is not None else self.wlm.port

    def config(self) -> dict[str, Any]:
        """The [worklist] table that reaches this RIS."""
        table: dict[str, Any] = {"ae_title": AE, "host": "localhost", "port": self.port}
        if self.pki is not None:
            table["tls"] = {
                "ca": str(self.pki.ca.cert),
                "cert": str(self.pki.client.cert),
                "key": str(self.pki.client.key),
            }
        return table

    def associations(self) -> int:
        return self.wlm.associations()


SMALL = {"width": 800, "height": 480}


def touch_page(browser: Any, viewport: dict[str, int] = SMALL) -> Any:
    """A new page in its own context, with touch, as the kiosk's screen."""
    context = browser.new_context(viewport=viewport, has_touch=True)
    context.set_default_timeout(15_000)
    return context.new_page()


@dataclass
class UIRig:
    """What a browser test of the touchscreen runs against: `dicom-gateway
    run`, the PACS, Chromium, and the RIS when there is one."""

    gateway: UIGateway
    pacs: StoreSCP
    browser: Any
    ris: RisPeer | None = None

    def page(self, viewport: dict[str, int] = SMALL) -> Any:
        return touch_page(self.browser, viewport)


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")


def small_targets(page: Any) -> list[str]:
    """Visible buttons, links and fields under 48 px high, by accessible name."""
    found: list[str] = page.evaluate(
        """() => Array.from(document.querySelectorAll('button, a.btn, input, select'))
            .filter(e => e.offsetParent !== null && e.type !== 'checkbox')
            .filter(e => { const r = e.getBoundingClientRect();
                           return r.width > 0 && r.height < 48; })
            .map(e => e.getAttribute('aria-label') || e.textContent.trim())"""
    )
    return found


def crowded_destructive(page: Any, gap: float = 12.0) -> list[str]:
    """Visible destructive buttons (.danger) closer than `gap` px to another
    visible button of the same layer (the open dialog, else the page):
    "Delete (6 px from Close)"."""
    found: list[str] = page.evaluate(
        """(gap) => {
            const open = Array.from(document.querySelectorAll('dialog[open]')).pop();
            const seen = Array.from((open || document).querySelectorAll('button, a.btn'))
              .filter(e => open || !e.closest('dialog'))
              .filter(e => { const r = e.getBoundingClientRect();
                             return r.width > 0 && r.height > 0; });
            const out = [];
            for (const d of seen.filter(e => e.classList.contains('danger'))) {
              const a = d.getBoundingClientRect();
              for (const o of seen) {
                if (o === d || o.classList.contains('danger')) continue;
                const b = o.getBoundingClientRect();
                const dx = Math.max(0, Math.max(a.left, b.left) - Math.min(a.right, b.right));
                const dy = Math.max(0, Math.max(a.top, b.top) - Math.min(a.bottom, b.bottom));
                const dist = Math.max(dx, dy);
                const name = e => e.textContent.trim();
                if (dist < gap) out.push(`${name(d)} (${dist.toFixed(0)} px from ${name(o)})`);
              }
            }
            return out;
        }""",
        gap,
    )
    return found


def frame_counters(frames: Any, width: int, height: int, around: int, span: int = 600) -> list[int]:
    """The frame numbers the test pattern burnt into each of `frames` (RGB
    arrays, as stored uncompressed), read by matching the counter's band
    against the pattern rendered for each candidate number near `around`.
    The moving box never reaches that band, so only the digits differ."""
    import numpy as np

    from drivers.testpattern import TestPatternDriver, TestPatternOptions

    driver = TestPatternDriver(TestPatternOptions(width=width, height=height))
    row = int(height * 0.62)
    top, bottom = max(0, row - int(40 * max(0.4, height / 480))), row + 10
    band = slice(top, bottom)
    candidates = range(max(0, around - span), around + span)
    refs = {k: driver.render(k)[band].astype(np.int16) for k in candidates}
    out = []
    for frame in frames:
        got = np.asarray(frame)[band].astype(np.int16)
        scores = sorted((float(np.abs(got - ref).mean()), k) for k, ref in refs.items())
        best, runner_up = scores[0], scores[1]
        if not best[0] < 0.5 * runner_up[0]:
            raise AssertionError(f"frame counter unreadable (best {best}, next {runner_up})")
        out.append(best[1])
    return out
