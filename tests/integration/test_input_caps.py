"""Input bombs: a 3 MB PNG that would decode to 3 GB, a video longer than
the cap, and a 1-gigapixel image sent over YMODEM are each refused from
their headers with one line naming the file and the cap; nothing is decoded
(the process stays small and quick), nothing is queued, and what comes next
still works."""

from __future__ import annotations

import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from drivers import FrameRejected, create_driver, xmodem
from drivers.xmodem import XmodemDriver
from tests.support.gateway import Gateway, assert_one_line_error, queue_rows, write_config
from tests.support.process import GATEWAY, REPO, launched, require_tool
from tests.support.serial_line import SerialLine, finish


def png_bomb(path: Path, side: int) -> Path:
    """A greyscale PNG of side×side zero pixels: ~1/1000 of its decoded size."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    # All the decoded bytes (a filter byte per row, then the pixels) are zero:
    # one fully flushed deflate block of 8 MiB of zeros, repeated, is a valid
    # stream made in milliseconds; Adler-32 of n zeros is (n mod 65521) << 16 | 1.
    total = side * (side + 1)
    step = 8 << 20
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(step)) + raw.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes(total % step)) + last.flush(zlib.Z_FINISH)
    adler = ((total % 65521) << 16) | 1
    parts = [b"\x78\xda", block * (total // step), tail, struct.pack(">I", adler)]
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png", 55_000)  # 3.0 GB decoded
    assert 2_000_000 < path.stat().st_size < 4_000_000
    return path


def _config(tmp_path: Path, **capture: object) -> Path:
    return write_config(
        tmp_path / "gateway.toml",
        {
            "capture": {"compression": "none", **capture},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}],
            "queue": {"path": str(tmp_path / "queue"), "min_free_mb": 0},
        },
    )


def test_a_png_bomb_is_refused_from_its_header(tmp_path: Path, bomb: Path) -> None:
    config = _config(tmp_path)
    usage = tmp_path / "rusage"
    started = time.monotonic()
    result = subprocess.run(
        launched(
            usage,
            [*GATEWAY, "--config", str(config), "import", str(bomb), "--patient-id", "P1",
             "--patient-name", "Doe^Jane"],
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )  # fmt: skip
    seconds = time.monotonic() - started
    line = assert_one_line_error(result)
    assert str(bomb) in line, line
    assert (
        "55000×55000 pixels (3025.0 MP), over the 40 MP cap (capture.max_image_megapixels)" in line
    )
    peak_mib = int(usage.read_text().split()[0]) / 1024
    # Decoding would take 3 GB and many seconds; the header check takes neither.
    assert peak_mib < 400, peak_mib
    assert seconds < 60, seconds
    assert queue_rows(config) == []


def test_the_cap_is_configurable(tmp_path: Path) -> None:
    image = tmp_path / "scan.png"
    assert cv2.imwrite(str(image), np.full((1000, 1200, 3), 90, np.uint8))  # 1.2 MP
    config = _config(tmp_path, max_image_megapixels=1.0)
    args = ("import", str(image), "--patient-id", "P1", "--patient-name", "Doe^Jane")
    line = assert_one_line_error(Gateway(config)(*args))
    assert "1200×1000 pixels (1.2 MP), over the 1 MP cap (capture.max_image_megapixels)" in line
    config = _config(tmp_path, max_image_megapixels=2.0)
    assert Gateway(config)(*args).returncode == 0
    assert len(queue_rows(config)) == 1


def test_a_long_video_is_refused_before_decoding(tmp_path: Path) -> None:
    ffmpeg = require_tool("ffmpeg")
    video = tmp_path / "long.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30",
         "-t", "12", "-c:v", "mpeg4", "-y", str(video)],
        check=True,
        timeout=120,
    )  # fmt: skip
    args = ("import", str(video), "--patient-id", "P1", "--patient-name", "Doe^Jane")
    config = _config(tmp_path, max_video_seconds=10)
    line = assert_one_line_error(Gateway(config)(*args))
    assert f"{video}: the video is 12.0 s long (360 frames), over the 10 s cap" in line, line
    assert "(capture.max_video_seconds)" in line
    assert queue_rows(config) == []
    # Clips stored as decoded frames: the cap bounds the decoded size.
    config = _config(tmp_path, max_video_mb=1, clip_compression="none")  # 3.2 MB decoded
    line = assert_one_line_error(Gateway(config)(*args))
    assert "decodes to 3 MB (360 frames of 64×48), over the 1 MB cap" in line, line
    # H.264 clips (the default) are never held decoded: the cap bounds the file.
    assert video.stat().st_size < 1 << 20
    config = _config(tmp_path, max_video_mb=1, max_video_seconds=20)
    assert Gateway(config)(*args).returncode == 0
    (tmp_path / "queue").rename(tmp_path / "queue-h264")
    config = _config(tmp_path, max_video_seconds=20)
    assert Gateway(config)(*args).returncode == 0
    assert len(queue_rows(config)) == 1


def test_a_huge_image_over_ymodem_is_refused_and_the_next_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("sb")
    decoded_on: list[str] = []
    real = xmodem.decode_image

    def spy(*args: Any, **kw: Any) -> Any:
        decoded_on.append(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(xmodem, "decode_image", spy)
    huge = png_bomb(tmp_path / "huge.png", 32_000)  # 1.0 gigapixel, ~1 MB on the wire
    small = tmp_path / "scan.png"
    assert cv2.imwrite(str(small), np.full((48, 64, 3), 120, np.uint8))
    fast = {"poke_interval": 0.3, "char_timeout": 0.3, "block_timeout": 1.0, "retries": 3}
    with SerialLine() as line:
        driver = create_driver("xmodem", {"device": line.receiver_tty, **fast})
        assert isinstance(driver, XmodemDriver)
        driver.open()
        try:
            sender = line.send(["sb", "-q", "-k"], huge)
            started = time.monotonic()
            with pytest.raises(FrameRejected) as refused:
                driver.read()
            assert finish(sender, timeout=120)[0] == 0
            message = str(refused.value)
            assert message.startswith("huge.png ("), message
            assert "32000×32000 pixels (1024.0 MP), over the 40 MP cap" in message
            assert "(capture.options.max_megapixels)" in message
            assert time.monotonic() - started < 120
            sender = line.send(["sb", "-q", "-k"], small)
            frame = driver.read()
            assert finish(sender)[0] == 0
            assert frame.pixels.shape == (48, 64, 3)
            # Both decoded (or refused) off the thread that called read().
            assert decoded_on == ["xmodem-decode", "xmodem-decode"]
        finally:
            driver.close()
