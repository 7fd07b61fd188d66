"""VideoSink: H.264 / VP9 / GIF / PNG-folder output written to a temporary sibling and renamed into place."""

from __future__ import annotations

import logging
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from ..files import temporary_beside, temporary_folder_beside
from ..outputs import OutputError, encoder_problem, frame_folder_contents, output_kind, target_problem

log = logging.getLogger(__name__)


class VideoSinkError(ValueError):
    """An output that cannot be written."""





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
    uint8. Output goes to a hidden temporary beside the path (`rain_core.io.files`: marker and pid in its name) and
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
