"""UID generation: under the site's registered root when configured, else the
2.25 form (a UUID as a decimal integer, PS3.5 B.2) which needs no registration."""

from __future__ import annotations

import re
import uuid

_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def validate_root(root: str) -> str:
    root = root.rstrip(".")
    if not _ROOT_RE.match(root):
        raise ValueError(f"UID root {root!r} is not dotted decimal without leading zeros")
    if len(root) > 30:
        raise ValueError(f"UID root {root!r} is longer than 30 characters; no room for a suffix")
    return root


def new_uid(root: str | None = None) -> str:
    value = uuid.uuid4().int
    if root is None:
        return f"2.25.{value}"
    root = validate_root(root)
    # 64 characters at most: keep as many random digits as fit after "root."
    return f"{root}.{value % 10 ** (63 - len(root))}"


MAX_UID_LENGTH = 64
_UID_CHARS = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(ValueError):
    """Not a UID at all: refused, nothing is written."""


def check_uid(value: str, what: str = "UID") -> str | None:
    """The one check for a UID entering the box (inbound C-STORE, import,
    control socket, worklist answers, commitment reports).

    Raises InvalidUID for what is no UID at all: empty, longer than 64
    characters, characters other than digits and dots (a path like
    `../../x` is refused here), or an empty component (`..`, a leading or
    trailing dot: not a UID either). Returns a warning for a UID that is
    merely non-conformant as old devices make them (PS3.5 §9.1: a component
    with a leading zero): accepted and kept as sent, since no name on disk
    is ever made from it. Returns None for a conformant UID.
    A trailing NUL (the UI VR's padding) is the sender's padding and is
    removed by the callers' decoders, not accepted here."""
    if not value:
        raise InvalidUID(f"{what} is empty")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUID(f"{what} is {len(value)} characters long (at most {MAX_UID_LENGTH})")
    if not _UID_CHARS.match(value):
        if set(value) <= set("0123456789."):
            raise InvalidUID(f"{what} {_shown(value)} has an empty component")
        raise InvalidUID(f"{what} {_shown(value)} has characters other than digits and dots")
    if not _ROOT_RE.match(value):
        return f"{what} {value} is not conformant (PS3.5 9.1: a component with a leading zero)"
    return None


def _shown(value: str) -> str:
    """A refused value as it may appear in a log line: printable, short."""
    return ascii(value[:MAX_UID_LENGTH])
