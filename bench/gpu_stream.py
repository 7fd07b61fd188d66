"""Real-time RAIN on one GPU: check the fast path against eager fp32, then time every optimisation, in one run.

Builds the full-size networks (`RainModelConfig.sd15()`, every parameter random, zero-initialised ones too,
so no path is blind) on the device, and in sections, each under a time budget and each writing what it has
to JSON before the next starts:

  environment  card, versions, optional packages
  ceiling      bf16 / fp16 / tf32 / fp32 matmul TFLOP/s and copy GB/s measured here (the "achieved" reference)
  build        random full-size networks, the reference pass (reference UNet once)
  cost         FLOPs per tick (per stage; reference K/V cached and recomputed), bytes, host syncs in a tick
  engine       RainStream.push, eager (fast_path="off") and its own fast path ("auto": static tick + CUDA graph on
               CUDA; "static" elsewhere), fp32 and half, frames compared; the static tick checked against the eager tick
  check        optimised tick (half, channels_last, CUDA graph) vs eager fp32 tick: relative error, 1 and 8 ticks
  rows         eager fp32 → SDPA → reference K/V cache → tf32 → fused LCM step → bf16/fp16 → channels_last →
               CUDA graph of the whole tick; each: fps, ms per tick split guider/UNet/step/decode, latency at
               30 fps input, peak memory, TFLOP/s against the measured ceiling
  memory       the working set once the reference is fused (reference UNet and fp32 master freed)
  compile      torch.compile of the UNet, with and without the CUDA graph; TensorRT only if importable
  authors      (--authors PATH) the authors' UNet3D with random weights on the same card, for a ratio

GPU timing uses CUDA events and never reads a device value inside a timed region. Prints a table last;
figures go to $OUT/gpu_stream.json (default ./out). On CPU, `--tiny` runs every section on a tiny model in
well under a minute (that is how the script is tested without a GPU).

    python bench/gpu_stream.py --out $OUT --budget-s 540          # GPU machine, one call
    .venv/bin/python bench/gpu_stream.py --tiny --out /tmp/gs       # CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout (no pip install)

import torch  # noqa: E402

try:  # the networks are built from diffusers blocks; a bare GPU image may lack it
    import diffusers  # noqa: F401, E402
except ImportError as error:  # pragma: no cover - depends on the machine
    sys.exit(
        f"gpu_stream: cannot import diffusers ({error}). Install it first, e.g. from wheels carried with the call: "
        "python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site"
    )

from rain_core.accel import (  # noqa: E402
    FastPath,
    count_flops,
    latency_seconds,
    parameter_bytes,
    to_channels_last,
    trace_ops,
)
from rain_core.models import RainModelConfig, RainModels  # noqa: E402
from rain_core.models.config import ClipConfig  # noqa: E402
from rain_core.models.testing import randomize_parameters  # noqa: E402
from rain_core.scheduler import LCMStepper, ladder  # noqa: E402
from rain_core.stream import RainStream, SeededNoise, StreamConfig, Tick, TickNoise  # noqa: E402

GIB = 1024**3
SD_VAE = {  # sd-vae-ft-mse's AutoencoderKL config (random weights here; only its shape matters)
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
# CLIP runs once per reference, never in a tick: a small random tower with the real 768-d projection will do
SMALL_CLIP = ClipConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
)


class SectionTimeout(Exception):
    pass


# ---------------------------------------------------------------------- bookkeeping


class Run:
    """Results, time budget and the JSON file, updated after every section."""

    def __init__(self, args):
        self.args = args
        self.started = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "gpu_stream.json"
        self.results: dict = {"sections": {}, "errors": [], "rows": []}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.results, indent=1, default=_jsonable))
        os.replace(temporary, self.path)

    def section(self, name: str, work, needs_s: float = 5.0, limit_s: float | None = None) -> bool:
        """Run work() if `needs_s` seconds of budget are left; stop it after `limit_s` (or what is left);
        record status, seconds and any error; save the JSON either way. True when it finished."""
        record = {"status": "skipped", "seconds": 0.0}
        self.results["sections"][name] = record
        left = self.left()
        if left < needs_s:
            record["reason"] = f"{left:.0f} s of budget left, needs {needs_s:.0f} s"
            print(f"[{name}] skipped: {record['reason']}", flush=True)
            self.save()
            return False
        limit = max(1.0, min(left - 2.0, limit_s if limit_s is not None else left - 2.0))
        print(f"[{name}] (budget {limit:.0f} s, {left:.0f} s left)", flush=True)
        start = time.perf_counter()
        alarm = _arm_alarm(limit)
        try:
            work()
            record["status"] = "ok"
        except Exception as error:  # noqa: BLE001 - a failed section must not stop the others
            record["status"] = "timeout" if isinstance(error, SectionTimeout) else "error"
            record["error"] = f"{type(error).__name__}: {error}"
            self.results["errors"].append({"section": name, "error": record["error"], "trace": traceback.format_exc()})
            print(f"[{name}] {record['status']}: {record['error']}", flush=True)
            traceback.print_exc()
        finally:
            _disarm_alarm(alarm)
            record["seconds"] = round(time.perf_counter() - start, 2)
            self.save()
        return record["status"] == "ok"


def _raise_timeout(signum, frame):
    raise SectionTimeout("section ran past its time budget")


def _arm_alarm(seconds: float):
    if not hasattr(signal, "setitimer"):
        return None
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return previous


def _disarm_alarm(previous) -> None:
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
        if previous is not None:
            signal.signal(signal.SIGALRM, previous)


def _jsonable(value):
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


# ---------------------------------------------------------------------- device helpers


class Clock:
    """Marks on the device timeline (CUDA events) or the host clock (CPU); read only after `finish()`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def finish(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.double(), reference.double()
    return ((ours - reference).norm() / reference.norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------------- sizes


def model_config(args) -> RainModelConfig:
    if args.tiny:
        return RainModelConfig.tiny(
            block_out_channels=(16, 32),
            attention_heads=4,
            norm_num_groups=8,
            cross_attention_dim=32,
            cond_proj_dim=32,
            taesdv_channels=8,
        )
    config = RainModelConfig.sd15()
    config.vae = dict(SD_VAE)
    config.clip = SMALL_CLIP
    config.validate()
    return config


def stream_config(args) -> StreamConfig:
    size = 16 if args.tiny else args.size
    return StreamConfig(
        levels=args.levels,
        frames_per_cohort=args.frames_per_cohort,
        steps=args.steps,
        guidance=3.5,
        height=size,
        width=size,
        decoder="taesdv",
    )


# ---------------------------------------------------------------------- sections


def section_environment(run: Run, device: torch.device) -> None:
    import importlib.util

    info = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "diffusers": diffusers.__version__,
        "cpu_threads": torch.get_num_threads(),
        "optional": {
            name: importlib.util.find_spec(name) is not None
            for name in ("triton", "torch_tensorrt", "tensorrt", "xformers")
        },
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / GIB, 1),
            bf16=torch.cuda.is_bf16_supported(),
            flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
        )
    else:
        info["name"] = platform.processor() or platform.machine()
    run.results["environment"] = info
    print(f"  {info.get('name')} | torch {info['torch']} | CUDA {info['cuda']} | diffusers {info['diffusers']}")


