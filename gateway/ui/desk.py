"""The technician's desk: the exam actions the screen, the API and the foot
pedal share — start, capture, record, save the last seconds, delete, finish,
discontinue — over one `ExamService`.

One box has one screen and one patient at a time, so there is one current
exam. Every queue write goes through one lock: the outbox connection is
shared, and a pedal press racing a tap must not interleave transactions.
Thumbnails and enlargements of held images stay in memory until the exam
ends, so the screen shows a capture without decoding DICOM.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from drivers.base import Frame
from drivers.stream import FrameStream
from gateway.acquire.capture import DEFAULT_CLIP_FPS, ClipWriter, frame_pixels
from gateway.acquire.exam import Exam, ExamError, ExamEvent, ExamService, ExamState
from gateway.acquire.station import failure_reason
from gateway.dicom.modules import Cine, ModuleError, Order, Patient
from gateway.dicom.video import codec_of
from gateway.queue.db import QueueError
from gateway.queue.model import QueuedObject, QueueFull
from gateway.ui.live import THUMB_WIDTH, Broadcaster, encode_jpeg
from gateway.ui.people import patient_view

log = logging.getLogger(__name__)

SAVE_LAST_SECONDS = 10.0


class DeskError(Exception):
    """A refused action: the HTTP status and a sentence for the screen
    (`code` and `extra` for a screen that can act on it)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields: dict[str, str] | None = None
        self.code = code
        self.extra = extra


# CID 9300 "Incorrect worklist entry selected": what the screen's "Wrong
# patient" sends. Its images are held until the technician says what they are.
WRONG_PATIENT = "110514"
_WRONG_PATIENT_WORDS = {WRONG_PATIENT, "wrong patient", "incorrect worklist entry selected"}


def is_wrong_patient(reason: str) -> bool:
    return reason.strip().lower() in _WRONG_PATIENT_WORDS


# A clip in the review plays from this many frames at most (small JPEGs held
# while the exam is open: ~1 MB a clip), spread over its whole length.
PREVIEW_FRAMES = 30
PREVIEW_SIZE = (640, 400)


@dataclass
class Shot:
    """What the screen needs of one captured object."""

    object_id: int
    kind: str  # "image" or "clip"
    frames: int
    thumb: bytes
    full: bytes
    seconds: float | None = None  # a clip's length as the PACS plays it
    previews: list[bytes] = field(default_factory=list)
    # An H.264 clip's queued file: played by the browser itself (remuxed to MP4).
    video_path: Path | None = None

    def as_json(self, exam_id: str) -> dict[str, Any]:
        base = f"/api/exams/{exam_id}/objects/{self.object_id}"
        return {
            "id": self.object_id,
            "kind": self.kind,
            "frames": self.frames,
            "thumb_url": f"{base}/thumb.jpg",
            "image_url": f"{base}/image.jpg",
            "seconds": None if self.seconds is None else round(self.seconds, 2),
            "preview_urls": [f"{base}/frames/{i}.jpg" for i in range(len(self.previews))],
            "video_url": f"{base}/clip.mp4" if self.video_path is not None else None,
        }


def _spread(count: int, most: int) -> list[int]:
    """`most` indices spread evenly over `count` items (all when fewer)."""
    if count <= most:
        return list(range(count))
    return [round(i * (count - 1) / (most - 1)) for i in range(most)]


def clip_seconds(frames: Sequence[Frame]) -> float:
    """How long the clip plays: its frame count at the Cine frame time the
    object carries (the mean interval), so screen and PACS agree."""
    cine = Cine.from_timestamps([f.timestamp for f in frames])
    return len(frames) * cine.frame_time_ms / 1000.0


# Raw frames are large (1080p RGB is 6 MB): a recording also stops at this
# many bytes, whatever its length, so a long press cannot exhaust a Pi's memory.
RECORD_MAX_BYTES = 384 * 1024 * 1024


