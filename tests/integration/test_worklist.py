"""Modality Worklist against DCMTK's wlmscpfs (Debian's example worklist plus
UTF-8 and Japanese ISO 2022 entries), plain and behind stunnel4 with client
certificates; the offline cache; the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest

from gateway.config import parse_config
from gateway.ris.model import WorklistQuery
from gateway.ris.worklist import WorklistService
from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.wlm import AE, Stunnel, WlmSCP, write_entry

UTF8_NAME = "Müller-Lüdenscheidt^Jürgen=ミュラー^ユルゲン"
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
STUDY_UTF8 = "1.2.826.0.1.3680043.10.543.1"
STUDY_JIS = "1.2.826.0.1.3680043.10.543.2"


LATIN1_NAME = "Ångström^Åsa^Çelik"


def _add_today_entries(db: Path) -> None:
    today = date.today()
    write_entry(
        db / "latin1.wl",
        name=LATIN1_NAME,
        patient_id="P-LATIN1",
        accession="ACC-LATIN1",
        study_uid="1.2.826.0.1.3680043.10.543.9",
        day=date(2020, 1, 2),
        charset="ISO_IR 100",
        station="LATIN1",
    )
    write_entry(
        db / "utf8.wl",
        name=UTF8_NAME,
        patient_id="P-UTF8",
        accession="ACC-UTF8",
        study_uid=STUDY_UTF8,
        day=today,
        time="101500",
        charset="ISO_IR 192",
    )
    write_entry(
        db / "jis.wl",
        name=JAPANESE_NAME,
        patient_id="P-JIS",
        accession="ACC-JIS",
        study_uid=STUDY_JIS,
        day=today,
        time="090000",
        charset="\\ISO 2022 IR 87",
        modality="US",
        description="Abdomen",
    )


@pytest.fixture
def wlm(tmp_path: Path) -> Iterator[WlmSCP]:
    scp = WlmSCP(tmp_path / "wlistdb").prepare()
    _add_today_entries(scp.db)
    scp.start()
    yield scp
    scp.stop()


def _config(tmp_path: Path, port: int, tls: dict[str, str] | None = None, **extra: Any) -> Any:
    worklist: dict[str, Any] = {"ae_title": AE, "host": "localhost", "port": port, **extra}
    if tls:
        worklist["tls"] = tls
    return parse_config(
        {"queue": {"path": str(tmp_path / "queue"), "min_free_mb": 0}, "worklist": worklist}
    )


def _client_tls(pki: PKI) -> dict[str, str]:
    return {"ca": str(pki.ca.cert), "cert": str(pki.client.cert), "key": str(pki.client.key)}


def test_examples_and_character_sets_over_plain_tcp(tmp_path: Path, wlm: WlmSCP) -> None:
    with WorklistService(_config(tmp_path, wlm.port)) as service:
        result = service.query(WorklistQuery())
    assert result.error is None and result.cached_at is None
    assert len(result.entries) == 13
    by_accession = {e.order.accession_number: e for e in result.entries}
    vivaldi = by_accession["00000"]
    assert vivaldi.patient.name == "VIVALDI^ANTONIO"
    assert vivaldi.patient.id == "AV35674"
    assert vivaldi.patient.birth_date == date(1678, 3, 4)
    assert vivaldi.patient.sex == "M"
    assert vivaldi.order.study_instance_uid == "1.2.276.0.7230010.3.2.101"
    assert vivaldi.order.requested_procedure_id == "RP454G234"
    assert vivaldi.order.scheduled_procedure_step_id == "SPD3445"
    assert vivaldi.scheduled_start == datetime(1995, 10, 15, 8, 56, 7)
    assert vivaldi.modality == "MR"
    assert vivaldi.station_ae_title == "AA32\\AA33"
    assert vivaldi.performing_physician == "JOHNSON"
    assert vivaldi.location == "B34F56"
    assert vivaldi.order.specific_character_set == "ISO_IR 100"
    assert vivaldi.warnings == ()
    latin1 = by_accession["ACC-LATIN1"]
    assert latin1.patient.name == LATIN1_NAME
    assert latin1.order.specific_character_set == "ISO_IR 100"
    utf8 = by_accession["ACC-UTF8"]
    assert utf8.patient.name == UTF8_NAME
    assert utf8.order.specific_character_set == "ISO_IR 192"
    jis = by_accession["ACC-JIS"]
    assert jis.patient.name == JAPANESE_NAME
    assert jis.order.specific_character_set == "\\ISO 2022 IR 87"
    assert jis.order.scheduled_protocol_codes[0].meaning == "Abdomen protocol"
    assert jis.warnings == ()
    # Sorted by scheduled time: the 1993 examples first.
    starts = [e.scheduled_start for e in result.entries]
    assert starts == sorted(s for s in starts if s is not None)


def test_filters_are_sent_to_the_server(tmp_path: Path, wlm: WlmSCP) -> None:
    with WorklistService(_config(tmp_path, wlm.port)) as service:
        ct = service.query(WorklistQuery(modality="CT"))
        haydn = service.query(WorklistQuery(patient_name="HAYDN*"))
        today = service.query(WorklistQuery(date_from=date.today(), date_to=date.today()))
        station = service.query(WorklistQuery(station_ae_title="EDGE1"))
        acc = service.query(WorklistQuery(accession_number="00005"))
        span = service.query(WorklistQuery(date_from=date(1995, 12, 1), date_to=date(1996, 1, 31)))
    assert sorted(e.order.accession_number for e in ct.entries) == [
        "00002",
        "00006",
        "00008",
        "00009",
    ]
    assert {e.patient.name for e in haydn.entries} == {"HAYDN^FRANZ^JOSEPH"}
    assert len(haydn.entries) == 3
    assert {e.order.accession_number for e in today.entries} == {"ACC-UTF8", "ACC-JIS"}
    assert {e.order.accession_number for e in station.entries} == {"ACC-UTF8", "ACC-JIS"}
    assert [e.patient.id for e in acc.entries] == ["HF"]
    assert sorted(e.order.accession_number for e in span.entries) == ["00003", "00004", "00005"]


def test_query_over_stunnel_with_client_certificate(tmp_path: Path, wlm: WlmSCP, pki: PKI) -> None:
    tunnel = Stunnel(tmp_path / "stunnel", wlm.port, pki.server.cert, pki.server.key, pki.ca.cert)
    tunnel.start()
    try:
        with WorklistService(_config(tmp_path, tunnel.port, _client_tls(pki))) as service:
            result = service.query(WorklistQuery(accession_number="ACC-JIS"))
        assert result.error is None
        assert [e.patient.name for e in result.entries] == [JAPANESE_NAME]
        # A client certificate from another CA is refused by the tunnel: the
        # query fails with a reason, and the cache answers (with that query's entry).
        stranger = {
            "ca": str(pki.ca.cert),
            "cert": str(pki.stranger.cert),
            "key": str(pki.stranger.key),
        }
        with WorklistService(_config(tmp_path, tunnel.port, stranger)) as service:
            refused = service.query(WorklistQuery(accession_number="ACC-JIS"))
        assert refused.error is not None and "unreachable" in refused.error
        assert refused.cached_at is not None
        assert [e.patient.name for e in refused.entries] == [JAPANESE_NAME]
    finally:
        tunnel.stop()


def test_offline_cache_then_fresh_list(tmp_path: Path, wlm: WlmSCP) -> None:
    config = _config(tmp_path, wlm.port)
    today = WorklistQuery(date_from=date.today(), date_to=date.today())
    with WorklistService(config) as service:
        live = service.query(today)
        assert live.cached_at is None and len(live.entries) == 2
        wlm.stop()
        cached = service.query(today)
        assert cached.cached_at is not None
        assert cached.error is not None and "unreachable" in cached.error
        assert [e.key for e in cached.entries] == [e.key for e in live.entries]
        assert cached.entries[0].patient.name == JAPANESE_NAME
        # A new order arrives while we are offline; the server comes back.
        write_entry(
            wlm.db / "new.wl",
            name="NEW^PATIENT",
            patient_id="P-NEW",
            accession="ACC-NEW",
            study_uid="1.2.826.0.1.3680043.10.543.3",
            day=date.today(),
            time="120000",
        )
        (wlm.db / "jis.wl").unlink()  # and one order was cancelled
        wlm.start()
        fresh = service.query(today)
    assert fresh.cached_at is None and fresh.error is None
    assert {e.order.accession_number for e in fresh.entries} == {"ACC-UTF8", "ACC-NEW"}
    with WorklistService(config) as service:
        offline = service.query(today, offline=True)
    assert offline.cached_at is not None and offline.error is None
    assert {e.order.accession_number for e in offline.entries} == {"ACC-UTF8", "ACC-NEW"}


def test_cli_worklist_and_capture_from_accession(tmp_path: Path, wlm: WlmSCP, pki: PKI) -> None:
    data = gateway_config(tmp_path, pki, None)
    data["worklist"] = {"ae_title": AE, "host": "127.0.0.1", "port": wlm.port}
    gw = Gateway(write_config(tmp_path / "gateway.toml", data))

    listed = gw("worklist", "--station", "any", "--date", "any", "--modality", "US", "--json")
    assert listed.returncode == 0, listed.stderr
    out = json.loads(listed.stdout)
    assert out["cached_at"] is None
    assert {e["order"]["accession_number"] for e in out["entries"]} == {"00004", "ACC-JIS"}

    text = gw("worklist")  # today, our own station (EDGE1)
    assert text.returncode == 0, text.stderr
    assert UTF8_NAME in text.stdout and JAPANESE_NAME in text.stdout

    captured = gw("capture", "--accession", "ACC-JIS", "--frames", "2", "--json")
    assert captured.returncode == 0, captured.stderr
    info = json.loads(captured.stdout)
    assert info["study_instance_uid"] == STUDY_JIS and info["accession_number"] == "ACC-JIS"
    ds = pydicom.dcmread(info["captured"][0]["path"])
    assert ds.AccessionNumber == "ACC-JIS"
    assert ds.StudyInstanceUID == STUDY_JIS
    assert str(ds.PatientName) == JAPANESE_NAME
    assert ds.PatientID == "P-JIS"

    wlm.stop()
    offline = gw("worklist", "--offline")
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("cached at ")
    jis_line = next(line for line in offline.stdout.splitlines() if "ACC-JIS" in line)
    assert "[performed]" in jis_line
    fallback = gw("worklist", "--json")
    assert fallback.returncode == 0
    assert "unreachable" in json.loads(fallback.stdout)["error"]

    unknown = gw("capture", "--accession", "NOPE")
    assert "no worklist entry with accession number 'NOPE'" in assert_one_line_error(unknown)
    bad_date = gw("worklist", "--date", "2024-13-01")
    assert "--date" in assert_one_line_error(bad_date)
    bad_patient = gw("capture", "--patient-id", "X1", "--patient-name", "Doe^J", "--sex", "Q")
    assert "sex 'Q' is not M, F or O" in assert_one_line_error(bad_patient)


def test_deferred_cache_write_is_waited_for_and_survives_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cache write runs after the list is returned: whoever uses the cache
    next (a lookup, closing) waits for it; a write that fails is logged and
    the older cache stays usable."""
    from gateway.dicom.modules import Order, Patient
    from gateway.ris.model import WorklistEntry
    from gateway.ris.worklist_cache import WorklistCache

    def entry(n: int) -> WorklistEntry:
        return WorklistEntry(
            patient=Patient(name=f"P^{n}", id=f"ID{n}"),
            order=Order(study_instance_uid=f"1.2.3.{n}", scheduled_procedure_step_id=f"S{n}"),
            scheduled_start=datetime(2026, 11, 23, 9, n),
        )

    query = WorklistQuery()
    cache = WorklistCache(tmp_path)
    cache.store_soon(query, [entry(1), entry(2)])
    found, cached_at = cache.lookup(query)  # waits for the write
    assert [e.patient.id for e in found] == ["ID1", "ID2"] and cached_at is not None
    cache.store_soon(query, [entry(3)])
    cache.close()  # waits too
    with WorklistCache(tmp_path) as again:
        assert [e.patient.id for e in again.lookup(query)[0]] == ["ID3"]

        def broken(*args: Any) -> float:
            raise OSError("disk on fire")

        again._store = broken  # type: ignore[method-assign]
        again.store_soon(query, [entry(4)])
        assert [e.patient.id for e in again.lookup(query)[0]] == ["ID3"]
    assert "worklist cache not updated" in caplog.text
