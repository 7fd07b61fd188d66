"""`rain demo`: the built-in tiny model animates a held-out synthetic character → video, fps, latency, PSNR."""

from __future__ import annotations

import os
import time

from .common import (
    EXIT_OK,
    MODEL_HELP,
    UsageError,
    add_output_flags,
    add_stream_flags,
    claim_output,
    emit,
    load_models,
    model_folder_size,
    positive_int,
    stream_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="built-in tiny model + a synthetic character → video, with fps, latency, PSNR")
    add_output_flags(p, what=f"the video (default: {DEFAULT_OUT}; an existing {DEFAULT_OUT} is replaced only when "
                     "an earlier `rain demo` wrote it)")
    p.add_argument("--model", default=None, help=MODEL_HELP + " (default: the built-in model)")
    p.add_argument("--frames", type=int, default=96, help="pose frames to animate")
    p.add_argument("--size", type=positive_int, default=None,
                   help="square size, sets --height and --width (default: the model's own, 64 for the built-in)")
    p.add_argument("--character", type=int, default=0, help="held-out character index")
    p.add_argument("--motion", type=int, default=0, help="held-out motion index")
    p.add_argument("--motion-kind", choices=["walk", "dance", "wave", "turn", "jump"], default=None)
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--scale", type=int, default=4, help="enlarge frames in the video for viewing")
    p.add_argument("--no-side-by-side", dest="side_by_side", action="store_false",
                   help="write only the animation (default: pose | RAIN | ground truth panels)")
    p.add_argument("--json", action="store_true")
    add_stream_flags(p)
    p.set_defaults(handler=run)


def _upscale(frames, scale: int):
    """Nearest-neighbour enlargement so a 64-px demo is watchable; float (N, H, W, 3) in [0, 1]."""
    import numpy as np

    if scale <= 1:
        return frames
    return np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)


TICK_NAMES = {"compile": "compiled", "graph": "CUDA-graph"}
DEFAULT_OUT = "rain-demo.mp4"
DEMO_COMMENT = "written by rain demo"  # container metadata: marks a file the default output may replace


def _default_output_problem(path: str) -> str | None:
    """`rain demo` without --out writes rain-demo.mp4 in the working folder: a file the user did not name. It
    replaces an earlier demo video (tagged in its metadata), never another file of that name."""
    if not os.path.lexists(path):
        return None
    try:
        import av

        with av.open(path) as container:
            if container.metadata.get("comment") == DEMO_COMMENT:
                return None
    except Exception:  # not a video at all
        pass
    return (f"{path} exists and was not written by `rain demo`; rain replaces only what you name as the output. "
            f"Pass --out {path} to replace it, or --out another name")


def run(args) -> int:
    """Built-in tiny model + a held-out synthetic character and motion → video, with PSNR against ground truth."""
    if args.out is None:
        problem = _default_output_problem(DEFAULT_OUT)
        if problem:
            raise UsageError(problem)
        args.out = DEFAULT_OUT
    if args.size:
        args.height = args.width = args.size
    height, width = args.height, args.width = model_folder_size(args)
    # the output first: a folder that takes no file or a second writer is found before any model loads
    with claim_output(args, args.frames, height, width * (3 if args.side_by_side else 1) * args.scale**2) as claim:
        return _render(args, claim.path, height, width)


def _render(args, out, height: int, width: int) -> int:
    import numpy as np
    import torch

    from ..io.video import VideoSink
    from ..metrics import psnr
    from ..stream import RainStream
    from ..synthetic import SyntheticWorld, render_character, render_skeleton

    models, folder = load_models(args)
    world = SyntheticWorld(seed=args.world_seed)
    character = world.character(world.ids("heldout", 1, start=args.character)[0])
    motion = world.motion(world.ids("heldout", 1, start=args.motion)[0], kind=args.motion_kind)
    reference = render_character(character, world.reference_pose(character), height, width).astype(np.float32) / 255
    poses = world.clip_poses(character, motion, args.frames, fps=args.fps or 12.0)

    stream = RainStream(models, stream_config(args))
    stream.set_reference(reference)
    psnrs, copy_psnrs, shown = [], [], 0
    start = time.perf_counter()
    comment = DEMO_COMMENT if out.suffix.lower() in (".mp4", ".m4v", ".mov", ".webm") else None
    with VideoSink(out, fps=args.fps or 12.0, overwrite_frames=args.overwrite_frames, comment=comment) as sink:

        def emit_frames(frames):
            nonlocal shown
            frames = frames.numpy()
            panels = []
            for frame in frames:
                truth = render_character(character, poses[shown], height, width).astype(np.float32) / 255
                skeleton = render_skeleton(poses[shown], height, width).astype(np.float32) / 255
                psnrs.append(psnr(frame, truth))
                copy_psnrs.append(psnr(reference, truth))
                panels.append(np.concatenate([skeleton, frame, truth], axis=1) if args.side_by_side else frame)
                shown += 1
            if panels:
                sink.write(_upscale(np.stack(panels), args.scale))

        chunk = args.frames_per_cohort
        for index in range(0, len(poses), chunk):
            batch = np.stack([render_skeleton(p, height, width) for p in poses[index:index + chunk]])
            emit_frames(stream.push(batch.astype(np.float32) / 255))
        emit_frames(stream.flush())
    seconds = time.perf_counter() - start
    written = sink.output_path
    stats = stream.stats
    summary = {
        "output": str(written), "model": str(folder), "frames": shown, "size": [height, width],
        "fps": shown / seconds, "ms_per_tick": stats["mean_ms_per_tick"], "latency_frames": stats["latency_frames"],
        "latency_s_at_input_fps": stats["latency_frames"] / (args.fps or 12.0) + (stats["mean_ms_per_tick"] or 0) / 1000,
        "psnr_db": float(np.mean(psnrs)), "copy_reference_psnr_db": float(np.mean(copy_psnrs)),
        "character": character.id, "motion": f"{motion.kind} #{motion.id}", "fast_path": stats["fast_path"],
        "threads": torch.get_num_threads(),
    }
    lines = [
        f"wrote {written} ({shown} frames, {height}×{width}, panels: pose | RAIN | ground truth)"
        if args.side_by_side else f"wrote {written} ({shown} frames, {height}×{width})",
        f"speed: {summary['fps']:.1f} fps end to end, {summary['ms_per_tick'] or 0:.1f} ms per tick "
        f"({args.levels}×{args.frames_per_cohort} window, {args.steps} steps; {TICK_NAMES.get(summary['fast_path'], summary['fast_path'])} tick, "
        f"{summary['threads']} thread{'s' if summary['threads'] > 1 else ''})",
        f"latency: {summary['latency_frames']} frames + compute ≈ {summary['latency_s_at_input_fps']:.2f} s at "
        f"{args.fps or 12.0:g} fps input",
        f"PSNR vs ground truth: {summary['psnr_db']:.2f} dB (copying the reference: "
        f"{summary['copy_reference_psnr_db']:.2f} dB) — held-out character {character.id}, {summary['motion']}",
    ]
    emit(args, summary, lines)
    return EXIT_OK
