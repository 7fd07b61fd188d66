"""Where a command's output goes: which kinds exist, what is checked before any work, one writer per output.

The rule: nothing the user did not name as the output is ever deleted or replaced. So

- the kind comes from the name (`OUTPUT_KINDS`): `.mp4`/`.m4v`/`.mov` H.264, `.webm` VP9, `.gif`, or a name
  without a suffix for a folder of PNG frames; any other suffix is refused, so `--out a.avi` can no longer turn
  into a folder of PNGs beside (or over) a file the user had;
- a folder of frames goes only into a new or empty folder, or, with `overwrite_frames`, over an earlier folder of
  frames that holds nothing else (`frame_NNNNNN.png` only): a folder holding anything else is never emptied;
- a file output is never written over a folder, and an existing file of that name is the named output: it is
  replaced at the end, atomically (`rain_core.io.video.VideoSink` writes a temporary beside it and renames it);
- before any model loads, `claim_output` finds what would only fail after minutes of rendering: a missing or
  read-only folder, a full disk (when the size can be estimated), a second writer of the same output (an
  advisory `flock` on `.NAME.lock` beside it, released on exit, so a lock left by a killed process never
  blocks: the kernel drops it with the process), and removes temporaries a killed writer left for this name.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl  # POSIX only
except ImportError:  # Windows: no advisory locks; one writer per output is not enforced there
    fcntl = None

from .files import remove_stale_temporaries, user_file_mode


class OutputError(ValueError):
    """An output that cannot or must not be written; the message names the flag and what to do."""


class OutputBusy(OutputError):
    """Another process is writing the same output."""


@dataclass(frozen=True)
class OutputKind:
    name: str
    suffixes: tuple[str, ...]
    description: str
    codec: str | None  # the PyAV encoder (None: PNG files through OpenCV)
    container: str | None  # the muxer
    bytes_per_pixel: float  # a generous size estimate, for the free-space check

    @property
    def is_folder(self) -> bool:
        return self.codec is None


OUTPUT_KINDS = (
    OutputKind("h264", (".mp4", ".m4v", ".mov"), "H.264 video (yuv420p: browsers and ComfyUI play it)", "libx264",
               None, 0.5),
    OutputKind("vp9", (".webm",), "VP9 video in WebM", "libvpx-vp9", "webm", 0.5),
    OutputKind("gif", (".gif",), "animated GIF (256 colours per frame, timing in 1/100 s)", "gif", "gif", 1.5),
    OutputKind("frames", ("",), "a folder of PNG frames (frame_000000.png, …)", None, None, 3.2),
)
FRAME_FILE = re.compile(r"frame_\d{6}\.png")  # what a folder of frames holds (`VideoSink`)
MIN_FREE_BYTES = 1 << 20  # below this nothing useful can be written


def kinds_help() -> str:
    """One line for --help and the README: the kinds of output and how each is named."""
    return ("OUT.mp4 / .m4v / .mov (H.264), OUT.webm (VP9), OUT.gif, or a name without a suffix (or ending in /) for "
            "a folder of PNG frames (new or empty; --overwrite-frames replaces an earlier folder of frames)")


def output_kind(path: os.PathLike | str, flag: str = "--out") -> OutputKind:
    """The kind a path asks for; OutputError for any other suffix."""
    text = os.fspath(path)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.suffix == "" or (path.is_dir() and path.suffix.lower() not in _FILE_SUFFIXES):
        return OUTPUT_KINDS[-1]
    suffix = path.suffix.lower()
    for kind in OUTPUT_KINDS:
        if suffix in kind.suffixes:
            return kind
    raise OutputError(f"{flag} {text}: '{path.suffix}' is not an output kind rain writes; use {kinds_help()}. "
                      "Nothing was written.")


_FILE_SUFFIXES = {suffix for kind in OUTPUT_KINDS for suffix in kind.suffixes if suffix}


def encoder_problem(kind: OutputKind) -> str | None:
    """Why this PyAV/FFmpeg build cannot write `kind` (None: it can)."""
    if kind.codec is None:
        return None
    import av  # import time: PyAV only to check an encoder

    try:
        av.codec.Codec(kind.codec, "w")
    except Exception as error:  # an FFmpeg built without the encoder (e.g. no libvpx)
        return f"this FFmpeg (PyAV {av.__version__}) has no {kind.codec} encoder ({type(error).__name__})"
    return None


def frame_folder_contents(path: Path) -> tuple[list[str], list[str]]:
    """(frame files, everything else) in an existing folder."""
    frames, other = [], []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        (frames if FRAME_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False) else other).append(entry.name)
    return frames, other


def target_problem(path: Path, kind: OutputKind, overwrite_frames: bool = False) -> str | None:
    """Why writing `kind` at `path` would destroy something not named as the output, or cannot work (None: fine)."""
    folder = path.parent
    if not folder.exists():
        return f"the folder {folder} does not exist. Create it first or choose another path"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.path.lexists(path):
        return None
    if kind.is_folder:
        if not path.is_dir():
            return ("a file of this name exists; a name without a suffix is a folder of PNG frames, and rain does not "
                    "replace a file by a folder. Choose another name, or add a video suffix (.mp4)")
        frames, other = frame_folder_contents(path)
        if other:
            shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
            return (f"the folder is not empty (it holds {shown}); frames go only into a new or empty folder, and "
                    "rain never deletes what it did not write. Choose another --out")
        if frames and not overwrite_frames:
            return (f"the folder already holds {len(frames)} frames; pass --overwrite-frames to replace them, or "
                    "choose another --out")
        return None
    if path.is_dir():
        return (f"this is a folder, and a {path.suffix} output is a file. Choose a file name such as "
                f"{path / 'out'}{kind.suffixes[0]}")
    if not path.is_file():
        return "this exists and is not a regular file"
    return None  # an existing file of this name is the named output: replaced when the new one is complete


class OutputLock:
    """An advisory lock on one output: `flock` on `.NAME.lock` beside it, for as long as a command writes it.

    The kernel drops a `flock` when its process ends however it ends, so a lock file left by a killed process
    never blocks anyone: the next writer locks it and removes it when done. The file is removed while still
    locked; a process that opened the old file meanwhile sees that the file it locked is no longer the one at
    the path, and tries again."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.path = self.target.parent / f".{self.target.name}.lock"
        self._fd: int | None = None

    def acquire(self, flag: str = "--out") -> None:
        if fcntl is None:
            return
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), user_file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise OutputBusy(
                    f"{flag} {self.target}: another rain process{f' (pid {holder})' if holder.isdigit() else ''} is "
                    f"writing this output now; wait until it has finished, or choose another {flag}. Nothing was "
                    "written.") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return
            os.close(fd)  # the holder removed it as we opened it: lock the new one
        raise OutputBusy(f"{flag} {self.target}: could not lock {self.path.name}; another writer keeps replacing it")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


