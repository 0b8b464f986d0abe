"""The STOW-RS request body (PS3.18 10.5.1.1): `multipart/related;
type="application/dicom"`, one part per queued file, streamed from disk a
mebibyte at a time, so a 1 GB cine costs a buffer, not a gigabyte.

The length is known before the first byte (the files' sizes and the part
headers), so the body goes with a Content-Length that every server and
proxy takes; chunked transfer is there for those that want it. The body is
made anew from the files for each try: nothing is kept to be resent, and no
client's retry ever sends a body twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
# The part's type alone: Orthanc (and others) compare the part's
# Content-Type with "application/dicom" as a whole string.
PART_HEADERS = b"Content-Type: application/dicom\r\n\r\n"


class BodyFileChanged(Exception):
    """A queued file's size changed behind the gateway's back while it was sent."""


@dataclass(frozen=True)
class BodyPart:
    path: Path
    size: int


@dataclass
class MultipartBody:
    parts: Sequence[BodyPart]
    # Called before each chunk; raises to stop the body (the exchange's deadline).
    check: Callable[[], None] = lambda: None
    boundary: str = ""

    def __post_init__(self) -> None:
        if not self.boundary:
            self.boundary = "dicom-edge-" + uuid.uuid4().hex

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def _opening(self, index: int) -> bytes:
        lead = b"" if index == 0 else b"\r\n"
        return lead + b"--" + self.boundary.encode("ascii") + b"\r\n" + PART_HEADERS

    def _closing(self) -> bytes:
        return b"\r\n--" + self.boundary.encode("ascii") + b"--\r\n"

    @property
    def length(self) -> int:
        return sum(len(self._opening(i)) + p.size for i, p in enumerate(self.parts)) + len(
            self._closing()
        )

    def __iter__(self) -> Iterator[bytes]:
        for index, part in enumerate(self.parts):
            self.check()
            yield self._opening(index)
            with open(part.path, "rb", buffering=0) as f:
                left = part.size
                while left > 0:
                    self.check()
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        raise BodyFileChanged(f"{part.path.name} ended {left} bytes early")
                    left -= len(chunk)
                    yield chunk
                if f.read(1):
                    raise BodyFileChanged(f"{part.path.name} grew while it was sent")
        yield self._closing()
