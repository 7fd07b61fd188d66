"""Helpers shared by the `rain` subcommands: exit codes, errors, output, stream flags, model loading, inputs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
from pathlib import Path

from ..loading.layout import builtin_model_dir, readme_layout_parts, resolve_model_folder

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130  # a signal: 128 + its number

__all__ = ["EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "UsageError", "builtin_model_dir"]


class UsageError(ValueError):
    """Bad arguments or inputs detected by the command line itself."""


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP stopped a run; the message says what was (not) written. main() exits 128 + the
    signal's number with it (130, 143, 129)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is (as Python raises KeyboardInterrupt for Ctrl-C), so every
    path that handles Ctrl-C (abort the temporary output, release the lock, skip or finish the flush) handles
    them too. `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = int(signum)


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def interrupt_signal(error: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (SIGINT for Ctrl-C itself)."""
    return getattr(error, "signum", signal.SIGINT)


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals():
    """While inside: SIGTERM and SIGHUP raise `Stopped`, so a service manager's stop or a closed terminal ends a
    command exactly as Ctrl-C does (without this, Python dies at once: no message, a temporary file left). A
    signal that was ignored when the command started (`nohup`) stays ignored. Only the main thread can set
    handlers; elsewhere (a command run from a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler == signal.SIG_IGN:
            continue
        previous[signum] = handler
        signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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


def add_output_flags(parser: argparse.ArgumentParser, required: bool = False, default: str | None = None,
                     what: str = "output") -> None:
    """--out and --overwrite-frames: the one description of what an output may be (`rain_core.io.outputs`)."""
    from ..io.outputs import kinds_help

    parser.add_argument("--out", required=required, default=default,
                        help=f"{what}: {kinds_help()}. Any other suffix is refused before anything runs; the "
                        "output is written beside under a hidden temporary name and renamed when complete"
                        + (f" (default: {default})" if default else ""))
    parser.add_argument("--overwrite-frames", action="store_true",
                        help="with a frame-folder --out: replace the frames of an earlier run there (a folder that "
                        "holds frame_NNNNNN.png files only; a folder holding anything else is never emptied)")


def claim_output(args, frames: int | None = None, height: int = 512, width: int = 512, flag: str = "--out"):
    """Check and lock `args.out` before any model loads (`rain_core.io.outputs.claim_output`): kind, folder,
    free space for about `frames` frames of height × width, no other writer. Use as `with claim_output(...)`."""
    from ..io import outputs

    kind = outputs.output_kind(args.out, flag)
    return outputs.claim_output(args.out, flag, overwrite_frames=getattr(args, "overwrite_frames", False),
                                estimate_bytes=outputs.estimate_bytes(kind, frames, height, width))


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
             "(`rain live`, a long-lived host, also compiles it in a background process that ends "
             "with it, and switches when it is ready; RAIN_BACKGROUND_COMPILE=1 lets any command do "
             "that, 0 none); compile: wait for the compiled tick (a minute or more the first time, "
             "later starts load it in about a second; `rain cache` shows the saved ones)")


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


def load_models(args, release_reference: bool = True):
    """The networks `args` name, on their device and dtype. `release_reference`: a command that encodes its reference
    once per stream frees the reference UNet and image encoder after that (4.7 GB at full size in float32); they are
    loaded again from their files if another reference comes. A process that encodes one reference after another
    (`rain batch`'s workers) keeps them."""
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
    models = load_rain(folder, **model_parts(args, folder), device=device, dtype=dtype,
                       release_reference=release_reference)
    return models, folder


def memory_gib() -> dict:
    """This process's resident memory now and at its peak, in GiB (Linux /proc; elsewhere the peak from
    getrusage, or None)."""
    from ..cpu import resident_memory

    memory = resident_memory()
    if memory is not None:
        return {"rss_gib": memory["rss"] / 2**30, "peak_rss_gib": memory["peak"] / 2**30}
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return {"rss_gib": None, "peak_rss_gib": peak / (2**30 if sys.platform == "darwin" else 2**20)}


def model_folder_size(args) -> tuple[int, int]:
    """--height / --width, each defaulting to the model's own size (read from its folder, before loading)."""
    from ..loading import folder_frame_size

    height, width = folder_frame_size(resolve_model_folder(getattr(args, "model", None)))
    return args.height or height, args.width or width


# --------------------------------------------------------------------------- inputs


def pose_frames(args, height: int, width: int):
    """Yield pose images (H, W, 3) float in [0, 1] from a video, an image folder or POSE_KEYPOINT/OpenPose JSON,
    through the engine's one input path (`rain_core.io.inputs`): the stream fits them to its size as it does for the
    nodes' frames."""
    from ..io.inputs import pose_source_frames

    for frame in pose_source_frames(Path(args.poses), height, width):
        yield frame.numpy()


def read_image(path: str, height: int, width: int):
    """Reference image as float (H, W, 3) in [0, 1]; alpha is composited on white (`rain_core.io.inputs.read_image`)."""
    from ..io.inputs import InputError
    from ..io.inputs import read_image as read_reference

    try:
        return read_reference(path, "--reference")[0].numpy()
    except InputError as error:
        raise UsageError(str(error)) from None


def check_reference(image, path: str):
    """Refuse a reference that cannot be a character picture (1×1, blank): the output would ignore it."""
    from ..io.inputs import reference_problem

    problem = reference_problem(image)
    if problem:
        raise UsageError(f"--reference {path}: {problem}.")
    return image


def check_pose_frames(frames, source: str, enabled: bool = True):
    """Look at the first frames of a pose video or image folder before any compute (`inputs.check_pose_render`,
    the one check). Returns an iterator over all frames."""
    import itertools

    from ..io.inputs import POSE_CHECK_FRAMES, NotAPoseRender, check_pose_render

    frames = iter(frames)
    first = list(itertools.islice(frames, POSE_CHECK_FRAMES))
    if enabled and first:
        try:
            check_pose_render(first, f"--poses {source}")
        except NotAPoseRender as error:
            raise UsageError(str(error)) from None
    return itertools.chain(first, frames)


def partial_path(path: Path) -> Path:
    """Where --keep-partial puts an interrupted run's frames: anim.mp4 → anim.partial.mp4, frames → frames.partial;
    when that exists (an earlier interrupted run), anim.partial-2.mp4 and so on: it never replaces anything."""
    path = Path(path)
    for number in range(1, 1000):
        tail = "" if number == 1 else f"-{number}"
        candidate = path.with_name(f"{path.stem}.partial{tail}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise UsageError(f"{path}: 999 partial outputs exist beside it; remove some")


def run_stream_to_sink(stream, frames, sink, limit: int | None, progress=None, flush_on_interrupt: bool = False,
                       tick_seconds: list | None = None):
    """Push frames a cohort at a time (`rain_core.stream.feed.push_frames`, THE push loop) and write what comes
    out; at the end flush.

    Ctrl-C (or SIGTERM / SIGHUP, see `stop_signals`) stops reading. With `flush_on_interrupt` the frames already
    pushed are still flushed (the warm-up's p − 1 ticks at most), and a second signal skips that flush; without
    it nothing more is computed. Returns (pose frames pushed, the signal that stopped the run or 0).
    `tick_seconds`, when given, receives (wall seconds, CPU seconds of this process) of every full push (one tick
    each, with the reading of its m pose frames; the first p − 1 are warm-up), not counting writing frames; the
    CPU time is what the tick costs whatever else the machine runs.
    """
    import itertools
    import time

    from ..stream.feed import push_frames

    count, interrupted = 0, 0

    def write(out):
        if out.shape[0]:
            sink.write(out.numpy())

    def clocks():
        return time.perf_counter(), time.process_time()

    try:
        started = clocks()
        for taken, out in push_frames(stream, itertools.islice(frames, limit) if limit else frames):
            if tick_seconds is not None and taken - count == stream.config.frames_per_cohort:
                now = clocks()
                tick_seconds.append((now[0] - started[0], now[1] - started[1]))
            write(out)
            if progress is not None:
                progress.update(taken - count)
            count = taken
            started = clocks()
    except KeyboardInterrupt as stop:  # a push is a transaction: the stream holds what was pushed before
        interrupted = interrupt_signal(stop)
    if interrupted and not flush_on_interrupt:
        return count, interrupted
    try:
        if count:
            write(stream.flush())
    except KeyboardInterrupt as stop:  # a second Ctrl-C (or the first, during the final flush): stop now
        interrupted = interrupted or interrupt_signal(stop)
    return count, interrupted