def section_ceiling(run: Run, device: torch.device, tiny: bool) -> None:
    """Matmul TFLOP/s per precision and device copy GB/s, each the median of timed repeats after warm-up."""
    clock = Clock(device)
    ceilings = {}
    n_big = 512 if tiny or device.type != "cuda" else 8192
    n_f32 = 256 if tiny or device.type != "cuda" else 4096
    cases = [("bf16", torch.bfloat16, n_big, False), ("fp16", torch.float16, n_big, False)]
    cases += [("tf32", torch.float32, n_f32, True), ("fp32", torch.float32, n_f32, False)]
    if device.type != "cuda":
        cases = [("fp32", torch.float32, n_f32, False), ("bf16", torch.bfloat16, n_f32, False)]
    for label, dtype, n, tf32 in cases:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            for _ in range(3):
                a @ b
            marks = []
            for _ in range(10):
                start = clock.mark()
                a @ b
                marks.append((start, clock.mark()))
            clock.finish()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        ms = statistics.median(clock.ms(s, e) for s, e in marks)
        ceilings[f"matmul_{label}_tflops"] = 2 * n**3 / (ms / 1000) / 1e12
        ceilings[f"matmul_{label}_n"] = n
        del a, b
    numel = 1 << 28 if device.type == "cuda" and not tiny else 1 << 22  # 1 GiB of fp32 on a GPU
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    marks = []
    for _ in range(10):
        start = clock.mark()
        dst.copy_(src)
        marks.append((start, clock.mark()))
    clock.finish()
    ms = statistics.median(clock.ms(s, e) for s, e in marks)
    ceilings["copy_gbps_read_plus_write"] = 2 * src.numel() * 4 / (ms / 1000) / 1e9
    del src, dst
    free_memory(device)
    run.results["ceiling"] = ceilings
    for key, value in ceilings.items():
        if not key.endswith("_n"):
            print(f"  {key:32s} {value:10.1f}")


def build_master(run: Run, args, device: torch.device):
    """The fp32 networks with random weights on the device, and a reference (random image through CLIP, VAE
    encoder and reference UNet, as `RainStream.set_reference` does)."""
    config = model_config(args)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.device(device):
        models = RainModels.build(config)
    randomize_parameters(models, args.seed).eval()
    synchronize(device)
    counts = {
        name: sum(p.numel() for p in getattr(models, name).parameters())
        for name in ("reference_unet", "denoising_unet", "pose_guider", "fast_decoder", "codec")
    }
    run.results["build"] = {
        "config": "tiny" if args.tiny else "sd15",
        "parameters_millions": {k: round(v / 1e6, 2) for k, v in counts.items()},
        "build_seconds": round(time.perf_counter() - start, 2),
        "stream": stream_config(args).to_dict(),
    }
    print(f"  parameters (M): {run.results['build']['parameters_millions']}")
    return models


