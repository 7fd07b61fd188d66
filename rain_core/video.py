"""Frame sources and sinks that never hold a whole video in memory.

Sources (`open_pose_source`): a video file (opencv), a folder of images (sorted by name) or a webcam
index. They yield RGB frames one at a time, float32 (H, W, 3) in [0, 1] by default or uint8 with
`as_uint8=True`, optionally letterboxed to a model size.

`letterbox` fits a frame into (height, width) without distortion (scaled to fit, centred, black bars)
and returns where the picture went, so coordinates and images can be mapped back.

`VideoSink` writes an mp4 (opencv, mp4v) or a PNG sequence (when the path has no suffix or mp4 writing
is unavailable). Output goes to a temporary sibling and is renamed into place by `close()`; on error or
`abort()` the partial output is removed and any earlier file at the path is left untouched.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")


class VideoSourceError(ValueError):
    """A frame source that cannot be opened or read."""


class VideoSinkError(ValueError):
    """An output that cannot be written."""


# ---------------------------------------------------------------------------------------------------
# letterbox


@dataclass(frozen=True)
class LetterboxInfo:
    """Where a source frame of (source_height, source_width) sits inside the letterboxed canvas."""

    source_height: int
    source_width: int
    height: int
    width: int
    scale: float
    top: int
    left: int
    content_height: int
    content_width: int

    def to_canvas(self, x, y):
        """Source pixel coordinates → canvas pixel coordinates."""
        return np.asarray(x) * self.content_width / self.source_width + self.left, \
            np.asarray(y) * self.content_height / self.source_height + self.top

    def to_source(self, x, y):
        """Canvas pixel coordinates → source pixel coordinates (inverse of `to_canvas`)."""
        return (np.asarray(x) - self.left) * self.source_width / self.content_width, \
            (np.asarray(y) - self.top) * self.source_height / self.content_height

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The picture area of a letterboxed (height, width, ...) image, without the bars."""
        return image[self.top:self.top + self.content_height, self.left:self.left + self.content_width]

    def restore(self, image: np.ndarray) -> np.ndarray:
        """Undo the letterbox: crop the bars and resize back to the source size."""
        return cv2.resize(self.crop(image), (self.source_width, self.source_height), interpolation=cv2.INTER_LINEAR)


def letterbox_info(source_height: int, source_width: int, height: int, width: int) -> LetterboxInfo:
    scale = min(height / source_height, width / source_width)
    content_height = max(1, min(height, round(source_height * scale)))
    content_width = max(1, min(width, round(source_width * scale)))
    top, left = (height - content_height) // 2, (width - content_width) // 2
    return LetterboxInfo(source_height, source_width, height, width, scale, top, left, content_height, content_width)


