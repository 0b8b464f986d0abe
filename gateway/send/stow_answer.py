"""Reading a STOW-RS answer (PS3.18 10.5.3) and deciding, per SOP Instance,
what became of it.

The body is read for every status, whatever Content-Type the server put on
it: DICOM JSON, DICOM XML (PS3.19 Native DICOM Model), or either inside a
multipart/related answer, recognised by its first byte when the header is
wrong or missing. From it: the Referenced SOP Sequence (0008,1199) —
stored, perhaps with a Warning Reason (0008,1196) —, the Failed SOP Sequence
(0008,1198) with each Failure Reason (0008,1197), the Other Failures Sequence
(0008,119A), a Warning Reason for the whole answer, and the HTTP `Warning`
header's texts (RFC 7234 5.5, code 299 in PS3.18).

The rule that keeps images: an instance is stored only when the server
names it as stored. One it does not mention is a transient failure, whatever
the status says. Failure reasons are C-STORE statuses (PS3.4 B.2.3) and are
sorted as the C-STORE sender sorts them, with one addition: 0x0111
(Duplicate SOP Instance) in the Failed SOP Sequence is permanent — the
archive holds a different object under this UID and refuses ours; an
identical re-send is answered as stored by archives that compare (Orthanc,
dcm4chee), and a "failure" with a warning code (0xBxxx, Azure's 45070
"already stored") means the archive has it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from gateway.send.cstore import classify_status, describe_status
from gateway.send.destination import Outcome, Result

MAX_ANSWER = 16 * 1024 * 1024  # bytes of answer read, at most
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
OTHER_FAILURES_SEQUENCE = "0008119A"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
DUPLICATE_SOP_INSTANCE = 0x0111
_WARNING_TEXT = re.compile(r'\d{3}\s+\S+\s+"((?:[^"\\]|\\.)*)"')


@dataclass
class Answer:
    """What the server said, per instance and as a whole."""

    status: int
    reason_phrase: str = ""
    parsed: bool = False  # a DICOM answer was found in the body
    referenced: dict[str, int | None] = field(default_factory=dict)  # uid → warning
    failed: dict[str, int | None] = field(default_factory=dict)  # uid → failure reason
    other_failures: list[int | None] = field(default_factory=list)
    warning: int | None = None
    texts: list[str] = field(default_factory=list)  # Warning header, plain-text bodies

    @property
    def mentioned(self) -> set[str]:
        return set(self.referenced) | set(self.failed)

    def summary(self) -> str:
        out = f"HTTP {self.status}" + (f" {self.reason_phrase}" if self.reason_phrase else "")
        if self.other_failures:
            codes = ", ".join(describe_status(c) for c in self.other_failures)
            out += f"; other failures: {codes}"
        if self.texts:
            out += "; archive says: " + " / ".join(self.texts)
        return out


def clean_text(text: str, limit: int = 160) -> str:
    """A peer's words, made safe for a log line and the screen."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def warning_texts(values: Iterable[str]) -> list[str]:
    out = []
    for value in values:
        found = _WARNING_TEXT.findall(value)
        for text in found or [value]:
            cleaned = clean_text(text.replace('\\"', '"'))
            if cleaned:
                out.append(cleaned)
    return out


def parse_answer(
    status: int,
    body: bytes,
    content_type: str = "",
    warnings: Iterable[str] = (),
    reason_phrase: str = "",
) -> Answer:
    answer = Answer(status, clean_text(reason_phrase, 40), texts=warning_texts(warnings))
    for part in _candidate_parts(body, content_type):
        data = _decode(part)
        if data is not None:
            _fill(answer, data)
            answer.parsed = True
            return answer
    text = body[:2000].decode("utf-8", "replace").strip()
    if text and not text.startswith("<"):  # a plain-text error; HTML pages say nothing
        answer.texts.append(clean_text(text))
    return answer


def _candidate_parts(body: bytes, content_type: str) -> list[bytes]:
    """The body itself, or the parts of a multipart/related answer."""
    match = re.search(r'boundary="?([^";,\s]+)"?', content_type, re.IGNORECASE)
    if not content_type.lower().startswith("multipart/") or match is None:
        return [body]
    delimiter = b"--" + match.group(1).encode("latin-1")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, sep, content = chunk.partition(b"\r\n\r\n")
        if sep:
            parts.append(content.removesuffix(b"\r\n"))
    return parts or [body]


