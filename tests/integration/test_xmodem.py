"""The XMODEM/YMODEM driver against Debian's lrzsz senders over a real pty
line, including a noisy line, a sender that is killed half-way and one that
stalls; after every failure the next transfer must succeed."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from drivers import DriverError, FrameRejected, create_driver
from drivers.xmodem import XmodemDriver
from drivers.xmodem_protocol import crc16
from tests.support.driver_sources import numbered_image
from tests.support.process import require_tool
from tests.support.serial_line import SerialLine, finish

FAST = {"poke_interval": 0.3, "char_timeout": 0.3, "block_timeout": 1.0, "retries": 3}


@pytest.fixture
def line() -> Iterator[SerialLine]:
    for tool in ("sx", "sb"):
        require_tool(tool)
    with SerialLine() as serial_line:
        yield serial_line


def _driver(line: SerialLine, **extra: Any) -> XmodemDriver:
    driver = create_driver("xmodem", {"device": line.receiver_tty, **FAST, **extra})
    assert isinstance(driver, XmodemDriver)
    driver.open()
    return driver


def _image(tmp_path: Path, name: str, index: int = 1, size: tuple[int, int] = (200, 150)) -> Path:
    path = tmp_path / name
    assert cv2.imwrite(str(path), numbered_image(index, *size))
    return path


@pytest.mark.parametrize(
    ("args", "protocol"), [(["sx", "-q"], "XMODEM"), (["sx", "-q", "-k"], "XMODEM-1K")]
)
def test_xmodem_png_arrives_pixel_exact(
    line: SerialLine, tmp_path: Path, args: list[str], protocol: str
) -> None:
    png = _image(tmp_path, "scan.png")
    driver = _driver(line)
    sender = line.send(args, png)
    frame = driver.read()
    assert finish(sender)[0] == 0
    expected = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(frame.pixels, expected)
    assert frame.jpeg is None
    assert driver.last_file is not None and driver.last_file.protocol == protocol
    driver.close()


def test_checksum_mode_for_old_senders(line: SerialLine, tmp_path: Path) -> None:
    bmp = _image(tmp_path, "old.bmp")
    driver = _driver(line, crc=False)
    sender = line.send(["sx", "-q"], bmp)
    frame = driver.read()
    assert finish(sender)[0] == 0
    assert np.array_equal(frame.pixels, cv2.cvtColor(cv2.imread(str(bmp)), cv2.COLOR_BGR2RGB))
    driver.close()


def test_ymodem_batch_keeps_names_sizes_and_jpeg_bytes(line: SerialLine, tmp_path: Path) -> None:
    jpeg = _image(tmp_path, "echo1.jpg", 3)
    grey = tmp_path / "echo2.pgm"
    ramp = (np.arange(120 * 90, dtype=np.uint32).reshape(90, 120) * 7 % 4096).astype(np.uint16)
    with grey.open("wb") as f:  # 12-bit PGM, maxval 4095, as a scanner writes it
        f.write(b"P5\n# scanner\n120 90\n4095\n" + ramp.astype(">u2").tobytes())
    tiff = _image(tmp_path, "echo3.tif", 5)
    driver = _driver(line)
    sender = line.send(["sb", "-q"], jpeg, grey, tiff)
    frames = [driver.read() for _ in range(3)]
    assert finish(sender)[0] == 0
    first, second, third = frames
    assert first.jpeg == jpeg.read_bytes()  # exact size from the header, no padding
    assert first.pixels.shape == (150, 200, 3)
    assert second.pixels.shape == (90, 120) and second.jpeg is None
    expected = np.rint(ramp.astype(np.float32) * 255 / 4095).astype(np.uint8)
    assert np.array_equal(second.pixels, expected)
    assert np.array_equal(third.pixels, cv2.cvtColor(cv2.imread(str(tiff)), cv2.COLOR_BGR2RGB))
    assert [f.index for f in frames] == [0, 1, 2]
    driver.close()


def test_line_noise_is_nakked_and_the_file_still_arrives_intact(
    line: SerialLine, tmp_path: Path
) -> None:
    png = _image(tmp_path, "noisy.png", size=(320, 240))
    line.corrupt_offsets = {200, 5000, 5001, 20000}
    driver = _driver(line)
    sender = line.send(["sx", "-q", "-k"], png)
    frame = driver.read()
    assert finish(sender)[0] == 0
    assert np.array_equal(frame.pixels, cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB))
    driver.close()


def _then_a_good_transfer(line: SerialLine, driver: XmodemDriver, tmp_path: Path) -> None:
    """The port is ready: the next transfer goes through untouched."""
    line.stall_after, line.trickle = None, 0.0
    png = _image(tmp_path, "next.png", 9)
    sender = line.send(["sx", "-q"], png)
    frame = driver.read()
    assert finish(sender)[0] == 0
    assert np.array_equal(frame.pixels, cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB))


def test_sender_killed_half_way_cancels_and_the_port_stays_ready(
    line: SerialLine, tmp_path: Path
) -> None:
    png = _image(tmp_path, "big.png", size=(320, 240))
    line.trickle = 0.01  # ~25 kB/s: the transfer is still running when we kill it
    driver = _driver(line)
    sender = line.send(["sx", "-q"], png)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        receiving = pool.submit(driver.read)
        deadline = time.monotonic() + 10
        while line.forwarded < 4000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert line.forwarded >= 4000, "the transfer never started"
        sender.send_signal(signal.SIGTERM)  # lrzsz answers with its CAN sequence
        # lrzsz sends CAN CAN … from its signal handler, unless its output
        # is blocked on the full line; then the receiver sees a stall. Both
        # end in a cancelled transfer, nothing captured.
        with pytest.raises(FrameRejected, match=r"sender cancelled|sender stalled"):
            receiving.result(timeout=30)
    finish(sender)
    assert driver.is_open
    _then_a_good_transfer(line, driver, tmp_path)
    driver.close()


def test_stalled_sender_times_out_and_is_cancelled(line: SerialLine, tmp_path: Path) -> None:
    png = _image(tmp_path, "stall.png", size=(320, 240))
    line.stall_after = 3000  # the cable goes dead mid-file
    driver = _driver(line)
    sender = line.send(["sx", "-q"], png)
    started = time.monotonic()
    with pytest.raises(FrameRejected, match=r"stalled after \d+ bytes"):
        driver.read()
    assert time.monotonic() - started < 30  # bounded by retries × block time-out
    status, _ = finish(sender)
    assert status != 0  # lrzsz saw our cancel (or gave up): it did not claim success
    _then_a_good_transfer(line, driver, tmp_path)
    driver.close()


def test_a_file_that_is_not_an_image_is_rejected_and_port_stays_ready(
    line: SerialLine, tmp_path: Path
) -> None:
    text = tmp_path / "report.txt"
    text.write_text("PATIENT REPORT\n" * 50)
    driver = _driver(line)
    sender = line.send(["sx", "-q"], text)
    with pytest.raises(FrameRejected, match="not a BMP, PGM/PPM, TIFF, PNG or JPEG image"):
        driver.read()
    assert finish(sender)[0] == 0
    _then_a_good_transfer(line, driver, tmp_path)
    driver.close()


def test_hand_made_sender_that_cancels_before_sending(line: SerialLine) -> None:
    """CAN CAN from a sender at the start of a transfer: ignored while idle."""
    driver = _driver(line)
    line.send_raw(bytes([0x18, 0x18]))
    driver.interrupt()
    with pytest.raises(DriverError, match="interrupted"):
        driver.read()
    driver.close()


def test_cancel_mid_transfer_ends_it_with_nothing_captured(
    line: SerialLine, tmp_path: Path
) -> None:
    """A sender that sends block 1 and then CAN CAN (a hand-made sender, so
    the abort lands exactly mid-file every time)."""
    payload = bytes(range(128))
    block = bytes([0x01, 1, 254]) + payload + crc16(payload).to_bytes(2, "big")
    driver = _driver(line)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        receiving = pool.submit(driver.read)
        line.send_raw(block)
        time.sleep(0.2)
        line.send_raw(bytes([0x18, 0x18]))
        with pytest.raises(FrameRejected, match="sender cancelled the transfer after 128 bytes"):
            receiving.result(timeout=20)
    _then_a_good_transfer(line, driver, tmp_path)
    driver.close()


def test_noise_and_a_stray_block_while_idle_are_ignored(line: SerialLine, tmp_path: Path) -> None:
    """Junk on an idle line (a power-on glitch, the tail of an old transfer
    with a block number that is not 1) starts nothing; the next real
    transfer goes through."""
    payload = bytes(128)
    stray = bytes([0x01, 57, 255 - 57]) + payload + crc16(payload).to_bytes(2, "big")
    driver = _driver(line)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        receiving = pool.submit(driver.read)
        line.send_raw(b"\x00\xff\x13\x11" + stray + b"\x02\x07garbage")
        time.sleep(0.5)
        png = _image(tmp_path, "after-noise.png", 4)
        sender = line.send(["sx", "-q"], png)
        frame = receiving.result(timeout=30)
    assert finish(sender)[0] == 0
    assert np.array_equal(frame.pixels, cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB))
    driver.close()


def test_bad_serial_options_are_named() -> None:
    with pytest.raises(DriverError, match=r"capture\.options\.parity"):
        create_driver("xmodem", {"device": "/dev/ttyS0", "parity": "mark"})


def test_idle_serial_driver_keeps_the_capture_loop_beating(
    line: SerialLine, tmp_path: Path
) -> None:
    """A device that sends nothing for a long while is idle, not stuck: the
    stream's heartbeat goes on while `read` waits for a transfer (it went
    stale after 120 s, and the watchdog restarted the service), and a
    transfer after the long silence still arrives."""
    from drivers.stream import FrameStream

    driver = create_driver("xmodem", {"device": line.receiver_tty, **FAST, "poke_interval": 5.0})
    stream = FrameStream(driver, buffer_seconds=1.0).start()
    try:
        worst = 0.0
        deadline = time.monotonic() + 6.0  # more than one poke interval of silence
        while time.monotonic() < deadline:
            worst = max(worst, time.monotonic() - stream.last_beat)
            time.sleep(0.05)
        assert worst < 2.0, f"the idle capture loop went {worst:.1f} s without a beat"
        assert stream.stats().frames == 0
        sender = line.send(["sx", "-q"], _image(tmp_path, "late.png"))
        assert stream.wait_frame(timeout=30) is not None
        assert finish(sender)[0] == 0
    finally:
        stream.stop()
