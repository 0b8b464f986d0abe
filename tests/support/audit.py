"""Reading audit messages as a collector would: RFC 5424 frames with XML
that must validate against the PS3.15 A.5 schema."""

from __future__ import annotations

import re

from lxml import etree

from tests.support.process import REPO

SCHEMA = etree.RelaxNG(etree.parse(str(REPO / "tests/schemas/dicom-audit-message.rng")))
RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<host>\S+) "
    rb"dicom-gateway (?P<pid>\d+) IHE\+RFC-3881 - \xef\xbb\xbf(?P<msg><AuditMessage>.*)$",
    re.S,
)


def parse_frame(frame: bytes) -> tuple[int, etree._Element]:
    match = RFC5424.match(frame)
    assert match, frame[:200]
    xml = etree.fromstring(match.group("msg"))
    SCHEMA.assertValid(xml)
    return int(match.group("pri")), xml


def event_code(xml: etree._Element) -> tuple[str, str | None]:
    ev = xml.find("EventIdentification")
    assert ev is not None
    kind = ev.find("EventTypeCode")
    return ev.find("EventID").get("csd-code"), None if kind is None else kind.get("csd-code")  # type: ignore[union-attr]