def _decode(part: bytes) -> dict[str, Any] | None:
    """A DICOM JSON object (or the first of a list), or an XML Native DICOM
    Model turned into the same shape; None when the bytes are neither."""
    head = part.lstrip()[:1]
    if head in (b"{", b"["):
        try:
            data = json.loads(part)
        except ValueError:
            return None
        if isinstance(data, list):
            data = data[0] if data and isinstance(data[0], dict) else None
        return data if isinstance(data, dict) else None
    if head == b"<":
        try:
            root = ElementTree.fromstring(part)
        except ElementTree.ParseError:
            return None
        if _local(root.tag) != "NativeDicomModel":
            return None
        return _xml_dataset(root)
    return None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _xml_dataset(element: ElementTree.Element) -> dict[str, Any]:
    """PS3.19 Native DICOM Model → the DICOM JSON shape the reader expects."""
    out: dict[str, Any] = {}
    for attr in element:
        if _local(attr.tag) != "DicomAttribute":
            continue
        tag = (attr.get("tag") or "").upper()
        items = [_xml_dataset(i) for i in attr if _local(i.tag) == "Item"]
        values = [(v.text or "").strip() for v in attr if _local(v.tag) == "Value"]
        out[tag] = {"vr": attr.get("vr"), "Value": items if items else values}
    return out


def _values(data: dict[str, Any], tag: str) -> list[Any]:
    element = data.get(tag)
    if not isinstance(element, dict):
        return []
    value = element.get("Value")
    return value if isinstance(value, list) else []


def _first_uid(item: dict[str, Any]) -> str | None:
    values = _values(item, REFERENCED_SOP_INSTANCE_UID)
    uid = values[0] if values else None
    return uid.strip() if isinstance(uid, str) and uid.strip() else None


def _code(item: dict[str, Any], tag: str) -> int | None:
    values = _values(item, tag)
    value = values[0] if values else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0xFFFF else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
        return number if number <= 0xFFFF else None
    return None


def _items(data: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return [i for i in _values(data, tag) if isinstance(i, dict)]


def _fill(answer: Answer, data: dict[str, Any]) -> None:
    answer.warning = _code(data, WARNING_REASON)
    for item in _items(data, REFERENCED_SOP_SEQUENCE):
        uid = _first_uid(item)
        if uid is not None:
            answer.referenced[uid] = _code(item, WARNING_REASON)
    for item in _items(data, FAILED_SOP_SEQUENCE):
        uid = _first_uid(item)
        if uid is not None:
            answer.failed[uid] = _code(item, FAILURE_REASON)
    for item in _items(data, OTHER_FAILURES_SEQUENCE):
        answer.other_failures.append(_code(item, FAILURE_REASON))


def failure_outcome(code: int | None) -> Outcome:
    if code == DUPLICATE_SOP_INSTANCE:
        return Outcome.PERMANENT
    return classify_status(code)


def describe_failure(code: int | None) -> str:
    if code is None:
        return "failed, no reason given"
    if code == DUPLICATE_SOP_INSTANCE:
        return (
            "0x0111 duplicate SOP instance: the archive holds another object with this "
            "SOP Instance UID"
        )
    if code == 0x0110:
        return "0x0110 processing failure"
    return describe_status(code)


def reconcile(
    answer: Answer, objects: Sequence[tuple[int, str]], label: str
) -> tuple[list[Result], list[str]]:
    """A Result for every (object id, SOP Instance UID) sent, and the
    warnings to log about stored ones."""
    results: list[Result] = []
    notes: list[str] = []
    for object_id, uid in objects:
        if uid in answer.failed:
            code = answer.failed[uid]
            outcome = failure_outcome(code)
            if outcome is Outcome.STORED:
                notes.append(f"{uid}: the archive has it ({describe_failure(code)})")
                results.append(Result(object_id, Outcome.STORED))
                continue
            why = f"{label}: refused: {describe_failure(code)} ({answer.summary()})"
            results.append(Result(object_id, outcome, why))
        elif uid in answer.referenced:
            warning = answer.referenced[uid] or answer.warning
            if warning is not None or answer.texts:
                notes.append(
                    f"{uid}: stored with warning "
                    + (describe_status(warning) if warning is not None else "")
                    + (f" ({'; '.join(answer.texts)})" if answer.texts else "")
                )
            results.append(Result(object_id, Outcome.STORED))
        else:
            why = f"{label}: the answer does not say the object was stored ({answer.summary()})"
            results.append(Result(object_id, Outcome.TRANSIENT, why))
    return results, notes
