"""LiveSession: one RainStream fed by live frames (pose renders, DWPose detection or the anime face morph), and the
lock that lets sessions share one set of networks."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.inputs import POSE_CHECK_FRAMES, NotAPoseRender, check_pose_render
from ..pose import DetectorUnavailable, DWPoseDetector, FaceMorpher, FaceMorphParams, PoseFrame, render_pose
from ..stream import RainStream
from .frames import (
    DETECTOR_FILES_HINT,
    LIVE_MODES,
    MAX_FRAME_SIDE,
    FrameIntake,
    LatencyMeter,
    LiveFrame,
    LiveInputError,
    LiveOutput,
    LiveSourceError,
    RateMeter,
    as_uint8,
    check_frame_bytes,
    decode_frame,
)
from .recorder import LiveRecorder

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- shared networks


class FairLock:
    """A lock granted in the order it was asked for. `threading.Lock` is not: a worker that releases it and asks
    again at once (the next frame) can take it back before a waiting worker wakes, and starve the others."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # the releasing thread handed the lock over

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()  # still held: now by the first waiter
            else:
                self._held = False

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_NETWORK_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NETWORK_LOCKS_GUARD = threading.Lock()


def networks_lock(models) -> FairLock:
    """The one lock of a set of loaded networks. Sessions that share networks (the live route loads a model once for
    every session) take turns through it for every call into them: the denoising UNet hands each layer its reference
    through the layer's attention processor for the length of a forward pass, so two streams running it at once
    would read each other's character. Turns are fair (first asked, first served), one frame push at a time."""
    with _NETWORK_LOCKS_GUARD:
        lock = _NETWORK_LOCKS.get(models)
        if lock is None:
            lock = _NETWORK_LOCKS[models] = FairLock()
        return lock


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
        self.settings = settings or LiveSettings()
        self.settings.validate()
        self.clock = clock
        self.networks_lock = networks_lock(models)
        with self.networks_lock:  # the reference pass runs the shared reference UNet
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
        with self._lock, self.networks_lock:
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
        with self.networks_lock:  # one push of one frame: sessions on the same networks take turns per frame
            images = self.stream.push(pose[None])
        self._pushed += 1
        self._in_flight.append((frame, pose) if self.settings.send_pose else (frame, None))
        return self._collect(images)

    def _collect(self, images) -> list[LiveOutput]:
        if not len(images):
            return []
        now = self.clock()
        outputs = []
        array = as_uint8(images)
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
        height, width = self.config.height, self.config.width
        mode = self.settings.mode
        if isinstance(payload, bytes):
            payload = decode_frame(payload)
        if _is_pose_frame(payload):
            keypoints = payload
        elif mode == "pose":
            image = as_uint8(payload)  # the stream letterboxes it to its size
            if self.settings.pose_check and self._pose_frames_checked < POSE_CHECK_FRAMES:
                try:
                    check_pose_render(image, "live frames")  # the one check, as the CLI's and Pose Stream's
                except NotAPoseRender as error:
                    raise LiveSourceError(str(error)) from None
                self._pose_frames_checked += 1
            return image
        else:
            keypoints = self._detect(as_uint8(payload))
        fitted = keypoints.letterboxed(height, width)
        if mode == "face_morph":
            if self._morpher is None:
                self._morpher = FaceMorpher(self._face_params)
            return self._morpher(fitted, height, width)
        return render_pose(fitted, height, width)

    def _detect(self, image: np.ndarray):
        if self._detector is None:
            try:
                self._detector = (self._make_detector or DWPoseDetector)()
            except DetectorUnavailable as error:
                raise LiveSourceError(
                    f"mode {self.settings.mode!r}: needs the DWPose detector for camera or video frames: {error} "
                    f"{DETECTOR_FILES_HINT} Or send a pose video (or keypoints) with mode 'pose'.") from error
        return self._detector(image)

    def flush(self) -> list[LiveOutput]:
        """End of input: the frames still in the window (the stream closes; start a new session after)."""
        with self._lock:
            with self.networks_lock:
                images = self.stream.flush()
            return self._collect(images)

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
            "fast_path": stream_stats.get("fast_path"),
            "mode": self.settings.mode,
            "face_morph": self.face_morph,
            "recording": self.recording,
            "errors": self.errors,
        }


def _is_pose_frame(value) -> bool:
    return isinstance(value, PoseFrame)
