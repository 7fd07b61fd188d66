"""Where one steady tick of the built-in model goes on the CPU. Prints figures, asserts nothing.

The shipped model (`rain_core/assets/tiny-rain`, 64 px, 4 levels × 4 frames, 4 steps) streams the example pose
video through `RainStream.push` exactly as the CLI and the nodes do. Once the window is full, every steady tick is
timed three ways, for each thread count (interleaved: one tick at 1 thread, one at 2, …, so both see the same load;
medians):

1. by stage: pose guider, UNet (split into resnets, spatial transformers — of which the reference self-attention —,
   motion modules, down/up-samplers, the rest), LCM step, decode, noise draw, the stream's own bookkeeping, plus
   the pose video's decode + letterbox and the float → uint8 conversion a video writer does per frame;
2. by aten op (torch.profiler, self CPU time), the op count per tick and how much of the tick is spent outside ops
   (Python, dispatch);
3. by Python function (cProfile, top entries by own time), with `--python`.

    nice -n 19 .venv/bin/python docs/cpu-speed/cpu_profile.py                 # 1 and 2 threads, 12 ticks each
    .venv/bin/python docs/cpu-speed/cpu_profile.py --threads 2 --ticks 6 --fast-path compile

A tool of the CPU-speed study (docs/cpu-speed.md); it reads the model and the inputs the way bench/cpu_live.py does.
"""

from __future__ import annotations  # noqa: I001  (rain_core before torch: see below)

import argparse
import collections
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import rain_core  # noqa: F401  (before torch: it sets the OpenMP wait policy, read once when torch loads)
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file is docs/cpu-speed/cpu_profile.py)
sys.path.insert(0, str(ROOT / "bench"))
from cpu_live import MODEL, load_inputs  # noqa: E402  (the bench's model and inputs)


def make_stream(models, size: int, fast_path: str, reference, poses):
    """A stream of the shipped operating point with a full window (the next push of m frames is a steady tick)."""
    from rain_core import RainStream, StreamConfig

    config = StreamConfig(levels=4, frames_per_cohort=4, steps=4, height=size, width=size, fast_path=fast_path)
    stream = RainStream(models, config)
    stream.set_reference(reference)
    stream.push(poses[: config.window])
    return stream


class StageTimer:
    """Wall time of named pieces of a tick, from forward hooks on modules and wrappers of the tick's stages."""

    def __init__(self):
        self.totals: collections.Counter = collections.Counter()
        self._starts: dict[int, list[float]] = collections.defaultdict(list)
        self.handles = []

    def hook_modules(self, modules, name: str):
        for module in modules:
            key = id(module)

            def pre(_module, _args, key=key):
                self._starts[key].append(time.perf_counter())

            def post(_module, _args, _output, key=key, name=name):
                self.totals[name] += time.perf_counter() - self._starts[key].pop()

            self.handles.append(module.register_forward_pre_hook(pre))
            self.handles.append(module.register_forward_hook(post))

    def wrap(self, owner, attribute: str, name: str):
        function = getattr(owner, attribute)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - started

        setattr(owner, attribute, timed)

    def take(self) -> dict[str, float]:
        totals, self.totals = dict(self.totals), collections.Counter()
        return totals


