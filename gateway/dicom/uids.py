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
