"""Live sources: frames arrive at the camera's pace, the engine takes them at its own, latency stays bounded.

A camera does not wait for the engine. When the engine is slower than the source, frames must be dropped
at the door, not queued: a queue that grows without bound turns into seconds of latency. `FrameIntake`
holds at most `capacity` frames; a frame that arrives when it is full pushes out the oldest waiting frame
(counted as dropped), so the engine always takes the newest frames. Frames the engine never takes are never
decoded.

`LiveSession` owns one `RainStream` and turns live frames into pose frames in one of three modes:
  - "pose": the frames are pose renders already (a pose video), used as they are;
  - "detect": DWPose finds the body, hands and face, drawn as a DWPose skeleton (needs the optional detector);
  - "face_morph": DWPose's face landmarks remapped to anime proportions (the authors' live demo), with
    parameters that can change while streaming and apply from the next tick.
A frame can also arrive as a `PoseFrame` (keypoints found elsewhere), which skips the detector.

Every output frame carries the sequence number and capture timestamp of the input frame it animates, so a
client can measure latency from capture to display; the session measures its own share (received → emitted)
and the structural floor, the look-ahead of window − 1 frames: a frame cannot leave before the poses of the
window − 1 frames after it have arrived. Nothing here imports ComfyUI; the ComfyUI route (nodes/live_route.py)
and the `rain` command drive the same session.

Why one file over 500 lines: intake, meters, recorder and LiveSession are the engine side of one feature
used by the route, the CLI and the bench; each piece is short and only meaningful with the others.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import temporary_beside
from .inputs import POSE_CHECK_FRAMES, NotAPoseRender, check_pose_render

log = logging.getLogger(__name__)

LIVE_MODES = ("pose", "detect", "face_morph")
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_FRAME_SIDE = 2048


class LiveInputError(ValueError):
    """A live frame or setting that cannot be used; the session is left as it was and keeps running."""


class LiveSourceError(LiveInputError):
    """The source cannot feed this session at all (frames that are not pose renders in pose mode, a detector that
    is not installed): the worker stops and the host ends the session, telling the user why."""


# ------------------------------------------------------------------------------------------- frames in


def check_frame_bytes(data: bytes, max_bytes: int = MAX_FRAME_BYTES, max_side: int = MAX_FRAME_SIDE) -> tuple[int, int]:
    """Check an encoded frame (JPEG, PNG or WebP) without decoding its pixels; returns (height, width)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise LiveInputError(
            f"frame: {len(data) / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit for one live frame; "
            f"send JPEG frames at most {max_side} px on a side")
    if not data:
        raise LiveInputError("frame: empty; expected a JPEG, PNG or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        raise LiveInputError(f"frame: not a readable image ({error}); expected a JPEG, PNG or WebP image") from error
    if max(width, height) > max_side:
        raise LiveInputError(
            f"frame: {width}×{height} px is over the {max_side} px limit on a side for a live frame; "
            f"scale the frames down before sending them (the model works at a few hundred px)")
    return height, width


def decode_frame(data: bytes) -> np.ndarray:
    """An encoded frame as uint8 RGB (H, W, 3); transparency is composited over white."""
    from PIL import Image

    check_frame_bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return np.asarray(image.convert("RGB"))


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """uint8 or float [0, 1] RGB (H, W, 3) -> JPEG bytes."""
    import cv2

    array = _as_uint8(frame)
    ok, buffer = cv2.imencode(".jpg", array[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise LiveInputError(f"encode_jpeg: could not encode a frame of shape {array.shape}")
    return buffer.tobytes()


def _as_uint8(frame) -> np.ndarray:
    if hasattr(frame, "detach"):
        frame = frame.detach().to("cpu").float().numpy()
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array)


@dataclass
class LiveFrame:
    """One input frame: what arrived (encoded bytes, an RGB array or a PoseFrame) and when."""

    seq: int  # the sender's frame number (or the arrival count)
    capture_ms: float | None  # the sender's capture time, on the sender's clock (echoed back, never compared here)
    received: float  # arrival time on this process's monotonic clock
    payload: Any


@dataclass
class LiveOutput:
    """One animated frame, with the input frame it animates."""

    seq: int
    capture_ms: float | None
    received: float
    emitted: float
    image: np.ndarray  # uint8 RGB (H, W, 3)
    pose: np.ndarray | None = None  # the pose frame the model saw, uint8 RGB (H, W, 3)

    @property
    def server_ms(self) -> float:
        """Time spent in this process, from arrival to leaving the stream."""
        return (self.emitted - self.received) * 1000.0


class FrameIntake:
    """A bounded, thread-safe door for live frames: `put` never blocks and never grows the backlog.

    When `capacity` frames are already waiting, the oldest waiting frame is dropped so the newest is kept.
    Counters: received = taken + dropped + waiting, always.
    """

    def __init__(self, capacity: int = 4, clock: Callable[[], float] = time.monotonic):
        if int(capacity) < 1:
            raise LiveInputError(f"capacity: expected at least 1 frame, found {capacity}")
        self.capacity = int(capacity)
        self.clock = clock
        self._frames: deque[LiveFrame] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.received = 0
        self.dropped = 0
        self.taken = 0

    def put(self, payload, seq: int | None = None, capture_ms: float | None = None) -> LiveFrame | None:
        """Add a frame; returns the frame it pushed out (None when there was room)."""
        with self._cond:
            if self._closed:
                raise LiveInputError("frame: this live session is closed; start a new one")
            frame = LiveFrame(self.received if seq is None else int(seq), capture_ms, self.clock(), payload)
            self.received += 1
            dropped = None
            if len(self._frames) >= self.capacity:
                dropped = self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self._cond.notify()
            return dropped

    def take(self, max_frames: int | None = None, timeout: float | None = None) -> list[LiveFrame]:
        """The waiting frames, oldest first (at most `max_frames`); waits up to `timeout` s for one to arrive."""
        with self._cond:
            if not self._frames and not self._closed:
                self._cond.wait(timeout)
            count = len(self._frames) if max_frames is None else min(len(self._frames), int(max_frames))
            frames = [self._frames.popleft() for _ in range(count)]
            self.taken += len(frames)
            return frames

    def close(self) -> None:
        """Refuse further frames and wake a waiting `take`."""
        with self._cond:
            self._closed = True
            self._frames.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def counts(self) -> dict:
        with self._cond:
            return {"received": self.received, "taken": self.taken, "dropped": self.dropped,
                    "waiting": len(self._frames), "capacity": self.capacity}


# ------------------------------------------------------------------------------------------- accounting


class RateMeter:
    """Events per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = 3.0):
        self.window_s = float(window_s)
        self._times: deque[float] = deque()

    def add(self, when: float, count: int = 1) -> None:
        self._times.extend([when] * count)
        while self._times and when - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self) -> float | None:
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return None
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])


class LatencyMeter:
    """The last `keep` latencies (ms): p50, p95, mean."""

    def __init__(self, keep: int = 600):
        self._values: deque[float] = deque(maxlen=int(keep))

    def add(self, milliseconds: float) -> None:
        self._values.append(float(milliseconds))

    def __len__(self) -> int:
        return len(self._values)

    def summary(self) -> dict:
        if not self._values:
            return {"p50": None, "p95": None, "mean": None, "count": 0}
        values = np.asarray(self._values)
        return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
                "mean": float(values.mean()), "count": int(values.size)}


# ------------------------------------------------------------------------------------------- recording


class LiveRecorder:
    """Writes the animated frames as a browser-playable H.264 (yuv420p) mp4 with PyAV, atomically.

    Frames go to a hidden temporary file beside `path`; `close()` renames it into place (nothing is written
    when no frame came), `abort()` removes it. A frame written with a `timestamp` (seconds, any clock) is shown
    at that time (millisecond timestamps): a live recording plays at the source's pace even when most input
    frames were dropped; without timestamps frames are `fps` apart.
    """

    def __init__(self, path, fps: float = 30.0, crf: int = 18):
        try:
            import av
        except ImportError as error:
            raise LiveInputError("record: needs PyAV (`pip install av`; ComfyUI installs it)") from error
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise LiveInputError(f"record: output folder {self.path.parent} does not exist")
        self.fps = max(1, round(float(fps)))
        handle, name = temporary_beside(self.path, suffix=".partial.mp4")
        os.close(handle)
        self._temp = Path(name)
        self._av = av
        self._container = av.open(str(self._temp), mode="w", format="mp4")
        self._stream = None
        self._crf = int(crf)
        self._first: float | None = None
        self._last_pts = -1
        self.frames_written = 0

    def write(self, frame, timestamp: float | None = None) -> None:
        array = _as_uint8(frame)
        height, width = array.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = width - width % 2, height - height % 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self._crf), "preset": "veryfast"}
            self._stream.codec_context.time_base = Fraction(1, 1000)
        array = array[: self._stream.height, : self._stream.width]
        video_frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        if timestamp is None:
            pts = self._last_pts + round(1000 / self.fps) if self._last_pts >= 0 else 0
        else:
            self._first = timestamp if self._first is None else self._first
            pts = max(self._last_pts + 1, round((timestamp - self._first) * 1000))
        video_frame.pts, video_frame.time_base = pts, Fraction(1, 1000)
        self._last_pts = pts
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> Path | None:
        """Finish the file and move it into place; its path, or None when no frame was written."""
        if self._container is None:
            return self.path if self.frames_written else None
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
        self._container = None
        if not self.frames_written:
            self._temp.unlink(missing_ok=True)
            return None
        os.replace(self._temp, self.path)
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # a half-written container may fail to finish; it is deleted anyway
                pass
            self._container = None
        self._temp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- the session


@dataclass
class LiveSettings:
    """How a live session turns frames into pose frames. `face_morph`: FaceMorphParams fields to override."""

    mode: str = "pose"
    face_morph: dict = field(default_factory=dict)
    capacity: int | None = None  # frames waiting at the door; None: one cohort (frames_per_cohort)
    send_pose: bool = False  # keep the pose frame each output animates (LiveOutput.pose)
    warm_up: bool = False  # run the first ticks on blank poses before taking frames (see LiveSession.warm_up)
    pose_check: bool = True  # mode "pose": refuse a source whose first frames are not rendered skeletons

    def validate(self) -> None:
        if self.mode not in LIVE_MODES:
            raise LiveInputError(f"mode: expected one of {LIVE_MODES}, found {self.mode!r}")
        _face_params(self.face_morph)


def _face_params(values: dict | None):
    from .pose import FaceMorphParams

    try:
        params = FaceMorphParams.from_dict(dict(values or {}))
    except (TypeError, ValueError) as error:
        raise LiveInputError(f"face_morph: {error}") from error
    for name, value in params.to_dict().items():
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise LiveInputError(f"face_morph.{name}: expected a finite number, found {value!r}")
    return params


class LiveSession:
    """A `RainStream` fed by a live source: submit frames from any thread, run the engine in one worker.

    >>> session = LiveSession(models, StreamConfig(height=64, width=64), reference)
    >>> session.start(on_outputs=lambda outputs: ..., on_error=print)   # a worker thread
    >>> session.submit(jpeg_bytes, seq=n, capture_ms=t)                 # from the socket, never blocks
    >>> session.set_face_morph({"eye_height": 2.0})                      # applies from the next tick
    >>> session.close()                                                  # stops the worker, frees the stream

    Or without a thread: `submit` frames and call `step()` to process what is waiting.
    detector: a callable image (H, W, 3) uint8 -> PoseFrame, needed by "detect" and "face_morph" for image
    frames; None builds one when first needed with `make_detector()` (default `DWPoseDetector()`, its files in
    models/rain/dwpose; a host passes its own, e.g. one that fetches missing files into its models folder).
    """

    def __init__(self, models, config, reference, settings: LiveSettings | None = None, detector=None,
                 clock: Callable[[], float] = time.monotonic, make_detector: Callable[[], Any] | None = None):
        from .stream import RainStream

        self.settings = settings or LiveSettings()
        self.settings.validate()
        self.clock = clock
        self.stream = RainStream(models, config)
        self.stream.set_reference(reference)
        self.config = self.stream.config
        self.intake = FrameIntake(self.settings.capacity or self.config.frames_per_cohort, clock)
        self._detector = detector
        self._make_detector = make_detector
        self._face_params = _face_params(self.settings.face_morph)
        self._pending_face: Any = None
        self._morpher = None
        self._in_flight: deque[tuple[LiveFrame, np.ndarray | None]] = deque()  # pushed, not yet out; oldest first
        self._pushed = 0
        self._emitted = 0
        self._lock = threading.RLock()  # one step at a time (the event loop never waits on it)
        self._record_lock = threading.Lock()  # the recorder is swapped and written under this short lock
        self._stream_stats: dict = {}
        self._input_rate = RateMeter()
        self._output_rate = RateMeter()
        self.latency = LatencyMeter()  # received -> emitted, ms
        self._recorder: LiveRecorder | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.warm_up_s = self.warm_up() if self.settings.warm_up else None
        self._pose_frames_checked = 0
        self.errors = 0  # worker steps that reported an error
        self.failed = 0  # frames taken but not pushed (each reported as an error)
        self.closed = False

    def warm_up(self) -> float:
        """Tick through a full window and one steady tick on blank poses, then start the stream afresh (same seed,
        same reference). What a first steady tick pays once (torch.compile, CUDA graph capture, allocator growth)
        is paid here, before any live frame waits for it. Returns the seconds it took."""
        started = time.monotonic()
        count = (self.config.levels + 1) * self.config.frames_per_cohort
        with self._lock:
            self.stream.push(np.zeros((count, self.config.height, self.config.width, 3), np.float32))
            self.stream.reset()
        return time.monotonic() - started

    # ------------------------------------------------------------------ input
    def submit(self, payload, seq: int | None = None, capture_ms: float | None = None) -> bool:
        """Offer a frame: encoded bytes, an RGB array (H, W, 3) or a PoseFrame. Never blocks.

        Encoded frames are checked here (size, header) and raise LiveInputError at once; they are decoded
        only if the engine takes them. Returns False when an older waiting frame was dropped for this one.
        """
        if isinstance(payload, (bytes, bytearray, memoryview)):
            payload = bytes(payload)
            check_frame_bytes(payload)
        elif not _is_pose_frame(payload):
            array = np.asarray(payload)
            if array.ndim != 3 or array.shape[2] != 3:
                raise LiveInputError(f"frame: expected an RGB image (H, W, 3), found shape {array.shape}")
            if max(array.shape[:2]) > MAX_FRAME_SIDE:
                raise LiveInputError(f"frame: {array.shape[1]}×{array.shape[0]} px is over the {MAX_FRAME_SIDE} px "
                                     "limit on a side; scale the frames down")
        dropped = self.intake.put(payload, seq, capture_ms)
        self._input_rate.add(self.clock())
        return dropped is None

    def set_face_morph(self, values: dict) -> None:
        """New face-morph parameters (FaceMorphParams fields); the frames of the next tick use them."""
        base = self._pending_face or self._face_params
        self._pending_face = _face_params({**base.to_dict(), **dict(values)})

    @property
    def face_morph(self) -> dict:
        return self._face_params.to_dict()

    # ------------------------------------------------------------------ the engine
    def step(self, timeout: float | None = 0.0, emit: Callable[[list[LiveOutput]], None] | None = None
             ) -> list[LiveOutput]:
        """Take the waiting frames (waiting up to `timeout` s for one), push them, return the frames that left.

        emit: called with the frames of each tick as soon as they leave the stream (before the next tick runs).
        A frame that fails (unreadable, no detector) is counted in `failed` and skipped, the others still go in;
        the first such error is raised at the end (the stream is unchanged by a failed frame)."""
        frames = self.intake.take(timeout=timeout)
        if not frames:
            return []
        errors = []
        with self._lock:
            outputs = []
            try:
                for frame in frames:
                    try:
                        left = self._push_one(frame)
                    except Exception as error:
                        self.failed += 1
                        errors.append(error)
                        continue
                    if left and emit is not None:
                        emit(left)
                    outputs.extend(left)
            finally:
                self._stream_stats = self.stream.stats
        if errors:
            raise errors[0]
        return outputs

    def _push_one(self, frame: LiveFrame) -> list[LiveOutput]:
        m = self.config.frames_per_cohort
        if self._pushed % m == 0 and self._pending_face is not None:  # a new cohort begins: the next tick
            self._face_params, self._pending_face = self._pending_face, None
            if self._morpher is not None:
                self._morpher.params = self._face_params
        pose = self._pose_frame(frame.payload)
        images = self.stream.push(pose[None])
        self._pushed += 1
        self._in_flight.append((frame, pose) if self.settings.send_pose else (frame, None))
        return self._collect(images)

    def _collect(self, images) -> list[LiveOutput]:
        if not len(images):
            return []
        now = self.clock()
        outputs = []
        array = _as_uint8(images)
        for image in array:
            frame, pose = self._in_flight.popleft()
            output = LiveOutput(frame.seq, frame.capture_ms, frame.received, now, image, pose)
            self.latency.add(output.server_ms)
            outputs.append(output)
        with self._record_lock:
            if self._recorder is not None:
                for output in outputs:
                    self._recorder.write(output.image, output.received)  # at the pace the frames came in
        self._emitted += len(outputs)
        self._output_rate.add(now, len(outputs))
        return outputs

    def _pose_frame(self, payload) -> np.ndarray:
        """The pose frame the model sees for one input, uint8 (H, W, 3) at the stream's size."""
        from .pose import FaceMorpher, render_pose

        height, width = self.config.height, self.config.width
        mode = self.settings.mode
        if isinstance(payload, bytes):
            payload = decode_frame(payload)
        if _is_pose_frame(payload):
            keypoints = payload
        elif mode == "pose":
            image = _as_uint8(payload)  # the stream letterboxes it to its size
            if self.settings.pose_check and self._pose_frames_checked < POSE_CHECK_FRAMES:
                try:
                    check_pose_render(image, "live frames")  # the one check, as the CLI's and Pose Stream's
                except NotAPoseRender as error:
                    raise LiveSourceError(str(error)) from None
                self._pose_frames_checked += 1
            return image
        else:
            keypoints = self._detect(_as_uint8(payload))
        fitted = keypoints.letterboxed(height, width)
        if mode == "face_morph":
            if self._morpher is None:
                self._morpher = FaceMorpher(self._face_params)
            return self._morpher(fitted, height, width)
        return render_pose(fitted, height, width)

    def _detect(self, image: np.ndarray):
        if self._detector is None:
            from .pose import DetectorUnavailable, DWPoseDetector

            try:
                self._detector = (self._make_detector or DWPoseDetector)()
            except DetectorUnavailable as error:
                raise LiveSourceError(
                    f"mode {self.settings.mode!r}: needs the DWPose detector for camera or video frames. {error} "
                    "Or send a pose video with mode 'pose'.") from error
        return self._detector(image)

    def flush(self) -> list[LiveOutput]:
        """End of input: the frames still in the window (the stream closes; start a new session after)."""
        with self._lock:
            return self._collect(self.stream.flush())

    # ------------------------------------------------------------------ the worker thread
    def start(self, on_outputs: Callable[[list[LiveOutput]], None], on_error: Callable[[str], None] | None = None,
              poll_s: float = 0.05, on_fatal: Callable[[str], None] | None = None) -> None:
        """Run `step` in a daemon thread until `stop()`; outputs and error messages go to the callbacks. A
        `LiveSourceError` (the source cannot feed this session) ends the worker and goes to `on_fatal` (else
        `on_error`): the host then closes the session."""
        if self._thread is not None:
            raise LiveInputError("start: this live session is already running")

        def work():
            while not self._stop.is_set():
                try:
                    self.step(timeout=poll_s, emit=on_outputs)
                except LiveSourceError as error:
                    self.errors += 1
                    log.warning("live session stopped: %s", error)
                    (on_fatal or on_error or (lambda message: None))(str(error))
                    return
                except Exception as error:  # a bad frame or a failed tick: the stream is unchanged, go on
                    self.errors += 1
                    log.warning("live session: %s", error)
                    if on_error is not None:
                        on_error(str(error))

        self._stop.clear()
        self._thread = threading.Thread(target=work, name="rain-live", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker thread (after the tick it is in, if any)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ recording
    def start_recording(self, path, fps: float | None = None) -> None:
        recorder = LiveRecorder(path, fps or self._input_rate.rate() or 30.0)
        with self._record_lock:
            if self._recorder is None:
                self._recorder, recorder = recorder, None
        if recorder is not None:
            recorder.abort()
            raise LiveInputError("record: already recording; stop the recording first")

    def stop_recording(self) -> Path | None:
        """Finish the recording; its path, or None when no frame was recorded."""
        with self._record_lock:
            recorder, self._recorder = self._recorder, None
            return recorder.close() if recorder is not None else None

    @property
    def recording(self) -> bool:
        return self._recorder is not None

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        """Stop the worker, abort a recording, drop the stream and everything in flight."""
        if self.closed:
            return
        self.closed = True
        self.intake.close()
        self.stop()
        with self._record_lock:
            if self._recorder is not None:
                self._recorder.abort()
                self._recorder = None
        with self._lock:
            self._in_flight.clear()
            self.stream = None
            self._morpher = None

    # ------------------------------------------------------------------ accounting
    def stats(self) -> dict:
        """Counters, rates and latency (ms, arrival -> leaving the stream); the look-ahead floor at the input fps.

        Never waits for a tick: safe to call from an event loop while the worker runs."""
        counts = self.intake.counts()
        input_fps = self._input_rate.rate()
        output_fps = self._output_rate.rate()
        lookahead = self.config.window - 1
        pushed, emitted, stream_stats = self._pushed, self._emitted, self._stream_stats
        return {
            **counts,
            "pushed": pushed,
            "emitted": emitted,
            "in_flight": pushed - emitted,
            "failed": self.failed,
            "dropped_share": counts["dropped"] / counts["received"] if counts["received"] else 0.0,
            "input_fps": input_fps,
            "output_fps": output_fps,
            "latency_ms": self.latency.summary(),
            "window": self.config.window,
            "lookahead_frames": lookahead,
            "floor_ms": lookahead / input_fps * 1000.0 if input_fps else None,
            "mean_ms_per_tick": stream_stats.get("mean_ms_per_tick"),
            "mode": self.settings.mode,
            "face_morph": self.face_morph,
            "recording": self.recording,
            "errors": self.errors,
        }


def _is_pose_frame(value) -> bool:
    from .pose import PoseFrame

    return isinstance(value, PoseFrame)
