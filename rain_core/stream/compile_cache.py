"""The compiled-tick package cache on disk: where it is, what its files are, its bound, listing, clearing, and the
recovery of what killed builders left.

`cache_dir()` is inductor's cache (TORCHINDUCTOR_CACHE_DIR, else ~/.cache/rain/inductor); the packages of the
compiled steady tick (`rain_core.stream.compiled`) live in its `aoti` folder, one set of files per package key:

  <key>.pt2             the AOTInductor package (written under a temporary name and renamed)
  <key>.log             the background builder's output (`rain_core.stream.background_build`)
  <key>.failed          written when a background compile failed; delete it to try again
  <key>.building        the builder's pid while a build runs (one builder per package, across processes)
  jobs/<key>/           what the builder rebuilds the steady call from

The cache keeps at most `RAIN_CACHE_MAX_MB` (default 2000) of packages; the least recently used (mtime, touched on
every load) go first. `rain cache` shows and clears it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..cpu import log, warn_once
from ..io.files import pid_running, remove_stale_temporaries

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
CACHE_MAX_ENV = "RAIN_CACHE_MAX_MB"  # the compiled-tick packages kept on disk, oldest evicted beyond it
CACHE_MAX_MB = 2000
STALE_BUILD_SECONDS = 30 * 60  # a build marker older than this is a dead builder's, whatever its pid says


def cache_dir() -> Path:
    """Where inductor keeps compiled code: TORCHINDUCTOR_CACHE_DIR if the user set it, else ~/.cache/rain/inductor
    (XDG_CACHE_HOME respected), put into the environment before the first compile."""
    chosen = os.environ.get(CACHE_ENV)
    try:  # importing inductor fills the variable with its own default (/tmp/torchinductor_USER): not a choice
        # import time: inductor loads only when a compiled tick or `rain cache` asks (an unusual torch may lack it)
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        inductor_default = os.path.abspath(default_cache_dir())
    except Exception:
        inductor_default = None
    if chosen and os.path.abspath(chosen) != inductor_default:
        return Path(chosen)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "rain" / "inductor"
    os.environ[CACHE_ENV] = str(path)
    return path


def mark_used(path: Path) -> None:
    """Recently used: the last package to be evicted when the cache is over its bound."""
    try:
        os.utime(path)
    except OSError:
        pass


# ---------------------------------------------------------------------- a build's files


def build_marker(path: Path) -> Path:
    """`<key>.building`: the pid of the process that builds the package `path`."""
    return path.with_suffix(".building")


def job_folder(path: Path) -> Path:
    """`jobs/<key>/`: what the builder of the package `path` rebuilds the steady call from."""
    return path.parent / "jobs" / path.stem


def builder_running(path: Path) -> bool:
    """Whether another live process builds the package `path`: its marker exists, is younger than
    `STALE_BUILD_SECONDS`, and (on POSIX) holds the pid of a running process."""
    marker = build_marker(path)
    try:
        age = time.time() - marker.stat().st_mtime
        pid = int(marker.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if age > STALE_BUILD_SECONDS:
        return False
    if os.name == "posix" and pid:
        return pid_running(pid)
    return True


def remove_build_leftovers(path: Path) -> None:
    """Remove the marker, the job folder and half-written packages of the package `path` (its builder is gone)."""
    build_marker(path).unlink(missing_ok=True)
    shutil.rmtree(job_folder(path), ignore_errors=True)
    remove_stale_temporaries(path)


# ---------------------------------------------------------------------- bound, listing, clearing


def cache_limit_bytes() -> int:
    """`RAIN_CACHE_MAX_MB` (default 2000) in bytes; 0 or less: no bound."""
    text = os.environ.get(CACHE_MAX_ENV, "").strip()
    try:
        megabytes = float(text) if text else CACHE_MAX_MB
    except ValueError:
        warn_once(f"RAIN: {CACHE_MAX_ENV}={text!r} is not a number of megabytes; using {CACHE_MAX_MB}")
        megabytes = CACHE_MAX_MB
    return int(megabytes * 1e6)


def cached_packages(folder: Path | None = None) -> list[dict]:
    """The compiled-tick packages on disk, oldest use first: path, bytes, last use (mtime), and whether a build of
    that key runs now."""
    folder = Path(folder) if folder is not None else cache_dir() / "aoti"
    packages = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if entry.name.endswith(".pt2") and not entry.name.startswith(".") and entry.is_file():
            stat = entry.stat()
            packages.append({"path": Path(entry.path), "bytes": stat.st_size, "used": stat.st_mtime})
    return sorted(packages, key=lambda p: p["used"])


def evict_packages(keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Remove the least recently used packages until the cache holds at most `limit` bytes (`cache_limit_bytes`);
    `keep` (the package just written or loaded) stays. Returns what went (a process that loaded one of them forgets
    it: `rain_core.stream.compiled.compile_package`)."""
    limit = cache_limit_bytes() if limit is None else limit
    if limit <= 0:
        return []
    packages = cached_packages(keep.parent if keep is not None else None)
    total = sum(p["bytes"] for p in packages)
    removed = []
    for package in packages:
        if total <= limit:
            break
        if keep is not None and package["path"] == Path(keep):
            continue
        for leftover in (package["path"], package["path"].with_suffix(".log"), package["path"].with_suffix(".failed")):
            leftover.unlink(missing_ok=True)
        total -= package["bytes"]
        removed.append(package["path"])
    if removed:
        log.info("RAIN: the compiled-tick cache was over %d MB; removed the %d least recently used packages",
                 limit // 10**6, len(removed))
    return removed


def clear_cache(folder: Path | None = None) -> dict:
    """Remove every package, log and failure marker, and what killed builders left; a build that runs now keeps
    its files. Returns {"removed": count, "bytes": freed, "kept": [builds still running]}."""
    folder = Path(folder) if folder is not None else cache_dir() / "aoti"
    removed, freed, kept = 0, 0, []
    recover_stale_builds(folder)
    running = {marker.stem for marker in folder.glob("*.building")} if folder.is_dir() else set()
    for entry in (list(os.scandir(folder)) if folder.is_dir() else []):
        key = entry.name.split(".", 1)[0]
        if entry.name == "jobs" or key in running:
            if key in running and entry.name.endswith(".building"):
                kept.append(key)
            continue
        if entry.is_file() and entry.name.endswith((".pt2", ".log", ".failed")):
            freed += entry.stat().st_size
            os.unlink(entry.path)
            removed += 1
    return {"removed": removed, "bytes": freed, "kept": kept}


def recover_stale_builds(folder: Path | None = None) -> list[str]:
    """Remove what builders that no longer run left behind: `<key>.building` markers whose pid is gone (or older
    than `STALE_BUILD_SECONDS`), their job folders, and half-written packages. Returns the keys."""
    folder = Path(folder) if folder is not None else cache_dir() / "aoti"
    recovered = []
    for marker in (folder.glob("*.building") if folder.is_dir() else []):
        package = marker.with_suffix(".pt2")
        if not builder_running(package):
            remove_build_leftovers(package)
            recovered.append(marker.stem)
    jobs = folder / "jobs"
    for job in (jobs.iterdir() if jobs.is_dir() else []):
        if not (folder / f"{job.name}.building").exists():
            shutil.rmtree(job, ignore_errors=True)  # a builder that died before or after its marker
    for key in {leftover.name.split(".")[1] for leftover in folder.glob(".*.pt2.*")} if folder.is_dir() else ():
        remove_stale_temporaries(folder / f"{key}.pt2")  # a package half-written by a killed compile
    return recovered


__all__ = [
    "CACHE_ENV",
    "CACHE_MAX_ENV",
    "CACHE_MAX_MB",
    "STALE_BUILD_SECONDS",
    "build_marker",
    "builder_running",
    "cache_dir",
    "cache_limit_bytes",
    "cached_packages",
    "clear_cache",
    "evict_packages",
    "job_folder",
    "mark_used",
    "recover_stale_builds",
    "remove_build_leftovers",
]