def instrument(stream, timer: StageTimer, hook_models: bool = True) -> None:
    """Hooks on the UNet's parts and wrappers around the tick's stages (timing only: the code run is unchanged)."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    from rain_core.models.motion import MotionModule

    tick = stream._tick()
    for stage, name in (("stage_guider", "pose guider + window in"), ("stage_step", "LCM step"),
                        ("stage_decode", "decode + window shift")):
        timer.wrap(tick, stage, name)
    timer.wrap(stream._tick_noise, "draw", "noise draw (CPU generators)")
    timer.wrap(stream, "_run_tick", "tick (whole)")
    if not hook_models:
        return
    unet = stream.models.denoising_unet
    kinds = {
        "unet: resnets": ResnetBlock2D,
        "unet: spatial transformers": Transformer2DModel,
        "unet: motion modules": MotionModule,
        "unet: down/up-samplers": (Downsample2D, Upsample2D),
    }
    for name, kind in kinds.items():
        timer.hook_modules([m for m in unet.modules() if isinstance(m, kind)], name)
    timer.hook_modules(list(unet.reference_layers.values()), "  of which reference self-attention (attn1)")
    timer.hook_modules([unet], "unet")


def colour_seconds(frames: torch.Tensor) -> float:
    """float [0, 1] frames → uint8 HWC, as a video writer does, per frame."""
    started = time.perf_counter()
    (frames * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return (time.perf_counter() - started) / max(1, frames.shape[0])


def stage_table(models, args, reference, poses, io_seconds) -> None:
    m = 4
    # One timer for every stream: the streams share the networks (and their hooks) and run one push at a time.
    streams, timer = {}, StageTimer()
    for threads in args.threads:
        torch.set_num_threads(threads)
        streams[threads] = make_stream(models, args.size, args.fast_path, reference, poses)
        streams[threads].push(poses[:m])  # first steady tick (builds and, for "compile", compiles): not timed
        # Module hooks would split a compiled UNet into pieces: a compiled stream is timed by stage only.
        eager = streams[threads].stats["fast_path"] == "eager"
        instrument(streams[threads], timer, hook_models=eager and threads == args.threads[0])
    timer.take()
    samples = {threads: collections.defaultdict(list) for threads in args.threads}
    for index in range(args.ticks):
        chunk = poses[(index * m) % poses.shape[0] :][:m]
        for threads in args.threads:
            torch.set_num_threads(threads)
            started = time.perf_counter()
            frames = streams[threads].push(chunk)
            wall = time.perf_counter() - started
            totals = timer.take()
            totals["push (whole call)"] = wall
            totals["float → uint8 (per tick)"] = colour_seconds(frames) * m
            for name, seconds in totals.items():
                samples[threads][name].append(seconds)
    names = ["push (whole call)", "tick (whole)", "pose guider + window in", "unet", "unet: resnets",
             "unet: spatial transformers", "  of which reference self-attention (attn1)", "unet: motion modules",
             "unet: down/up-samplers", "unet: rest (conv_in/out, norms, time embedding, layout)", "LCM step",
             "decode + window shift", "noise draw (CPU generators)", "stream bookkeeping (push − tick)",
             "float → uint8 (per tick)", "pose video decode + letterbox (per tick)"]
    print(f"\nsteady tick by stage, ms (median of {args.ticks} interleaved ticks; fast_path={args.fast_path!r})")
    print(f"{'stage':<58}" + "".join(f"{f'{t} thread' + ('s' if t > 1 else ''):>14}" for t in args.threads))
    for name in names:
        row = f"{name:<58}"
        for threads in args.threads:
            s = samples[threads]
            if name == "unet: rest (conv_in/out, norms, time embedding, layout)":
                parts = [a - sum(x[i] for x in (s["unet: resnets"], s["unet: spatial transformers"],
                                                s["unet: motion modules"], s["unet: down/up-samplers"]))
                         for i, a in enumerate(s["unet"])]
            elif name == "stream bookkeeping (push − tick)":
                parts = [a - b for a, b in zip(s["push (whole call)"], s["tick (whole)"])]
            elif name == "pose video decode + letterbox (per tick)":
                parts = [io_seconds * m]
            else:
                parts = s.get(name, [])
            row += f"{1000 * statistics.median(parts):>14.2f}" if parts else f"{'—':>14}"  # compiled: no hooks
        print(row)
    for threads in args.threads:
        tick = statistics.median(samples[threads]["push (whole call)"])
        print(f"{threads} thread{'s' if threads > 1 else ''}: {1000 * tick:.1f} ms per tick = {m / tick:.1f} fps")
    for handle in timer.handles:
        handle.remove()


def op_table(models, args, reference, poses) -> None:
    from torch.profiler import ProfilerActivity, profile

    m = 4
    for threads in args.threads:
        torch.set_num_threads(threads)
        stream = make_stream(models, args.size, args.fast_path, reference, poses)
        stream.push(poses[:m])
        ticks = max(2, args.ticks // 3)
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for index in range(ticks):
                stream.push(poses[(index * m) % poses.shape[0] :][:m])
        wall = (time.perf_counter() - started) / ticks
        events = prof.key_averages()
        # aten ops, and what a compiled tick calls instead: pre-packed oneDNN/MKL ops, inductor's fused C++ kernels
        aten = [e for e in events if e.key.startswith(("aten::", "mkldnn::", "mkl::", "onednn::", "cpp_fused", "graph_"))]
        total_self = sum(e.self_cpu_time_total for e in aten) / 1e6 / ticks
        calls = sum(e.count for e in aten) / ticks
        print(f"\nby op, {threads} thread{'s' if threads > 1 else ''}: {ticks} ticks, {1000 * wall:.1f} ms per tick "
              f"under the profiler; op self time {1000 * total_self:.1f} ms per tick in {calls:.0f} op calls "
              f"({100 * (1 - total_self / wall):.0f} % of the tick outside these ops: Python, dispatch, profiler)")
        if stream.stats["fast_path"] == "compile":
            print("(the compiled steady UNet call runs inside its AOTInductor package: its kernels are not listed here, "
                  "and its time counts as outside these ops)")
        print(f"{'op':<56}{'ms/tick':>10}{'%':>7}{'calls/tick':>12}")
        for event in sorted(aten, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            ms = event.self_cpu_time_total / 1000 / ticks
            print(f"{event.key:<56}{ms:>10.2f}{100 * ms / 1000 / wall:>7.1f}{event.count / ticks:>12.0f}")


def python_table(models, args, reference, poses) -> None:
    m = 4
    torch.set_num_threads(args.threads[0])
    stream = make_stream(models, args.size, args.fast_path, reference, poses)
    stream.push(poses[:m])
    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(max(2, args.ticks // 3)):
        stream.push(poses[(index * m) % poses.shape[0] :][:m])
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
    print(f"\nby Python function (cProfile, {args.threads[0]} thread(s), own time):")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--ticks", type=int, default=12, help="timed steady ticks per thread count")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fast-path", default="eager",
                        help="StreamConfig.fast_path of the profiled stream (auto: the compiled tick where its package is "
                        "already cached, else eager; compile: build it if needed)")
    parser.add_argument("--top", type=int, default=25, help="rows of the op and Python tables")
    parser.add_argument("--no-ops", action="store_true", help="skip the torch.profiler table")
    parser.add_argument("--python", action="store_true", help="add the cProfile table")
    args = parser.parse_args(argv)

    from rain_core import load_rain

    models = load_rain(MODEL)
    reference, poses, io_seconds = load_inputs(args.size, 64)
    import os

    print(f"tiny-rain, {args.size} px, 4 levels × 4 frames, 4 steps; torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    stage_table(models, args, reference, poses, io_seconds)
    if not args.no_ops:
        op_table(models, args, reference, poses)
    if args.python:
        python_table(models, args, reference, poses)


if __name__ == "__main__":
    main()
