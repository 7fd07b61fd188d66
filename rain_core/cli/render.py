"""One render job: a reference image + a pose source + stream settings → an output file.

The one path `rain animate` and `rain batch`'s workers both take (same checks, same frames, same atomic output), in
two halves: `prepare_job` refuses bad inputs before any model runs (animate loads the model only after it), and
`render_job` streams the poses through a loaded model into the output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..inputs import is_keypoint_source
from .common import (
    Interrupted,
    UsageError,
    apply_umask,
    check_output_path,
    check_pose_frames,
    check_reference,
    model_folder_size,
    partial_path,
    pose_frames,
    read_image,
    run_stream_to_sink,
    stream_config,
)


@dataclass
class PreparedJob:
    """A job's inputs, checked: the reference image, the pose frames (an iterator, first frames already read), fps."""

    out: Path
    reference: Any
    frames: Any
    fps: float


def input_fps(poses: Path) -> float | None:
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


def prepare_job(args) -> PreparedJob:
    """Check `args.reference`, `args.poses`, `args.out` and fill in the model's own size; raises UsageError (or the
    input path's own ValueError) with the message the user sees."""
    out = check_output_path(args.out)
    poses = Path(args.poses)
    if not poses.exists():
        raise UsageError(f"--poses {args.poses}: not found; expected a pose video, a folder of pose images, "
                         "or a POSE_KEYPOINT / OpenPose .json")
    args.height, args.width = model_folder_size(args)
    reference = check_reference(read_image(args.reference, args.height, args.width), args.reference)
    fps = args.fps or input_fps(poses) or 16.0
    frames = pose_frames(args, args.height, args.width)
    if not is_keypoint_source(poses):
        frames = check_pose_frames(frames, args.poses, getattr(args, "pose_check", True))
    return PreparedJob(out=out, reference=reference, frames=frames, fps=fps)


def render_job(models, args, job: PreparedJob, progress=None) -> dict:
    """Stream `job` through `models` with `args`' settings into `job.out` (temporary file beside it, renamed when
    complete). Ctrl-C raises Interrupted after leaving `job.out` as it was (`args.keep_partial`: the frames made so
    far go to OUT.partial.mp4). Returns the summary `rain animate --json` prints, less the model."""
    from ..stream import RainStream
    from ..video import VideoSink

    keep_partial = getattr(args, "keep_partial", False)
    stream = RainStream(models, stream_config(args))
    stream.set_reference(job.reference)
    start = time.perf_counter()
    sink = VideoSink(job.out, fps=job.fps)
    try:
        count, interrupted = run_stream_to_sink(stream, job.frames, sink, args.frames_per_cohort, args.max_frames,
                                                progress, flush_on_interrupt=keep_partial)
        if interrupted:
            if keep_partial and sink.frames_written:
                sink.output_path = partial_path(sink.output_path)  # the sink renames its temporary file to this
                kept = sink.close()
                apply_umask(kept)
                raise Interrupted(f"interrupted after {count} pose frames; the {sink.frames_written} frames made so "
                                  f"far are in {kept}; {job.out} was not changed.")
            raise Interrupted(f"interrupted after {count} pose frames; nothing written, {job.out} was not changed "
                              "(--keep-partial keeps the frames made so far).")
        if count == 0:
            raise UsageError(f"--poses {args.poses}: no pose frames found")
        written = sink.close()
    except BaseException:
        sink.abort()  # a failed or interrupted run leaves an existing output as it was (no-op once closed)
        raise
    apply_umask(written)
    seconds = time.perf_counter() - start
    stats = stream.stats
    return {"output": str(written), "frames": stats["frames_out"], "fps": stats["frames_out"] / seconds,
            "seconds": seconds, "output_fps": job.fps, "size": [args.height, args.width],
            "ms_per_tick": stats["mean_ms_per_tick"], "latency_frames": stats["latency_frames"]}
