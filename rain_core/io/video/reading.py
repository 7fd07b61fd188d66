"""Frame sources that never hold a whole video: video files (PyAV), image folders, webcams; the letterbox
geometry; probing, checked decoding, `VideoClip` ranges and the decoded-video cache."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")


class VideoSourceError(ValueError):
    """A frame source that cannot be opened or read."""


class VideoReadError(VideoSourceError):
    """A video that cannot be read to its end: a decode error, or fewer frames than its container lists.
    `expected` is the container's frame count, `decoded` how many frames came out before the failure."""

    def __init__(self, message: str, path, expected: int | None, decoded: int):
        super().__init__(message)
        self.path, self.expected, self.decoded = str(path), expected, decoded


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


def _open_video(path: str | Path, name: str):
    """(container, first video stream) of a file, or VideoSourceError naming the input."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoSourceError(
            f"{name}: cannot open {str(path)!r} as a video ({type(error).__name__}: {str(error)[:160]}); expected a "
            "video file (mp4/H.264, webm, mov…) such as a rendered DWPose skeleton video. Re-encode it "
            "(e.g. ffmpeg -i in -c:v libx264 -pix_fmt yuv420p out.mp4) or pass a folder of images."
        ) from error
    if not container.streams.video:
        container.close()
        raise VideoSourceError(f"{name}: {str(path)!r} holds no video stream; expected a video file.")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _frame_rate(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _frame_count(stream) -> tuple[int, bool]:
    """(frame count, exact): the container's index (mp4, mov) when it lists one, else duration × fps (webm, mkv
    keep no count), else 0 (unknown)."""
    if stream.frames > 0:
        return int(stream.frames), True
    rate = _frame_rate(stream)
    if stream.duration is not None:
        seconds = float(stream.duration * stream.time_base)
    elif stream.container.duration is not None:
        seconds = stream.container.duration / av.time_base
    else:
        return 0, False
    return (max(0, round(seconds * rate)), False) if rate else (0, False)


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's container says about its first video stream."""

    frame_count: int  # the container's count (exact when `exact`, else duration × fps)
    exact: bool
    fps: float | None
    width: int
    height: int
    codec: str
    pix_fmt: str | None


def probe_video(path: str | Path, name: str = "video") -> VideoInfo:
    """Read a video file's header only (no decoding)."""
    container, stream = _open_video(path, name)
    with container:
        count, exact = _frame_count(stream)
        context = stream.codec_context
        return VideoInfo(count, exact, _frame_rate(stream), context.width, context.height, context.name,
                         context.pix_fmt)


def _decode_rgb(container, stream, path, name: str, start: int = 0) -> Iterator[np.ndarray]:
    """uint8 RGB frames from frame `start` on (a seek to the keyframe before it, then decoding forward).
    A decode error raises VideoReadError naming the input and the frame."""
    rate = _frame_rate(stream)
    origin = stream.start_time or 0
    # always seek: a container read before (a looping reader's second pass) is rewound to the frame asked for
    target = origin + (int(start / rate / stream.time_base) if start > 0 and rate else 0)
    container.seek(target, stream=stream, backward=True, any_frame=False)
    decoded = 0
    try:
        for frame in container.decode(stream):
            if not decoded and start > 0 and frame.pts is not None and rate:
                if round(float((frame.pts - origin) * stream.time_base) * rate) < start:
                    continue  # between the keyframe the seek found and the frame asked for
            decoded += 1
            yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as error:
        raise VideoReadError(
            f"{name}: {str(path)!r} fails to decode after frame {start + decoded} ({type(error).__name__}: "
            f"{str(error)[:160]}); the file is damaged. Re-encode it or download it again.",
            path, _frame_count(stream)[0], start + decoded,
        ) from error


def _past_the_end(path, start: int, total: int) -> VideoSourceError:
    return VideoSourceError(f"start_frame: {start} is past the end of {os.path.basename(str(path))} ({total} frames); "
                            "lower it, or turn loop on.")


