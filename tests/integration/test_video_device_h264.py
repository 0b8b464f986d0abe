"""A device that encodes H.264 itself (as many UVC cameras do) and hands its
access units on in `Frame.h264`: its clip is wrapped without re-encoding,
starting at a key frame. The frames here are a real stream (the ffmpeg tool's
libx264) cut into access units with their decoded pictures, as a driver
would deliver them; no driver in the box delivers H.264 yet (V4L2 through
OpenCV hands on JPEG or pixels only)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import av
import pydicom
import pytest

from drivers import demux
from drivers.base import Frame
from gateway.acquire.capture import ClipWriter
from gateway.dicom import iods, part10, video
from gateway.dicom.modules import Cine
from tests.integration.test_video_objects import dciodvfy, header
from tests.support.process import require_tool

FPS = 25


def device_frames(tmp_path: Path, gop: int, count: int = 75) -> list[Frame]:
    source = tmp_path / f"device-{gop}.mp4"
    subprocess.run(
        [require_tool("ffmpeg"), "-loglevel", "error", "-f", "lavfi",
         "-i", f"testsrc2=size=320x240:rate={FPS}", "-frames:v", str(count),
         "-c:v", "libx264", "-bf", "0", "-g", str(gop), "-pix_fmt", "yuv420p",
         "-y", str(source)],
        check=True,
    )  # fmt: skip
    packets = list(demux.annexb_packets(source))
    pictures = list(demux.decoded_frames(source))
    with av.open(str(source)) as container:
        keys = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert len(packets) == len(pictures) == len(keys) == count
    return [
        Frame(pictures[i], i, 1_700_000_000 + i / FPS, h264=packets[i], keyframe=keys[i])
        for i in range(count)
    ]


def test_a_clip_from_a_key_frame_is_the_devices_stream(tmp_path: Path) -> None:
    frames = device_frames(tmp_path, gop=25)
    writer = ClipWriter("h264", FPS)
    for frame in frames:
        writer.add(frame)
    stream = writer.finish()
    assert writer.encoder == "passthrough" and stream.frames == len(frames)
    assert stream.stream() == b"".join(f.h264 or b"" for f in frames)  # byte for byte
    ds = iods.multiframe_true_color_sc(
        stream, Cine.from_timestamps(writer.timestamps), header("OT")
    )
    path = tmp_path / "clip.dcm"
    path.write_bytes(part10.to_bytes(ds))
    errors, warnings = dciodvfy(path)
    assert errors == [] and warnings == []
    back = b"".join(video.stream_fragments(path))
    with av.open(io.BytesIO(back), format="h264") as container:
        assert sum(1 for _ in container.decode(video=0)) == len(frames)
    assert pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames == len(frames)


def test_frames_before_the_first_key_frame_are_left_out(tmp_path: Path) -> None:
    """Save last / Record start mid-GOP: the stream begins at the next key
    frame (frame 25 here, within the 2 s wait); nothing is re-encoded."""
    frames = device_frames(tmp_path, gop=25)[5:]
    writer = ClipWriter("h264", FPS)
    for frame in frames:
        writer.add(frame)
    stream = writer.finish()
    assert writer.encoder == "passthrough"
    assert stream.frames == len(frames) - 20
    assert writer.timestamps[0] == frames[20].timestamp
    assert stream.stream() == b"".join(f.h264 or b"" for f in frames[20:])


@pytest.mark.parametrize("gop", [250])
def test_no_key_frame_in_time_means_the_clip_is_encoded(tmp_path: Path, gop: int) -> None:
    """A device whose key frames are further apart than the wait: every frame
    kept, encoded from its pixels."""
    frames = device_frames(tmp_path, gop=gop)[1:]
    writer = ClipWriter("h264", FPS)
    for frame in frames:
        writer.add(frame)
    stream = writer.finish()
    assert writer.encoder in ("libx264", video.HARDWARE_H264)
    assert stream.frames == len(frames) == len(writer.timestamps)
