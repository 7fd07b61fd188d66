"""Helpers shared by the `rain` subcommands: exit codes, errors, output, stream flags, model loading, inputs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..layout import builtin_model_dir, readme_layout_parts, resolve_model_folder

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = ["EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "UsageError", "builtin_model_dir"]


class UsageError(ValueError):
    """Bad arguments or inputs detected by the command line itself."""


class Interrupted(Exception):
    """Ctrl-C stopped a run; `message` says what was (not) written. main() exits 130 with it."""


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (argparse turns the error into exit 2 with the flag's name)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, found {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {value}")
    return value


def apply_umask(path: Path) -> None:
    """Give an output the user's umask: temporary files are created 0600 and folders 0700 by tempfile."""
    if path is None:
        return
    mask = os.umask(0)
    os.umask(mask)
    path = Path(path)
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.iterdir():
            if child.is_file():
                os.chmod(child, 0o666 & ~mask)
    elif path.is_file():
        os.chmod(path, 0o666 & ~mask)


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


def add_stream_flags(parser: argparse.ArgumentParser, output: bool = True, exclude: tuple = ()) -> None:
    """The stream's settings as flags; every default is StreamConfig's own (the one home of the defaults).
    output: the command writes frames (adds --fps); exclude: flags a command defines its own way (`rain batch`'s
    --threads is per worker, its --device picks GPU or CPU workers)."""
    from ..stream.config import DECODERS, FAST_PATHS, NOISE_MODES, StreamConfig

    default = StreamConfig()
    group = parser.add_argument_group("stream settings")

    def add(flag, **kwargs):
        if flag[2:].replace("-", "_") not in exclude:
            group.add_argument(flag, **kwargs)

    add("--levels", type=positive_int, default=default.levels,
        help=f"p: noise levels (cohorts) in flight (default {default.levels})")
    add("--frames-per-cohort", type=positive_int, default=default.frames_per_cohort,
        help=f"m: frames sharing one noise level (default {default.frames_per_cohort})")
    add("--steps", type=positive_int, default=default.steps,
        help=f"LCM steps per frame, a multiple of --levels (default {default.steps})")
    add("--guidance", type=float, default=default.guidance,
        help=f"LCM w-embedding value (default {default.guidance})")
    size_help = "default: the model's own size (64 for the built-in tiny model, 512 for RAIN-v0.1)"
    add("--height", type=positive_int, default=None, help=size_help)
    add("--width", type=positive_int, default=None, help=size_help)
    add("--seed", type=int, default=default.seed)
    add("--noise", choices=NOISE_MODES, default=default.noise,
        help="fresh: every frame its own noise (the method); shared: one noise for every frame, so "
             "still parts stay still (~74%% less frame-to-frame error on the built-in model; not "
             "in the paper)")
    add("--decoder", choices=DECODERS, default=default.decoder,
        help="auto: TAESDV when the model has it, else the full decoder")
    add("--device", default="auto", help="cpu, cuda, cuda:1 … (auto: cuda when available)")
    add("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    if output:
        add("--fps", type=positive_float, default=None,
            help="output video fps (default: the input's when it has one, else 16)")
    add("--threads", type=int, default=None,
        help="CPU threads for torch (default on CPU: half the cores)")
    add("--fast-path", choices=FAST_PATHS, default=default.fast_path,
        help="auto: a CUDA graph on CUDA; on the CPU the compiled tick when it is saved, else eager "
             "while a background process compiles it (used as soon as it is ready; "
             "RAIN_BACKGROUND_COMPILE=0 turns that off); compile: wait for the compiled tick "
             "(a minute or more the first time, later starts load it in about a second)")


MODEL_HELP = "model folder, or 'tiny' / 'builtin' for the built-in 64 px model"


def add_model_flags(parser: argparse.ArgumentParser, required: bool = False, help: str | None = None) -> None:
    parser.add_argument("--model", required=required, default=None,
                        help=help or MODEL_HELP + " (default: the built-in model)")
    add_part_flags(parser, beside="the model")


def add_part_flags(parser: argparse.ArgumentParser, beside: str) -> None:
    """--vae, --image-encoder, --taesdv: the parts of the README layout that may sit outside a model folder."""
    parser.add_argument("--vae", default=None, help=f"sd-vae-ft-mse diffusers folder (default: beside {beside}, or "
                        "models/vae/sd-vae-ft-mse of the README layout)")
    parser.add_argument("--image-encoder", default=None, help="sd-image-variations image_encoder folder (default: "
                        f"beside {beside}, or models/clip_vision/sd-image-variations)")
    parser.add_argument("--taesdv", default=None, help=f"taesdv.pth (default: beside {beside}, or "
                        "models/vae_approx/taesdv.pth)")


def model_parts(args, folder: Path) -> dict:
    """vae / image_encoder / taesdv: the flags when given, else the README layout around the model folder."""
    found = readme_layout_parts(folder)
    return {part: getattr(args, part, None) or found.get(part) for part in ("vae", "image_encoder", "taesdv")}


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device):
    from ..stream.config import resolve_precision  # the one "auto" rule

    return resolve_precision(name, device)


