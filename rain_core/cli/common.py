"""Helpers shared by the `rain` subcommands: exit codes, errors, output, stream flags, model loading, inputs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..layout import builtin_model_dir, resolve_model_folder

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2

__all__ = ["EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "UsageError", "builtin_model_dir"]


class UsageError(ValueError):
    """Bad arguments or inputs detected by the command line itself."""


def is_input_error(error: BaseException) -> bool:
    """Errors a user can fix: our own ValueError subclasses, missing files, bad arguments."""
    if isinstance(error, (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return True
    if isinstance(error, ValueError):
        module = type(error).__module__ or ""
        return module.startswith("rain_core")
    return False


def emit(args, summary: dict, lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2, default=float))
    else:
        for line in lines:
            print(line)


def check_output_path(path: str) -> Path:
    out = Path(path)
    folder = out if out.suffix == "" else out.parent
    parent = folder.parent if out.suffix == "" else folder
    if not parent.exists():
        raise UsageError(f"--out {path}: the folder {parent} does not exist. Create it first or choose another path.")
    return out


# --------------------------------------------------------------------------- model / stream helpers


def add_stream_flags(parser: argparse.ArgumentParser, defaults: dict) -> None:
    group = parser.add_argument_group("stream settings")
    group.add_argument("--levels", type=int, default=defaults.get("levels", 4), help="p: noise levels (cohorts) in flight")
    group.add_argument("--frames-per-cohort", type=int, default=defaults.get("frames_per_cohort", 4),
                       help="m: frames sharing one noise level")
    group.add_argument("--steps", type=int, default=defaults.get("steps", 4), help="LCM steps per frame (multiple of --levels)")
    group.add_argument("--guidance", type=float, default=defaults.get("guidance", 3.5), help="LCM w-embedding value")
    group.add_argument("--height", type=int, default=defaults.get("height", 512))
    group.add_argument("--width", type=int, default=defaults.get("width", 512))
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--decoder", choices=["auto", "taesdv", "vae"], default="auto",
                       help="auto: TAESDV when the model has it, else the full decoder")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (auto: cuda when available)")
    group.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    group.add_argument("--fps", type=float, default=None, help="output video fps (default: the input's, or 16)")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default on CPU: half the cores)")


def add_model_flags(parser: argparse.ArgumentParser, required: bool = False, help: str | None = None) -> None:
    parser.add_argument("--model", required=required, default=None,
                        help=help or "model folder (default: the built-in tiny model)")
    parser.add_argument("--vae", default=None, help="sd-vae-ft-mse diffusers folder (default: beside the model)")
    parser.add_argument("--image-encoder", default=None, help="sd-image-variations image_encoder folder")
    parser.add_argument("--taesdv", default=None, help="taesdv.pth")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def stream_config(args):
    from ..stream import StreamConfig

    return StreamConfig(levels=args.levels, frames_per_cohort=args.frames_per_cohort, steps=args.steps,
                        guidance=args.guidance, height=args.height, width=args.width, seed=args.seed,
                        decoder=args.decoder)


def load_models(args):
    import torch

    from ..loading import load_rain

    device = resolve_device(args.device)
    threads = getattr(args, "threads", None)
    if threads is None and device.type == "cpu":
        # Half the cores: torch's default (all of them) collapses when anything else runs beside it
        # (a tiny-model tick measured 161 ms with 1 thread and 6.5 s with 2 on a busy 2-core machine).
        threads = max(1, (os.cpu_count() or 2) // 2)
    if threads:
        torch.set_num_threads(threads)
    dtype = resolve_dtype(args.dtype, device)
    folder = resolve_model_folder(getattr(args, "model", None))
    models = load_rain(folder, vae=getattr(args, "vae", None), image_encoder=getattr(args, "image_encoder", None),
                       taesdv=getattr(args, "taesdv", None), device=device, dtype=dtype)
    return models, folder


# --------------------------------------------------------------------------- inputs


def pose_frames(args, height: int, width: int):
    """Yield pose images (H, W, 3) float in [0, 1] from a video, an image folder or POSE_KEYPOINT/OpenPose JSON."""
    import numpy as np

    from ..video import open_pose_source

    source = Path(args.poses)
    if source.suffix.lower() == ".json" or (source.is_dir() and any(source.glob("*.json"))
                                             and not any(source.glob("*.png"))):
        from ..pose import load_openpose_json, render_pose

        frames = load_openpose_json(source)
        for frame in frames:
            yield render_pose(frame, height, width).astype(np.float32) / 255
        return
    reader = open_pose_source(source, size=(height, width))
    try:
        for frame in reader:
            yield frame
    finally:
        close = getattr(reader, "close", None)
        if close:
            close()


def read_image(path: str, height: int, width: int):
    """Reference image as float (H, W, 3) in [0, 1]; alpha is composited on white."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--reference {path}: file not found")
    try:
        image = Image.open(file)
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"--reference {path}: not a readable image ({error}); use a PNG or JPEG") from None
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def run_stream_to_sink(stream, frames, sink, frames_per_cohort: int, limit: int | None, progress=None):
    """Push frames m at a time, write what comes out; Ctrl-C stops reading but still flushes what was pushed.

    Returns (pose frames read, interrupted).
    """
    import numpy as np

    batch, count, interrupted = [], 0, False

    def write(out):
        if out.shape[0]:
            sink.write(out.numpy())

    try:
        for frame in frames:
            batch.append(frame)
            count += 1
            if len(batch) == frames_per_cohort:
                write(stream.push(np.stack(batch)))
                batch = []
                if progress is not None:
                    progress.update(frames_per_cohort)
            if limit and count >= limit:
                break
    except KeyboardInterrupt:
        interrupted = True
    if batch:
        write(stream.push(np.stack(batch)))
    if count:
        write(stream.flush())
    return count, interrupted
