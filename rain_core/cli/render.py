"""One render job: a reference image + a pose source + stream settings → an output file.

The one path `rain animate` and `rain batch`'s workers both take (same checks, same frames, same claimed and atomic
output), in two halves: `prepare_job` refuses bad inputs and claims (locks) the output before any model runs
(animate loads the model only after it), and `render_job` streams the poses through a loaded model into it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.inputs import is_keypoint_source
from .common import (
    Interrupted,
    UsageError,
    apply_umask,
    check_pose_frames,
    check_reference,
    claim_output,
    memory_gib,
    model_folder_size,
    partial_path,
    pose_frames,
    read_image,
    run_stream_to_sink,
    signal_name,
    stream_config,
)


@dataclass
class PreparedJob:
    """A job's inputs, checked: the claimed output, the reference image, the pose frames (an iterator, its first
    frames already read by the pose check), the output fps."""

    out: Path
    reference: Any
    frames: Any
    fps: float


def input_fps(poses: Path) -> float | None:
    from ..io.video import VideoSourceError, open_pose_source

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


def frame_count(poses: Path, limit: int | None) -> int | None:
    """How many frames the output will hold, as far as headers say (for the free-space check), without decoding."""
    from ..io.video import IMAGE_SUFFIXES, VideoSourceError, probe_video

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


@contextlib.contextmanager
def prepare_job(args):
    """Check `args.poses`, fill in the model's own size, claim `args.out` (kind, folder, free space, one writer:
    held until the block ends), check the reference and the first pose frames. Raises UsageError (or the input
    path's own ValueError) with the message the user sees. Use as `with prepare_job(args) as job:`."""
    poses = Path(args.poses)
    if not poses.exists():
        raise UsageError(f"--poses {args.poses}: not found; expected a pose video, a folder of pose images, "
                         "or a POSE_KEYPOINT / OpenPose .json")
    args.height, args.width = model_folder_size(args)
    # the output first: a folder that takes no file or a second writer is found before any model loads
    with claim_output(args, frame_count(poses, args.max_frames), args.height, args.width) as claim:
        reference = check_reference(read_image(args.reference, args.height, args.width), args.reference)
        fps = args.fps or input_fps(poses) or 16.0
        frames = pose_frames(args, args.height, args.width)
        if not is_keypoint_source(poses):
            frames = check_pose_frames(frames, args.poses, getattr(args, "pose_check", True))
        yield PreparedJob(out=claim.path, reference=reference, frames=frames, fps=fps)


def render_job(models, args, job: PreparedJob, progress=None) -> dict:
    """Stream `job` through `models` with `args`' settings into `job.out` (a temporary beside it, renamed when
    complete). Ctrl-C (SIGTERM, SIGHUP) raises Interrupted after leaving `job.out` as it was (`args.keep_partial`:
    the frames made so far go to OUT.partial.mp4). Returns the summary `rain animate --json` prints, less the model."""
    import torch

    from ..io.video import VideoSink
    from ..stream import RainStream

    out = job.out
    keep_partial = getattr(args, "keep_partial", False)
    sink = VideoSink(out, fps=job.fps, overwrite_frames=getattr(args, "overwrite_frames", False))
    stream = RainStream(models, stream_config(args))
    reference_started = time.perf_counter()
    stream.set_reference(job.reference)
    start = time.perf_counter()
    reference_memory, tick_seconds = memory_gib(), []
    try:
        count, interrupted = run_stream_to_sink(stream, job.frames, sink, args.max_frames, progress,
                                                flush_on_interrupt=keep_partial, tick_seconds=tick_seconds)
        if interrupted:
            by = "" if interrupted == signal.SIGINT else f" by {signal_name(interrupted)}"
            if keep_partial and sink.frames_written:
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
    warm_up = stream.config.levels - 1  # ticks before the window is full: no frame leaves yet
    steady = tick_seconds[warm_up:]
    return {"output": str(written), "frames": stats["frames_out"], "fps": stats["frames_out"] / seconds,
            "seconds": seconds, "output_fps": job.fps, "size": [args.height, args.width],
            "ms_per_tick": stats["mean_ms_per_tick"], "latency_frames": stats["latency_frames"],
            "dtype": str(models.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "reference_seconds": start - reference_started,
            # every push of m frames (one tick), warm-up first: wall seconds, and CPU seconds of this process
            "tick_seconds": [wall for wall, _ in tick_seconds], "tick_cpu_seconds": [cpu for _, cpu in tick_seconds],
            "steady_seconds_per_tick": _median([wall for wall, _ in steady]),  # median after warm-up
            "steady_cpu_seconds_per_tick": _median([cpu for _, cpu in steady]),
            "memory_gib": {"reference": reference_memory, "end": memory_gib()}}


def _median(values: list) -> float | None:
    return sorted(values)[len(values) // 2] if values else None
