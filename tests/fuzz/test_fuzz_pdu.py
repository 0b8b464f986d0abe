"""The upper-layer decoders a peer's bytes reach first: our lean UL's PDU
reader, A-ASSOCIATE-AC and DIMSE command decoders (gateway/net/ul.py), the
listeners' gate (pynetdicom's A-ASSOCIATE-RQ decoder behind
`decode_request`) and the PDU watch every accepted association reads
through. Property: only the module's own error, never another exception,
never a hang; the watch's verdict does not depend on how the bytes were cut."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.net.guarded import Breach, PDUWatch, StreamLimits
from gateway.net.listener import RequestNotUnderstood, decode_request
from gateway.net.ul import (
    Inbound,
    Proposed,
    ULError,
    decode_associate_ac,
    decode_command,
    describe_abort,
    read_pdu,
)
from tests.fuzz.conftest import executed
from tests.support.hostile import associate_rq

PROPOSED = [Proposed(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",))]


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


# Items that look like the real ones, with random bodies and lengths that may lie.
items = st.builds(
    lambda kind, body, lie: struct.pack(">BBH", kind, 0, (len(body) + lie) & 0xFFFF) + body,
    st.sampled_from([0x10, 0x20, 0x21, 0x30, 0x40, 0x50, 0x51, 0x52, 0x55, 0x58, 0xFF]),
    st.binary(max_size=80),
    st.sampled_from([0, 0, 0, 1, -1, 200]),
)


def mutated(base: bytes) -> st.SearchStrategy[bytes]:
    """`base` with bytes flipped, cut or extended."""

    def apply(edits: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
        out = bytearray(base)
        for pos, value in edits:
            if out:
                out[pos % len(out)] = value
        return bytes(out[: len(out) - cut if cut < len(out) else len(out)]) + tail

    return st.builds(
        apply,
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
        st.integers(0, 40),
        st.binary(max_size=40),
    )


@given(st.one_of(st.binary(max_size=600), st.lists(items, max_size=12).map(b"".join)))
def test_associate_ac_decoder(body: bytes) -> None:
    executed("ul.decode_associate_ac")
    accepted, peer_max = decode_associate_ac(bytes(68) + body, PROPOSED)
    assert all(a.id == 1 for a in accepted.values()) and peer_max >= 0


@given(st.binary(max_size=300))
def test_command_decoder(data: bytes) -> None:
    executed("ul.decode_command")
    try:
        command = decode_command(data)
    except ULError:
        return
    assert all(isinstance(v, bytes) for v in command.values())
    describe_abort(data[:4])


@given(st.binary(max_size=2000))
def test_pdu_reader(data: bytes) -> None:
    executed("ul.read_pdu")
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(5)
        inbound = Inbound(b)
        for _ in range(50):
            try:
                read_pdu(inbound)
            except ULError:
                break


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the peer's odd UIDs
@given(
    st.one_of(
        st.binary(max_size=400),
        mutated(associate_rq("MODALITY", "EDGE1")),
        st.lists(items, max_size=10).map(
            lambda xs: (
                b"\x01\x00"
                + struct.pack(">L", 68 + sum(map(len, xs)))
                + struct.pack(">HH", 1, 0)
                + b"EDGE1".ljust(16)
                + b"MODALITY".ljust(16)
                + bytes(32)
                + b"".join(xs)
            )
        ),
    )
)
def test_association_request_decoder(pdu: bytes) -> None:
    executed("listener.decode_request (pynetdicom A-ASSOCIATE-RQ)")
    try:
        calling, called = decode_request(pdu)
    except RequestNotUnderstood:
        return
    assert isinstance(calling, str) and isinstance(called, str)


@given(st.binary(max_size=3000), st.lists(st.integers(1, 700), min_size=1, max_size=20))
def test_pdu_watch_is_the_same_however_the_bytes_are_cut(data: bytes, cuts: list[int]) -> None:
    executed("guarded.PDUWatch")
    limits = StreamLimits(max_pdu=1024, max_dataset=1500)

    def verdict(chunks: list[bytes]) -> str | None:
        watch = PDUWatch(limits)
        try:
            for chunk in chunks:
                watch.feed(chunk)
        except Breach as exc:
            return str(exc)
        return None

    pieces, pos, i = [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        pieces.append(data[pos : pos + step])
        pos, i = pos + step, i + 1
    assert verdict([data]) == verdict(pieces)
