"""What one RAIN tick costs and where it would stall a GPU, measured without one. Prints figures, asserts nothing.

1. Full size (SD-1.5, 512², 4 levels × 4 frames) on meta tensors (no memory, no arithmetic): FLOPs per stage,
   bytes every unfused aten op reads/writes, weight bytes, and the floors those give on a card whose bf16 matmul
   rate and copy bandwidth you pass (defaults: 798 TFLOP/s and 3.0 TB/s, assumed H100 rates, not measured by this project; NVIDIA's datasheet says ~989 dense bf16).
2. Tiny networks on the CPU, through `RainStream.push` as it is: every op that reads a value back to the host
   (on CUDA each is a sync), with the line that does it; whether consecutive ticks run the same op sequence with
   the same shapes (what graph capture needs); the same for the one tick driven alone (`rain_core.stream.Tick`).

    .venv/bin/python bench/tick_profile_cpu.py [--tflops 798] [--tbps 3.0] [--ticks 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from rain_core.models import RainModelConfig, RainModels
from rain_core.stream import RainStream, StreamConfig, Tick
from rain_core.stream.accel import FastPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout
from bench.gpu.build import SD_VAE  # noqa: E402  (the one sd-vae-ft-mse config of the benches)
from bench.measure import count_flops, parameter_bytes, trace_ops  # noqa: E402
from bench.random_weights import randomize_parameters  # noqa: E402


def full_size_costs(args) -> None:
    config = RainModelConfig.sd15()
    config.vae = dict(SD_VAE)
    stream_config = StreamConfig(
        levels=args.levels,
        frames_per_cohort=args.frames_per_cohort,
        steps=args.steps,
        height=args.size,
        width=args.size,
    )
    h = args.size // 8
    with torch.device("meta"):
        models = RainModels.build(config, with_image_encoder=False).to(torch.bfloat16)
        clip = torch.randn(1, 1, 768, dtype=torch.bfloat16)
        cache = models.reference_unet(torch.randn(1, 4, h, h, dtype=torch.bfloat16), clip)
    T, G = 1e12, 1e9
    print(
        f"full size, {args.size}² px, {stream_config.levels} levels × {stream_config.frames_per_cohort} frames "
        f"(window {stream_config.window}), {stream_config.steps} steps, bf16, meta tensors:"
    )
    totals = {}
    for cached in (True, False):
        tick = Tick(models, stream_config, clip, cache, FastPath(reference_kv_cache=cached), noise="device")
        stages = {name: count_flops(fn)[1] for name, fn in tick.stage_functions().items()}
        totals[cached] = sum(stages.values())
        if cached:
            _, trace = trace_ops(tick.run)
            print("  FLOPs per stage:  " + ", ".join(f"{k} {v / T:.3f} T" for k, v in stages.items()))
            weights = parameter_bytes(models.denoising_unet, models.pose_guider, models.fast_decoder)
            print(
                f"  per tick: {totals[True] / T:.2f} TFLOP, {len(trace.ops)} aten ops, {len(trace.syncs)} host reads; "
                f"weights {weights / G:.2f} GB read at least once per UNet call; "
                f"unfused op traffic {trace.bytes_read / G:.1f} GB read + {trace.bytes_written / G:.1f} GB written"
            )
            traffic = trace.bytes_read + trace.bytes_written
    print(f"  reference K/V recomputed every call instead of cached: {totals[False] / T:.2f} TFLOP per tick")
    frames = stream_config.frames_per_cohort
    compute_ms = totals[True] / (args.tflops * T) * 1000
    weights_ms = weights * stream_config.calls_per_tick / (args.tbps * 1e12) * 1000
    traffic_ms = traffic / (args.tbps * 1e12) * 1000
    print(
        f"  floors at {args.tflops:.0f} TFLOP/s and {args.tbps:.1f} TB/s: compute {compute_ms:.1f} ms per tick "
        f"({frames / compute_ms * 1000:.0f} fps); weight reads {weights_ms:.2f} ms; all unfused traffic "
        f"{traffic_ms:.1f} ms (what fusion must remove); {totals[True] / frames / T:.2f} TFLOP per output frame"
    )


def stream_profile(args) -> None:
    torch.manual_seed(0)
    config = RainModelConfig.tiny(
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32, cond_proj_dim=32, taesdv_channels=8
    )
    models = randomize_parameters(RainModels.build(config), 0).eval()
    stream_config = StreamConfig(levels=4, frames_per_cohort=2, steps=4, height=16, width=16)
    stream = RainStream(models, stream_config)
    generator = torch.Generator().manual_seed(1)
    stream.set_reference(torch.rand(16, 16, 3, generator=generator))
    m = stream_config.frames_per_cohort
    ticks = stream_config.levels + args.ticks
    poses = torch.rand(ticks * m, 16, 16, 3, generator=generator)
    print(
        f"\nRainStream.push on tiny networks (CPU, {torch.get_num_threads()} threads), "
        f"{stream_config.levels} levels × {m} frames, one push per tick:"
    )
    signatures, sites = [], Counter()
    for i in range(ticks):
        start = time.perf_counter()
        _, trace = trace_ops(lambda i=i: stream.push(poses[i * m : (i + 1) * m]))
        elapsed = (time.perf_counter() - start) * 1000
        signatures.append(trace.ops)
        sites.update(trace.syncs)
        phase = "warm-up" if i < stream_config.levels - 1 else "steady"
        print(
            f"  tick {i + 1} ({phase}): {len(trace.ops)} aten ops, {len(trace.syncs)} host reads, "
            f"{elapsed:.0f} ms traced"
        )
    distinct = len({tuple(s) for s in signatures})
    steady = signatures[stream_config.levels - 1 :]
    same = all(s == steady[0] for s in steady)
    print(f"  {distinct} distinct (op, shapes) sequences over {ticks} ticks; steady-state ticks identical: {same}")
    print("  host reads per site over all ticks (on CUDA a sync where the tensor lives on the GPU):")
    for (op, where), count in sites.most_common():
        print(f"    {count:4d} × {op:22s} {where}")

    reference = stream._reference  # noqa: SLF001 - read only, to build a tick on the same reference
    tick = Tick(models, stream_config, reference["clip_tokens"], reference["cache"], FastPath(), noise="device")
    traces = [trace_ops(tick.run)[1] for _ in range(2)]
    print(
        f"\nTick driven alone, steady state (same networks): {len(traces[0].ops)} aten ops, {len(traces[0].syncs)} host reads, "
        f"consecutive ticks identical: {traces[0].ops == traces[1].ops}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--frames-per-cohort", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tflops", type=float, default=798.0, help="bf16 matmul rate of the card (TFLOP/s)")
    parser.add_argument("--tbps", type=float, default=3.0, help="copy bandwidth, read + write (TB/s)")
    parser.add_argument("--ticks", type=int, default=3, help="steady-state ticks traced after the warm-up")
    args = parser.parse_args()
    full_size_costs(args)
    stream_profile(args)


if __name__ == "__main__":
    main()
