"""Record with H.264 clips: the touchscreen's Recorder encodes from the ring
of recent frames while the preview runs at its usual rate; the capture drops
no frame, the clip skips none, and memory holds the compressed stream only."""

from __future__ import annotations

import io
import threading
import time

import av

from drivers import create_driver
from drivers.stream import FrameStream
from gateway.acquire.capture import ClipWriter
from gateway.dicom import iods, part10, video
from gateway.dicom.modules import Cine
from gateway.ui.desk import PREVIEW_FRAMES, Recorder
from gateway.ui.live import encode_jpeg
from tests.integration.test_video_objects import header

FPS = 25
SECONDS = 3.0


def test_recording_keeps_every_frame_while_the_preview_runs() -> None:
    driver = create_driver(
        "testpattern", {"width": 960, "height": 540, "fps": FPS, "realtime": True}
    )
    stream = FrameStream(driver, buffer_seconds=5).start()
    previews = 0
    stop = threading.Event()

    def preview() -> None:
        """What the MJPEG preview does: the latest frame, JPEG, each new one."""
        nonlocal previews
        last = None
        while not stop.is_set():
            frame = stream.wait_frame(last, timeout=1)
            if frame is None:
                continue
            last = frame.index
            encode_jpeg(frame.pixels, (640, 400), quality=70)
            previews += 1

    viewer = threading.Thread(target=preview, daemon=True)
    try:
        assert stream.wait_frame(timeout=10) is not None
        viewer.start()
        writer = ClipWriter("h264", FPS)
        recorder = Recorder(stream, max_seconds=60, writer=writer)
        started = time.monotonic()
        time.sleep(SECONDS)
        kept = recorder.stop()
        elapsed = time.monotonic() - started
        stats = stream.stats()
    finally:
        stop.set()
        stream.stop()
        viewer.join(5)

    assert recorder.error is None
    assert stats.dropped == 0, stats
    # Every frame the device delivered while recording is in the clip, once.
    assert recorder.count == len(writer.timestamps) >= FPS * SECONDS * 0.8
    assert writer.timestamps == sorted(set(writer.timestamps))
    assert recorder.span is not None
    assert recorder.span[1] - recorder.span[0] + 1 == recorder.count  # no index skipped
    # The preview kept its rate meanwhile (slack for a loaded 2-core box).
    assert previews / elapsed >= FPS * 0.7, f"preview at {previews / elapsed:.1f} frames/s"
    # The review strip holds a few frames, not the clip.
    assert 1 <= len(kept) < 2 * PREVIEW_FRAMES

    before = video.clips_encoded().get(writer.encoder, 0)
    encoded = writer.finish()
    assert encoded.frames == recorder.count
    # Named for the metrics (dicom_gateway_video_clips_encoded{encoder}).
    assert video.clips_encoded()[encoded.encoder] == before + 1
    ds = iods.multiframe_true_color_sc(
        encoded, Cine.from_timestamps(writer.timestamps), header("OT")
    )
    back = part10.to_bytes(ds)
    assert len(back) < recorder.count * 960 * 540 * 3 / 50  # compressed, not raw
    with av.open(io.BytesIO(encoded.stream()), format="h264") as container:
        assert sum(1 for _ in container.decode(video=0)) == recorder.count
    assert ds.file_meta.TransferSyntaxUID == video.H264_HP41
