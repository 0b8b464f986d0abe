"""Unscheduled patients (IHE Scheduled Workflow's "unscheduled case"): no
worklist entry, so the technician types who it is. The touchscreen form and
the command line share this check, so both refuse the same things with the
same words."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from gateway.dicom.modules import ModuleError, Patient, check_person_name, check_text

_SEX = {"M": "M", "F": "F", "O": "O", "": "", "MALE": "M", "FEMALE": "F", "OTHER": "O"}


@dataclass(frozen=True)
class FieldProblem:
    field: str  # "name", "id", "birth_date", "sex": the form field to highlight
    message: str


class UnscheduledPatientError(ValueError):
    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def _birth_date(text: str, today: date) -> date | None:
    text = text.strip()
    if not text:
        return None
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            value = datetime.strptime(text, fmt).date()
            break
        except ValueError:
            continue
    else:
        raise ValueError(f"birth date {text!r} is not YYYY-MM-DD")
    if value > today:
        raise ValueError(f"birth date {value.isoformat()} is in the future")
    if value.year < 1880:
        raise ValueError(f"birth date {value.isoformat()} is before 1880")
    return value


def unscheduled_patient(
    name: str,
    patient_id: str,
    birth_date: str = "",
    sex: str = "",
    *,
    today: date | None = None,
) -> Patient:
    """Validate the typed fields; raise UnscheduledPatientError naming every
    bad field at once (a gloved technician should fix the form in one go).

    The name is typed as "Family, Given" or DICOM "Family^Given"."""
    problems: list[FieldProblem] = []
    name = name.strip()
    if "," in name and "^" not in name:
        family, _, given = name.partition(",")
        name = f"{family.strip()}^{given.strip()}"
    if not name.replace("^", ""):
        problems.append(FieldProblem("name", "patient name is empty"))
    else:
        try:
            check_person_name("patient name", name)
        except ModuleError as exc:
            problems.append(FieldProblem("name", str(exc)))
    patient_id = patient_id.strip()
    if not patient_id:
        problems.append(FieldProblem("id", "patient ID is empty"))
    else:
        try:
            check_text("patient ID", patient_id, 64)
        except ModuleError as exc:
            problems.append(FieldProblem("id", str(exc)))
    born: date | None = None
    try:
        born = _birth_date(birth_date, today or date.today())
    except ValueError as exc:
        problems.append(FieldProblem("birth_date", str(exc)))
    sex_code = _SEX.get(sex.strip().upper())
    if sex_code is None:
        problems.append(FieldProblem("sex", f"sex {sex!r} is not M, F or O"))
    if problems:
        raise UnscheduledPatientError(problems)
    return Patient(name=name, id=patient_id, birth_date=born, sex=sex_code or "")  # type: ignore[arg-type]
