"""Live frames in and out: the bounded intake that keeps the newest frames, frame checks and codecs, the meters."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

LIVE_MODES = ("pose", "detect", "face_morph")
DETECTOR_FILES_HINT = (
    "The detector is onnxruntime (`pip install onnxruntime`) and two files in models/rain/dwpose/: yolox_l.onnx and "
    "dw-ll_ucoco_384.onnx. Get them with `rain download --what dwpose` (add --models-dir <ComfyUI>/models for "
    "ComfyUI), or let Pose Stream or this live session fetch them on first use while online.")
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
    check_frame_bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return np.asarray(image.convert("RGB"))


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """uint8 or float [0, 1] RGB (H, W, 3) -> JPEG bytes."""
    array = as_uint8(frame)
    ok, buffer = cv2.imencode(".jpg", array[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise LiveInputError(f"encode_jpeg: could not encode a frame of shape {array.shape}")
    return buffer.tobytes()


def as_uint8(frame) -> np.ndarray:
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


