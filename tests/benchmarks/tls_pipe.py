"""The physical limit of forwarding on this machine (BENCHMARKS.md): the same
bytes over one TLS 1.3 connection with mutual authentication between two
Python processes, `sendall` of 1 MiB buffers, the receiver discarding.

    python -m tests.benchmarks.tls_pipe serve PORT CERT KEY CA
    python -m tests.benchmarks.tls_pipe send PORT CERT KEY CA DIR

The sender announces the byte count first and waits for the receiver's "ok"
after the last byte, so its time covers delivery, not just writing into the
socket buffer. Not a benchmark on its own (no `bench_` prefix)."""

from __future__ import annotations

import socket
import ssl
import struct
import sys
from pathlib import Path

CHUNK = 1 << 20


def _context(server: bool, cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def serve(port: int, cert: str, key: str, ca: str) -> None:
    ctx = _context(True, cert, key, ca)
    with socket.create_server(("127.0.0.1", port)) as listener:
        print("ready", flush=True)
        while True:
            raw, _ = listener.accept()
            with ctx.wrap_socket(raw, server_side=True) as conn:
                head = b""
                while len(head) < 8:
                    head += conn.recv(8 - len(head))
                (left,) = struct.unpack(">Q", head)
                buf = bytearray(CHUNK)
                while left > 0:
                    got = conn.recv_into(buf, min(CHUNK, left))
                    if not got:
                        break
                    left -= got
                conn.sendall(b"ok")


def send(port: int, cert: str, key: str, ca: str, folder: str) -> None:
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    ctx = _context(False, cert, key, ca)
    with socket.create_connection(("localhost", port)) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(struct.pack(">Q", total))
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            for path in files:
                with open(path, "rb", buffering=0) as f:
                    while n := f.readinto(buf):
                        conn.sendall(view[:n])
            if conn.recv(2) != b"ok":
                raise SystemExit("the receiver did not confirm")


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "serve":
        serve(int(args[0]), *args[1:4])
    else:
        send(int(args[0]), *args[1:5])
