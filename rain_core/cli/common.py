"""Helpers shared by the `rain` subcommands: exit codes, errors, output, stream flags, model loading, inputs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..layout import builtin_model_dir, model_size, readme_layout_parts, resolve_model_folder

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


def add_stream_flags(parser: argparse.ArgumentParser, defaults: dict) -> None:
    group = parser.add_argument_group("stream settings")
    group.add_argument("--levels", type=int, default=defaults.get("levels", 4), help="p: noise levels (cohorts) in flight")
    group.add_argument("--frames-per-cohort", type=int, default=defaults.get("frames_per_cohort", 4),
                       help="m: frames sharing one noise level")
    group.add_argument("--steps", type=int, default=defaults.get("steps", 4), help="LCM steps per frame (multiple of --levels)")
    group.add_argument("--guidance", type=float, default=defaults.get("guidance", 3.5), help="LCM w-embedding value")
    size_help = "default: the model's own size (64 for the built-in tiny model, 512 for RAIN-v0.1)"
    group.add_argument("--height", type=positive_int, default=defaults.get("height"),
                       help=None if "height" in defaults else size_help)
    group.add_argument("--width", type=positive_int, default=defaults.get("width"),
                       help=None if "width" in defaults else size_help)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--noise", choices=["fresh", "shared"], default="fresh",
                       help="fresh: every frame its own noise (the method); shared: one noise for every frame, so "
                            "still parts stay still (~74%% less frame-to-frame error on the built-in model; not "
                            "in the paper)")
    group.add_argument("--decoder", choices=["auto", "taesdv", "vae"], default="auto",
                       help="auto: TAESDV when the model has it, else the full decoder")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (auto: cuda when available)")
    group.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    group.add_argument("--fps", type=positive_float, default=None,
                       help="output video fps (default: the input's when it has one, else 16)")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default on CPU: half the cores)")
    group.add_argument("--fast-path", choices=["auto", "eager", "compile", "graph"], default="auto",
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
                        guidance=args.guidance, height=args.height, width=args.width, seed=args.seed,
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
    # Each command encodes its reference once per stream: the reference UNet and image encoder are freed after
    # that (4.7 GB at full size in float32) and loaded again from their files if another reference comes.
    models = load_rain(folder, **model_parts(args, folder), device=device, dtype=dtype, release_reference=True)
    return models, folder


def memory_gib() -> dict:
    """This process's resident memory now and at its peak, in GiB (Linux /proc; elsewhere the peak from
    getrusage, or None)."""
    try:
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return {"rss_gib": int(fields["VmRSS"].split()[0]) / 2**20, "peak_rss_gib": int(fields["VmHWM"].split()[0]) / 2**20}
    except (OSError, KeyError, ValueError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return {"rss_gib": None, "peak_rss_gib": peak / (2**30 if sys.platform == "darwin" else 2**20)}


def model_folder_size(args) -> tuple[int, int]:
    """--height / --width, each defaulting to the model's own size (read from its folder, before loading)."""
    height, width = model_size(resolve_model_folder(getattr(args, "model", None)))
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
    from ..metrics import reference_problem

    problem = reference_problem(image)
    if problem:
        raise UsageError(f"--reference {path}: {problem}.")
    return image


POSE_CHECK_FRAMES = 8


def check_pose_frames(frames, source: str, enabled: bool = True):
    """Look at the first frames of a pose video or image folder before any compute: refuse camera footage given
    where rendered skeletons are expected (the output would be colour noise). Returns an iterator over all frames."""
    import itertools

    from ..metrics import dark_fraction, looks_like_pose_render

    frames = iter(frames)
    first = list(itertools.islice(frames, POSE_CHECK_FRAMES))
    if enabled and first and not looks_like_pose_render(first):
        raise UsageError(
            f"--poses {source}: these frames do not look like rendered skeletons ({dark_fraction(first):.0%} of the "
            "pixels are black; a DWPose/OpenPose render is ~95% black with thin coloured limbs). RAIN needs pose "
            "renders, not camera footage: for footage of a person use `rain live --source VIDEO --poses detector` "
            "(DWPose), or render the poses first (e.g. ComfyUI's DWPose preprocessor); pass --no-pose-check if this "
            "really is a render.")
    return itertools.chain(first, frames)


def partial_path(path: Path) -> Path:
    """Where --keep-partial puts an interrupted run's frames: anim.mp4 → anim.partial.mp4, frames → frames.partial."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def run_stream_to_sink(stream, frames, sink, frames_per_cohort: int, limit: int | None, progress=None,
                       flush_on_interrupt: bool = False, tick_seconds: list | None = None):
    """Push frames m at a time and write what comes out; at the end push the rest and flush.

    Ctrl-C stops reading. With `flush_on_interrupt` the frames already pushed are still flushed (the warm-up's
    p − 1 ticks at most), and a second Ctrl-C skips that flush; without it nothing more is computed. Returns
    (pose frames read, interrupted). `tick_seconds`, when given, receives (wall seconds, CPU seconds of this
    process) of every full push (one tick each: the first p − 1 are warm-up), not counting reading or writing
    frames; the CPU time is what the tick costs whatever else the machine runs.
    """
    import time

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
                started, cpu = time.perf_counter(), time.process_time()
                out = stream.push(np.stack(batch))
                if tick_seconds is not None:
                    tick_seconds.append((time.perf_counter() - started, time.process_time() - cpu))
                write(out)
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
