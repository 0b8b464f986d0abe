"""Logging to journald when systemd started us (structured fields, priorities),
else to stderr for a person at a terminal."""

from __future__ import annotations

import logging
import os
import sys


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it gave us."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class _OneLineLibraryErrors(logging.Filter):
    """pynetdicom logs a traceback for every refused connection or failed
    handshake; the gateway reports the reason itself, in one line, so keep
    the library's message and drop its traceback unless debugging."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom") and record.exc_info:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    if _stderr_is_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="dicom-gateway")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_OneLineLibraryErrors())
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom is chatty at INFO and would log patient names from datasets.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)
