"""`rain animate`: a reference image and a pose video / image folder / keypoint JSON → a video."""

from __future__ import annotations

import time
from pathlib import Path

from .common import (
    EXIT_OK,
    UsageError,
    add_model_flags,
    add_stream_flags,
    check_output_path,
    emit,
    load_models,
    pose_frames,
    read_image,
    run_stream_to_sink,
    stream_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser("animate", help="reference image + pose video/images/JSON → video")
    add_model_flags(p, required=True, help="checkpoint folder (authors' .pth files or rain safetensors)")
    p.add_argument("--reference", required=True, help="reference character image")
    p.add_argument("--poses", required=True, help="pose video, folder of pose images, or POSE_KEYPOINT/OpenPose JSON")
    p.add_argument("--out", required=True, help="output .mp4 (or a folder name for PNG frames)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--json", action="store_true")
    add_stream_flags(p, {})
    p.set_defaults(handler=run)


def run(args) -> int:
    from tqdm import tqdm

    from ..stream import RainStream
    from ..video import VideoSink, open_pose_source

    out = check_output_path(args.out)
    if not Path(args.poses).exists():
        raise UsageError(f"--poses {args.poses}: not found; expected a pose video, a folder of pose images, "
                         "or a POSE_KEYPOINT / OpenPose .json")
    reference = read_image(args.reference, args.height, args.width)
    fps = args.fps
    if fps is None:
        try:
            probe = open_pose_source(Path(args.poses)) if Path(args.poses).suffix.lower() != ".json" else None
            fps = getattr(probe, "fps", None) or 16.0
            if probe is not None and hasattr(probe, "close"):
                probe.close()
        except ValueError:
            fps = 16.0
    models, folder = load_models(args)
    stream = RainStream(models, stream_config(args))
    stream.set_reference(reference)
    start = time.perf_counter()
    with VideoSink(out, fps=fps) as sink, tqdm(desc="rain animate", unit="frame", disable=args.json) as bar:
        count, _ = run_stream_to_sink(stream, pose_frames(args, args.height, args.width), sink,
                                      args.frames_per_cohort, args.max_frames, bar)
    if count == 0:
        raise UsageError(f"--poses {args.poses}: no pose frames found")
    seconds = time.perf_counter() - start
    stats = stream.stats
    summary = {"output": str(sink.output_path), "frames": stats["frames_out"], "fps": stats["frames_out"] / seconds,
               "ms_per_tick": stats["mean_ms_per_tick"], "latency_frames": stats["latency_frames"], "model": str(folder)}
    emit(args, summary, [f"wrote {summary['output']} ({summary['frames']} frames)",
                         f"speed: {summary['fps']:.2f} fps, {summary['ms_per_tick'] or 0:.1f} ms per tick, "
                         f"latency {summary['latency_frames']} frames + compute"])
    return EXIT_OK
