"""The measuring sections of the GPU benchmark: environment, matmul/copy ceilings, the cost of a tick (FLOPs,
bytes, host syncs), the engine (RainStream.push, and the one tick driven alone against it), and the check of the
optimised tick against eager fp32."""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time

import diffusers
import torch

from rain_core.scheduler import LCMStepper, ladder
from rain_core.stream import RainStream, SeededNoise, StreamConfig, Tick, TickNoise
from rain_core.stream.accel import FastPath, to_channels_last

from ..measure import count_flops, parameter_bytes, trace_ops
from .build import given_noise, random_poses, warm_tick_state
from .run import GIB, Clock, Run, free_memory, relative_error


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
