"""STOW-RS answers read whatever their form, and reconciled per instance:
stored only when the archive names the instance as stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.send.destination import Outcome
from gateway.send.stow_answer import parse_answer, reconcile
from gateway.send.stow_body import BodyFileChanged, BodyPart, MultipartBody

A, B, C = "1.2.3.1", "1.2.3.2", "1.2.3.3"
OBJECTS = [(1, A), (2, B), (3, C)]


def item(uid: str, **codes: int) -> dict[str, object]:
    out: dict[str, object] = {"00081155": {"vr": "UI", "Value": [uid]}}
    tags = {"failure": "00081197", "warning": "00081196"}
    for name, code in codes.items():
        out[tags[name]] = {"vr": "US", "Value": [code]}
    return out


def dicom_json(referenced: list[dict[str, object]], failed: list[dict[str, object]]) -> bytes:
    answer: dict[str, object] = {"00081199": {"vr": "SQ", "Value": referenced}}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    return json.dumps(answer).encode()


def outcomes(status: int, body: bytes, ctype: str = "", warnings: tuple[str, ...] = ()) -> dict:
    answer = parse_answer(status, body, ctype, warnings)
    results, _ = reconcile(answer, OBJECTS, "cloud")
    return {r.object_id: (r.outcome, r.reason) for r in results}


def test_202_json_per_instance_and_the_unmentioned_one_is_transient() -> None:
    body = dicom_json([item(A)], [item(B, failure=0xA900)])
    got = outcomes(202, body, "application/dicom+json")
    assert got[1][0] is Outcome.STORED
    assert got[2][0] is Outcome.PERMANENT and "0xA900" in (got[2][1] or "")
    assert got[3][0] is Outcome.TRANSIENT and "does not say" in (got[3][1] or "")


XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081199" vr="SQ">
    <Item number="1"><DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.1</Value>
    </DicomAttribute><DicomAttribute tag="00081196" vr="US"><Value number="1">45056</Value>
    </DicomAttribute></Item>
  </DicomAttribute>
  <DicomAttribute tag="00081198" vr="SQ">
    <Item number="1"><DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.2</Value>
    </DicomAttribute><DicomAttribute tag="00081197" vr="US"><Value number="1">42752</Value>
    </DicomAttribute></Item>
  </DicomAttribute>
</NativeDicomModel>"""


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (XML, "application/dicom+xml"),
        (XML, "text/plain"),  # wrong header: recognised by its first byte
        (XML, ""),
        (
            b"--xx\r\nContent-Type: application/dicom+xml\r\n\r\n" + XML + b"\r\n--xx--\r\n",
            'multipart/related; type="application/dicom+xml"; boundary=xx',
        ),
    ],
)
def test_xml_answers_in_any_wrapping(body: bytes, ctype: str) -> None:
    got = outcomes(200, body, ctype)
    assert got[1][0] is Outcome.STORED  # with warning 0xB000
    assert got[2][0] is Outcome.TRANSIENT and "0xA700" in (got[2][1] or "")  # out of resources
    assert got[3][0] is Outcome.TRANSIENT


def test_a_json_list_and_string_codes() -> None:
    body = json.dumps(
        [{"00081199": {"vr": "SQ", "Value": [item(A)]}, "00081198": {"Value": [
            {"00081155": {"Value": [B]}, "00081197": {"Value": ["49152"]}}]}}]
    ).encode()  # fmt: skip
    got = outcomes(409, body)
    assert got[1][0] is Outcome.STORED
    assert got[2][0] is Outcome.PERMANENT and "0xC000" in (got[2][1] or "")


def test_409_duplicate_is_permanent_with_the_warning_text() -> None:
    warning = '299 archive.example "SOP Instance UID already stored with different content"'
    body = dicom_json([], [item(A, failure=0x0111)])
    got = outcomes(409, body, "application/dicom+json", (warning,))
    assert got[1][0] is Outcome.PERMANENT
    assert "duplicate SOP instance" in (got[1][1] or "")
    assert "already stored with different content" in (got[1][1] or "")


def test_a_warning_code_in_the_failed_sequence_means_the_archive_has_it() -> None:
    body = dicom_json([], [item(A, failure=0xB00E)])  # Azure's 45070 "already stored"
    assert outcomes(409, body)[1][0] is Outcome.STORED


@pytest.mark.parametrize(
    "body",
    [b"", b"<html><body>502 Bad Gateway</body></html>", b"{not json", b"[]", b'{"x": 1}'],
)
def test_nothing_said_means_nothing_stored(body: bytes) -> None:
    got = outcomes(200, body, "application/dicom+json")
    assert all(outcome is Outcome.TRANSIENT for outcome, _ in got.values())


def test_a_plain_text_error_is_shown_cleaned() -> None:
    answer = parse_answer(400, b"bad\x1b[31m request\nbody", "text/plain")
    assert answer.texts == ["bad [31m request body"]


def test_multipart_body_length_matches_what_is_sent(tmp_path: Path) -> None:
    files = []
    for i, size in enumerate((0, 5, (1 << 20) + 3)):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(bytes([i]) * size)
        files.append(BodyPart(path, size))
    body = MultipartBody(files)
    data = b"".join(body)
    assert len(data) == body.length
    assert data.startswith(f"--{body.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
    assert data.endswith(f"\r\n--{body.boundary}--\r\n".encode())
    assert data.count(body.boundary.encode()) == 4


def test_a_file_changed_while_sent_stops_the_body(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 10)
    with pytest.raises(BodyFileChanged):
        b"".join(MultipartBody([BodyPart(path, 20)]))


def _stow(**table: object) -> object:
    base: dict[str, object] = {"name": "c", "protocol": "stow-rs", "url": "https://a.example/dw"}
    return parse_config({"destinations": [{**base, **table}]}).destinations[0]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"url": "http://a.example/dw"},
            "destinations[0].url: 'http://a.example/dw' is plain http",
        ),
        ({"url": "ftp://a.example/"}, "is not an https:// URL"),
        ({"url": "https://u:p@a.example/"}, "the URL carries credentials"),
        ({"url": "https://a.example/?x=1"}, "takes no query"),
        ({"url": "not a url"}, "is not an https:// URL"),
        ({"http_auth": {"bearer_token_file": "/nonexistent/token"}}, "credential file"),
        ({"http_auth": {"username": "u"}}, "needs both username and password_file"),
        ({"protocol": "wado"}, 'protocol must be "dimse" or "stow-rs"'),
        ({"ae_title": "PACS"}, "destinations[0].ae_title: unknown key"),
        ({"tls": {"cert": "/etc/hostname"}}, "cert and key go together"),
    ],
)
def test_config_names_the_problem(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _stow(**table)
    assert message in str(err.value)


def test_plain_http_only_when_allowed_and_dimse_unchanged() -> None:
    assert _stow(url="http://lab.local/dw", allow_plain_http=True) is not None
    dimse = parse_config(
        {"destinations": [{"name": "p", "ae_title": "PACS", "host": "h", "port": 104}]}
    ).destinations[0]
    assert dimse.protocol == "dimse"
