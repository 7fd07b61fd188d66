"""The rows of the GPU benchmark table: one tick configuration per row (eager fp32 → SDPA → K/V cache → tf32 →
fused step → half precision → channels_last → CUDA graph → torch.compile), each timed whole and stage by stage,
plus the working set of a running stream."""

from __future__ import annotations

import statistics
import time
import traceback

import torch

from rain_core.stream import Tick
from rain_core.stream.accel import FastPath, to_channels_last

from ..measure import latency_seconds, parameter_bytes
from .build import warm_tick_state
from .run import GIB, Clock, Run, SectionTimeout, allocated, free_memory, peak, reset_peak, synchronize

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