@dataclass
class OutputClaim:
    """An output checked and locked for this process (`claim_output`); `release()` (or leaving the `with`)
    unlocks it."""

    path: Path
    kind: OutputKind
    flag: str
    overwrite_frames: bool
    lock: OutputLock

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> OutputClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_output(path: os.PathLike | str, flag: str = "--out", overwrite_frames: bool = False,
                 estimate_bytes: int = 0) -> OutputClaim:
    """Check an output before any work and lock it: its kind and encoder, its folder, what exists at the name,
    whether the folder takes a file, free space (at least `estimate_bytes`), and no other writer. Removes
    temporaries of this name whose writer is gone. Raises OutputError (exit 2 in the CLI) naming `flag`."""
    text = os.fspath(path)
    kind = output_kind(text, flag)
    target = Path(text.rstrip("/" + os.sep) or text)
    problem = encoder_problem(kind) or target_problem(target, kind, overwrite_frames)
    if problem:
        raise OutputError(f"{flag} {text}: {problem}.")
    lock = OutputLock(target)
    try:
        lock.acquire(flag)
    except OutputBusy:
        raise
    except OSError as error:  # the lock file is the first file rain creates there: the folder takes none
        raise OutputError(f"{flag} {text}: cannot write in the folder {target.parent} ({error.strerror or error}); "
                          f"choose a folder you can write to. Nothing was written.") from None
    try:
        remove_stale_temporaries(target)
        free = shutil.disk_usage(target.parent).free
        needed = max(int(estimate_bytes), MIN_FREE_BYTES)
        if free < needed:
            raise OutputError(f"{flag} {text}: the disk holding {target.parent} has {_size(free)} free; this output "
                              f"needs about {_size(needed)}. Free some space or choose another folder. Nothing was "
                              "written.")
    except BaseException:
        lock.release()
        raise
    return OutputClaim(target, kind, flag, overwrite_frames, lock)


def estimate_bytes(kind: OutputKind, frames: int | None, height: int, width: int) -> int:
    """A generous size of `frames` frames of this kind (0 when the count is unknown)."""
    if not frames:
        return 0
    return int(frames * height * width * kind.bytes_per_pixel) + frames * 4096


def _size(count: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


__all__ = ["OUTPUT_KINDS", "OutputBusy", "OutputClaim", "OutputError", "OutputKind", "OutputLock", "claim_output",
           "encoder_problem", "estimate_bytes", "kinds_help", "output_kind", "target_problem"]
