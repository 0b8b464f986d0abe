"""The drivers behind the real command line: `dicom-gateway capture` from a
serial instrument (lrzsz `sb` over a pty) and from a replayed file, checked
with dcmdump; bad driver options are one-line errors."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
from pathlib import Path

import cv2

from tests.support.driver_sources import numbered_image, write_mjpeg
from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import require_tool
from tests.support.serial_line import SerialLine, finish


def _gateway(tmp_path: Path, pki: PKI, driver: str, options: dict[str, object]) -> Gateway:
    data = gateway_config(tmp_path, pki, None)
    data["capture"] = {"driver": driver, "compression": "none", "options": options}
    return Gateway(write_config(tmp_path / "gateway.toml", data))


def _dump(path: str) -> str:
    return subprocess.run(
        [require_tool("dcmdump"), path], capture_output=True, text=True, check=True
    ).stdout


def test_capture_from_a_serial_instrument(tmp_path: Path, pki: PKI) -> None:
    require_tool("sb")
    jpeg = tmp_path / "ULTRA001.JPG"
    assert cv2.imwrite(str(jpeg), numbered_image(6, 256, 192))
    with SerialLine() as line:
        options = {"device": line.receiver_tty, "poke_interval": 0.3, "char_timeout": 0.3}
        gateway = _gateway(tmp_path, pki, "xmodem", options)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(
                gateway, "capture", "--patient-id", "P7", "--patient-name", "DOE^JANE",
                "--frames", "1", "--json", timeout=60,
            )  # fmt: skip
            sender = line.send(["sb", "-q"], jpeg)
            result = running.result(timeout=90)
        assert finish(sender)[0] == 0
    assert result.returncode == 0, result.stderr
    (captured,) = json.loads(result.stdout)["captured"]
    dump = _dump(captured["path"])
    assert "(0008,0064) CS [DI]" in dump  # Conversion Type: digital interface
    assert "(0028,0010) US 192" in dump and "(0028,0011) US 256" in dump


def test_capture_waits_on_after_a_failed_transfer(tmp_path: Path, pki: PKI) -> None:
    """A transfer that cannot be used (here: not an image) is said on stderr
    and the command waits for the next one, which is captured."""
    require_tool("sx")
    junk = tmp_path / "NOTES.TXT"
    junk.write_text("not an image\n" * 50)
    jpeg = tmp_path / "ULTRA002.JPG"
    assert cv2.imwrite(str(jpeg), numbered_image(7, 128, 96))
    with SerialLine() as line:
        options = {"device": line.receiver_tty, "poke_interval": 0.3, "char_timeout": 0.3}
        gateway = _gateway(tmp_path, pki, "xmodem", options)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(
                gateway, "capture", "--patient-id", "P8", "--patient-name", "DOE^JOHN",
                "--frames", "1", "--json", timeout=60,
            )  # fmt: skip
            assert finish(line.send(["sx", "-q", "-k"], junk))[0] == 0
            assert finish(line.send(["sx", "-q", "-k"], jpeg))[0] == 0
            result = running.result(timeout=90)
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "waiting for the next" in result.stderr
    assert "not a BMP, PGM/PPM, TIFF, PNG or JPEG image" in result.stderr
    (captured,) = json.loads(result.stdout)["captured"]
    assert "(0028,0011) US 128" in _dump(captured["path"])


def test_capture_from_a_replayed_file(tmp_path: Path, pki: PKI) -> None:
    video = write_mjpeg(tmp_path / "demo.avi", 5, size=(320, 240))
    gateway = _gateway(tmp_path, pki, "file", {"path": str(video), "realtime": False})
    result = gateway(
        "capture", "--patient-id", "P8", "--patient-name", "ROE^RICHARD", "--frames", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    captured = json.loads(result.stdout)["captured"]
    assert len(captured) == 2
    dump = _dump(captured[1]["path"])
    assert "(0008,0064) CS [WSD]" in dump
    assert "(0028,0010) US 240" in dump


def test_bad_driver_options_are_one_line_errors(tmp_path: Path, pki: PKI) -> None:
    gateway = _gateway(tmp_path, pki, "video", {"device": "/dev/video0", "pixel_format": "H264"})
    line = assert_one_line_error(gateway("config", "check"))
    assert "capture.options.pixel_format" in line and "MJPG" in line
    gateway = _gateway(tmp_path, pki, "xmodem", {"device": str(tmp_path / "ttyUSB7")})
    line = assert_one_line_error(
        gateway("capture", "--patient-id", "P9", "--patient-name", "X^Y", "--frames", "1")
    )
    assert "ttyUSB7 cannot be opened" in line
