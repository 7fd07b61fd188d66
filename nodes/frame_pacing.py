"""A bounded queue that collects the frames a stream emits and releases them at a steady pace.

A RAIN stream emits frames in bursts (m frames per tick, nothing during warm-up, a long tail on flush);
viewers and writers want them one at a time at the video's frame rate. The queue sits between the two:
`push` stores frames with their arrival time, `pop_due` hands on the frames whose scheduled time has come,
`pop_all` empties it. It knows nothing about ComfyUI; the Frame Queue node keeps one per node between runs.

Frames are (N, H, W, 3) float32 in [0, 1] (ComfyUI's IMAGE layout), stored on the CPU.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

WHEN_FULL_POLICIES = ("error", "drop oldest", "release now")


class FrameQueueFullError(RuntimeError):
    """Pushing would take the queue past its capacity under the "error" policy. The queue is unchanged."""


@dataclass
class FrameQueueStats:
    queued: int  # frames waiting now
    pushed: int  # frames accepted since creation
    released_total: int  # frames handed on since creation (a run's own count is called `released` elsewhere)
    dropped: int  # frames discarded by the "drop oldest" policy
    underruns: int  # times a release found the queue empty although frames were due (producer too slow)
    input_fps: float  # measured arrival rate over the recent window
    output_fps: float  # measured release rate over the recent window
    latency_ms: float  # mean time from each released frame's origin (its pose's arrival, else its push) to release
    target_fps: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _RateMeter:
    """Frames per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self.events: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int) -> None:
        if count:
            self.events.append((now, count))
        while self.events and now - self.events[0][0] > self.window_s:
            self.events.popleft()

    def rate(self, now: float) -> float:
        self.add(now, 0)
        if len(self.events) < 2:
            return 0.0
        span = self.events[-1][0] - self.events[0][0]
        # The first event opens the window; frames counted after it arrived over `span`.
        return sum(c for _, c in list(self.events)[1:]) / span if span > 0 else 0.0