def stream_config(args):
    from ..stream import StreamConfig

    return StreamConfig(levels=args.levels, frames_per_cohort=args.frames_per_cohort, steps=args.steps,
                        guidance=args.guidance, height=args.height or 0, width=args.width or 0, seed=args.seed,
                        decoder=args.decoder, fast_path=getattr(args, "fast_path", "auto"),
                        noise=getattr(args, "noise", "fresh"))


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
    models = load_rain(folder, **model_parts(args, folder), device=device, dtype=dtype)
    return models, folder


def model_folder_size(args) -> tuple[int, int]:
    """--height / --width, each defaulting to the model's own size (read from its folder, before loading)."""
    from ..loading import folder_frame_size

    height, width = folder_frame_size(resolve_model_folder(getattr(args, "model", None)))
    return args.height or height, args.width or width


# --------------------------------------------------------------------------- inputs


def pose_frames(args, height: int, width: int):
    """Yield pose images (H, W, 3) float in [0, 1] from a video, an image folder or POSE_KEYPOINT/OpenPose JSON,
    through the engine's one input path (`rain_core.inputs`): the stream fits them to its size as it does for the
    nodes' frames."""
    from ..inputs import pose_source_frames

    for frame in pose_source_frames(Path(args.poses), height, width):
        yield frame.numpy()


def read_image(path: str, height: int, width: int):
    """Reference image as float (H, W, 3) in [0, 1]; alpha is composited on white (`rain_core.inputs.read_image`)."""
    from ..inputs import InputError
    from ..inputs import read_image as read_reference

    try:
        return read_reference(path, "--reference")[0].numpy()
    except InputError as error:
        raise UsageError(str(error)) from None


def check_reference(image, path: str):
    """Refuse a reference that cannot be a character picture (1×1, blank): the output would ignore it."""
    from ..inputs import reference_problem

    problem = reference_problem(image)
    if problem:
        raise UsageError(f"--reference {path}: {problem}.")
    return image


def check_pose_frames(frames, source: str, enabled: bool = True):
    """Look at the first frames of a pose video or image folder before any compute (`inputs.check_pose_render`,
    the one check). Returns an iterator over all frames."""
    import itertools

    from ..inputs import POSE_CHECK_FRAMES, NotAPoseRender, check_pose_render

    frames = iter(frames)
    first = list(itertools.islice(frames, POSE_CHECK_FRAMES))
    if enabled and first:
        try:
            check_pose_render(first, f"--poses {source}")
        except NotAPoseRender as error:
            raise UsageError(str(error)) from None
    return itertools.chain(first, frames)


def partial_path(path: Path) -> Path:
    """Where --keep-partial puts an interrupted run's frames: anim.mp4 → anim.partial.mp4, frames → frames.partial."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def run_stream_to_sink(stream, frames, sink, frames_per_cohort: int, limit: int | None, progress=None,
                       flush_on_interrupt: bool = False):
    """Push frames m at a time and write what comes out; at the end push the rest and flush.

    Ctrl-C stops reading. With `flush_on_interrupt` the frames already pushed are still flushed (the warm-up's
    p − 1 ticks at most), and a second Ctrl-C skips that flush; without it nothing more is computed. Returns
    (pose frames read, interrupted).
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
    if interrupted and not flush_on_interrupt:
        return count, True
    try:
        if batch and not interrupted:
            write(stream.push(np.stack(batch)))
        if count:
            write(stream.flush())
    except KeyboardInterrupt:  # a second Ctrl-C (or the first, during the final flush): stop now
        interrupted = True
    return count, interrupted
