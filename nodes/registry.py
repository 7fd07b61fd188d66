"""Streams and frame queues that outlive one call, keyed by a name the caller chooses.

ComfyUI runs a workflow once per queued prompt; a RAIN stream must continue across those runs (a long video
fed in chunks, a live source under Auto Queue). The registry holds each stream with the settings it was
started with, so a later run can continue it, and refuses to continue it under different settings (that
would silently mix two streams). It holds Frame Queues the same way. No ComfyUI import: the nodes use the
process-wide `default_registry()`, tests make their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .frame_pacing import FrameQueue


class StreamSettingsChanged(ValueError):
    """A stream id was resumed with settings other than those it was started with."""


@dataclass
class StreamEntry:
    stream: Any  # a RainStream (any object with state_dict/load_state_dict)
    settings: dict
    runs: int = 0  # completed runs that advanced this stream
    frames_in: int = 0  # pose frames pushed so far
    frames_out: int = 0  # frames emitted so far
    extra: dict = field(default_factory=dict)


def describe_changes(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two settings dicts, e.g. ["steps: 4 -> 2"]."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


class StreamRegistry:
    def __init__(self):
        self._streams: dict[str, StreamEntry] = {}
        self._queues: dict[str, FrameQueue] = {}
        self._lock = threading.RLock()

    # ----------------------------------------------------------------------------------------- streams

    def open_stream(self, stream_id: str, settings: dict, create: Callable[[], Any]) -> tuple[StreamEntry, bool]:
        """The stream under `stream_id`, created with `create()` when absent. Returns (entry, created).

        Raises StreamSettingsChanged when the id exists with other settings; the message lists the changes
        and the two ways out (reset the stream, or use another id). The existing stream is left untouched.
        """
        if not isinstance(stream_id, str) or not stream_id.strip():
            raise ValueError(f"stream_id: expected a non-empty name, found {stream_id!r}.")
        with self._lock:
            entry = self._streams.get(stream_id)
            if entry is not None:
                changes = describe_changes(entry.settings, settings)
                if changes:
                    raise StreamSettingsChanged(
                        f"stream_id {stream_id!r}: this stream was started with other settings "
                        f"({'; '.join(changes)}). A running stream cannot change them. Turn on reset for one run "
                        "to restart it with the new settings, or give this sampler another stream_id.")
                return entry, False
            entry = StreamEntry(stream=create(), settings=dict(settings))
            self._streams[stream_id] = entry
            return entry, True

    def stream(self, stream_id: str) -> StreamEntry | None:
        with self._lock:
            return self._streams.get(stream_id)

    def close_stream(self, stream_id: str) -> bool:
        """Forget a stream (its memory is freed when nothing else holds it). True when it existed."""
        with self._lock:
            return self._streams.pop(stream_id, None) is not None

    def close_streams(self, predicate: Callable[[StreamEntry], bool]) -> list[str]:
        """Forget every stream whose entry satisfies `predicate` (e.g. those built on a model being unloaded)."""
        with self._lock:
            closed = [key for key, entry in self._streams.items() if predicate(entry)]
            for key in closed:
                del self._streams[key]
            return closed

    def stream_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._streams)

    # ------------------------------------------------------------------------------------ frame queues

    def frame_queue(self, queue_id: str, capacity: int, fps: float, when_full: str) -> FrameQueue:
        """The queue under `queue_id`, created when absent; its capacity, pace and policy follow the arguments."""
        with self._lock:
            queue = self._queues.get(queue_id)
            if queue is None:
                queue = self._queues[queue_id] = FrameQueue(capacity=capacity, fps=fps, when_full=when_full)
            else:
                if capacity < len(queue) and when_full == "error":
                    raise ValueError(f"capacity: the queue holds {len(queue)} frames, more than the new capacity "
                                     f"{capacity}. Raise capacity or flush the queue first; nothing was dropped.")
                queue.configure(capacity=capacity, fps=fps, when_full=when_full)
            return queue

    def close_frame_queue(self, queue_id: str) -> bool:
        with self._lock:
            return self._queues.pop(queue_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._streams.clear()
            self._queues.clear()


_DEFAULT = StreamRegistry()


def default_registry() -> StreamRegistry:
    """The process-wide registry the ComfyUI nodes share."""
    return _DEFAULT