def read_video_frames(path: str | Path, start: int, count: int, loop: bool = False,
                      name: str = "video") -> tuple[np.ndarray, int, int]:
    """Frames [start, start + count) of a video file as (N, H, W, 3) uint8 RGB, wrapping around when `loop`;
    count <= 0 reads to the end. Returns (frames, next_start, total_frames). Only those frames are decoded
    (a seek, then sequential reads), so a live node can step through a long video one run at a time.
    `name` is the input the path came from, for the error messages. A file that ends before the frame count
    its container lists, or that fails to decode, raises VideoReadError."""
    container, stream = _open_video(path, name)
    with container:
        total, exact = _frame_count(stream)
        if total <= 0:  # a container that says nothing about its length: count by decoding once
            total, exact = sum(1 for _ in _decode_rgb(container, stream, path, name)), True
        if total <= 0:
            raise VideoSourceError(f"{name}: {str(path)!r} has no frames.")
        if start >= total and not loop:
            raise _past_the_end(path, start, total)
        start %= total
        count = total - start if count <= 0 else count
        frames, position = [], start
        while len(frames) < count:
            this_pass = 0
            for rgb in _decode_rgb(container, stream, path, name, position):
                frames.append(rgb)
                position += 1
                this_pass += 1
                if len(frames) == count or position == total:
                    break
            if len(frames) == count:
                break
            if position < total:  # the stream ended before the count its container lists
                if exact:
                    raise VideoReadError(
                        f"{name}: {str(path)!r} ends after {position} frames but its container lists {total}; "
                        "the file is truncated or damaged. Re-encode it or download it again.", path, total, position)
                total = max(position, 1)  # the estimate was too high
            if not loop or not this_pass:
                break  # not looping, or nothing readable this pass: never spin
            position = 0
        if not frames:
            raise VideoSourceError(f"{name}: no frame could be decoded from {str(path)!r} at frame {start}.")
        return np.stack(frames), position % total, total


class VideoClip:
    """Frames [start, start + count) of a video file, wrapping at its end when `loop`, decoded only when asked for:
    `chunks(size)` yields (n <= size, H, W, 3) uint8 blocks from one sequential decode (one seek, then forward), so
    a clip of any length is never held in memory; `read()` returns the whole clip (for short ones). `len()`,
    `total` and `next_start` are known before any frame is decoded. Made by `DecodedVideoCache.clip`, which checks
    the range; a clip of a video the cache holds is sliced from the cached frames instead of decoded. A file that
    ends before the frame count its container lists raises VideoReadError while it is read, as
    `read_video_frames` does."""

    def __init__(self, path, name: str, start: int, count: int, total: int, loop: bool,
                 frames: np.ndarray | None = None):
        self.path, self.name = str(path), name
        self.start, self.count, self.total, self.loop = start, count, total, loop
        self.next_start = (start + count) % total
        self._frames = frames  # the cache's decoded copy of the whole video, or None (read from the file)

    def __len__(self) -> int:
        return self.count

    def _indices(self) -> np.ndarray:
        return (self.start + np.arange(self.count)) % self.total

    def _decoded(self) -> Iterator[np.ndarray]:
        """The clip's frames one at a time, from one open container (a second pass of a loop seeks back to 0)."""
        container, stream = _open_video(self.path, self.name)
        with container:
            position, left = self.start, self.count
            while left:
                this_pass = 0
                for rgb in _decode_rgb(container, stream, self.path, self.name, position):
                    yield rgb
                    position, left, this_pass = position + 1, left - 1, this_pass + 1
                    if not left or position == self.total:
                        break
                if not left:
                    return
                if position < self.total or not this_pass:
                    raise VideoReadError(
                        f"{self.name}: {self.path!r} ends after {position} frames but its container lists "
                        f"{self.total}; the file is truncated or damaged. Re-encode it or download it again.",
                        self.path, self.total, position)
                position = 0  # looping: the next pass starts at the first frame

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        size = max(1, int(size))
        if self._frames is not None:
            indices = self._indices()
            for first in range(0, self.count, size):
                yield self._frames[indices[first:first + size]]  # fancy indexing copies: the cache stays intact
            return
        block = []
        for rgb in self._decoded():
            block.append(rgb)
            if len(block) == size:
                yield np.stack(block)
                block = []
        if block:
            yield np.stack(block)

    def read(self) -> np.ndarray:
        """Every frame of the clip, (count, H, W, 3) uint8."""
        if self._frames is not None:
            return self._frames[self._indices()]
        return np.stack(list(self._decoded()))


