"""Endless-stream check on the CPU with tiny random RAIN networks. Prints figures, asserts nothing.

For the RAIN window (4 levels × 4 frames, motion modules) and the StreamDiffusion "stream batch" baseline
(4 levels × 1 frame, no motion modules), both 4 LCM steps, it streams `--frames` pose frames through
`RainStream.push` and prints, side by side at two points of the stream (by default frame 1,000 and 10,000):
throughput, ms per frame and per tick, latency (in frames, and measured in ms from a
pose's arrival to its frame leaving when poses arrive as fast as the stream takes them) and resident memory.
Speed figures are medians over the last 256 ticks (robust to other load on a shared machine), plus the plain
average over the whole stretch since the previous point.
Flat ms/frame and RSS between the two points is what "endless" means. Last, the long-running stream and a fresh
one advanced to the first point take ticks in alternation (same machine load for both): their median ms per tick
side by side is the fairest flatness figure on a shared machine.

    nice -n 10 .venv/bin/python bench/stream_cpu.py                      # 10,000 frames per mode (minutes)
    .venv/bin/python bench/stream_cpu.py --frames 400                     # CI-sized: points at 40 and 400
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from rain_core.models import RainModelConfig, RainModels
from rain_core.stream import RainStream, StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout
from bench.random_weights import randomize_parameters  # noqa: E402


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


def new_stream(models: RainModels, config: StreamConfig) -> tuple[RainStream, torch.Tensor]:
    stream = RainStream(models, config)
    generator = torch.Generator().manual_seed(config.seed)
    stream.set_reference(torch.rand(config.height, config.width, 3, generator=generator))
    # A small pool of pose frames used round-robin: the input itself must not grow with the stream.
    return stream, torch.rand(64, config.height, config.width, 3, generator=generator)


def interleaved(long_running: RainStream, models: RainModels, config: StreamConfig, young_frames: int, ticks: int):
    """Median ms per tick of the long-running stream and of a fresh one advanced to `young_frames`, measured in
    alternation so that other load on the machine hits both alike."""
    young, pool = new_stream(models, config)
    m = config.frames_per_cohort
    for start in range(0, young_frames, m):
        young.push(pool[[(start + i) % pool.shape[0] for i in range(m)]])
    times = {"young": [], "old": []}
    for tick in range(ticks):
        batch = pool[[(tick * m + i) % pool.shape[0] for i in range(m)]]
        for key, stream in (
            (("young", young), ("old", long_running)) if tick % 2 else (("old", long_running), ("young", young))
        ):
            started = time.perf_counter()
            stream.push(batch)
            times[key].append((time.perf_counter() - started) * 1000)
    return statistics.median(times["young"]), statistics.median(times["old"]), young.stats["frames_in"]


def run(name: str, models: RainModels, config: StreamConfig, frames: int, points: list[int]):
    stream, pool = new_stream(models, config)
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
    return rows, stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000, help="pose frames per mode (default 10000)")
    parser.add_argument("--size", type=int, default=16, help="frame size in px (multiple of 4; default 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny nets gain nothing from more)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interleaved-ticks", type=int, default=128, help="ticks per stream in the A/B check")
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
    interleaved_rows = []
    for name, models, config in modes:
        config.height = config.width = args.size
        config.seed, config.decoder = args.seed, "vae"
        rows, stream = run(name, models, config, frames, list(points))
        for row in rows:
            print(
                f"{row['mode']:<18}{row['frame']:>8}{row['fps']:>9.1f}{row['ms_per_frame']:>10.2f}{row['ms_per_tick']:>9.2f}"
                f"{row['latency_frames']:>11}{row['latency_ms']:>9.1f}{row['rss_mib']:>9.1f}{row['stretch_fps']:>13.1f}",
                flush=True,
            )
        young_ms, old_ms, young_at = interleaved(stream, models, config, points[0], args.interleaved_ticks)
        interleaved_rows.append(
            f"{name:<18} ms/tick at frame {young_at:>6} {young_ms:7.2f}   at frame {stream.stats['frames_in']:>6} "
            f"{old_ms:7.2f}   ratio {old_ms / young_ms:5.2f}"
        )
    print(f"interleaved (one tick of each in turn, {args.interleaved_ticks} ticks, medians):")
    print("\n".join(interleaved_rows))


if __name__ == "__main__":
    main()
