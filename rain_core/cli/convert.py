"""`rain convert`: the authors' .pth files → safetensors + rain_config.json."""

from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK, UsageError, add_part_flags, apply_umask, emit, model_parts


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert the authors' .pth files to safetensors (+ rain_config.json)")
    p.add_argument("source", help="folder with reference_unet.pth, motion_unet.pth, pose_guider.pth "
                   "(e.g. models/rain/RAIN-v0.1)")
    p.add_argument("target", help="output folder (e.g. models/rain/RAIN-v0.1-st)")
    add_part_flags(p, beside="SOURCE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..loading import convert_official

    source, target = Path(args.source), Path(args.target)
    if not source.is_dir():
        raise UsageError(f"SOURCE {source}: expected a folder holding reference_unet.pth, motion_unet.pth and "
                         "pose_guider.pth (the authors' RAIN-v0.1 files); it does not exist or is not a folder.")
    folder = convert_official(source, target, **model_parts(args, source))
    files = sorted(Path(folder).iterdir())
    for file in files:
        apply_umask(file)
    emit(args, {"written": [str(f) for f in files]}, [f"wrote {f}" for f in files])
    return EXIT_OK