def make_reference(models, stream_cfg: StreamConfig, seed: int):
    """(clip_tokens, ReferenceCache) of a random reference image, through the models' own encoders."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, stream_cfg.height, stream_cfg.width, 3, generator=generator)
    with torch.no_grad():
        clip_tokens = models.image_encoder.encode(image.to(models.device, models.dtype))
        latent = models.codec.encode(image.permute(0, 3, 1, 2).to(models.device, models.dtype))
        cache = models.reference_unet(latent, clip_tokens)
    return clip_tokens, cache, image[0]


def random_poses(stream_cfg: StreamConfig, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, stream_cfg.height, stream_cfg.width, 3, generator=generator)


def warm_tick_state(tick: Tick, seed: int) -> None:
    """Fill the window with a plausible mid-stream state (random latents/features, zero decoder memory)."""
    generator = torch.Generator().manual_seed(seed)
    tick.load_state(
        torch.randn(tick.latents.shape, generator=generator).to(tick.device, tick.dtype),
        (0.5 * torch.randn(tick.pose_features.shape, generator=generator)).to(tick.device, tick.dtype),
        None,
    )


def given_noise(tick: Tick, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(tick.initial_noise.shape, generator=generator),
        torch.randn(tick.step_noise.shape, generator=generator),
    )


def section_cost(run: Run, master, stream_cfg: StreamConfig, clip_tokens, reference, device) -> None:
    """FLOPs per tick and per stage (eager fp32 tick), bytes, and the host syncs of one static tick."""
    cost = {}
    for cached in (True, False):
        tick = Tick(
            master, stream_cfg, clip_tokens, reference, FastPath(reference_kv_cache=cached), noise="device"
        )
        warm_tick_state(tick, 1)
        with torch.no_grad():
            tick.run()  # fills the reference K/V cache outside the count
            per_stage = {}
            for name, fn in tick.stage_functions().items():
                _, per_stage[name] = count_flops(fn)
        key = "kv_cached" if cached else "kv_recomputed"
        cost[f"flops_per_tick_{key}"] = sum(per_stage.values())
        cost[f"flops_per_stage_{key}"] = per_stage
        if cached:
            with torch.no_grad():
                _, trace = trace_ops(tick.run)
            cost["aten_ops_per_tick"] = len(trace.ops)
            cost["host_syncs_per_tick"] = len(trace.syncs)
            cost["host_sync_sites"] = sorted({where for _, where in trace.syncs})
            cost["bytes_read_unfused_fp32"] = trace.bytes_read
            cost["bytes_written_unfused_fp32"] = trace.bytes_written
        del tick
    weights = parameter_bytes(master.denoising_unet, master.pose_guider, master.fast_decoder)
    cost["weight_bytes_fp32"] = weights
    cost["weight_bytes_half"] = weights // 2
    cost["frames_per_tick"] = stream_cfg.frames_per_cohort
    cost["flops_per_output_frame"] = cost["flops_per_tick_kv_cached"] / stream_cfg.frames_per_cohort
    free_memory(device)
    run.results["cost"] = cost
    T = 1e12
    print(
        f"  {cost['flops_per_tick_kv_cached'] / T:.2f} TFLOP per tick with the reference K/V cached "
        f"({cost['flops_per_tick_kv_recomputed'] / T:.2f} recomputed), "
        f"{cost['flops_per_output_frame'] / T:.2f} TFLOP per output frame"
    )
    print(
        f"  stages (TFLOP): { {k: round(v / T, 3) for k, v in cost['flops_per_stage_kv_cached'].items()} }; "
        f"{cost['aten_ops_per_tick']} aten ops, {cost['host_syncs_per_tick']} host syncs per static tick; "
        f"weights {weights / GIB:.2f} GiB fp32; unfused traffic {cost['bytes_read_unfused_fp32'] / GIB:.1f} GiB read"
    )


def section_engine(run: Run, master, half, stream_cfg: StreamConfig, args, device) -> None:
    """RainStream.push, eager and through its own fast path, fp32 and half: ms per tick from a warm stream and the
    fast stream's frames against the eager one's; then the static tick on the eager stream's own state and noise
    must give that stream's next frames."""
    engine = {}
    poses = random_poses(stream_cfg, stream_cfg.window + stream_cfg.frames_per_cohort * (args.engine_ticks + 1), 7)
    m = stream_cfg.frames_per_cohort
    # What the stream picks by itself on CUDA; forced on elsewhere so that the --tiny CPU run covers the same code.
    fast_path = "auto" if device.type == "cuda" else "graph"
    for label, models in (("fp32", master), ("half", half)):
        if models is None or (label == "half" and device.type != "cuda"):
            engine[f"{label}_skipped"] = "no half-precision networks" if models is None else "CPU: fp32 only"
            continue
        pushed = {}
        for path, key in (("eager", label), (fast_path, f"{label}_fast")):
            stream = RainStream(models, dataclasses.replace(stream_cfg, fast_path=path))
            stream.set_reference(random_poses(stream_cfg, 1, args.seed)[0])
            stream.push(poses[: stream_cfg.window])  # warm-up: the window fills, the first cohort leaves
            times, frames = [], []
            for i in range(args.engine_ticks):
                start = time.perf_counter()
                frames.append(stream.push(poses[stream_cfg.window + i * m : stream_cfg.window + (i + 1) * m]))
                times.append((time.perf_counter() - start) * 1000)
            pushed[path] = torch.cat(frames)
            engine[f"{key}_ms_per_tick"] = statistics.median(times)
            engine[f"{key}_fps"] = m / (statistics.median(times) / 1000)
            engine[f"{key}_dtype"] = models.dtype
            print(
                f"  RainStream.push {label} fast_path={path}: {statistics.median(times):.1f} ms per tick, "
                f"{engine[f'{key}_fps']:.1f} fps"
            )
            if path != "eager":
                stats = stream.stats
                engine[f"{key}_path"] = stats["fast_path"]
                engine[f"{key}_graph_ticks"] = stats["graph_ticks"]
                engine[f"{key}_stats_ms_per_tick"] = stats["ms_per_tick"]  # CUDA events on CUDA
                engine[f"{key}_vs_eager_relative_error"] = relative_error(pushed[path], pushed["eager"])
                print(f"  fast vs eager stream ({label}): frames rel. error {engine[f'{key}_vs_eager_relative_error']}")
            elif label == "fp32":
                engine["static_vs_stream_relative_error"] = _static_matches_stream(stream, models, stream_cfg, poses)
                print(
                    f"  static tick vs RainStream tick (fp32): rel. error {engine['static_vs_stream_relative_error']}"
                )
            del stream
            free_memory(device)
    run.results["engine"] = engine


