"""How a patient is shown, the one way every screen shows one: the worklist
row, the confirm dialog and the exam's patient box all take these strings
from the API, so no screen drops a middle name another one shows, and sex
reads as a word, never as a DICOM code."""

from __future__ import annotations

from datetime import date
from typing import Any

from gateway.dicom.modules import Patient

SEX_WORDS = {"M": "Male", "F": "Female", "O": "Other", "": "Sex not given"}


def sex_words(code: str) -> str:
    return SEX_WORDS.get(code.strip().upper(), code)


def _group(group: str) -> str:
    """One PN component group, "FAMILY, Given Middle" with prefix and suffix."""
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    first = " ".join(p for p in (given, middle) if p)
    text = f"{family}, {first}" if family and first else family or first
    if prefix:
        text = f"{prefix} {text}"
    if suffix:
        text = f"{text}, {suffix}"
    return text


def display_name(pn: str) -> str:
    """The whole DICOM person name in words: every component of the
    alphabetic group, and the ideographic/phonetic groups in brackets."""
    groups = [_group(g) for g in pn.split("=")]
    main, rest = groups[0], [g for g in groups[1:] if g]
    if not main:
        return " / ".join(rest) or "(no name)"
    return f"{main} ({' / '.join(rest)})" if rest else main


def birth_text(born: date | None) -> str:
    return born.isoformat() if born else "not given"


def patient_view(patient: Patient) -> dict[str, Any]:
    """The patient as the API hands it to every screen."""
    return {
        "name": patient.name,
        "display_name": display_name(patient.name),
        "id": patient.id,
        "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
        "birth_text": birth_text(patient.birth_date),
        "sex": patient.sex,
        "sex_text": sex_words(patient.sex),
    }
