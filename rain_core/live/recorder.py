"""LiveRecorder: the animated frames of a live session as a browser-playable H.264 file, written atomically."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..io.files import temporary_beside
from .frames import LiveInputError, as_uint8

log = logging.getLogger(__name__)


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
            import av  # import time: PyAV only when recording
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
        array = as_uint8(frame)
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