def _static_matches_stream(stream: RainStream, models, stream_cfg: StreamConfig, poses) -> dict:
    """One more stream tick, and the tick driven alone on the same state, poses and noise: relative errors."""
    state = stream.state_dict()
    meta, tensors = state["meta"], state["tensors"]
    m = stream_cfg.frames_per_cohort
    latents = tensors["window_latents"]
    assembly = TickNoise(
        ladder(stream_cfg.levels, stream_cfg.steps).tolist(),
        LCMStepper(stream_cfg.steps).step_length,
        m,
        (latents.shape[1], *latents.shape[3:]),
    )
    cohorts = [*meta["cohorts"], meta["next_cohort"]]
    initial, step_noise = assembly.draw(SeededNoise(stream.config.seed), cohorts, 0, True)
    memory = [tensors[f"decoder_memory.{i}"] for i in range(sum(k.startswith("decoder_memory.") for k in tensors))]
    new_poses = poses[-m:]
    expected = stream.push(new_poses)
    expected_latents = stream.state_dict()["tensors"]["window_latents"]
    reference = stream._reference  # noqa: SLF001 - same objects the stream used; nothing is changed
    tick = Tick(models, stream_cfg, reference["clip_tokens"], reference["cache"], FastPath())
    tick.load_state(latents, tensors["window_pose_features"], memory or None)
    tick.set_inputs(new_poses, initial, step_noise)
    frames = tick.run().cpu()
    return {"frames": relative_error(frames, expected), "latents": relative_error(tick.latents.cpu(), expected_latents)}


def half_copy(master, dtype):
    models = copy.deepcopy(master).to(dtype)
    return models


