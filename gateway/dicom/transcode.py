"""Re-encoding a queued object for a PACS that refuses its transfer syntax.

Only the encoding changes: every UID and attribute stays as queued (pydicom's
decompress would otherwise give the data set a new SOP Instance UID, and the
PACS would hold an instance the gateway does not know).
"""

from __future__ import annotations

from pathlib import Path


class TranscodeError(ValueError):
    """The object cannot be converted to the asked transfer syntax."""


def reencode(path: Path, ts: str, workdir: Path) -> Path:
    """The fallback path (rare, and allowed to be slow): pydicom loads, decodes
    compressed pixels, and writes the requested uncompressed syntax to a
    temporary file in `workdir`."""
    from pydicom import dcmread
    from pydicom.uid import UID

    try:
        ds = dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = UID(ts)
        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / f"{path.stem}.{ts}.tmp"
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:  # pydicom raises many kinds; all mean "cannot convert"
        raise TranscodeError(f"{path.name} cannot be converted to {ts}: {exc}") from None
    return out
