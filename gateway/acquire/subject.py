"""Whose images these are: the worklist entry for an accession number (IHE
Scheduled Workflow), else an unscheduled patient typed in ("unscheduled
case": no worklist entry). One rule for `capture`, `import`, an import handed
to the running service and the touchscreen's form, so all refuse the same
things with the same words."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from gateway.config import GatewayConfig
from gateway.dicom.modules import ModuleError, Order, Patient, check_person_name, check_text


class SubjectError(Exception):
    """The options do not name a patient; `usage` when they are malformed
    rather than not found."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Subject:
    patient: Patient
    order: Order | None = None
    # Said to the user when the worklist entry came from the offline cache.
    note: str | None = None


def exam_subject(
    config: GatewayConfig,
    verb: str,
    *,
    accession: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    birth_date: str | None = None,
    sex: str | None = None,
) -> Subject:
    if accession:
        if patient_id or patient_name:
            raise SubjectError(
                f"{verb} takes --accession or --patient-id/--patient-name, not both", usage=True
            )
        from gateway.ris.worklist import WorklistError, WorklistService

        with WorklistService(config) as worklist:
            try:
                entry, looked_up = worklist.lookup_accession(accession)
            except WorklistError as exc:
                raise SubjectError(str(exc)) from None
        note = None
        if looked_up.cached_at is not None:
            note = f"worklist entry from the cache (cached at {looked_up.cached_at:%Y-%m-%d %H:%M})"
        return Subject(entry.patient, entry.order, note)
    if not (patient_id and patient_name):
        raise SubjectError(f"{verb} needs --accession, or --patient-id and --patient-name", True)
    try:
        patient = unscheduled_patient(patient_name, patient_id, birth_date or "", sex or "")
    except UnscheduledPatientError as exc:
        raise SubjectError(str(exc), usage=True) from None
    return Subject(patient)


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
