"""Atomic outputs with the user's permissions.

Every file the engine writes goes to a temporary name beside its final name and is renamed into place only when
complete, so a failed or interrupted run never leaves a broken file where a good one was. `tempfile.mkstemp`
creates files 0600; an output should get the mode any other program would give it (0666 less the umask).
"""

from __future__ import annotations

import os
import tempfile


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return mask


def user_file_mode() -> int:
    return 0o666 & ~_umask()


def user_folder_mode() -> int:
    return 0o777 & ~_umask()


def temporary_beside(path: os.PathLike | str, suffix: str = ".tmp") -> tuple[int, str]:
    """(handle, name) of a new, empty, hidden file in the folder of `path`, with the user's file mode."""
    folder, name = os.path.split(os.fspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder or ".")
    os.fchmod(handle, user_file_mode())
    return handle, temporary