def letterbox(frame: np.ndarray, height: int, width: int) -> tuple[np.ndarray, LetterboxInfo]:
    """Fit (H, W, C) `frame` into (height, width) without distortion: scaled, centred, black padding."""
    if frame.ndim != 3:
        raise ValueError(f"letterbox: expected a (H, W, C) frame, found shape {frame.shape}")
    info = letterbox_info(frame.shape[0], frame.shape[1], int(height), int(width))
    out = np.zeros((info.height, info.width, frame.shape[2]), dtype=frame.dtype)
    if (info.content_height, info.content_width) == frame.shape[:2]:
        resized = frame
    else:
        shrinking = info.content_height < frame.shape[0]
        resized = cv2.resize(frame, (info.content_width, info.content_height),
                             interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        resized = resized.reshape(info.content_height, info.content_width, frame.shape[2])
    out[info.top:info.top + info.content_height, info.left:info.left + info.content_width] = resized
    return out, info


# ---------------------------------------------------------------------------------------------------
# sources


class FrameSource:
    """An iterable of RGB frames read one at a time. `len()` works when the length is known."""

    def __init__(self, name: str, fps: float | None, length: int | None, as_uint8: bool,
                 size: tuple[int, int] | None):
        self.name = name
        self.fps = fps
        self.length = length
        self.as_uint8 = as_uint8
        self.size = size  # (height, width) to letterbox to, or None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"{self.name}: length unknown (live source)")
        return self.length

    def _rgb_frames(self) -> Iterator[np.ndarray]:  # yields uint8 RGB
        raise NotImplementedError

    def _finish(self, rgb: np.ndarray) -> np.ndarray:
        if self.size is not None:
            rgb, _ = letterbox(rgb, *self.size)
        if self.as_uint8:
            return rgb
        return rgb.astype(np.float32) / 255.0

    def __iter__(self) -> Iterator[np.ndarray]:
        for rgb in self._rgb_frames():
            yield self._finish(rgb)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_video_frames(path: str | Path, start: int, count: int, loop: bool = False,
                      name: str = "video") -> tuple[np.ndarray, int, int]:
    """Frames [start, start + count) of a video file as (N, H, W, 3) uint8 RGB, wrapping around when `loop`;
    count <= 0 reads to the end. Returns (frames, next_start, total_frames). Only those frames are decoded
    (a seek, then sequential reads), so a live node can step through a long video one run at a time.
    `name` is the input the path came from, for the error messages."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoSourceError(f"{name}: cannot open {str(path)!r} as a video; expected a video file "
                                   "(mp4, webm, …) such as a rendered DWPose skeleton video.")
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:
            raise VideoSourceError(f"{name}: {str(path)!r} has no frames.")
        if start >= total and not loop:
            raise VideoSourceError(f"start_frame: {start} is past the end of {os.path.basename(str(path))} "
                                   f"({total} frames); lower it, or turn loop on.")
        start %= total
        count = total - start if count <= 0 else count
        frames, position = [], start
        capture.set(cv2.CAP_PROP_POS_FRAMES, position)
        while len(frames) < count:
            ok, bgr = capture.read()
            if not ok or position >= total:
                if not loop or position == 0:
                    break  # not looping, or nothing readable even from the first frame: never spin
                position = 0
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            frames.append(_bgr_to_rgb(bgr))
            position += 1
        if not frames:
            raise VideoSourceError(f"{name}: no frame could be decoded from {str(path)!r} at frame {start}.")
        return np.stack(frames), position % total, total
    finally:
        capture.release()


class VideoFileSource(FrameSource):
    """A video file decoded by opencv, one frame per step. Each iteration re-opens the file.

    `length` is the container's frame count (exact for the usual mp4 files; a few formats only estimate it).
    """

    def __init__(self, path: Path, as_uint8: bool = False, size=None):
        self.path = path
        capture = cv2.VideoCapture(str(path))
        try:
            ok, first = capture.read() if capture.isOpened() else (False, None)
            if not ok or first is None:
                raise VideoSourceError(
                    f"{path}: cannot decode this file as video with opencv; expected a readable video "
                    f"(mp4/H.264, avi, webm...). Re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4) or "
                    f"pass a folder of images"
                )
            fps = capture.get(cv2.CAP_PROP_FPS) or None
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            capture.release()
        super().__init__(str(path), fps, count if count > 0 else None, as_uint8, size)

    def _rgb_frames(self):
        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, image = capture.read()
                if not ok:
                    return
                yield _bgr_to_rgb(image)
        finally:
            capture.release()


class ImageFolderSource(FrameSource):
    """The images of a folder in name order, one decoded at a time."""

    def __init__(self, path: Path, fps: float | None = None, as_uint8: bool = False, size=None):
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise VideoSourceError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}); expected one image per frame")
        super().__init__(str(path), fps, len(self.files), as_uint8, size)

    def _rgb_frames(self):
        for file in self.files:
            image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise VideoSourceError(f"{file}: cannot read this image (corrupt or unsupported format)")
            if image.dtype != np.uint8:
                image = (image / (np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0) * 255).clip(0, 255)
                image = image.astype(np.uint8)
            yield _bgr_to_rgb(image)


class WebcamSource(FrameSource):
    """A live camera; endless (no length). The device stays open until `close()`."""

    def __init__(self, index: int, as_uint8: bool = False, size=None):
        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            self.capture.release()
            raise VideoSourceError(f"webcam {index}: cannot open this camera index; check that a camera is connected "
                                   f"and not used by another program, or try another index")
        super().__init__(f"webcam {index}", self.capture.get(cv2.CAP_PROP_FPS) or None, None, as_uint8, size)

    def _rgb_frames(self):
        while self.capture.isOpened():
            ok, image = self.capture.read()
            if not ok:
                return
            yield _bgr_to_rgb(image)

    def close(self) -> None:
        self.capture.release()


def open_pose_source(path_or_index, as_uint8: bool = False, size: tuple[int, int] | None = None,
                     fps: float | None = None) -> FrameSource:
    """Open a video file, an image folder or a webcam (int index) as a lazy frame source.

    size: (height, width) to letterbox every frame to. fps: frame rate to report for an image folder.
    """
    if isinstance(path_or_index, (int, np.integer)) and not isinstance(path_or_index, bool):
        return WebcamSource(int(path_or_index), as_uint8, size)
    path = Path(path_or_index)
    if path.is_dir():
        return ImageFolderSource(path, fps, as_uint8, size)
    if not path.exists():
        raise VideoSourceError(f"{path}: no such file or folder; expected a video file, an image folder or a webcam index")
    return VideoFileSource(path, as_uint8, size)


# ---------------------------------------------------------------------------------------------------
# sink


def _to_uint8_rgb(frame) -> np.ndarray:
    array = np.asarray(frame)
    if hasattr(frame, "detach"):  # a torch tensor
        array = frame.detach().cpu().numpy()
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return array


class VideoSink:
    """Writes RGB frames to an mp4 file (opencv mp4v) or a PNG-sequence folder, atomically.

    path ending in a video suffix (.mp4, .m4v, .mov) → one video file; any other path → a folder of
    frame_000000.png, ... If opencv cannot write mp4 here, frames go to a PNG folder named like the video
    without its suffix (`output_path` says where). Frames: (H, W, 3) or (N, H, W, 3), float in [0, 1] or
    uint8. Use as a context manager: an exception inside the block aborts (removes the partial output).
    """

    def __init__(self, path, fps: float = 16.0):
        self.path = Path(path)
        self.fps = float(fps)
        if self.fps <= 0:
            raise VideoSinkError(f"VideoSink: fps must be positive, found {fps}")
        folder = self.path.parent
        if not folder.is_dir():
            raise VideoSinkError(f"{self.path}: output folder {folder} does not exist; create it first")
        self.as_video = self.path.suffix.lower() in VIDEO_SUFFIXES
        self.output_path = self.path
        self._writer = None
        self._temp: Path | None = None
        self._frame_size: tuple[int, int] | None = None
        self.frames_written = 0
        self._closed = False

    def _start(self, height: int, width: int) -> None:
        folder = self.path.parent
        if self.as_video:
            handle, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial{self.path.suffix}", dir=folder)
            os.close(handle)
            self._temp = Path(name)
            writer = cv2.VideoWriter(str(self._temp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if writer.isOpened():
                self._writer = writer
                return
            writer.release()
            self._temp.unlink(missing_ok=True)
            self.as_video = False
            self.output_path = self.path.with_suffix("")
            log.warning("VideoSink: opencv cannot write mp4 here; writing PNG frames to %s instead", self.output_path)
        self._temp = Path(tempfile.mkdtemp(prefix=f".{self.output_path.name}.", suffix=".partial", dir=folder))

    def write(self, frames) -> None:
        if self._closed:
            raise VideoSinkError(f"{self.path}: sink already closed")
        array = _to_uint8_rgb(frames)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise VideoSinkError(f"{self.path}: expected RGB frames (H, W, 3) or (N, H, W, 3), found shape {array.shape}")
        for frame in array:
            height, width = frame.shape[:2]
            if self._frame_size is None:
                self._frame_size = (height, width)
                self._start(height, width)
            elif self._frame_size != (height, width):
                raise VideoSinkError(
                    f"{self.path}: frame {self.frames_written} is {height}x{width}, earlier frames were "
                    f"{self._frame_size[0]}x{self._frame_size[1]}; every frame of a video must have the same size"
                )
            bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
            if self._writer is not None:
                self._writer.write(bgr)
            elif not cv2.imwrite(str(self._temp / f"frame_{self.frames_written:06d}.png"), bgr):
                raise VideoSinkError(f"{self._temp}: could not write PNG frame {self.frames_written}")
            self.frames_written += 1

    def close(self) -> Path | None:
        """Finish and move the output into place; returns its path (None when no frame was written)."""
        if self._closed:
            return self.output_path if self.frames_written else None
        self._closed = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._temp is None:
            return None
        if self._temp.is_dir():
            # A folder cannot be swapped atomically over a non-empty one: move the old aside, then drop it.
            backup = None
            if self.output_path.exists():
                backup = Path(tempfile.mkdtemp(prefix=f".{self.output_path.name}.", suffix=".old", dir=self.path.parent))
                backup.rmdir()
                os.replace(self.output_path, backup)
            os.replace(self._temp, self.output_path)
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True) if backup.is_dir() else backup.unlink()
        else:
            os.replace(self._temp, self.output_path)
        self._temp = None
        return self.output_path

    def abort(self) -> None:
        """Stop and remove the partial output; whatever was at the path before stays."""
        self._closed = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True) if self._temp.is_dir() else self._temp.unlink(missing_ok=True)
            self._temp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __del__(self):
        # Never leave a partial file behind if the caller forgot to close after an error.
        if getattr(self, "_temp", None) is not None and not getattr(self, "_closed", True):
            self.abort()
