"""A data set's elements as raw bytes, read in one pass without pydicom's
object model: the one Little Endian element walker of the gateway (worklist
answers, DIMSE command sets, the File Meta group of queued files).

Why: a worklist answer is a thousand small data sets, each read once for a
dozen values. pydicom builds a Dataset, a RawDataElement per element and a
Sequence per sequence, then converts each value through its hooks; for a
1,000-entry list that costs more than the server takes to answer. Here a data
set becomes a plain dict from tag to value bytes (or, for a sequence, a list
of such dicts), and the caller decodes only the values it needs, with the
character set it chooses.

Little Endian only (Explicit or Implicit VR): the transfer syntaxes a query
answer can come in. Anything malformed raises RawDataError; nothing is guessed.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import Union

RawItem = dict[int, Union[bytes, "list[RawItem]"]]

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_HEADER = struct.Struct("<HHI")
_EXPLICIT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<I")
_MAX_DEPTH = 16  # sequences nested deeper than this are not a worklist answer


class RawDataError(ValueError):
    """The bytes are not a well-formed Little Endian data set."""


@cache
def _is_sequence(tag: int) -> bool:
    """Implicit VR carries no VR: the data dictionary says which tags are
    sequences. Command (0000) and File Meta (0002) groups hold none, so a
    DIMSE command is read without loading pydicom."""
    if tag >> 16 in (0x0000, 0x0002):
        return False
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private or unknown: a defined-length value stays bytes
        return False


def read_dataset(data: bytes, explicit_vr: bool = True) -> RawItem:
    """Every element of `data`: tag → value bytes, or → list of items for a sequence."""
    item, _ = _elements(data, 0, len(data), explicit_vr, False, 0)
    return item


def _elements(
    data: bytes, pos: int, end: int, explicit: bool, delimited: bool, depth: int
) -> tuple[RawItem, int]:
    out: RawItem = {}
    while pos < end:
        if pos + 8 > end:
            raise RawDataError(f"element header cut off at byte {pos}")
        if explicit:
            group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
        else:
            group, elem, length = _HEADER.unpack_from(data, pos)
            vr = b""
        tag = group << 16 | elem
        if group == 0xFFFE:  # delimiters carry no VR, even in Explicit VR
            if tag != ITEM_END or not delimited:
                raise RawDataError(f"({group:04X},{elem:04X}) out of place at byte {pos}")
            return out, pos + 8
        if explicit:
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise RawDataError(f"element header cut off at byte {pos}")
                length = _LONG.unpack_from(data, pos + 8)[0]
                pos += 12
            else:
                pos += 8
        else:
            pos += 8
            if length == UNDEFINED or _is_sequence(tag):
                vr = b"SQ"
        if vr == b"SQ" or (vr == b"UN" and length == UNDEFINED):
            # An undefined-length UN is a sequence in Implicit VR (PS3.5 6.2.2).
            if depth >= _MAX_DEPTH:
                raise RawDataError("sequences nested too deeply")
            items, pos = _sequence(data, pos, length, explicit and vr == b"SQ", end, depth + 1)
            out[tag] = items
            continue
        if length == UNDEFINED:
            raise RawDataError(f"({group:04X},{elem:04X}) has an undefined length")
        if pos + length > end:
            raise RawDataError(f"({group:04X},{elem:04X}) runs past the end of the data set")
        out[tag] = data[pos : pos + length]
        pos += length
    if delimited:
        raise RawDataError("an item has no item delimiter")
    return out, pos


def _sequence(
    data: bytes, pos: int, length: int, explicit: bool, outer_end: int, depth: int
) -> tuple[list[RawItem], int]:
    end = outer_end if length == UNDEFINED else pos + length
    if end > outer_end:
        raise RawDataError(f"a sequence runs past the end of the data set at byte {pos}")
    items: list[RawItem] = []
    while pos < end:
        if pos + 8 > end:
            raise RawDataError(f"item header cut off at byte {pos}")
        group, elem, item_length = _HEADER.unpack_from(data, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == SEQUENCE_END and length == UNDEFINED:
            return items, pos
        if tag != ITEM:
            raise RawDataError(f"({group:04X},{elem:04X}) where a sequence item was expected")
        if item_length == UNDEFINED:
            item, pos = _elements(data, pos, end, explicit, True, depth)
        else:
            if pos + item_length > end:
                raise RawDataError(f"a sequence item runs past its sequence at byte {pos}")
            item, _ = _elements(data, pos, pos + item_length, explicit, False, depth)
            pos += item_length
        items.append(item)
    if length == UNDEFINED:
        raise RawDataError("a sequence has no sequence delimiter")
    return items, pos
