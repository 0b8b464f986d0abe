"""The forwarder's read-ahead (gateway/send/cstore.py): files cut into
P-DATA-TF PDUs on its own thread, the bytes exactly the file's, buffers
recycled, and a file that shrinks under it reported, never padded."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from gateway.send.cstore import HEADROOM, FileProblem, ReadAhead


def _pdus(stream: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(stream):
        pdu_type, _, length = struct.unpack_from(">BBI", stream, pos)
        assert pdu_type == 0x04
        pdv_len, ctx, control = struct.unpack_from(">IBB", stream, pos + 6)
        assert pdv_len == length - 4
        out.append((ctx, control, stream[pos + 12 : pos + 6 + length]))
        pos += 6 + length
    return out


@pytest.mark.parametrize("fragment", [1000, 131066, 4 << 20])
def test_pdus_carry_the_file_exactly(tmp_path: Path, fragment: int) -> None:
    data = os.urandom(5 * (1 << 20) + 12345)
    path = tmp_path / "f.dcm"
    path.write_bytes(b"HEADER" + data)
    reader = ReadAhead(fragment)
    try:
        stream = b""
        for _ in range(2):  # two jobs in a row share the buffers
            job = reader.submit(path, 6, len(data), 3, "f.dcm")
            for buf, used in reader.chunks(job, timeout=10):
                stream += bytes(buf[HEADROOM : HEADROOM + used])
            pdus = _pdus(stream)
            assert b"".join(v for _, _, v in pdus) == data
            assert all(ctx == 3 for ctx, _, _ in pdus)
            assert [c for _, c, _ in pdus] == [0] * (len(pdus) - 1) + [2]
            assert max(len(v) for _, _, v in pdus) == min(fragment, len(data))
            stream = b""
    finally:
        reader.close()


def test_a_file_that_shrinks_is_a_file_problem(tmp_path: Path) -> None:
    path = tmp_path / "f.dcm"
    path.write_bytes(os.urandom(12 << 20))
    reader = ReadAhead(131066)
    try:
        job = reader.submit(path, 0, 12 << 20, 1, "f.dcm")
        chunks = reader.chunks(job, timeout=10)
        next(chunks)
        os.truncate(path, 6 << 20)  # the reader is at most ~3 MiB ahead
        with pytest.raises(FileProblem, match="shrank"):
            for _ in chunks:
                pass
        # The reader goes on with the next job.
        path.write_bytes(b"x" * 100)
        job = reader.submit(path, 0, 100, 1, "f.dcm")
        assert sum(used for _, used in reader.chunks(job, timeout=10)) == 112
    finally:
        reader.close()


def test_cancel_takes_the_buffers_back(tmp_path: Path) -> None:
    path = tmp_path / "f.dcm"
    path.write_bytes(os.urandom(10 << 20))
    reader = ReadAhead(131066)
    try:
        for _ in range(5):  # more jobs abandoned than there are buffers
            job = reader.submit(path, 0, 10 << 20, 1, "f.dcm")
            chunks = reader.chunks(job, timeout=10)
            next(chunks)
            chunks.close()
            reader.cancel(job)
        job = reader.submit(path, 0, 10 << 20, 1, "f.dcm")
        per_buffer = reader.per_write * 131066
        assert sum(1 for _ in reader.chunks(job, timeout=10)) == -(-(10 << 20) // per_buffer)
    finally:
        reader.close()
