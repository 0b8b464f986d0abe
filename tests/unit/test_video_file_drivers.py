"""Video and file drivers through OpenCV on generated MJPEG files, and the
FrameStream around them: passthrough, crop, replay, drops, the clip ring
buffer and hot-plug (the source vanishes and comes back)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers import DriverError, EndOfStream, FrameRejected, create_driver
from drivers.stream import FrameStream
from tests.support.driver_sources import write_image, write_mjpeg


def _decoded(jpeg: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_video_passthrough_hands_on_the_streams_own_jpeg(tmp_path: Path) -> None:
    video = write_mjpeg(tmp_path / "grabber.avi", 5, size=(320, 240))
    with create_driver("video", {"device": str(video)}) as driver:
        frames = list(driver.frames(5))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    for frame in frames:
        assert frame.jpeg is not None and frame.jpeg[:2] == b"\xff\xd8"
        assert np.array_equal(_decoded(frame.jpeg), frame.pixels)
        assert frame.pixels.shape == (240, 320, 3)


def test_video_crop_cuts_and_disables_passthrough(tmp_path: Path) -> None:
    video = write_mjpeg(tmp_path / "grabber.avi", 3, size=(320, 240))
    crop = {"x": 10, "y": 20, "width": 200, "height": 100}
    with create_driver("video", {"device": str(video), "crop": crop}) as cropped:
        frame = cropped.read()
    with create_driver("video", {"device": str(video)}) as full:
        whole = full.read()
    with create_driver("video", {"device": str(video), "passthrough": False}) as decoded:
        by_ffmpeg = decoded.read()
    assert frame.jpeg is None and whole.jpeg is not None and by_ffmpeg.jpeg is None
    assert np.array_equal(frame.pixels, whole.pixels[20:120, 10:210])
    assert by_ffmpeg.pixels.shape == whole.pixels.shape


def test_video_crop_outside_the_picture_is_named(tmp_path: Path) -> None:
    video = write_mjpeg(tmp_path / "grabber.avi", 2, size=(160, 120))
    crop = {"x": 100, "y": 0, "width": 100, "height": 50}
    driver = create_driver("video", {"device": str(video), "crop": crop})
    with pytest.raises(DriverError, match=r"crop 100×50\+100\+0 lies outside the 160×120"):
        driver.open()


def test_video_size_needs_both_dimensions() -> None:
    with pytest.raises(DriverError, match="give both width and height"):
        create_driver("video", {"device": "/dev/video0", "width": 1920})


def test_hot_plug_reports_backs_off_and_resumes(tmp_path: Path) -> None:
    video = write_mjpeg(tmp_path / "grabber.avi", 8)
    away = tmp_path / "unplugged.avi"
    stream = FrameStream(
        create_driver("video", {"device": str(video)}), min_backoff=0.05, max_backoff=0.2
    ).start()
    try:
        assert stream.wait_frame(timeout=10) is not None
        os.rename(video, away)  # unplugged: reads run dry and reopening fails
        deadline = time.monotonic() + 10
        while "not there" not in (stream.stats().error or "") and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = stream.stats()
        assert stats.error is not None and "not there (unplugged?)" in stats.error
        assert not stats.connected
        seen = stats.frames
        last = stream.latest()
        assert last is not None
        os.rename(away, video)  # plugged back in
        assert stream.wait_frame(after_index=last.index, timeout=10) is not None
        stats = stream.stats()
        # (a file stand-in runs dry again at once, so the error may be back already)
        assert stats.reconnects >= 1 and stats.frames > seen
    finally:
        stream.stop()


def test_file_video_replays_and_loops_with_passthrough(tmp_path: Path) -> None:
    video = write_mjpeg(tmp_path / "demo.avi", 4)
    options = {"path": str(video), "realtime": False, "loop": True}
    with create_driver("file", options) as driver:
        frames = list(driver.frames(10))
    assert [f.index for f in frames] == list(range(10))
    assert all(f.jpeg is not None for f in frames)
    assert np.array_equal(frames[0].pixels, frames[4].pixels)  # looped to the start
    with create_driver("file", {**options, "loop": False}) as once:
        assert len(list(once.frames(10))) == 4
        with pytest.raises(EndOfStream):
            once.read()


def test_file_folder_keeps_jpeg_bytes_and_rejects_a_damaged_image(tmp_path: Path) -> None:
    folder = tmp_path / "stills"
    folder.mkdir()
    jpeg = write_image(folder / "a.jpg", 1)
    write_image(folder / "b.png", 2)
    (folder / "c.bmp").write_bytes(b"BM" + b"\0" * 20)  # truncated
    with create_driver("file", {"path": str(folder), "realtime": False}) as driver:
        first, second = driver.read(), driver.read()
        with pytest.raises(FrameRejected, match=r"c\.bmp: BMP image is damaged"):
            driver.read()
        with pytest.raises(EndOfStream):
            driver.read()
    assert first.jpeg == jpeg.read_bytes()  # as the file holds it
    assert second.jpeg is None and second.pixels.shape == (120, 160, 3)


def test_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="holds no BMP, PGM/PPM, TIFF, PNG or JPEG"):
        create_driver("file", {"path": str(tmp_path)}).open()


def test_a_reader_that_falls_behind_sees_skipped_frames_counted(tmp_path: Path) -> None:
    video = write_mjpeg(tmp_path / "fast.avi", 60, fps=100)
    with create_driver("file", {"path": str(video)}) as driver:
        first = driver.read()
        time.sleep(0.2)  # 20 frame times: the "device" moved on without us
        later = driver.read()
    assert later.index - first.index > 1
    stream = FrameStream(create_driver("file", {"path": str(video), "realtime": False}))
    for index in (0, 1, 5, 6):  # the stream counts gaps in the device's counter
        stream._push(first.__class__(pixels=first.pixels, index=index))
    assert stream.stats().dropped == 3


def test_stream_ring_buffer_clip_and_end_of_source(tmp_path: Path) -> None:
    video = write_mjpeg(tmp_path / "clip.avi", 30, fps=30)
    stream = FrameStream(
        create_driver("file", {"path": str(video), "realtime": True}), buffer_seconds=0.5
    ).start()
    try:
        deadline = time.monotonic() + 20
        while not stream.stats().ended and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = stream.stats()
        assert stats.ended and stats.frames + stats.dropped == 30
        assert stats.error is None and stream.alive
        clip = stream.clip()
        assert 0 < len(clip) < 30
        assert clip[-1].timestamp - clip[0].timestamp <= 0.5
        assert [f.index for f in clip] == sorted(f.index for f in clip)
        short = stream.clip(0.1)
        assert 0 < len(short) <= len(clip) and short[-1].index == clip[-1].index
        # kept as the stream's own JPEG, decoded again on the way out
        compact = stream.clip(decode=False)
        assert all(f.pixels.size == 0 and f.jpeg for f in compact)
        assert all(np.array_equal(f.pixels, _decoded(f.jpeg or b"")) for f in clip)
        assert clip[-1].pixels.shape == (120, 160, 3)
        assert stream.wait_frame(after_index=clip[-1].index, timeout=5) is None
    finally:
        stream.stop()


def test_stream_ring_is_bounded_by_bytes(tmp_path: Path) -> None:
    video = write_mjpeg(tmp_path / "clip.avi", 20)
    driver = create_driver("file", {"path": str(video), "realtime": False, "passthrough": False})
    one = 160 * 120 * 3
    stream = FrameStream(driver, buffer_seconds=60, buffer_bytes=5 * one).start()
    try:
        deadline = time.monotonic() + 10
        while not stream.stats().ended and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stream.stats().frames == 20
        assert len(stream.clip()) == 5
        assert [f.index for f in stream.clip()] == [15, 16, 17, 18, 19]
    finally:
        stream.stop()


def test_stream_ring_counts_a_devices_h264_bytes() -> None:
    """A UVC camera's H.264 access units are kept beside their decoded view:
    the ring's byte budget counts both (a key frame can outweigh its pixels)."""
    import dataclasses

    from drivers.base import Frame
    from drivers.testpattern import TestPatternDriver

    unit = 4 * 32 * 32 * 3  # each access unit 4× the frame's pixels

    class H264Pattern(TestPatternDriver):
        def read(self) -> Frame:
            frame = super().read()
            if frame.index >= 20:
                raise EndOfStream("done")
            return dataclasses.replace(frame, h264=bytes(unit), keyframe=True)

    driver = H264Pattern.from_options({"width": 32, "height": 32, "realtime": False})
    stream = FrameStream(driver, buffer_seconds=60, buffer_bytes=5 * 5 * 32 * 32 * 3).start()
    try:
        deadline = time.monotonic() + 10
        while not stream.stats().ended and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stream.stats().frames == 20
        clip = stream.clip(decode=False)
        assert [f.index for f in clip] == [15, 16, 17, 18, 19]
        assert all(len(f.h264 or b"") == unit for f in clip)
    finally:
        stream.stop()


def test_frame_buffer_budget_follows_the_machine(tmp_path: Path) -> None:
    """An eighth of RAM up to 2 GiB, a quarter above, at most 768 MiB: a 1 GB
    Pi keeps 128 MiB of frames, a 2.5 GB one 625 MiB."""
    from drivers.stream import DEFAULT_BUFFER_BYTES, default_buffer_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        1000000 kB\nMemFree:  5 kB\n")
    assert default_buffer_bytes(meminfo) == 1000000 * 1024 // 8
    meminfo.write_text("MemTotal:        2500000 kB\n")
    assert default_buffer_bytes(meminfo) == 2500000 * 1024 // 4
    meminfo.write_text("MemTotal:       24000000 kB\n")
    assert default_buffer_bytes(meminfo) == DEFAULT_BUFFER_BYTES
    assert default_buffer_bytes(tmp_path / "missing") == 128 * 1024 * 1024
