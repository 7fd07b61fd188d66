"""Endless-stream check on the CPU with tiny random RAIN networks. Prints figures, asserts nothing.

For the RAIN window (4 levels × 4 frames, motion modules) and the StreamDiffusion "stream batch" baseline
(4 levels × 1 frame, no motion modules), both 4 LCM steps, it streams `--frames` pose frames through
`RainStream.push` and prints, side by side at two points of the stream (by default frame 1,000 and 10,000):
throughput, ms per frame and per tick, latency (in frames, and measured in ms from a
pose's arrival to its frame leaving when poses arrive as fast as the stream takes them) and resident memory.
Speed figures are medians over the last 256 ticks (robust to other load on a shared machine), plus the plain
average over the whole stretch since the previous point.
Flat ms/frame and RSS between the two points is what "endless" means.

    nice -n 10 .venv/bin/python bench/stream_cpu.py                      # 10,000 frames per mode (minutes)
    .venv/bin/python bench/stream_cpu.py --frames 400                     # CI-sized: points at 40 and 400
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from rain_core.models import RainModelConfig, RainModels
from rain_core.models.testing import randomize_parameters
from rain_core.stream import RainStream, StreamConfig


def rss_mib() -> float:
    """Resident memory of this process (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def build(motion: bool, seed: int) -> RainModels:
    config = RainModelConfig.tiny(block_out_channels=(32, 32), motion=motion)
    torch.manual_seed(seed)
    return randomize_parameters(RainModels.build(config), seed).eval()


def run(name: str, models: RainModels, config: StreamConfig, frames: int, points: list[int]) -> list[dict]:
    stream = RainStream(models, config)
    generator = torch.Generator().manual_seed(config.seed)
    stream.set_reference(torch.rand(config.height, config.width, 3, generator=generator))
    # A small pool of pose frames used round-robin: the input itself must not grow with the stream.
    pool = torch.rand(64, config.height, config.width, 3, generator=generator)
    m = config.frames_per_cohort
    # Arrival times of the frames still in flight, in a ring as long as the longest possible latency.
    ring = [0.0] * (config.window + m)
    rows, pushed, emitted = [], 0, 0
    stretch_start, stretch_frames, stretch_ticks = time.perf_counter(), 0, stream.stats["ticks"]
    latency_ms, push_ms = [], []
    started = time.perf_counter()
    while pushed < frames:
        batch = pool[[(pushed + i) % pool.shape[0] for i in range(m)]]
        now = time.perf_counter()
        for i in range(m):
            ring[(pushed + i) % len(ring)] = now
        out = stream.push(batch)
        pushed += m
        done = time.perf_counter()
        for i in range(out.shape[0]):
            latency_ms.append((done - ring[(emitted + i) % len(ring)]) * 1000)
        emitted += out.shape[0]
        stretch_frames += out.shape[0]
        push_ms.append((done - now) * 1000)  # after warm-up one push of m frames = one tick
        latency_ms, push_ms = latency_ms[-256:], push_ms[-256:]  # recent measurements only: nothing grows
        if points and pushed >= points[0]:
            elapsed = time.perf_counter() - stretch_start
            ticks = stream.stats["ticks"] - stretch_ticks
            # Medians of the last 256 ticks: the machine is shared, and a median ignores other people's spikes.
            median_tick = statistics.median(push_ms)
            rows.append(
                {
                    "mode": name,
                    "frame": pushed,
                    "stretch_fps": stretch_frames / elapsed if elapsed else float("nan"),
                    "fps": 1000 * m / median_tick,
                    "ms_per_frame": median_tick / m,
                    "ms_per_tick": median_tick,
                    "stretch_ticks": ticks,
                    "latency_frames": stream.stats["latency_frames"],
                    "latency_ms": statistics.median(latency_ms),
                    "rss_mib": rss_mib(),
                    "total_s": time.perf_counter() - started,
                }
            )
            points = points[1:]
            stretch_start, stretch_frames, stretch_ticks = time.perf_counter(), 0, stream.stats["ticks"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000, help="pose frames per mode (default 10000)")
    parser.add_argument("--size", type=int, default=16, help="frame size in px (multiple of 4; default 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny nets gain nothing from more)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = max(16, args.frames - args.frames % 4)
    points = sorted({max(16, frames // 10 - (frames // 10) % 4), frames})
    modes = [
        ("RAIN p=4 m=4", build(True, args.seed), StreamConfig(levels=4, frames_per_cohort=4, steps=4)),
        ("baseline p=4 m=1", build(False, args.seed), StreamConfig(levels=4, frames_per_cohort=1, steps=4)),
    ]
    print(
        f"tiny RAIN (UNet 32/32, random weights), {args.size}² px, 4 LCM steps, codec decode, "
        f"{args.threads} thread(s), torch {torch.__version__}. fps, ms and latency: medians of the last 256 ticks; "
        "stretch fps: frames out / wall time since the previous point (includes other load on the machine)"
    )
    header = (
        f"{'mode':<18}{'frame':>8}{'fps':>9}{'ms/frame':>10}{'ms/tick':>9}{'lat frames':>11}{'lat ms':>9}"
        f"{'RSS MiB':>9}{'stretch fps':>13}"
    )
    print(header, flush=True)
    for name, models, config in modes:
        config.height = config.width = args.size
        config.seed, config.decoder = args.seed, "vae"
        for row in run(name, models, config, frames, list(points)):
            print(
                f"{row['mode']:<18}{row['frame']:>8}{row['fps']:>9.1f}{row['ms_per_frame']:>10.2f}{row['ms_per_tick']:>9.2f}"
                f"{row['latency_frames']:>11}{row['latency_ms']:>9.1f}{row['rss_mib']:>9.1f}{row['stretch_fps']:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
