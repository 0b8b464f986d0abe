"""The one UID check, and file names that never come from a UID."""

from __future__ import annotations

from pathlib import Path

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


def test_a_queue_written_with_uid_names_is_still_rebuilt(tmp_path: Path) -> None:
    """Queues from before the hashed names hold `<UID>.dcm` files: a rebuild
    takes them as they are, and new files get hashed names."""
    import os
    import sqlite3

    from gateway.queue.schema import DB_NAME
    from tests.support.peers import queue_objects
    from tests.support.queue import new_outbox

    queue = tmp_path / "queue"
    with new_outbox(queue, ["pacs"]) as outbox:
        (old,) = queue_objects(outbox, 1)
    legacy = old.path.with_name(f"{old.sop_instance_uid}.dcm")
    os.rename(old.path, legacy)
    db = sqlite3.connect(queue / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    (queue / DB_NAME).write_bytes(b"not a database at all" * 500)
    with new_outbox(queue, ["pacs"], check=True) as outbox:
        assert outbox.rebuilt is not None and outbox.rebuilt.objects == 1
        (obj,) = outbox.objects()
        assert obj.sop_instance_uid == old.sop_instance_uid and obj.path == legacy
        (new,) = queue_objects(outbox, 1)
        assert new.path.name == object_file_name(new.sop_instance_uid)
