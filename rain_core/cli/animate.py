"""`rain animate`: a reference image and a pose video / image folder / keypoint JSON → a video."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from ..inputs import is_keypoint_source
from .common import (
    EXIT_OK,
    MODEL_HELP,
    Interrupted,
    UsageError,
    add_model_flags,
    add_output_flags,
    add_stream_flags,
    apply_umask,
    check_pose_frames,
    check_reference,
    claim_output,
    emit,
    load_models,
    memory_gib,
    model_folder_size,
    partial_path,
    pose_frames,
    positive_int,
    read_image,
    run_stream_to_sink,
    signal_name,
    stream_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser("animate", help="reference image + pose video/images/JSON → video")
    add_model_flags(p, required=True, help=MODEL_HELP + " (the authors' .pth files or rain safetensors)")
    p.add_argument("--reference", required=True, help="reference character image")
    p.add_argument("--poses", required=True, help="pose video, folder of pose images, or POSE_KEYPOINT/OpenPose JSON")
    add_output_flags(p, required=True)
    p.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many pose frames")
    p.add_argument("--keep-partial", action="store_true",
                   help="on Ctrl-C (or SIGTERM / SIGHUP), flush and keep the frames made so far as OUT.partial.mp4 "
                   "(OUT.partial-2.mp4 … when that exists; a second signal skips the flush); without it an "
                   "interrupted run writes nothing and leaves OUT as it was")
    p.add_argument("--no-pose-check", dest="pose_check", action="store_false",
                   help="do not refuse a pose video that does not look like rendered skeletons")
    p.add_argument("--json", action="store_true")
    add_stream_flags(p)
    p.set_defaults(handler=run)


def _input_fps(poses: Path) -> float | None:
    from ..video import VideoSourceError, open_pose_source

    if is_keypoint_source(poses):
        from ..pose import read_keypoints

        return read_keypoints(poses).fps  # {"fps", "frames"} files name theirs; errors come with the frames
    try:
        probe = open_pose_source(poses)
    except VideoSourceError:
        return None  # reading the frames reports the problem with its own message
    try:
        return getattr(probe, "fps", None)
    finally:
        probe.close()


def _frame_count(poses: Path, limit: int | None) -> int | None:
    """How many frames the output will hold, as far as headers say (for the free-space check), without decoding."""
    from ..video import IMAGE_SUFFIXES, VideoSourceError, probe_video

    count = None
    if poses.is_dir():
        count = sum(1 for p in poses.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif poses.is_file() and not is_keypoint_source(poses):
        try:
            count = probe_video(poses, "--poses").frame_count or None
        except VideoSourceError:
            count = None  # reading the frames reports the problem with its own message
    if limit:
        return min(count, limit) if count else limit
    return count


def run(args) -> int:
    poses = Path(args.poses)
    if not poses.exists():
        raise UsageError(f"--poses {args.poses}: not found; expected a pose video, a folder of pose images, "
                         "or a POSE_KEYPOINT / OpenPose .json")
    args.height, args.width = model_folder_size(args)
    # the output first: a folder that takes no file or a second writer is found before any model loads
    with claim_output(args, _frame_count(poses, args.max_frames), args.height, args.width) as claim:
        return _render(args, poses, claim)


def _render(args, poses: Path, claim) -> int:
    import torch
    from tqdm import tqdm

    from ..stream import RainStream
    from ..video import VideoSink

    out = claim.path
    reference = check_reference(read_image(args.reference, args.height, args.width), args.reference)
    fps = args.fps or _input_fps(poses) or 16.0
    frames = pose_frames(args, args.height, args.width)
    if not is_keypoint_source(poses):
        frames = check_pose_frames(frames, args.poses, args.pose_check)
    sink = VideoSink(out, fps=fps, overwrite_frames=args.overwrite_frames)
    started = time.perf_counter()
    models, folder = load_models(args)
    loaded, memory = time.perf_counter(), {"loaded": memory_gib()}
    stream = RainStream(models, stream_config(args))
    stream.set_reference(reference)
    start = time.perf_counter()
    memory["reference"] = memory_gib()
    tick_seconds = []
    try:
        with tqdm(desc="rain animate", unit="frame", disable=args.json) as bar:
            count, interrupted = run_stream_to_sink(stream, frames, sink, args.max_frames, bar,
                                                    flush_on_interrupt=args.keep_partial, tick_seconds=tick_seconds)
        if interrupted:
            by = "" if interrupted == signal.SIGINT else f" by {signal_name(interrupted)}"
            if args.keep_partial and sink.frames_written:
                sink.output_path = partial_path(out)  # the sink renames its temporary file to this
                kept = sink.close()
                apply_umask(kept)
                raise Interrupted(f"interrupted{by} after {count} pose frames; the {sink.frames_written} frames made "
                                  f"so far are in {kept}; {out} was not changed.", interrupted)
            raise Interrupted(f"interrupted{by} after {count} pose frames; nothing written, {out} was not changed "
                              "(--keep-partial keeps the frames made so far).", interrupted)
        if count == 0:
            raise UsageError(f"--poses {args.poses}: no pose frames found")
        written = sink.close()
    except BaseException:
        sink.abort()  # a failed or interrupted run leaves an existing output as it was (no-op once closed)
        raise
    apply_umask(written)
    seconds = time.perf_counter() - start
    stats = stream.stats
    warm_up = args.levels - 1  # ticks before the window is full: no frame leaves yet

    def median(values):
        values = sorted(values)
        return values[len(values) // 2] if values else None

    summary = {"output": str(written), "frames": stats["frames_out"], "fps": stats["frames_out"] / seconds,
               "output_fps": fps, "size": [args.height, args.width], "ms_per_tick": stats["mean_ms_per_tick"],
               "latency_frames": stats["latency_frames"], "model": str(folder), "dtype": str(models.dtype)[6:],
               "threads": torch.get_num_threads(), "load_seconds": loaded - started,
               "reference_seconds": start - loaded,
               # every push of m frames (one tick), warm-up first: wall seconds, and CPU seconds of this process
               "tick_seconds": [wall for wall, _ in tick_seconds], "tick_cpu_seconds": [cpu for _, cpu in tick_seconds],
               "steady_seconds_per_tick": median(wall for wall, _ in tick_seconds[warm_up:]),  # median after warm-up
               "steady_cpu_seconds_per_tick": median(cpu for _, cpu in tick_seconds[warm_up:]),
               "memory_gib": {**memory, "end": memory_gib()}}
    emit(args, summary, [f"wrote {summary['output']} ({summary['frames']} frames, {args.height}×{args.width}, "
                         f"{fps:g} fps)",
                         f"speed: {summary['fps']:.2f} fps, {summary['ms_per_tick'] or 0:.1f} ms per tick, "
                         f"latency {summary['latency_frames']} frames + compute"])
    return EXIT_OK