class DecodedVideoCache:
    """Short videos decoded once and kept as uint8, for a node that reads a few frames of the same clip on every
    run (Pose Stream looping a pose video under Auto Queue): opening, seeking and decoding 4 frames of the
    704 × 512 example cost 31 ms per run, an eighth of a tick of the built-in model. Entries are keyed by path,
    size and modification time (an edited file is decoded again) and the least recently used go first when
    `max_bytes` would be exceeded; a video whose frames alone exceed it is never decoded whole: its clips are read
    from the file as they are consumed (`VideoClip.chunks`), so a long video costs memory for a few frames only.
    `read` answers exactly as `read_video_frames` does; `clip` is the lazy form of the same range."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._too_large: dict[tuple, int] = {}  # key -> frame count; read from the file, probed once per version
        self._lock = threading.Lock()

    def clip(self, path: str | Path, start: int, count: int, loop: bool = False, name: str = "video") -> VideoClip:
        """Frames [start, start + count) (count <= 0: to the end), wrapping around when `loop`; nothing is decoded
        here unless the video is short enough to be kept (then all of it, once)."""
        frames, total = self._frames(path, name)
        if start >= total and not loop:
            raise _past_the_end(path, start, total)
        start %= total
        count = total - start if count <= 0 else count
        if not loop:
            count = min(count, total - start)
        return VideoClip(path, name, start, count, total, loop, frames)

    def read(self, path: str | Path, start: int, count: int, loop: bool = False,
             name: str = "video") -> tuple[np.ndarray, int, int]:
        clip = self.clip(path, start, count, loop, name)
        return clip.read(), clip.next_start, clip.total

    def _frames(self, path, name: str) -> tuple[np.ndarray | None, int]:
        """(the decoded frames when the video is kept, its frame count)."""
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._too_large:
                return None, self._too_large[key]
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key], len(self._entries[key])
        info = probe_video(path, name)
        frame_bytes = info.height * info.width * 3
        # an exact count, or an estimate (webm) small enough to decode and keep, which then counts the frames
        total = info.frame_count if info.exact or info.frame_count * frame_bytes <= self.max_bytes else 0
        if not total or total * frame_bytes > self.max_bytes:
            total = total or self._count(path, name)
            if not total:
                raise VideoSourceError(f"{name}: {str(path)!r} has no frames.")
            if total * frame_bytes > self.max_bytes:
                with self._lock:
                    self._too_large[key] = total
                return None, total
        frames, _, _ = read_video_frames(path, 0, 0, name=name)
        with self._lock:
            self._entries[key] = frames
            while sum(entry.nbytes for entry in self._entries.values()) > self.max_bytes and len(self._entries) > 1:
                self._entries.popitem(last=False)
        return frames, len(frames)

    @staticmethod
    def _count(path, name: str) -> int:
        """Frames of a container that lists no count (webm, mkv): counted by decoding once, nothing kept."""
        container, stream = _open_video(path, name)
        with container:
            return sum(1 for _ in _decode_rgb(container, stream, path, name))


class VideoFileSource(FrameSource):
    """A video file decoded by PyAV (FFmpeg), one frame per step. Each iteration re-opens the file.

    `length` is the container's frame count (exact for mp4/mov, which index every frame; estimated from the
    duration for formats that do not). When the count is exact, an iteration that decodes fewer frames raises
    VideoReadError (a truncated or damaged file), as does a decode error.
    """

    def __init__(self, path: Path, as_uint8: bool = False, size=None):
        self.path = path
        container, stream = _open_video(path, str(path))
        with container:
            count, self.exact_length = _frame_count(stream)
            fps = _frame_rate(stream)
            try:
                next(_decode_rgb(container, stream, path, str(path)))
            except (StopIteration, VideoReadError) as error:
                raise VideoSourceError(
                    f"{path}: cannot decode this file as video; expected a readable video (mp4/H.264, webm, "
                    "mov...). Re-encode it (e.g. ffmpeg -i in -c:v libx264 -pix_fmt yuv420p out.mp4) or pass a "
                    "folder of images"
                ) from error
        super().__init__(str(path), fps, count if count > 0 else None, as_uint8, size)

    def _rgb_frames(self):
        container, stream = _open_video(self.path, self.name)
        with container:
            decoded = 0
            for rgb in _decode_rgb(container, stream, self.path, self.name):
                decoded += 1
                yield rgb
            if self.exact_length and decoded < (self.length or 0):
                raise VideoReadError(
                    f"{self.name}: decoded {decoded} frames but the container lists {self.length}; the file is "
                    "truncated or damaged. Re-encode or download it again.", self.path, self.length, decoded)


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