def section_check(
    run: Run, master, half, stream_cfg, clip_tokens, reference, device, fast: FastPath, check_ticks: int
) -> None:
    """The optimised tick vs the eager fp32 tick from the same state and noise: frames and window latents after
    the first tick and after `check_ticks` ticks (drift)."""
    ticks = {}
    for label, models, options in (("fp32", master, FastPath()), ("fast", half, fast)):
        tick = Tick(models, stream_cfg, clip_tokens, reference, options)
        warm_tick_state(tick, 3)
        ticks[label] = tick
    ticks["fast"].load_state(ticks["fp32"].latents, ticks["fp32"].pose_features, None)
    parts = (half.denoising_unet, half.pose_guider, half.fast_decoder)
    if fast.channels_last:
        for part in parts:
            to_channels_last(part)
    try:
        errors = _compare_ticks(ticks, stream_cfg, check_ticks)
    finally:
        for part in parts:
            part.to(memory_format=torch.contiguous_format)
    run.results["check"] = {"fast_path": fast, "relative_error": errors}
    print(f"  fast path {fast.dtype} vs eager fp32: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    del ticks
    free_memory(device)


def _compare_ticks(ticks: dict, stream_cfg, check_ticks: int) -> dict:
    ticks["fast"].capture()
    count = check_ticks
    poses = random_poses(stream_cfg, count * stream_cfg.frames_per_cohort, 11)
    errors = {}
    m = stream_cfg.frames_per_cohort
    for i in range(count):
        outputs = {}
        initial, step_noise = given_noise(ticks["fp32"], 100 + i)
        for label, tick in ticks.items():
            tick.set_inputs(poses[i * m : (i + 1) * m], initial, step_noise)
            outputs[label] = tick.run().clone()
        if i in (0, count - 1):
            errors[f"frames_tick{i + 1}"] = relative_error(outputs["fast"], outputs["fp32"])
            errors[f"latents_tick{i + 1}"] = relative_error(ticks["fast"].latents, ticks["fp32"].latents)
            errors[f"frames_max_abs_tick{i + 1}"] = (outputs["fast"] - outputs["fp32"]).abs().max().item()
    return errors


ROWS = [
    # id, label, dtype key, FastPath changes, needs CUDA (skipped elsewhere)
    (
        "eager_fp32_math",
        "eager fp32, math attention, ref K/V recomputed, LCMStepper",
        "fp32",
        dict(attention="math", reference_kv_cache=False, fused_step=False),
        False,
    ),
    ("sdpa", "+ SDPA (PyTorch picks the kernel)", "fp32", dict(reference_kv_cache=False, fused_step=False), False),
    ("kv_cache", "+ reference K/V cache", "fp32", dict(fused_step=False), False),
    ("tf32", "+ tf32 matmuls/convs", "fp32", dict(fused_step=False, tf32=True), True),
    ("fused_step", "+ fused per-frame LCM step", "fp32", dict(tf32=True), False),
    ("bf16", "bf16 (flash attention via SDPA)", "bf16", dict(), False),
    ("bf16_flash_forced", "bf16, flash attention forced", "bf16", dict(attention="flash"), True),
    ("fp16", "fp16", "fp16", dict(), True),
    ("bf16_cl", "bf16 + channels_last", "bf16", dict(channels_last=True), False),
    ("bf16_graph", "bf16 + CUDA graph of the whole tick", "bf16", dict(cuda_graph=True), True),
    ("bf16_cl_graph", "bf16 + channels_last + CUDA graph", "bf16", dict(channels_last=True, cuda_graph=True), True),
    ("fp16_cl_graph", "fp16 + channels_last + CUDA graph", "fp16", dict(channels_last=True, cuda_graph=True), True),
]
# off CUDA (the --tiny smoke run) only these run: every code path once, without slow CPU half-precision repeats
CPU_ROWS = {"eager_fp32_math", "sdpa", "kv_cache", "fused_step", "bf16_cl", "bf16_compile"}
COMPILE_ROWS = [
    ("bf16_compile", "bf16 + torch.compile UNet", "bf16", dict(compile="default"), False),
    (
        "bf16_compile_graph",
        "bf16 + torch.compile UNet + CUDA graph",
        "bf16",
        dict(compile="default", cuda_graph=True),
        True,
    ),
    (
        "bf16_cl_compile_graph",
        "bf16 + channels_last + compile + CUDA graph",
        "bf16",
        dict(channels_last=True, compile="default", cuda_graph=True),
        True,
    ),
]


def time_row(run: Run, row, models, stream_cfg, clip_tokens, reference, device, args) -> dict:
    """Build the tick for one configuration, time whole ticks and then each stage; memory and throughput."""
    row_id, label, _, changes, _ = row
    fast = FastPath(dtype=models.dtype, **changes)
    result = {"id": row_id, "label": label, "dtype": models.dtype, "fast_path": fast}
    clock = Clock(device)
    free_memory(device)
    if fast.channels_last:
        for module in (models.denoising_unet, models.pose_guider, models.fast_decoder):
            to_channels_last(module)
    try:
        before = allocated(device)
        reset_peak(device)
        tick = Tick(models, stream_cfg, clip_tokens, reference, fast, noise="device")
        warm_tick_state(tick, 5)
        setup = time.perf_counter()
        if fast.compile:
            tick.compile_unet(fast.compile, backend="inductor" if device.type == "cuda" else args.cpu_compile_backend)
        for _ in range(args.warmup):  # eager warm-up: kernels chosen, K/V cached, compile done
            tick.run()
        synchronize(device)
        if fast.cuda_graph:
            tick.capture(split=True)
        result["setup_seconds"] = round(time.perf_counter() - setup, 2)
        marks, wall = [], time.perf_counter()
        for i in range(args.ticks):
            start = clock.mark()
            tick.run()
            marks.append((start, clock.mark()))
            if i >= 2 and time.perf_counter() - wall > args.row_cap_s:  # host-side only: no device read
                break
        clock.finish()
        per_tick = [clock.ms(s, e) for s, e in marks]
        stage_marks = []
        for _ in range(min(len(per_tick), args.split_ticks)):
            points = [clock.mark()]
            for name in Tick.STAGES:
                tick.run_stage(name)
                points.append(clock.mark())
            stage_marks.append(points)
        clock.finish()
        stages = {
            name: statistics.median(clock.ms(p[i], p[i + 1]) for p in stage_marks)
            for i, name in enumerate(Tick.STAGES)
        }
        weights = parameter_bytes(models.denoising_unet, models.pose_guider, models.fast_decoder)
        ms = statistics.median(per_tick)
        cost = run.results.get("cost", {})
        flops = cost.get("flops_per_tick_kv_cached" if fast.reference_kv_cache else "flops_per_tick_kv_recomputed")
        ceiling = run.results.get("ceiling", {}).get("matmul_bf16_tflops")
        m = stream_cfg.frames_per_cohort
        result.update(
            ticks_timed=len(per_tick),
            ms_per_tick=ms,
            ms_per_tick_min=min(per_tick),
            ms_per_tick_mean=statistics.fmean(per_tick),
            fps=m / (ms / 1000),
            stage_ms=stages,
            latency_30fps_s=latency_seconds(stream_cfg.levels, m, 30.0, ms / 1000),
            peak_gib=(peak(device) - before + weights) / GIB if device.type == "cuda" else None,
            tflops=flops / (ms / 1000) / 1e12 if flops else None,
        )
        if result["tflops"] and ceiling:
            result["fraction_of_bf16_ceiling"] = result["tflops"] / ceiling
        print(
            f"  {row_id:24s} {ms:9.2f} ms/tick {result['fps']:8.1f} fps  stages "
            + " ".join(f"{k} {v:.1f}" for k, v in stages.items())
            + (f"  peak {result['peak_gib']:.2f} GiB" if result["peak_gib"] is not None else "")
            + (f"  {result['tflops']:.1f} TFLOP/s" if result["tflops"] else ""),
            flush=True,
        )
        del tick
    finally:
        if fast.channels_last:
            for module in (models.denoising_unet, models.pose_guider, models.fast_decoder):
                module.to(memory_format=torch.contiguous_format)
        free_memory(device)
    return result


def section_rows(run: Run, rows, variants: dict, stream_cfg, clip_tokens, reference, device, args) -> None:
    for row in rows:
        row_id, label, dtype_key, _, cuda_only = row
        if args.rows and row_id not in args.rows:
            continue
        if device.type != "cuda" and (cuda_only or row_id not in CPU_ROWS):
            reason = "needs CUDA" if cuda_only else "GPU row (CPU runs only a representative few)"
            run.results["rows"].append({"id": row_id, "label": label, "skipped": reason})
            continue
        models = variants.get(dtype_key)
        if models is None:
            run.results["rows"].append({"id": row_id, "label": label, "skipped": f"no {dtype_key} models"})
            continue
        if run.left() < args.row_min_s:
            run.results["rows"].append({"id": row_id, "label": label, "skipped": "out of budget"})
            continue
        try:
            run.results["rows"].append(time_row(run, row, models, stream_cfg, clip_tokens, reference, device, args))
        except SectionTimeout:
            raise
        except Exception as error:  # noqa: BLE001 - one failing optimisation must not hide the others
            message = f"{type(error).__name__}: {error}"
            print(f"  {row_id}: failed: {message}", flush=True)
            run.results["rows"].append({"id": row_id, "label": label, "error": message})
            run.results["errors"].append(
                {"section": f"row {row_id}", "error": message, "trace": traceback.format_exc()}
            )
        run.save()


def section_memory(run: Run, half, stream_cfg, clip_tokens, reference, device, args) -> None:
    """Working set of a running stream once the reference is fused: only the denoising UNet, pose guider,
    TAESDV (and the VAE kept for decoder='vae'), the reference K/V and the tick's buffers stay resident."""
    half.reference_unet = None
    half.image_encoder = None
    free_memory(device)
    reset_peak(device)
    tick = Tick(
        half,
        stream_cfg,
        clip_tokens,
        reference,
        FastPath.for_device(device).replace(dtype=half.dtype, channels_last=False),  # weights left as they are
        noise="device",
    )
    del reference
    warm_tick_state(tick, 9)
    for _ in range(args.warmup):
        tick.run()
    tick.capture()
    for _ in range(5 if device.type == "cuda" else 1):
        tick.run()
    synchronize(device)
    memory = {
        "resident_gib": allocated(device) / GIB,
        "peak_allocated_gib": peak(device) / GIB,
        "peak_reserved_gib": (torch.cuda.max_memory_reserved(device) / GIB) if device.type == "cuda" else None,
        "weights_gib": parameter_bytes(half) / GIB,
    }
    run.results["memory"] = memory
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in memory.items() if v is not None))
    del tick


