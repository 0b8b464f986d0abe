"""The one UID check, and file names that never come from a UID."""

from __future__ import annotations

import pytest

from gateway.dicom.modules import ModuleError, Study
from gateway.dicom.uids import InvalidUID, check_uid
from gateway.queue.model import object_file_name


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "../../x",
        "/some/dir/x",
        "1.2.3/../x",
        "1.2.a",
        "1.2.3 ",
        "9" * 65,
        ".",
        "..",
        ".2.3",
        "1..2",
        "1.2.",
    ],
)
def test_what_is_no_uid_at_all_is_refused(uid: str) -> None:
    with pytest.raises(InvalidUID):
        check_uid(uid)


def test_a_leading_zero_is_accepted_with_a_note() -> None:
    assert check_uid("1.2.840.10008.1.2") is None
    note = check_uid("1.2.840.0099.1", "SOP Instance UID")
    assert note is not None and "leading zero" in note


def test_modules_take_the_same_check() -> None:
    """Regression (tests/fuzz/test_fuzz_cfind.py): a worklist answer's
    '.2.3.4.5' passed the worklist's check and then failed the Study
    module's, so parse_entry raised instead of warning."""
    assert Study(instance_uid="1.2.840.0099.1").instance_uid == "1.2.840.0099.1"
    with pytest.raises(ModuleError):
        Study(instance_uid=".2.3.4.5")


def test_file_names_are_ours() -> None:
    for uid in ("../../x", "/some/dir/x", "1.2.3"):
        name = object_file_name(uid)
        assert name.endswith(".dcm") and "/" not in name and uid not in name
        assert len(name) == 44 and name == object_file_name(uid)
    assert object_file_name("1.2.3") != object_file_name("1.2.4")
