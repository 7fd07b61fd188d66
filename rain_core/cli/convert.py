"""`rain convert`: the authors' .pth files → safetensors + rain_config.json."""

from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK, UsageError, emit


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert the authors' .pth files to safetensors (+ rain_config.json)")
    p.add_argument("source", help="folder with reference_unet.pth, motion_unet.pth, pose_guider.pth")
    p.add_argument("target", help="output folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..loading import convert_official

    source, target = Path(args.source), Path(args.target)
    if not source.is_dir():
        raise UsageError(f"SOURCE {source}: expected a folder holding reference_unet.pth, motion_unet.pth and "
                         "pose_guider.pth (the authors' RAIN-v0.1 files); it does not exist or is not a folder.")
    folder = convert_official(source, target)
    files = sorted(str(p) for p in Path(folder).iterdir())
    emit(args, {"written": files}, [f"wrote {f}" for f in files])
    return EXIT_OK