class Recorder:
    """Collects frames from the stream on its own thread until stopped or
    a cap (time or bytes) is reached; the caps bound memory on a small box."""

    def __init__(
        self,
        stream: FrameStream,
        max_seconds: float,
        max_bytes: int = RECORD_MAX_BYTES,
        on_limit: Callable[[], None] | None = None,
        writer: ClipWriter | None = None,
    ) -> None:
        self.stream = stream
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.on_limit = on_limit
        # With a writer (H.264 clips) frames are encoded as they come, taken
        # from the ring so none is skipped, and only a few are kept for the
        # review strip (every `stride`-th, at most 2 × PREVIEW_FRAMES).
        self.writer = writer
        self.count = 0
        self.span: tuple[int, int] | None = None  # first and last frame index encoded
        self.stride = 1
        self.error: Exception | None = None
        self.frames: list[Frame] = []
        self.bytes = 0
        self.started = time.monotonic()
        self.limit_reached = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ui-record", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = None
        latest = self.stream.latest()
        if latest is not None:
            last = latest.index
        while not self._stop.is_set():
            if time.monotonic() - self.started >= self.max_seconds or self.bytes >= self.max_bytes:
                self.limit_reached = True
                if self.on_limit is not None:
                    self.on_limit()
                return
            frame = self.stream.wait_frame(last, timeout=0.5)
            if frame is None:
                continue
            if self.writer is None:
                last = frame.index
                self.frames.append(frame)
                self.bytes += frame.pixels.nbytes
                continue
            for taken in self.stream.clip(decode=False):
                if last is not None and taken.index <= last:
                    continue
                last = taken.index
                try:
                    self._encode(taken)
                except Exception as exc:  # the encoder failed: stop, say why on stop()
                    self.error = exc
                    return

    def _encode(self, frame: Frame) -> None:
        assert self.writer is not None
        self.writer.add(frame)
        self.span = (self.span[0] if self.span else frame.index, frame.index)
        if self.count % self.stride == 0:
            self.frames.append(frame)
            if len(self.frames) >= 2 * PREVIEW_FRAMES:
                self.frames = self.frames[::2]
                self.stride *= 2
        self.count += 1

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def elapsed(self) -> float:
        return min(time.monotonic() - self.started, self.max_seconds)

    def stop(self) -> list[Frame]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.frames


def _ring_fps(stream: FrameStream) -> float:
    """The device's rate as the ring of recent frames shows it: a recording's
    encoder is opened at it (the H.264 level depends on it; the object's
    Frame Time comes from the recorded frames' own times)."""
    stats = stream.stats()
    if stats.buffered > 1 and stats.buffered_seconds > 0:
        return min(240.0, (stats.buffered - 1) / stats.buffered_seconds)
    return DEFAULT_CLIP_FPS