class FrameQueue:
    """Collects frames across calls and releases them at `fps`, holding at most `capacity` frames.

    Pacing: frame k after the pace origin is due at origin + k / fps, so the first frame is due at once and a
    steady producer yields a steady output. When the queue runs dry the origin restarts at the next arrival,
    so a slow producer never causes a burst afterwards.

    When a push would exceed `capacity`:
      - "error": raise FrameQueueFullError before changing anything (the queued frames stay),
      - "drop oldest": discard the oldest queued frames (counted in stats.dropped) — for live previews,
      - "release now": accept everything; the next release hands on the excess at once, ignoring the pace.
    """

    def __init__(self, capacity: int = 256, fps: float = 16.0, when_full: str = "error",
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.configure(capacity=capacity, fps=fps, when_full=when_full)
        self._frames: deque[torch.Tensor] = deque()
        self._origins: deque[float] = deque()
        self._pace_origin: float | None = None
        self._released_since_origin = 0
        self._pushed = self._released = self._dropped = self._underruns = 0
        self._last_latency_ms = 0.0
        self._in_rate = _RateMeter()
        self._out_rate = _RateMeter()

    def configure(self, capacity: int, fps: float, when_full: str) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: expected a whole number of frames >= 1, found {capacity!r}.")
        if not fps > 0:
            raise ValueError(f"fps: expected a frame rate > 0, found {fps!r}.")
        if when_full not in WHEN_FULL_POLICIES:
            raise ValueError(f"when_full: expected one of {', '.join(WHEN_FULL_POLICIES)}; found {when_full!r}.")
        if getattr(self, "fps", None) not in (None, fps) and getattr(self, "_pace_origin", None) is not None:
            # A new pace starts from now, so frames already due stay due and none are owed at the old rate.
            self._pace_origin, self._released_since_origin = self.clock(), 0
        self.capacity, self.fps, self.when_full = capacity, float(fps), when_full

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) of the queued frames, or None when empty."""
        return tuple(self._frames[0].shape[:2]) if self._frames else None

    def push(self, frames: torch.Tensor, origins=None) -> int:
        """Store frames (N, H, W, 3); returns how many were accepted (all, unless the policy refuses).

        `origins`: per frame, when what it shows came in (for a RAIN frame: when its pose arrived, on this
        queue's clock); latency is measured from there to the frame's release. Default: the push time."""
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3:
            found = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"frames: expected an image batch of shape (N, H, W, 3), found {found}.")
        count = frames.shape[0]
        if count == 0:
            return 0
        size = tuple(frames.shape[1:3])
        if self.frame_size is not None and size != self.frame_size:
            raise ValueError(f"frames: this batch is {size[1]}x{size[0]} but the queued frames are "
                             f"{self.frame_size[1]}x{self.frame_size[0]}. Flush the queue (flush = true) before "
                             "changing the stream's size, or use a second Frame Queue.")
        overflow = len(self._frames) + count - self.capacity
        if overflow > 0 and self.when_full == "error":
            raise FrameQueueFullError(
                f"Frame Queue is full: it holds {len(self._frames)} of {self.capacity} frames and this run brings "
                f"{count} more, {overflow} too many. The queued frames are kept. Raise capacity, lower the sampler's "
                "output rate, connect the queue's output to a node that consumes it, flush it, or choose "
                "when_full = 'drop oldest' (live previews) or 'release now' (never drops a frame).")
        now = self.clock()
        if origins is None or len(origins) != count:
            origins = [now] * count
        frames = frames.detach().to("cpu", torch.float32)
        for frame, origin in zip(frames, origins):
            self._frames.append(frame)
            self._origins.append(min(float(origin), now))
        if overflow > 0 and self.when_full == "drop oldest":
            for _ in range(min(overflow, len(self._frames))):
                self._frames.popleft()
                self._origins.popleft()
            self._dropped += overflow
        self._pushed += count
        self._in_rate.add(now, count)
        if self._pace_origin is None:
            self._pace_origin, self._released_since_origin = now, 0
        return count

    def due_count(self, now: float | None = None) -> int:
        """How many queued frames are due at `now` (the excess over capacity is always due)."""
        if not self._frames or self._pace_origin is None:
            return 0
        now = self.clock() if now is None else now
        scheduled = math.floor((now - self._pace_origin) * self.fps + 1e-9) + 1 - self._released_since_origin
        excess = len(self._frames) - self.capacity
        return max(0, min(len(self._frames), max(scheduled, excess)))

    def pop_due(self, now: float | None = None) -> torch.Tensor | None:
        """Release the frames that are due; returns (n, H, W, 3) or None when none are due."""
        now = self.clock() if now is None else now
        if not self._frames:
            if self._pace_origin is not None:
                self._underruns += 1
                self._pace_origin = None  # restart the pace at the next arrival: no burst after a gap
            return None
        return self._release(self.due_count(now), now)

    def pop_excess(self, now: float | None = None) -> torch.Tensor | None:
        """Release only the oldest frames beyond capacity (the "release now" policy's overflow)."""
        now = self.clock() if now is None else now
        return self._release(len(self._frames) - self.capacity, now)

    def pop_all(self, now: float | None = None) -> torch.Tensor | None:
        """Release every queued frame now (flush)."""
        now = self.clock() if now is None else now
        released = self._release(len(self._frames), now)
        self._pace_origin = None
        return released

    def clear(self) -> int:
        """Discard every queued frame; returns how many were discarded."""
        count = len(self._frames)
        self._frames.clear()
        self._origins.clear()
        self._pace_origin = None
        return count

    def _release(self, count: int, now: float) -> torch.Tensor | None:
        if count <= 0:
            return None
        frames = [self._frames.popleft() for _ in range(count)]
        waits = [now - self._origins.popleft() for _ in range(count)]
        self._released += count
        self._released_since_origin += count
        self._last_latency_ms = 1000.0 * sum(waits) / count
        self._out_rate.add(now, count)
        return torch.stack(frames)

    def stats(self, now: float | None = None) -> FrameQueueStats:
        now = self.clock() if now is None else now
        return FrameQueueStats(queued=len(self._frames), pushed=self._pushed, released_total=self._released,
                               dropped=self._dropped, underruns=self._underruns,
                               input_fps=self._in_rate.rate(now), output_fps=self._out_rate.rate(now),
                               latency_ms=self._last_latency_ms, target_fps=self.fps)
