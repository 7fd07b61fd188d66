"""Atomic outputs with the user's permissions, and temporaries that can never be mistaken for output.

Every file the engine writes goes to a temporary name beside its final name and is renamed into place only when
complete, so a failed or interrupted run never leaves a broken file where a good one was. `tempfile.mkstemp`
creates files 0600; an output should get the mode any other program would give it (0666 less the umask).

Temporary names are hidden and carry a fixed marker and the writer's pid: `.NAME.rain-tmp-PID-XXXXXXXX.SUFFIX`.
A process killed outright (SIGKILL, power loss) cannot clean up; its temporaries are then recognisable as ours
and as stale (their pid no longer runs), and `remove_stale_temporaries` (called by the next writer of the same
name) deletes them. Nothing without the marker is ever touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

MARKER = "rain-tmp"  # in every temporary name: what makes a leftover recognisable as ours


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return mask


def user_file_mode() -> int:
    return 0o666 & ~_umask()


def user_folder_mode() -> int:
    return 0o777 & ~_umask()


def temporary_prefix(name: str) -> str:
    return f".{name}.{MARKER}-{os.getpid()}-"


def temporary_beside(path: os.PathLike | str, suffix: str = ".tmp") -> tuple[int, str]:
    """(handle, name) of a new, empty, hidden file in the folder of `path`, with the user's file mode."""
    folder, name = os.path.split(os.fspath(path))
    handle, temporary = tempfile.mkstemp(prefix=temporary_prefix(name), suffix=suffix, dir=folder or ".")
    os.fchmod(handle, user_file_mode())
    return handle, temporary


def write_atomic(path: os.PathLike | str, data: bytes) -> Path:
    """Write `data` to `path` through a temporary beside it (the user's file mode), renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: os.PathLike | str, value, **dump_options) -> Path:
    """`value` as indented JSON (and a final newline) at `path`, atomically (`write_atomic`)."""
    return write_atomic(path, (json.dumps(value, indent=1, **dump_options) + "\n").encode())


def temporary_folder_beside(path: os.PathLike | str, suffix: str = ".tmp") -> Path:
    """A new, empty, hidden folder in the folder of `path`, with the user's folder mode (mkdtemp makes 0700)."""
    folder, name = os.path.split(os.fspath(path))
    temporary = Path(tempfile.mkdtemp(prefix=temporary_prefix(name), suffix=suffix, dir=folder or "."))
    os.chmod(temporary, user_folder_mode())
    return temporary


def pid_running(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 asks without sending anything)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return True  # cannot tell (another OS): keep the file
    try:  # Linux: a process that ended but was not reaped yet (its parent died first, no init reaps) is a zombie
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def stale_temporaries(path: os.PathLike | str) -> list[Path]:
    """The temporaries beside `path` (written for this name) whose writer no longer runs."""
    folder, name = os.path.split(os.fspath(path))
    pattern = re.compile(re.escape(f".{name}.{MARKER}-") + r"(\d+)-")
    stale = []
    try:
        entries = list(os.scandir(folder or "."))
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not pid_running(int(match.group(1))):
            stale.append(Path(entry.path))
    return sorted(stale)


def remove_stale_temporaries(path: os.PathLike | str) -> list[Path]:
    """Delete what `stale_temporaries` finds (files or folders a killed writer left); returns what went."""
    removed = []
    for leftover in stale_temporaries(path):
        try:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            removed.append(leftover)
        except OSError:
            pass  # another cleaner got there first, or the folder is read-only: it stays hidden and ignored
    return removed