def _as_uint8(pixels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if pixels.dtype == np.uint8:
        return pixels
    top = float(pixels.max()) or 1.0
    return (pixels.astype(np.float32) * (255.0 / top)).astype(np.uint8)


def _shot_from_file(queued: QueuedObject) -> Shot:
    """A held object shown again after a restart, rebuilt from its file: a
    still's picture, or a clip's frames spread over it and its length."""
    from pydicom import dcmread
    from pydicom.pixels.utils import pixel_array

    frames, seconds, pictures = 1, None, []
    try:
        ds = dcmread(queued.path, stop_before_pixels=True)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames > 1:
            frame_time = float(getattr(ds, "FrameTime", 0) or 0)
            seconds = frames * frame_time / 1000.0 if frame_time > 0 else None
        for index in _spread(frames, PREVIEW_FRAMES if frames > 1 else 1):
            pictures.append(_as_uint8(pixel_array(queued.path, index=index)))
    except Exception:  # unreadable image: a grey tile, never a broken page
        pictures = [np.full((48, 64), 128, dtype=np.uint8)]
    key = pictures[len(pictures) // 2]
    return Shot(
        queued.id,
        "clip" if frames > 1 else "image",
        frames,
        encode_jpeg(key, (THUMB_WIDTH, THUMB_WIDTH), quality=75),
        encode_jpeg(key, (1280, 800), quality=85),
        seconds,
        [encode_jpeg(p, PREVIEW_SIZE, quality=70) for p in pictures] if frames > 1 else [],
    )


MAX_WAITING_IMAGES = 50


class ExamDesk:
    def __init__(
        self,
        exams: ExamService,
        stream: FrameStream | None,
        events: Broadcaster,
        max_record_seconds: float = 30.0,
    ) -> None:
        self.exams = exams
        self.stream = stream
        self.events = events
        self.max_record_seconds = max_record_seconds
        self.current: Exam | None = None
        self.shots: dict[str, list[Shot]] = {}
        self.recorder: Recorder | None = None
        self._known: dict[str, Exam] = {}
        # Images a digital device sent while no exam was open (see receive).
        self.waiting: list[Frame] = []
        self._lock = threading.RLock()
        exams.subscribe(self._on_exam_event)

    # -- look-ups ---------------------------------------------------------------

    def exam(self, exam_id: str) -> Exam:
        exam = self._known.get(exam_id)
        if exam is None:
            raise DeskError(404, "no such exam (it may have ended before a restart)")
        return exam

    def shot(self, exam_id: str, object_id: int) -> Shot:
        for shot in self.shots.get(exam_id, []):
            if shot.object_id == object_id:
                return shot
        raise DeskError(404, f"object {object_id} is not part of this exam")

    def describe(self, exam: Exam) -> dict[str, Any]:
        """The screen's view of an exam. Patient details are in the body only."""
        shots = self.shots.get(exam.id, [])
        recorder = self.recorder if exam is self.current else None
        return {
            "id": exam.id,
            "state": exam.state.value,
            "scheduled": exam.scheduled,
            "patient": patient_view(exam.patient),
            "accession_number": exam.study.accession_number,
            "procedure": exam.study.description,
            "started": exam.started.isoformat(timespec="seconds"),
            "objects": [s.as_json(exam.id) for s in shots],
            "counts": {
                "images": sum(1 for s in shots if s.kind == "image"),
                "clips": sum(1 for s in shots if s.kind == "clip"),
            },
            # Stays true after the length cap until Stop saves the clip.
            "recording": recorder is not None,
            "recording_seconds": None if recorder is None else round(recorder.elapsed, 1),
            "record_limit": self.max_record_seconds,
            "discontinue_reason": exam.discontinue_reason,
        }

    def open_exam(self) -> Exam | None:
        """The exam in progress on this box, if any."""
        exam = self.current
        return exam if exam is not None and exam.state is ExamState.IN_PROGRESS else None

    # -- actions ----------------------------------------------------------------

    def start(self, patient: Patient, order: Order | None = None) -> Exam:
        with self._lock:
            if self.current is not None and self.current.state is ExamState.IN_PROGRESS:
                raise DeskError(409, "another exam is in progress; finish or discontinue it first")
            exam = self.exams.start(patient, order)
            self._known[exam.id] = exam
            self.shots[exam.id] = []
            self.current = exam
            try:
                self._take_waiting(exam)
            except BaseException as exc:
                # Started but unusable: discontinued (MPPS too), never left open.
                # The device's images still wait for the next exam.
                self._fail_start(exam, exc)
                raise
            return exam

    def _fail_start(self, exam: Exam, exc: BaseException) -> None:
        reason = exc.message if isinstance(exc, DeskError) else str(exc)
        try:
            self.exams.discontinue(exam, failure_reason("start", RuntimeError(reason)))
        except Exception:  # the first failure is the one to report
            log.exception("exam %s could not be discontinued", exam.id)
        if self.current is exam:
            self.current = None

    def adopt(self, exam: Exam) -> None:
        """Take back an exam that was in progress when the service stopped:
        it becomes the current exam, its held images shown from the queue's
        files, so the technician can review, finish or discontinue it."""
        with self._lock:
            self._known[exam.id] = exam
            self.shots[exam.id] = [_shot_from_file(q) for q in exam.images]
            if self.current is None:
                self.current = exam

    def _require_open(self, exam: Exam) -> None:
        if exam.state is not ExamState.IN_PROGRESS:
            raise DeskError(409, f"exam is {exam.state.value.replace('_', ' ')}")

    def _frame(self) -> Frame:
        if self.stream is None:
            raise DeskError(503, "no video source in this process")
        frame = self.stream.latest()
        if frame is None:
            error = self.stream.stats().error
            raise DeskError(503, f"no video — {error}" if error else "no video yet")
        return frame

    def _queue_call(self, action: Callable[[], QueuedObject]) -> QueuedObject:
        try:
            return action()
        except ExamError as exc:
            raise DeskError(409, str(exc)) from None
        except QueueFull as exc:  # refused, and nothing older was given up for it
            raise DeskError(507, str(exc)) from None
        except (QueueError, ModuleError, ValueError) as exc:
            raise DeskError(422, str(exc)) from None

    def capture(self, exam: Exam) -> Shot:
        """Durable when this returns: the flash on screen is a promise."""
        self._require_open(exam)
        frame = self._frame()
        with self._lock:
            queued = self._queue_call(lambda: self.exams.capture(exam, frame))
            return self._add_shot(exam, queued, "image", [frame])

    def receive(self, frame: Frame) -> Shot | None:
        """An image a digital device sent on its own (a serial XMODEM transfer):
        each one is a deliberate capture, so it goes into the open exam at once.
        With no exam open it waits here, said on screen, and goes into the next
        exam started: never dropped, never filed under a guessed patient."""
        with self._lock:
            exam = self.current
            if exam is None or exam.state is not ExamState.IN_PROGRESS:
                if len(self.waiting) >= MAX_WAITING_IMAGES:
                    self.events.publish(
                        {
                            "type": "notice",
                            "text": (
                                f"{len(self.waiting)} images from the device are waiting; "
                                "open an exam before sending more"
                            ),
                        }
                    )
                    raise DeskError(507, "too many device images waiting for an exam")
                self.waiting.append(frame)
                self.events.publish(
                    {
                        "type": "notice",
                        "text": (
                            f"{len(self.waiting)} image(s) received from the device — "
                            "pick a patient to keep them"
                        ),
                    }
                )
                return None
            queued = self._queue_call(lambda: self.exams.capture(exam, frame))
            return self._add_shot(exam, queued, "image", [frame])

    def _take_waiting(self, exam: Exam) -> None:
        while self.waiting:
            frame = self.waiting[0]
            queued = self._queue_call(lambda f=frame: self.exams.capture(exam, f))  # type: ignore[misc]
            self.waiting.pop(0)
            self._add_shot(exam, queued, "image", [frame])

    def _add_shot(
        self,
        exam: Exam,
        queued: QueuedObject,
        kind: str,
        frames: list[Frame],
        recorded: tuple[int, float] | None = None,
    ) -> Shot:
        """`recorded`: (frames, seconds) of a clip encoded while recorded,
        whose `frames` are only the few kept for the review."""
        key = frames[len(frames) // 2] if kind == "clip" else frames[0]
        clip = kind == "clip"
        key_pixels = frame_pixels(key)
        shot = Shot(
            queued.id,
            kind,
            recorded[0] if recorded else len(frames),
            encode_jpeg(key_pixels, (THUMB_WIDTH, THUMB_WIDTH), quality=75),
            encode_jpeg(key_pixels, (1280, 800), quality=85),
            (recorded[1] if recorded else clip_seconds(frames)) if clip else None,
            [
                encode_jpeg(frame_pixels(frames[i]), PREVIEW_SIZE, quality=70)
                for i in _spread(len(frames), PREVIEW_FRAMES)
            ]
            if clip
            else [],
            queued.path if clip and codec_of(queued.transfer_syntax_uid) == "h264" else None,
        )
        self.shots.setdefault(exam.id, []).append(shot)
        self.events.publish({"type": "object", "exam": exam.id, "object": shot.as_json(exam.id)})
        return shot

    def _capture_clip(self, exam: Exam, frames: list[Frame]) -> Shot:
        if not frames:
            raise DeskError(409, "no frames were recorded (is the video connected?)")
        with self._lock:
            queued = self._queue_call(lambda: self.exams.capture_clip(exam, frames))
            return self._add_shot(exam, queued, "clip", frames)

    def _capture_recorded(self, exam: Exam, recorder: Recorder) -> Shot:
        """A recording: encoded already when it was an H.264 one."""
        frames = recorder.stop()
        writer = recorder.writer
        if writer is None:
            return self._capture_clip(exam, frames)
        try:
            if recorder.error is not None:
                raise DeskError(500, f"the clip could not be encoded: {recorder.error}")
            if not frames:
                raise DeskError(409, "no frames were recorded (is the video connected?)")
            seconds = len(writer.timestamps) * Cine.from_timestamps(writer.timestamps).frame_time_ms
            with self._lock:
                queued = self._queue_call(lambda: self.exams.capture_recorded(exam, writer))
                return self._add_shot(
                    exam, queued, "clip", frames, (len(writer.timestamps), seconds / 1000.0)
                )
        finally:
            writer.close()

    def record_start(self, exam: Exam) -> None:
        self._require_open(exam)
        if self.stream is None:
            raise DeskError(503, "no video source in this process")
        with self._lock:
            if self.recorder is not None:
                raise DeskError(409, "already recording")
            exam_id = exam.id
            codec = self.exams.capturer.clip_codec
            self.recorder = Recorder(
                self.stream,
                self.max_record_seconds,
                on_limit=lambda: self.events.publish({"type": "record_limit", "exam": exam_id}),
                writer=ClipWriter(codec, _ring_fps(self.stream)) if codec is not None else None,
            )
        self.events.publish({"type": "recording", "exam": exam.id, "on": True})

    def record_stop(self, exam: Exam) -> Shot:
        self._require_open(exam)
        with self._lock:
            recorder, self.recorder = self.recorder, None
        if recorder is None:
            raise DeskError(409, "not recording")
        self.events.publish({"type": "recording", "exam": exam.id, "on": False})
        return self._capture_recorded(exam, recorder)

    @property
    def save_last_seconds(self) -> float:
        """What "Save last N s" saves: what the frame buffer holds
        (`capture.buffer_seconds`)."""
        return self.stream.buffer_seconds if self.stream is not None else SAVE_LAST_SECONDS

    def save_last(self, exam: Exam, seconds: float | None = None) -> Shot:
        """The last seconds of video, but never a frame from before this exam
        started: those may show the previous patient. Pressed right after
        the start, the clip is as long as the exam is (its length is shown)."""
        self._require_open(exam)
        if self.stream is None:
            raise DeskError(503, "no video source in this process")
        # Undecoded: an H.264 clip decodes ring frames kept as JPEG one at a time.
        frames = self.stream.clip(
            seconds or self.save_last_seconds, decode=False, since=exam.started.timestamp()
        )
        if not frames:
            raise DeskError(409, "no video since this exam started yet; try again in a moment")
        return self._capture_clip(exam, frames)

    def delete(self, exam: Exam, object_id: int) -> None:
        self._require_open(exam)
        with self._lock:
            try:
                self.exams.delete(exam, object_id)
            except ExamError as exc:
                status = 404 if "not part" in str(exc) else 409
                raise DeskError(status, str(exc)) from None
            self.shots[exam.id] = [s for s in self.shots[exam.id] if s.object_id != object_id]
        self.events.publish({"type": "deleted", "exam": exam.id, "object": object_id})

    def _end(self, exam: Exam, action: Callable[[], int]) -> int:
        self._require_open(exam)
        with self._lock:
            if exam is self.current and self.recorder is not None:
                recorder, self.recorder = self.recorder, None
                if recorder.frames:
                    self._capture_recorded(exam, recorder)  # recorded is acknowledged: keep it
                else:
                    recorder.stop()
            try:
                released = action()
            except ExamError as exc:
                raise DeskError(409, str(exc)) from None
            if exam is self.current:
                self.current = None
            self.shots.pop(exam.id, None)
            return released

    def finish(self, exam: Exam) -> int:
        return self._end(exam, lambda: self.exams.finish(exam))

    def discontinue(self, exam: Exam, reason: str, images: str | None = None) -> int:
        """With the wrong patient picked, the held images are someone else's:
        nothing is sent until the technician says "delete" or "send"."""
        self._require_open(exam)
        held = len(self.shots.get(exam.id, [])) or len(exam.images)
        if is_wrong_patient(reason) and held and images is None:
            raise DeskError(
                409,
                f"wrong patient: {held} image{'s are' if held != 1 else ' is'} held — "
                "delete them or send them anyway",
                code="confirm_images",
                held=held,
            )
        discard = images == "delete"
        return self._end(exam, lambda: self.exams.discontinue(exam, reason, discard=discard))

    # -- the pedal -----------------------------------------------------------

    def trigger(self, action: str) -> dict[str, Any]:
        """For the pedal/trigger callbacks ("capture" / "record"): acts on the
        current exam and shows the press on screen, even when it is refused."""
        exam = self.current
        event: dict[str, Any] = {"type": "pedal", "action": action, "ok": False}
        try:
            if exam is None:
                raise DeskError(409, "pedal pressed, but no exam is open")
            if action == "capture":
                event["object"] = self.capture(exam).as_json(exam.id)
            elif action == "record":
                if self.recorder is not None:
                    event["object"] = self.record_stop(exam).as_json(exam.id)
                else:
                    self.record_start(exam)
            else:
                raise DeskError(400, f"unknown pedal action {action!r}")
            event["ok"] = True
        except DeskError as exc:
            event["message"] = exc.message
            log.warning("pedal %s refused: %s", action, exc.message)
        self.events.publish(event)
        return event

    def _on_exam_event(self, event: ExamEvent) -> None:
        self.events.publish({"type": "exam", "kind": event.kind, "exam": event.exam.id})
