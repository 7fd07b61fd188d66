"""Frame sources and sinks that never hold a whole video in memory.

Sources (`open_pose_source`): a video file (PyAV), a folder of images (sorted by name) or a webcam
index. They yield RGB frames one at a time, float32 (H, W, 3) in [0, 1] by default or uint8 with
`as_uint8=True`, optionally letterboxed to a model size.

`letterbox` fits a frame into (height, width) without distortion (scaled to fit, centred, black bars)
and returns where the picture went, so coordinates and images can be mapped back.

A video file whose frames stop before the count its container lists, or fail to decode, raises
`VideoReadError` (with `.expected` and `.decoded`), so a damaged pose video is refused instead of cut short.

`VideoSink` writes H.264 yuv420p in an mp4/mov (PyAV, libx264: what browsers and ComfyUI's previews play), VP9
in a .webm, an animated .gif, or a folder of PNG frames (a name without a suffix); any other suffix is refused.
Output goes to a temporary sibling and is renamed into place by `close()`; on error or `abort()` the partial
output is removed and any earlier file at the path is left untouched.

Why one file over 500 lines: sources and sinks share the PyAV/OpenCV container handling, the frame-count
checks and the letterbox geometry; split, each half would import the other's private helpers.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .fileio import temporary_beside, temporary_folder_beside
from .io.outputs import OutputError, encoder_problem, frame_folder_contents, output_kind, target_problem

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


class DecodedVideoCache:
    """Short videos decoded once and kept as uint8, for a node that reads a few frames of the same clip on every
    run (Pose Stream looping a pose video under Auto Queue): opening, seeking and decoding 4 frames of the
    704 × 512 example cost 31 ms per run, an eighth of a tick of the built-in model. `read` answers exactly as
    `read_video_frames` does. Entries are keyed by path, size and modification time (an edited file is decoded
    again) and the least recently used go first when `max_bytes` would be exceeded; a video whose frames alone
    exceed it is read from the file a few frames at a time, as before."""

    def __init__(self, max_bytes: int = 256 << 20):
        import threading
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._too_large: set[tuple] = set()  # read from the file every time: probed once, not on every run
        self._lock = threading.Lock()

    def read(self, path: str | Path, start: int, count: int, loop: bool = False,
             name: str = "video") -> tuple[np.ndarray, int, int]:
        frames = self._frames(path, name)
        if frames is None:
            return read_video_frames(path, start, count, loop, name)
        total = len(frames)
        if start >= total and not loop:
            raise _past_the_end(path, start, total)
        start %= total
        count = total - start if count <= 0 else count
        if not loop:
            count = min(count, total - start)
        index = (start + np.arange(count)) % total
        return frames[index], (start + count) % total, total  # fancy indexing copies: the cache stays intact

    def _frames(self, path, name: str) -> np.ndarray | None:
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._too_large:
                return None
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        info = probe_video(path, name)
        if not info.frame_count or info.frame_count * info.height * info.width * 3 > self.max_bytes:
            with self._lock:
                self._too_large.add(key)
            return None
        frames, _, _ = read_video_frames(path, 0, 0, name=name)
        with self._lock:
            self._entries[key] = frames
            while sum(entry.nbytes for entry in self._entries.values()) > self.max_bytes and len(self._entries) > 1:
                self._entries.popitem(last=False)
        return frames


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


# ---------------------------------------------------------------------------------------------------
# sink


def _to_uint8_rgb(frame) -> np.ndarray:
    array = np.asarray(frame)
    if hasattr(frame, "detach"):  # a torch tensor
        array = frame.detach().cpu().numpy()
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return array


H264_OPTIONS = {"crf": "18", "preset": "fast"}  # visually lossless for renders and skeletons; a fast encode
VP9_OPTIONS = {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}  # constant quality


def _even(n: int) -> int:
    return n + (n % 2)


def _gif_frame(rgb: np.ndarray):
    """An (H, W, 3) uint8 frame as a pal8 VideoFrame with its own 256-colour palette (median cut, no dithering:
    renders have flat areas that dithering would speckle). The palette is written in FFmpeg's layout (uint32 ARGB
    in native byte order) into the frame's second plane, which works the same in every PyAV version."""
    from PIL import Image

    image = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    indices = np.asarray(image, dtype=np.uint8)
    palette = np.zeros((256, 3), np.uint32)
    colours = np.asarray(image.getpalette()[: 256 * 3], np.uint32).reshape(-1, 3)
    palette[: len(colours)] = colours
    argb = (np.uint32(255) << 24) | (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    frame = av.VideoFrame(rgb.shape[1], rgb.shape[0], "pal8")
    plane = frame.planes[0]
    rows = np.zeros((rgb.shape[0], plane.line_size), np.uint8)
    rows[:, : rgb.shape[1]] = indices
    plane.update(rows.tobytes())
    frame.planes[1].update(argb.astype(np.uint32).tobytes())
    return frame


class VideoSink:
    """Writes RGB frames to a video file or a folder of PNG frames, atomically.

    The kind comes from the path (`rain_core.io.outputs.OUTPUT_KINDS`): .mp4/.m4v/.mov → H.264 yuv420p (libx264,
    moov atom first so a browser starts playing before the download ends), .webm → VP9, .gif → animated GIF
    (a 256-colour palette per frame), a name without a suffix → a folder of frame_000000.png, … Any other suffix,
    an encoder this FFmpeg lacks, a file name that is a folder, or a frame folder that is not new or empty
    (`overwrite_frames`: or an earlier folder of frames only) raise `VideoSinkError` here, before any frame.
    yuv420p needs even sizes: a frame with an odd height or width is padded by one row/column repeating its edge
    (`padded` says so; GIF and PNG keep the exact size). Frames: (H, W, 3) or (N, H, W, 3), float in [0, 1] or
    uint8. Output goes to a hidden temporary beside the path (`rain_core.fileio`: marker and pid in its name) and
    is renamed into place by `close()`; on error or `abort()` the temporary is removed and whatever was at the
    path before is left untouched. Use as a context manager: an exception inside the block aborts.
    """

    def __init__(self, path, fps: float = 16.0, overwrite_frames: bool = False, comment: str | None = None):
        self.path = Path(path)
        self.fps = float(fps)
        if self.fps <= 0:
            raise VideoSinkError(f"VideoSink: fps must be positive, found {fps}")
        try:
            self.kind = output_kind(path, flag="VideoSink")
        except OutputError as error:
            raise VideoSinkError(str(error)) from None
        problem = encoder_problem(self.kind) or target_problem(self.path, self.kind, overwrite_frames)
        if problem:
            raise VideoSinkError(f"{self.path}: {problem}")
        self.overwrite_frames = overwrite_frames
        self.comment = comment  # container metadata (mp4, mov, webm): who wrote the file
        self.output_path = self.path
        self.padded = False
        self._container = None
        self._stream = None
        self._temp: Path | None = None
        self._frame_size: tuple[int, int] | None = None
        self.frames_written = 0
        self._closed = False

    def _start(self, height: int, width: int) -> None:
        kind = self.kind
        if kind.is_folder:
            self._temp = temporary_folder_beside(self.path, suffix=".partial")
            return
        handle, name = temporary_beside(self.path, suffix=f".partial{self.path.suffix}")
        os.close(handle)
        self._temp = Path(name)
        try:
            container_format = kind.container or ("mov" if self.path.suffix.lower() == ".mov" else "mp4")
            options = {"movflags": "+faststart"} if container_format in ("mp4", "mov") else {}
            self._container = av.open(name, mode="w", format=container_format, options=options)
            if self.comment and container_format != "gif":
                self._container.metadata["comment"] = self.comment
            rate = Fraction(self.fps).limit_denominator(1001)
            if kind.name == "gif":
                self._stream = self._container.add_stream("gif", rate=rate)
                self._stream.width, self._stream.height = width, height
                self._stream.pix_fmt = "pal8"
                return
            options = dict(H264_OPTIONS if kind.name == "h264" else VP9_OPTIONS)
            self._stream = self._container.add_stream(kind.codec, rate=rate, options=options)
            self._stream.width, self._stream.height = _even(width), _even(height)
            self._stream.pix_fmt = "yuv420p"
            self.padded = (height, width) != (_even(height), _even(width))
            if self.padded:
                log.info("VideoSink: %dx%d is odd; yuv420p needs even sizes, the video is padded to %dx%d",
                         height, width, _even(height), _even(width))
        except (av.error.FFmpegError, OSError, ValueError) as error:
            self.abort()
            raise VideoSinkError(f"{self.path}: cannot start writing {kind.description} ({error})") from error

    def _encode(self, frame: np.ndarray | None) -> None:
        """Encode one uint8 RGB frame (None flushes the encoder) and mux what comes out."""
        if frame is None:
            packets = self._stream.encode(None)
        else:
            height, width = frame.shape[:2]
            if self.kind.name == "gif":
                video_frame = _gif_frame(np.ascontiguousarray(frame))
            else:
                if self.padded:
                    frame = np.pad(frame, ((0, _even(height) - height), (0, _even(width) - width), (0, 0)), mode="edge")
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = self.frames_written
            packets = self._stream.encode(video_frame)
        self._container.mux(packets)

    def _release(self) -> None:
        container, self._container, self._stream = self._container, None, None
        if container is not None:
            container.close()

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
            try:
                if self._container is not None:
                    self._encode(frame)
                elif not cv2.imwrite(str(self._temp / f"frame_{self.frames_written:06d}.png"),
                                     cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)):
                    raise OSError("OpenCV could not write the PNG (disk full or folder gone?)")
            except (av.error.FFmpegError, OSError) as error:  # a full disk, a removed folder
                raise VideoSinkError(f"{self.path}: writing frame {self.frames_written} failed ({error})") from error
            self.frames_written += 1

    def close(self) -> Path | None:
        """Finish and move the output into place; returns its path (None when no frame was written)."""
        if self._closed:
            return self.output_path if self.frames_written else None
        self._closed = True
        if self._container is not None:
            try:
                self._encode(None)
                self._release()
            except Exception as error:
                self.abort()
                if isinstance(error, (av.error.FFmpegError, OSError)):
                    raise VideoSinkError(f"{self.path}: finishing the file failed ({error})") from error
                raise
        if self._temp is None:
            return None
        try:
            if self._temp.is_dir():
                self._replace_folder()
            else:
                os.replace(self._temp, self.output_path)
        except BaseException:
            self.abort()
            raise
        self._temp = None
        return self.output_path

    def _replace_folder(self) -> None:
        """Move the finished frame folder into place: into a new name, over an empty folder (rename(2) replaces an
        empty folder), or, with `overwrite_frames`, over a folder holding frames only (moved aside first, then
        deleted). Anything else appeared there while we wrote: refused, nothing deleted."""
        target = self.output_path
        if not os.path.lexists(target) or (target.is_dir() and not any(os.scandir(target))):
            os.replace(self._temp, target)
            return
        frames, other = frame_folder_contents(target) if target.is_dir() else ([], [target.name])
        if other or not self.overwrite_frames:
            raise VideoSinkError(f"{target}: something else was put there while the frames were written "
                                 f"({', '.join(other[:3]) or f'{len(frames)} frames'}); nothing was replaced")
        aside = temporary_folder_beside(target, suffix=".old")
        os.replace(target, aside / "frames")
        os.replace(self._temp, target)
        shutil.rmtree(aside, ignore_errors=True)

    def abort(self) -> None:
        """Stop and remove the partial output; whatever was at the path before stays."""
        self._closed = True
        try:
            self._release()
        except av.error.FFmpegError as error:  # the partial file is removed below anyway
            log.debug("VideoSink.abort: %s", error)
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