def section_tensorrt(run: Run) -> None:
    import importlib.util

    found = importlib.util.find_spec("torch_tensorrt") is not None
    run.results["tensorrt"] = {"importable": found}
    if not found:
        run.results["tensorrt"]["skipped"] = "torch_tensorrt is not importable on this machine"
        print("  torch_tensorrt not importable: skipped")
        return
    run.results["tensorrt"]["skipped"] = "importable, but no TensorRT row is implemented yet"
    print("  torch_tensorrt importable; no TensorRT row implemented yet")


AUTHORS_SCRIPT = textwrap.dedent(
    r"""
    # Times the authors' denoising UNet3D (random weights) with their reference attention, as their pipeline calls it.
    import json, statistics, sys, time
    import torch
    args = json.loads(sys.argv[1])
    sys.path.insert(0, args["path"])
    # their UNet needs none of these; hiding them keeps an old diffusers from importing today's transformers
    for name in ("transformers", "peft", "accelerate"):
        sys.modules[name] = None
    from src.models.unet_2d_condition import UNet2DConditionModel
    from src.models.unet_3d import UNet3DConditionModel
    from src.models.mutual_self_attention import ReferenceAttentionControl
    device = torch.device(args["device"]); dtype = getattr(torch, args["dtype"])
    base = json.load(open(args["path"] + "/configs/unet.json"))
    base.update(args["unet_overrides"])
    base.pop("_class_name", None); base.pop("_diffusers_version", None)
    extra = args["unet_additional_kwargs"]
    video = dict(base, down_block_types=["CrossAttnDownBlock3D"] * (len(base["block_out_channels"]) - 1) + ["DownBlock3D"],
                 up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (len(base["block_out_channels"]) - 1),
                 mid_block_type="UNetMidBlock3DCrossAttn")
    torch.manual_seed(0)
    reference_unet = UNet2DConditionModel.from_config(base).to(device, dtype).eval()
    denoising_unet = UNet3DConditionModel.from_config(video, **extra).to(device, dtype).eval()
    with torch.no_grad():  # every parameter random, zero-initialised ones too
        for module in (reference_unet, denoising_unet):
            for name, p in module.named_parameters():
                noise = torch.randn_like(p)
                if p.dim() > 1:
                    p.copy_(noise / p[0].numel() ** 0.5)
                elif name.endswith("weight"):
                    p.copy_(1 + 0.1 * noise)
                else:
                    p.copy_(0.1 * noise)
    writer = ReferenceAttentionControl(reference_unet, mode="write", batch_size=1, fusion_blocks="full")
    reader = ReferenceAttentionControl(denoising_unet, mode="read", batch_size=1, fusion_blocks="full")
    frames, h = args["frames"], args["latent"]
    C = base["in_channels"]
    clip = torch.randn(1, 1, base["cross_attention_dim"], device=device, dtype=dtype)
    sample = torch.randn(1, C, frames, h, h, device=device, dtype=dtype)
    pose = torch.randn(1, base["block_out_channels"][0], frames, h, h, device=device, dtype=dtype)
    ladder = torch.tensor(args["ladder"], device=device).repeat_interleave(frames // len(args["ladder"]))[None]
    w = torch.randn(1, extra["cond_proj_dim"], device=device, dtype=dtype)
    cuda = device.type == "cuda"
    with torch.no_grad():
        reference_unet(torch.randn(1, C, h, h, device=device, dtype=dtype), torch.zeros(1, device=device), encoder_hidden_states=clip, return_dict=False)
        reader.update(writer, dtype=dtype)
        def call():
            return denoising_unet(sample, ladder, encoder_hidden_states=clip, pose_cond_fea=pose, timestep_cond=w, return_dict=False)[0]
        for _ in range(args["warmup"]):
            call()
        times = []
        for _ in range(args["ticks"]):
            if cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True); s.record(); call(); e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e))
            else:
                t = time.perf_counter(); call(); times.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"unet_ms": statistics.median(times), "ticks": len(times),
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}))
    """
)


