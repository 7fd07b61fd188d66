"""`rain convert`: the authors' .pth files → safetensors + rain_config.json."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .common import EXIT_OK, UsageError, add_part_flags, apply_umask, emit, model_parts

# what a conversion writes (`rain_core.loading.convert_official`): an earlier conversion holds these names only
CONVERTED_FILES = {"reference_unet.safetensors", "denoising_unet.safetensors", "pose_guider.safetensors",
                   "image_encoder.safetensors", "vae.safetensors", "taesdv.safetensors", "rain_config.json"}


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert the authors' .pth files to safetensors (+ rain_config.json)")
    p.add_argument("source", help="folder with reference_unet.pth, motion_unet.pth, pose_guider.pth "
                   "(e.g. models/rain/RAIN-v0.1)")
    p.add_argument("target", help="output folder (e.g. models/rain/RAIN-v0.1-st): new, empty, or an earlier "
                   "conversion (which is replaced); a folder holding anything else is refused")
    add_part_flags(p, beside="SOURCE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def _target_problem(target: Path) -> str | None:
    if not target.parent.is_dir():
        return f"the folder {target.parent} does not exist; create it first or choose another TARGET"
    if not os.path.lexists(target):
        return None
    if not target.is_dir():
        return "this is a file; TARGET is a folder"
    names = {entry.name for entry in os.scandir(target)}
    if names and ("rain_config.json" not in names or names - CONVERTED_FILES):
        other = sorted(names - CONVERTED_FILES) or sorted(names)
        return (f"the folder holds {', '.join(other[:3])}{' …' if len(other) > 3 else ''}, which a conversion does not "
                "write; rain converts only into a new or empty folder or over an earlier conversion, and never "
                "deletes what it did not write. Choose another TARGET (e.g. RAIN-v0.1-st beside the .pth files)")
    return None


def run(args) -> int:
    from ..io.files import remove_stale_temporaries, temporary_folder_beside
    from ..io.outputs import OutputError, OutputLock
    from ..loading import convert_official

    source, target = Path(args.source), Path(args.target)
    if not source.is_dir():
        raise UsageError(f"SOURCE {source}: expected a folder holding reference_unet.pth, motion_unet.pth and "
                         "pose_guider.pth (the authors' RAIN-v0.1 files); it does not exist or is not a folder.")
    problem = _target_problem(target)
    if problem:
        raise UsageError(f"TARGET {target}: {problem}.")
    lock = OutputLock(target)
    try:
        lock.acquire("TARGET")
    except OSError as error:
        raise OutputError(f"TARGET {target}: cannot write in {target.parent} ({error.strerror or error}).") from None
    try:
        remove_stale_temporaries(target)
        # written into a hidden folder beside TARGET and renamed at the end: an interrupted or failed conversion
        # leaves TARGET as it was
        temporary = temporary_folder_beside(target, suffix=".partial")
        try:
            convert_official(source, temporary, **model_parts(args, source))
            if os.path.lexists(target) and any(os.scandir(target)):
                aside = temporary_folder_beside(target, suffix=".old")
                os.replace(target, aside / "previous")
                os.replace(temporary, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(temporary, target)  # rename(2) replaces an empty folder
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    finally:
        lock.release()
    files = sorted(target.iterdir())
    apply_umask(target)
    emit(args, {"written": [str(f) for f in files]}, [f"wrote {f}" for f in files])
    return EXIT_OK
