"""C-STORE of queued files over one association, with each response status
sorted into delivered / try again later / give up."""

from __future__ import annotations

from enum import Enum


class Outcome(Enum):
    STORED = "stored"
    TRANSIENT = "transient"  # try again later: the PACS may accept it then
    PERMANENT = "permanent"  # the PACS will never accept this object as it is


def classify_status(status: int | None) -> Outcome:
    """PS3.4 B.2.3 / PS3.7 C: success and warnings mean stored; A7xx (out of
    resources) and no answer are transient; A9xx, Cxxx and 0x0122 (SOP class
    not supported) are permanent. An unknown status is treated as transient:
    guessing "stored" could lose an image, guessing "permanent" needs a human."""
    if status is None:
        return Outcome.TRANSIENT
    if status == 0x0000 or status in (0xB000, 0xB006, 0xB007) or (status & 0xF000) == 0xB000:
        return Outcome.STORED
    if (status & 0xFF00) == 0xA700:
        return Outcome.TRANSIENT
    if (status & 0xFF00) == 0xA900 or (status & 0xF000) == 0xC000 or status in (0x0122, 0x0124):
        return Outcome.PERMANENT
    return Outcome.TRANSIENT


def describe_status(status: int | None) -> str:
    if status is None:
        return "no response (association aborted or timed out)"
    names = {
        0x0122: "SOP class not supported",
        0x0124: "not authorised",
        0x0210: "duplicate invocation",
        0x0211: "unrecognised operation",
        0x0212: "mistyped argument",
    }
    if status in names:
        return f"0x{status:04X} {names[status]}"
    if (status & 0xFF00) == 0xA700:
        return f"0x{status:04X} out of resources"
    if (status & 0xFF00) == 0xA900:
        return f"0x{status:04X} data set does not match SOP class"
    if (status & 0xF000) == 0xC000:
        return f"0x{status:04X} cannot understand"
    return f"0x{status:04X}"
