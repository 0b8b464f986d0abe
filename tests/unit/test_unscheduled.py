"""The unscheduled-patient form check the touchscreen and the CLI share, and
the worklist date option."""

from __future__ import annotations

from datetime import date

import pytest

from gateway.acquire.subject import UnscheduledPatientError, unscheduled_patient
from gateway.ris.worklist import WorklistError, parse_date_option

TODAY = date(2024, 5, 17)


def test_valid_entry_is_normalised() -> None:
    p = unscheduled_patient("Doe, Jane", " E123 ", "1980-02-29", "f", today=TODAY)
    assert (p.name, p.id, p.birth_date, p.sex) == ("Doe^Jane", "E123", date(1980, 2, 29), "F")
    bare = unscheduled_patient("Unknown^Male", "TRAUMA-7", today=TODAY)
    assert bare.birth_date is None and bare.sex == ""
    assert unscheduled_patient("山田^太郎", "J1", "19700101", "M", today=TODAY).name == "山田^太郎"


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(UnscheduledPatientError) as info:
        unscheduled_patient(" ^ ", "", "2024-05-18", "X", today=TODAY)
    fields = {p.field: p.message for p in info.value.problems}
    assert fields == {
        "name": "patient name is empty",
        "id": "patient ID is empty",
        "birth_date": "birth date 2024-05-18 is in the future",
        "sex": "sex 'X' is not M, F or O",
    }


@pytest.mark.parametrize(
    ("name", "pid", "born", "field", "message"),
    [
        ("A" * 65, "1", "", "name", "65 characters, at most 64"),
        ("A^B^C^D^E^F", "1", "", "name", "more than five '^' components"),
        ("Doe^J", "X" * 65, "", "id", "65 characters, at most 64"),
        ("Doe^J", "a\\b", "", "id", "backslash"),
        ("Doe\x07^J", "1", "", "name", "control characters"),
        ("Doe^J", "1", "1980-02-30", "birth_date", "is not YYYY-MM-DD"),
        ("Doe^J", "1", "18001231", "birth_date", "before 1880"),
    ],
)
def test_bad_fields(name: str, pid: str, born: str, field: str, message: str) -> None:
    with pytest.raises(UnscheduledPatientError) as info:
        unscheduled_patient(name, pid, born, today=TODAY)
    assert [p.field for p in info.value.problems] == [field]
    assert message in info.value.problems[0].message


def test_date_option() -> None:
    assert parse_date_option("today", TODAY) == (TODAY, TODAY)
    assert parse_date_option("any", TODAY) == (None, None)
    assert parse_date_option("20240101", TODAY) == (date(2024, 1, 1), date(2024, 1, 1))
    assert parse_date_option("20240101-20240131") == (date(2024, 1, 1), date(2024, 1, 31))
    assert parse_date_option("20240101-") == (date(2024, 1, 1), None)
    for bad, why in [
        ("2024-01-01", "is not YYYYMMDD"),
        ("20240230", "not a real date"),
        ("20240201-20240101", "ends before it starts"),
        ("-", "at least one end"),
    ]:
        with pytest.raises(WorklistError, match=why):
            parse_date_option(bad)