def section_authors(run: Run, args, stream_cfg: StreamConfig, device, ours_unet_ms: dict) -> None:
    """The authors' UNet3D on the same card (subprocess: their code may need another diffusers on its path)."""
    latent = stream_cfg.height // 8 if not args.tiny else stream_cfg.height // 2
    overrides = (
        {}
        if not args.tiny
        else {
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "cross_attention_dim": 32,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "in_channels": 4,
            "out_channels": 4,
        }
    )
    extra = {  # configs/rain_morpher.yaml unet_additional_kwargs, written out (no omegaconf needed)
        "use_inflated_groupnorm": True,
        "unet_use_cross_frame_attention": False,
        "unet_use_temporal_attention": False,
        "use_motion_module": True,
        "motion_module_resolutions": [1, 2, 4, 8],
        "motion_module_mid_block": True,
        "motion_module_decoder_only": False,
        "motion_module_type": "Vanilla",
        "motion_module_kwargs": {
            "num_attention_heads": 8,
            "num_transformer_block": 1,
            "attention_block_types": ["Temporal_Self", "Temporal_Self"],
            "temporal_position_encoding": True,
            "temporal_position_encoding_max_len": 32,
            "temporal_attention_dim_div": 1,
        },
        "cond_proj_dim": 512,
    }
    payload = {
        "path": str(Path(args.authors).resolve()),
        "device": str(device),
        "dtype": "float16" if device.type == "cuda" else "float32",
        "unet_overrides": overrides,
        "unet_additional_kwargs": extra,
        "frames": stream_cfg.window,
        "latent": latent,
        "ladder": ladder(stream_cfg.levels, stream_cfg.steps)[0].tolist(),
        "warmup": args.warmup,
        "ticks": max(3, min(args.ticks, 10)),
    }
    env = dict(os.environ)
    if args.authors_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.authors_pythonpath, env.get("PYTHONPATH", "")])
    timeout = max(10.0, run.left() - 5.0)
    done = subprocess.run(
        [args.authors_python or sys.executable, "-c", AUTHORS_SCRIPT, json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"authors' UNet run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"theirs": theirs, "dtype": payload["dtype"], "frames": payload["frames"]}
    for key, ms in ours_unet_ms.items():
        result[f"ratio_theirs_over_{key}"] = theirs["unet_ms"] / ms
    run.results["authors"] = result
    print(f"  authors' UNet3D {payload['dtype']}: {theirs['unet_ms']:.1f} ms per call; ratios {result}")


# ---------------------------------------------------------------------- table


def print_table(run: Run) -> str:
    env = run.results.get("environment", {})
    lines = [
        f"RAIN tick on {env.get('name', '?')} (torch {env.get('torch')}), "
        f"stream {run.results.get('build', {}).get('stream', {})}",
        f"{'row':24s} {'fps':>8s} {'ms/tick':>9s} {'guider':>7s} {'unet':>8s} {'step':>6s} {'decode':>7s} "
        f"{'lat@30':>7s} {'peakGiB':>8s} {'TFLOP/s':>8s} {'%bf16':>6s}",
    ]
    for row in run.results.get("rows", []):
        if "ms_per_tick" not in row:
            lines.append(f"{row['id']:24s} {row.get('skipped') or row.get('error', '')}")
            continue
        stages = row["stage_ms"]
        latency = row["latency_30fps_s"]["mean"]
        latency_text = f"{latency:.3f}" if math.isfinite(latency) else "behind"
        peak_text = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else "-"
        tflops_text = f"{row['tflops']:.1f}" if row.get("tflops") else "-"
        share_text = f"{100 * row['fraction_of_bf16_ceiling']:.0f}" if row.get("fraction_of_bf16_ceiling") else "-"
        lines.append(
            f"{row['id']:24s} {row['fps']:8.1f} {row['ms_per_tick']:9.2f} {stages['guider']:7.2f} {stages['unet']:8.2f} "
            f"{stages['step']:6.2f} {stages['decode']:7.2f} {latency_text:>7s} {peak_text:>8s} {tflops_text:>8s} "
            f"{share_text:>6s}"
        )
    ceiling = run.results.get("ceiling", {})
    if ceiling:
        lines.append("ceilings: " + ", ".join(f"{k} {v:.1f}" for k, v in ceiling.items() if not k.endswith("_n")))
    for key in ("engine", "check", "memory", "authors"):
        if key in run.results:
            lines.append(f"{key}: {json.dumps(run.results[key], default=_jsonable)}")
    lines.append(
        "sections: " + ", ".join(f"{k} {v['status']} ({v['seconds']} s)" for k, v in run.results["sections"].items())
    )
    text = "\n".join(lines)
    print(text)
    (run.out / "gpu_stream_table.txt").write_text(text + "\n")
    return text


# ---------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "./out"), help="folder for gpu_stream.json ($OUT)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting sections after this many seconds")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, 16-px frames (CPU smoke run)")
    parser.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--frames-per-cohort", type=int, default=None, help="default 4 (2 with --tiny)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=None, help="timed ticks per row (default 20 on a GPU, 2 tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed ticks per row (default 3, 1 tiny)")
    parser.add_argument("--split-ticks", type=int, default=None, help="ticks timed stage by stage (default 5, 1 tiny)")
    parser.add_argument("--engine-ticks", type=int, default=None, help="RainStream ticks timed (default 3, 1 tiny)")
    parser.add_argument("--check-ticks", type=int, default=None, help="ticks compared in the check (8; 2 tiny)")
    parser.add_argument("--row-cap-s", type=float, default=10.0, help="stop timing a row after this many seconds")
    parser.add_argument("--row-min-s", type=float, default=15.0, help="skip a row with less budget than this left")
    parser.add_argument("--rows", default="", help="comma-separated row ids to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip (e.g. compile,authors)")
    parser.add_argument("--compile-min-s", type=float, default=150.0, help="budget needed to try torch.compile")
    parser.add_argument("--cpu-compile-backend", default="eager", help="torch.compile backend off CUDA (tests)")
    parser.add_argument("--authors", default=None, help="path of the authors' RAIN checkout (never committed here)")
    parser.add_argument("--authors-python", default=None, help="python for the authors' code (default: this one)")
    parser.add_argument("--authors-pythonpath", default=None, help="prepended to PYTHONPATH for the authors' code")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gpu = not args.tiny and (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.ticks = args.ticks or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.split_ticks = args.split_ticks or (5 if gpu else 1)
    args.engine_ticks = args.engine_ticks or (3 if gpu else 1)
    args.check_ticks = args.check_ticks or (8 if gpu else 2)
    args.frames_per_cohort = args.frames_per_cohort or (2 if args.tiny else 4)
    args.rows = {r for r in args.rows.split(",") if r}
    args.skip = {s for s in args.skip.split(",") if s}
    if args.tiny:
        args.row_min_s = min(args.row_min_s, 1.0)
        args.compile_min_s = min(args.compile_min_s, 5.0)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    run = Run(args)
    run.results["args"] = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
    stream_cfg = stream_config(args)
    print(f"gpu_stream: device {device}, budget {args.budget_s:.0f} s, stream {stream_cfg.to_dict()}", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes: pick the fastest conv algorithms once
    state: dict = {}

    def build():
        state["fp32"] = build_master(run, args, device)
        state["clip_tokens"], state["reference"], _ = make_reference(state["fp32"], stream_cfg, args.seed)

    def copies():
        state["bf16"] = half_copy(state["fp32"], half_dtype)
        if device.type == "cuda":
            state["fp16"] = half_copy(state["fp32"], torch.float16)

    def wanted(name: str) -> bool:
        return name not in args.skip

    run.section("environment", lambda: section_environment(run, device), 1)
    if wanted("ceiling"):
        run.section("ceiling", lambda: section_ceiling(run, device, args.tiny), 10, limit_s=60)
    if not run.section("build", build, 20, limit_s=150):
        print_table(run)
        return run.results
    half_dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    run.section("copies", copies, 5, limit_s=60)
    master, clip_tokens, reference = state["fp32"], state["clip_tokens"], state["reference"]
    fast = FastPath.for_device(device).replace(dtype=state.get("bf16", master).dtype)
    if wanted("cost"):
        run.section(
            "cost", lambda: section_cost(run, master, stream_cfg, clip_tokens, reference, device), 20, limit_s=90
        )
    if wanted("engine"):
        run.section(
            "engine", lambda: section_engine(run, master, state.get("bf16"), stream_cfg, args, device), 30, limit_s=90
        )
    if wanted("check") and "bf16" in state:
        run.section(
            "check",
            lambda: section_check(
                run, master, state["bf16"], stream_cfg, clip_tokens, reference, device, fast, args.check_ticks
            ),
            20,
            limit_s=60,
        )
    variants = {key: state[key] for key in ("fp32", "bf16", "fp16") if key in state}
    if wanted("rows"):
        run.section(
            "rows", lambda: section_rows(run, ROWS, variants, stream_cfg, clip_tokens, reference, device, args), 30
        )
    # from here on the fp32 master and the fp16 copy are gone: only what a running stream keeps stays resident
    for key in ("fp32", "fp16"):
        variants.pop(key, None)
        state.pop(key, None)
    master = None  # noqa: F841 - drop the last reference to the fp32 networks
    free_memory(device)
    if wanted("memory") and "bf16" in variants:
        run.section(
            "memory",
            lambda: section_memory(run, variants["bf16"], stream_cfg, clip_tokens, reference, device, args),
            15,
            limit_s=60,
        )
    if wanted("compile") and (device.type == "cuda" or args.tiny):
        run.section(
            "compile",
            lambda: section_rows(run, COMPILE_ROWS, variants, stream_cfg, clip_tokens, reference, device, args),
            args.compile_min_s,
        )
    run.section("tensorrt", lambda: section_tensorrt(run), 1)
    if args.authors and wanted("authors"):
        variants.clear()
        state.clear()
        free_memory(device)
        unet_ms = {
            row["id"]: row["stage_ms"]["unet"]
            for row in run.results["rows"]
            if "stage_ms" in row
            and row["id"] in ("bf16", "fp16", "bf16_cl_graph", "fp16_cl_graph", "bf16_cl_compile_graph")
        }
        run.section("authors", lambda: section_authors(run, args, stream_cfg, device, unet_ms), 30)
    run.results["total_seconds"] = round(time.perf_counter() - run.started, 1)
    run.save()
    print_table(run)
    return run.results


if __name__ == "__main__":
    main()
