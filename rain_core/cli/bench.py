"""`rain bench`: stream throughput of a model, the RAIN window against the m = 1 baseline, side by side."""

from __future__ import annotations

import dataclasses
import time

from .common import (
    EXIT_OK,
    add_model_flags,
    add_stream_flags,
    emit,
    load_models,
    model_folder_size,
    positive_int,
    stream_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="stream throughput: RAIN window vs the m = 1 baseline, side by side")
    add_model_flags(p)
    p.add_argument("--frames", type=positive_int, default=128, help="pose frames pushed per mode (default 128)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="time the RAIN window only")
    p.add_argument("--json", action="store_true")
    add_stream_flags(p, output=False)  # every stream flag is honoured; nothing is written, so no --fps
    p.set_defaults(handler=run)


def run(args) -> int:
    """Stream throughput of a model: the RAIN window against the m = 1 baseline, side by side, same run."""
    import numpy as np

    from ..stream import RainStream

    height, width = args.height, args.width = model_folder_size(args)
    models, folder = load_models(args)
    rng = np.random.default_rng(args.seed)
    reference = rng.random((height, width, 3), dtype=np.float32)
    poses = (rng.random((args.frames, height, width, 3), dtype=np.float32) > 0.97).astype(np.float32)
    rows = []
    rain = stream_config(args)  # seed, noise, decoder and fast path as given
    configs = [("RAIN window", rain)]
    if args.baseline:
        configs.append(("m = 1 stream batch", dataclasses.replace(rain, frames_per_cohort=1)))
    for name, config in configs:
        levels, per_cohort, steps = config.levels, config.frames_per_cohort, config.steps
        stream = RainStream(models, config)
        stream.set_reference(reference)
        stream.push(poses[: config.window])  # warm-up, not timed
        start = time.perf_counter()
        produced = 0
        for index in range(config.window, args.frames, per_cohort):
            produced += stream.push(poses[index:index + per_cohort]).shape[0]
        seconds = time.perf_counter() - start
        rows.append({"mode": name, "levels": levels, "frames_per_cohort": per_cohort, "steps": steps,
                     "frames": produced, "fps": produced / seconds if seconds else None,
                     "fast_path": stream.stats.get("fast_path"), "noise": config.noise,
                     "ms_per_tick": stream.stats["mean_ms_per_tick"], "latency_frames": stream.stats["latency_frames"]})
    import torch

    device = str(models.device) + (f" ({torch.cuda.get_device_name(0)})" if models.device.type == "cuda" else "")
    lines = [f"model {folder} on {device}, {height}×{width}, {args.frames} pose frames",
             f"{'mode':<20} {'fps':>8} {'ms/tick':>9} {'latency (frames)':>17}"]
    lines += [f"{r['mode']:<20} {r['fps'] or 0:>8.1f} {r['ms_per_tick'] or 0:>9.1f} {r['latency_frames']:>17}" for r in rows]
    emit(args, {"device": device, "size": [height, width], "model": str(folder), "rows": rows}, lines)
    return EXIT_OK
