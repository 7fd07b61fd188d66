"""`rain animate`: a reference image and a pose video / image folder / keypoint JSON → a video."""

from __future__ import annotations

from .common import (
    EXIT_OK,
    MODEL_HELP,
    add_model_flags,
    add_output_flags,
    add_stream_flags,
    emit,
    load_models,
    memory_gib,
    positive_int,
)
from .render import prepare_job, render_job


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


def run(args) -> int:
    import time

    from tqdm import tqdm

    with prepare_job(args) as job:  # every input refused and the output claimed before the model loads
        started = time.perf_counter()
        models, folder = load_models(args)
        load_seconds, loaded_memory = time.perf_counter() - started, memory_gib()
        with tqdm(desc="rain animate", unit="frame", disable=args.json) as bar:
            summary = render_job(models, args, job, bar)
    summary.update(model=str(folder), load_seconds=load_seconds)
    summary["memory_gib"] = {"loaded": loaded_memory, **summary["memory_gib"]}
    fps = summary["output_fps"]
    emit(args, summary, [f"wrote {summary['output']} ({summary['frames']} frames, {args.height}×{args.width}, "
                         f"{fps:g} fps)",
                         f"speed: {summary['fps']:.2f} fps, {summary['ms_per_tick'] or 0:.1f} ms per tick, "
                         f"latency {summary['latency_frames']} frames + compute"])
    return EXIT_OK
