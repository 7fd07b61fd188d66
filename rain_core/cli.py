"""The `rain` command: demo, animate, live, convert, bench, train, info, queue.

Exit codes: 0 ok, 2 bad input (the message says what to change), 1 internal error.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(ValueError):
    """Bad arguments or inputs detected by the command line itself."""


def _is_input_error(error: BaseException) -> bool:
    """Errors a user can fix: our own ValueError subclasses, missing files, bad arguments."""
    if isinstance(error, (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return True
    if isinstance(error, ValueError):
        module = type(error).__module__ or ""
        return module.startswith("rain_core")
    return False


def _emit(args, summary: dict, lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2, default=float))
    else:
        for line in lines:
            print(line)


def _check_output_path(path: str) -> Path:
    out = Path(path)
    folder = out if out.suffix == "" else out.parent
    parent = folder.parent if out.suffix == "" else folder
    if not parent.exists():
        raise UsageError(f"--out {path}: the folder {parent} does not exist. Create it first or choose another path.")
    return out


# --------------------------------------------------------------------------- model / stream helpers


def _add_stream_flags(parser: argparse.ArgumentParser, defaults: dict) -> None:
    group = parser.add_argument_group("stream settings")
    group.add_argument("--levels", type=int, default=defaults.get("levels", 4), help="p: noise levels (cohorts) in flight")
    group.add_argument("--frames-per-cohort", type=int, default=defaults.get("frames_per_cohort", 4),
                       help="m: frames sharing one noise level")
    group.add_argument("--steps", type=int, default=defaults.get("steps", 4), help="LCM steps per frame (multiple of --levels)")
    group.add_argument("--guidance", type=float, default=defaults.get("guidance", 3.5), help="LCM w-embedding value")
    group.add_argument("--height", type=int, default=defaults.get("height", 512))
    group.add_argument("--width", type=int, default=defaults.get("width", 512))
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--decoder", choices=["auto", "taesdv", "vae"], default="auto",
                       help="auto: TAESDV when the model has it, else the full decoder")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (auto: cuda when available)")
    group.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    group.add_argument("--fps", type=float, default=None, help="output video fps (default: the input's, or 16)")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default on CPU: half the cores)")


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _stream_config(args):
    from .stream import StreamConfig

    return StreamConfig(levels=args.levels, frames_per_cohort=args.frames_per_cohort, steps=args.steps,
                        guidance=args.guidance, height=args.height, width=args.width, seed=args.seed,
                        decoder=args.decoder)


def builtin_model_dir() -> Path:
    return Path(__file__).resolve().parent / "assets" / "tiny-rain"


# --------------------------------------------------------------------------- subcommands


def _load_models(args):
    import torch

    from .loading import load_rain

    device = _resolve_device(args.device)
    threads = getattr(args, "threads", None)
    if threads is None and device.type == "cpu":
        # Half the cores: torch's default (all of them) collapses when anything else runs beside it
        # (a tiny-model tick measured 161 ms with 1 thread and 6.5 s with 2 on a busy 2-core machine).
        threads = max(1, (os.cpu_count() or 2) // 2)
    if threads:
        torch.set_num_threads(threads)
    dtype = _resolve_dtype(args.dtype, device)
    folder = Path(args.model) if getattr(args, "model", None) else builtin_model_dir()
    models = load_rain(folder, vae=getattr(args, "vae", None), image_encoder=getattr(args, "image_encoder", None),
                       taesdv=getattr(args, "taesdv", None), device=device, dtype=dtype)
    return models, folder


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return 99.0 if mse == 0 else 10.0 * float(np.log10(1.0 / mse))


def _upscale(frames, scale: int):
    """Nearest-neighbour enlargement so a 64-px demo is watchable; float (N, H, W, 3) in [0, 1]."""
    import numpy as np

    if scale <= 1:
        return frames
    return np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)


def cmd_demo(args) -> int:
    """Built-in tiny model + a held-out synthetic character and motion → video, with PSNR against ground truth."""
    import numpy as np

    from .stream import RainStream
    from .train.synthetic import SyntheticWorld, render_character, render_skeleton
    from .video import VideoSink

    out = _check_output_path(args.out)
    models, folder = _load_models(args)
    height = width = args.size
    world = SyntheticWorld(seed=args.world_seed)
    character = world.character(world.ids("heldout", 1, start=args.character)[0])
    motion = world.motion(world.ids("heldout", 1, start=args.motion)[0], kind=args.motion_kind)
    reference = render_character(character, world.reference_pose(character), height, width).astype(np.float32) / 255
    poses = world.clip_poses(character, motion, args.frames, fps=args.fps or 12.0)

    args.height, args.width = height, width
    stream = RainStream(models, _stream_config(args))
    stream.set_reference(reference)
    psnrs, copy_psnrs, shown = [], [], 0
    start = time.perf_counter()
    with VideoSink(out, fps=args.fps or 12.0) as sink:

        def emit(frames):
            nonlocal shown
            frames = frames.numpy()
            panels = []
            for frame in frames:
                truth = render_character(character, poses[shown], height, width).astype(np.float32) / 255
                skeleton = render_skeleton(poses[shown], height, width).astype(np.float32) / 255
                psnrs.append(_psnr(frame, truth))
                copy_psnrs.append(_psnr(reference, truth))
                panels.append(np.concatenate([skeleton, frame, truth], axis=1) if args.side_by_side else frame)
                shown += 1
            if panels:
                sink.write(_upscale(np.stack(panels), args.scale))

        chunk = args.frames_per_cohort
        for index in range(0, len(poses), chunk):
            batch = np.stack([render_skeleton(p, height, width) for p in poses[index:index + chunk]])
            emit(stream.push(batch.astype(np.float32) / 255))
        emit(stream.flush())
    seconds = time.perf_counter() - start
    written = sink.output_path
    stats = stream.stats
    summary = {
        "output": str(written), "model": str(folder), "frames": shown, "size": [height, width],
        "fps": shown / seconds, "ms_per_tick": stats["mean_ms_per_tick"], "latency_frames": stats["latency_frames"],
        "latency_s_at_input_fps": stats["latency_frames"] / (args.fps or 12.0) + (stats["mean_ms_per_tick"] or 0) / 1000,
        "psnr_db": float(np.mean(psnrs)), "copy_reference_psnr_db": float(np.mean(copy_psnrs)),
        "character": character.id, "motion": f"{motion.kind} #{motion.id}",
    }
    lines = [
        f"wrote {written} ({shown} frames, {height}×{width}, panels: pose | RAIN | ground truth)"
        if args.side_by_side else f"wrote {written} ({shown} frames, {height}×{width})",
        f"speed: {summary['fps']:.1f} fps end to end, {summary['ms_per_tick'] or 0:.1f} ms per tick "
        f"({args.levels}×{args.frames_per_cohort} window, {args.steps} steps)",
        f"latency: {summary['latency_frames']} frames + compute ≈ {summary['latency_s_at_input_fps']:.2f} s at "
        f"{args.fps or 12.0:g} fps input",
        f"PSNR vs ground truth: {summary['psnr_db']:.2f} dB (copying the reference: "
        f"{summary['copy_reference_psnr_db']:.2f} dB) — held-out character {character.id}, {summary['motion']}",
    ]
    _emit(args, summary, lines)
    return EXIT_OK


def _pose_frames(args, height: int, width: int):
    """Yield pose images (H, W, 3) float in [0, 1] from a video, an image folder or POSE_KEYPOINT/OpenPose JSON."""
    import numpy as np

    from .video import open_pose_source

    source = Path(args.poses)
    if source.suffix.lower() == ".json" or (source.is_dir() and any(source.glob("*.json"))
                                             and not any(source.glob("*.png"))):
        from .pose import load_openpose_json, render_pose

        frames = load_openpose_json(source)
        for frame in frames:
            yield render_pose(frame, height, width).astype(np.float32) / 255
        return
    reader = open_pose_source(source, size=(height, width))
    try:
        for frame in reader:
            yield frame
    finally:
        close = getattr(reader, "close", None)
        if close:
            close()


def _read_image(path: str, height: int, width: int):
    """Reference image as float (H, W, 3) in [0, 1]; alpha is composited on white."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--reference {path}: file not found")
    try:
        image = Image.open(file)
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"--reference {path}: not a readable image ({error}); use a PNG or JPEG") from None
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def _run_stream_to_sink(stream, frames, sink, frames_per_cohort: int, limit: int | None, progress=None):
    """Push frames m at a time, write what comes out; Ctrl-C stops reading but still flushes what was pushed.

    Returns (pose frames read, interrupted).
    """
    import numpy as np

    batch, count, interrupted = [], 0, False

    def write(out):
        if out.shape[0]:
            sink.write(out.numpy())

    try:
        for frame in frames:
            batch.append(frame)
            count += 1
            if len(batch) == frames_per_cohort:
                write(stream.push(np.stack(batch)))
                batch = []
                if progress is not None:
                    progress.update(frames_per_cohort)
            if limit and count >= limit:
                break
    except KeyboardInterrupt:
        interrupted = True
    if batch:
        write(stream.push(np.stack(batch)))
    if count:
        write(stream.flush())
    return count, interrupted


def cmd_animate(args) -> int:
    from tqdm import tqdm

    from .stream import RainStream
    from .video import VideoSink, open_pose_source

    out = _check_output_path(args.out)
    if not Path(args.poses).exists():
        raise UsageError(f"--poses {args.poses}: not found; expected a pose video, a folder of pose images, "
                         "or a POSE_KEYPOINT / OpenPose .json")
    reference = _read_image(args.reference, args.height, args.width)
    fps = args.fps
    if fps is None:
        try:
            probe = open_pose_source(Path(args.poses)) if Path(args.poses).suffix.lower() != ".json" else None
            fps = getattr(probe, "fps", None) or 16.0
            if probe is not None and hasattr(probe, "close"):
                probe.close()
        except ValueError:
            fps = 16.0
    models, folder = _load_models(args)
    stream = RainStream(models, _stream_config(args))
    stream.set_reference(reference)
    start = time.perf_counter()
    with VideoSink(out, fps=fps) as sink, tqdm(desc="rain animate", unit="frame", disable=args.json) as bar:
        count, _ = _run_stream_to_sink(stream, _pose_frames(args, args.height, args.width), sink,
                                       args.frames_per_cohort, args.max_frames, bar)
    if count == 0:
        raise UsageError(f"--poses {args.poses}: no pose frames found")
    seconds = time.perf_counter() - start
    stats = stream.stats
    summary = {"output": str(sink.output_path), "frames": stats["frames_out"], "fps": stats["frames_out"] / seconds,
               "ms_per_tick": stats["mean_ms_per_tick"], "latency_frames": stats["latency_frames"], "model": str(folder)}
    _emit(args, summary, [f"wrote {summary['output']} ({summary['frames']} frames)",
                          f"speed: {summary['fps']:.2f} fps, {summary['ms_per_tick'] or 0:.1f} ms per tick, "
                          f"latency {summary['latency_frames']} frames + compute"])
    return EXIT_OK


def _live_source(args, height: int, width: int):
    """Frames of the live source as float (H, W, 3): a webcam index, a video file (optionally looped) or the screen."""
    import numpy as np

    from .video import open_pose_source

    if args.source == "screen":
        try:
            import mss  # optional: screen capture
        except ImportError:
            raise UsageError("--source screen needs the optional package mss: `pip install mss`") from None
        from .video import letterbox

        with mss.mss() as grabber:
            monitor = grabber.monitors[1]
            while True:
                shot = np.asarray(grabber.grab(monitor))[:, :, 2::-1].astype(np.float32) / 255
                yield letterbox(shot, height, width)[0]
    source = int(args.source) if str(args.source).isdigit() else args.source
    while True:
        reader = open_pose_source(source, size=(height, width))
        try:
            yield from reader
        finally:
            if hasattr(reader, "close"):
                reader.close()
        if not args.loop or isinstance(source, int):
            return


def cmd_live(args) -> int:
    import numpy as np

    from .stream import RainStream
    from .video import VideoSink

    height, width = args.height, args.width
    out = _check_output_path(args.out) if args.out else None
    window = out is None
    if window:
        import cv2

        try:
            cv2.namedWindow("rain live")
        except cv2.error:
            raise UsageError("no window can be opened here (opencv-python-headless has no GUI, or no display); "
                             "pass --out FILE.mp4 to write the stream to a file instead") from None
    reference = _read_image(args.reference, height, width)
    detector = None
    if args.poses == "detector":
        from .pose import DWPoseDetector, render_pose

        detector = DWPoseDetector(args.dwpose_dir) if args.dwpose_dir else DWPoseDetector()
    models, _ = _load_models(args)
    stream = RainStream(models, _stream_config(args))
    stream.set_reference(reference)

    def poses():
        for frame in _live_source(args, height, width):
            if detector is None:
                yield frame
            else:
                people = detector((frame * 255).astype(np.uint8))
                yield render_pose(people, height, width).astype(np.float32) / 255

    sink = VideoSink(out, fps=args.fps or 16.0) if out else None
    shown = 0
    start = time.perf_counter()

    class _Overlay:
        """Sink for the window: draws fps / latency on each frame."""

        def write(self, frames):
            import cv2

            nonlocal shown
            for frame in frames:
                shown += 1
                image = cv2.cvtColor((frame * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
                fps = shown / max(time.perf_counter() - start, 1e-6)
                text = f"{fps:.1f} fps  latency {stream.stats['latency_frames']} frames"
                cv2.putText(image, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
                cv2.imshow("rain live", image)
                if cv2.waitKey(1) & 0xFF == 27:
                    raise KeyboardInterrupt

    target = sink if sink is not None else _Overlay()
    try:
        _, interrupted = _run_stream_to_sink(stream, poses(), target, args.frames_per_cohort, args.max_frames)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    if sink is not None:
        sink.close()
    stats = stream.stats
    summary = {"output": str(sink.output_path) if sink else None, "frames": stats["frames_out"],
               "interrupted": interrupted, "ms_per_tick": stats["mean_ms_per_tick"],
               "latency_frames": stats["latency_frames"]}
    _emit(args, summary, [f"live: {summary['frames']} frames" + (f" → {summary['output']}" if sink else "")
                          + (" (stopped with Ctrl-C, flushed)" if interrupted else "")])
    return EXIT_OK


def cmd_bench(args) -> int:
    """Stream throughput of a model: the RAIN window against the m = 1 baseline, side by side, same run."""
    import numpy as np

    from .stream import RainStream, StreamConfig

    models, folder = _load_models(args)
    height, width = args.height, args.width
    rng = np.random.default_rng(0)
    reference = rng.random((height, width, 3), dtype=np.float32)
    poses = (rng.random((args.frames, height, width, 3), dtype=np.float32) > 0.97).astype(np.float32)
    rows = []
    settings = [("RAIN window", args.levels, args.frames_per_cohort, args.steps)]
    if args.baseline:
        settings.append(("m = 1 stream batch", args.levels, 1, args.steps))
    for name, levels, per_cohort, steps in settings:
        config = StreamConfig(levels=levels, frames_per_cohort=per_cohort, steps=steps, guidance=args.guidance,
                              height=height, width=width, seed=0, decoder=args.decoder)
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
                     "ms_per_tick": stream.stats["mean_ms_per_tick"], "latency_frames": stream.stats["latency_frames"]})
    import torch

    device = str(models.device) + (f" ({torch.cuda.get_device_name(0)})" if models.device.type == "cuda" else "")
    lines = [f"model {folder} on {device}, {height}×{width}, {args.frames} pose frames",
             f"{'mode':<20} {'fps':>8} {'ms/tick':>9} {'latency (frames)':>17}"]
    lines += [f"{r['mode']:<20} {r['fps'] or 0:>8.1f} {r['ms_per_tick'] or 0:>9.1f} {r['latency_frames']:>17}" for r in rows]
    _emit(args, {"device": device, "rows": rows}, lines)
    return EXIT_OK


def cmd_info(args) -> int:
    import platform

    import torch

    from . import __version__

    found = {}
    roots = [Path(p) for p in (args.models or [])] + [builtin_model_dir().parent]
    comfy = os.environ.get("COMFYUI_DIR")
    if comfy:
        roots.append(Path(comfy) / "models" / "rain")
    for root in roots:
        if not root.exists():
            continue
        for candidate in sorted({p.parent for pattern in ("**/*.pth", "**/*.safetensors", "**/rain_config.json")
                                 for p in root.glob(pattern)}):
            found[str(candidate)] = sorted(p.name for p in candidate.iterdir() if p.is_file())
    versions = {"rain": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for module in ("diffusers", "transformers", "safetensors", "cv2", "onnxruntime", "accelerate"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # optional packages
            versions[module] = "not installed"
    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    summary = {"versions": versions, "device": device, "model_folders": found}
    lines = [f"rain {__version__} — device: {device}"]
    lines += [f"  {k}: {v}" for k, v in versions.items()]
    lines.append("model folders found:" if found else "model folders found: none")
    for folder, files in found.items():
        lines.append(f"  {folder}: {', '.join(files)}")
    _emit(args, summary, lines)
    return EXIT_OK


def cmd_convert(args) -> int:
    from .loading import convert_official

    source, target = Path(args.source), Path(args.target)
    if not source.is_dir():
        raise UsageError(f"SOURCE {source}: expected a folder holding reference_unet.pth, motion_unet.pth and "
                         "pose_guider.pth (the authors' RAIN-v0.1 files); it does not exist or is not a folder.")
    folder = convert_official(source, target)
    files = sorted(str(p) for p in Path(folder).iterdir())
    _emit(args, {"written": files}, [f"wrote {f}" for f in files])
    return EXIT_OK


def cmd_train(args, rest: list[str]) -> int:
    from .train import train_main

    return int(train_main(rest) or 0)


def cmd_queue(args) -> int:
    from .comfy_client import (
        ComfyClient,
        JobResult,
        WorkflowError,
        apply_overrides,
        error_messages,
        parse_value,
        ui_to_api,
    )

    workflow_path = Path(args.workflow)
    if not workflow_path.is_file():
        raise UsageError(f"WORKFLOW {workflow_path}: file not found. Pass a workflow saved from ComfyUI (.json).")
    try:
        workflow = json.loads(workflow_path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"WORKFLOW {workflow_path}: not valid JSON ({error}).") from None
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected NODE.INPUT=VALUE")
        key, value = item.split("=", 1)
        overrides[key] = parse_value(value)
    sweeps = []
    for item in args.sweep or []:
        if "=" not in item:
            raise UsageError(f"--sweep {item}: expected INPUT=GLOB or NODE.INPUT=GLOB, e.g. reference=refs/*.png")
        key, pattern = item.split("=", 1)
        files = sorted(glob.glob(pattern))
        if not files:
            raise UsageError(f"--sweep {item}: the pattern matches no file")
        sweeps.append((key, [Path(f) for f in files]))

    client = ComfyClient(args.server, timeout=args.timeout)
    object_info = client.object_info()
    base_prompt = apply_overrides(ui_to_api(workflow, object_info), overrides)

    def sweep_targets(key):
        if "." in key:
            return [key]
        # bare input name: every node having that input (e.g. 'image' of LoadImage nodes, 'reference' …)
        hits = [f"{nid}.{key}" for nid, node in base_prompt.items() if key in node["inputs"]]
        if not hits:
            raise UsageError(f"--sweep {key}=…: no node in the workflow has an input named '{key}'")
        return hits

    jobs = [({}, "job")]
    for key, files in sweeps:
        targets = sweep_targets(key)
        jobs = [({**o, **{t: f for t in targets}}, f"{name}-{f.stem}") for o, name in jobs for f in files]

    out = Path(args.out)
    results: list[JobResult] = []
    for index, (sweep_values, name) in enumerate(jobs, 1):
        start = time.monotonic()
        result = JobResult(name=name, status="error")
        try:
            uploads = {key: client.upload_image(path) for key, path in sweep_values.items()}
            prompt = apply_overrides(base_prompt, uploads)
            result.prompt_id = client.queue(prompt)
            print(f"[{index}/{len(jobs)}] {name}: queued {result.prompt_id}", file=sys.stderr)
            entry = client.wait(result.prompt_id, timeout=args.job_timeout)
            if entry["status"]["status_str"] == "success":
                result.files = client.download_outputs(entry, out, prefix=f"{name}_" if len(jobs) > 1 else "")
                result.status = "success"
            else:
                result.error = error_messages(entry)
        except (WorkflowError, RuntimeError, OSError) as error:
            result.error = str(error)
        result.seconds = round(time.monotonic() - start, 2)
        print(f"[{index}/{len(jobs)}] {name}: {result.status}" + (f" — {result.error}" if result.error else
                                                                    f" — {len(result.files)} file(s)"), file=sys.stderr)
        results.append(result)
    failed = [r for r in results if r.status != "success"]
    summary = {"jobs": [r.__dict__ for r in results], "failed": len(failed)}
    _emit(args, summary, [f"{r.name}: {r.status} {r.files or r.error}" for r in results])
    return EXIT_OK if not failed else EXIT_INTERNAL


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rain", description="RAIN: animate a character from one reference "
                                     "image and an endless pose stream, in real time.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="built-in tiny model + a synthetic character → video, with fps, latency, PSNR")
    p.add_argument("--out", default="rain-demo.mp4", help="output video (.mp4) or folder for PNG frames")
    p.add_argument("--model", default=None, help="model folder (default: the built-in tiny model)")
    p.add_argument("--frames", type=int, default=96, help="pose frames to animate")
    p.add_argument("--size", type=int, default=64, help="model resolution (the tiny model is trained at 64)")
    p.add_argument("--character", type=int, default=0, help="held-out character index")
    p.add_argument("--motion", type=int, default=0, help="held-out motion index")
    p.add_argument("--motion-kind", choices=["walk", "dance", "wave", "turn", "jump"], default=None)
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--scale", type=int, default=4, help="enlarge frames in the video for viewing")
    p.add_argument("--no-side-by-side", dest="side_by_side", action="store_false",
                   help="write only the animation (default: pose | RAIN | ground truth panels)")
    p.add_argument("--json", action="store_true")
    _add_stream_flags(p, {"height": 64, "width": 64, "guidance": 3.5})

    p = sub.add_parser("animate", help="reference image + pose video/images/JSON → video")
    p.add_argument("--model", required=True, help="checkpoint folder (authors' .pth files or rain safetensors)")
    p.add_argument("--vae", default=None, help="sd-vae-ft-mse diffusers folder (default: beside the model)")
    p.add_argument("--image-encoder", default=None, help="sd-image-variations image_encoder folder")
    p.add_argument("--taesdv", default=None, help="taesdv.pth")
    p.add_argument("--reference", required=True, help="reference character image")
    p.add_argument("--poses", required=True, help="pose video, folder of pose images, or POSE_KEYPOINT/OpenPose JSON")
    p.add_argument("--out", required=True, help="output .mp4 (or a folder name for PNG frames)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--json", action="store_true")
    _add_stream_flags(p, {})

    p = sub.add_parser("live", help="webcam / video / screen → live animation (window or --out file)")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the built-in tiny model)")
    p.add_argument("--vae", default=None)
    p.add_argument("--image-encoder", default=None)
    p.add_argument("--taesdv", default=None)
    p.add_argument("--reference", required=True)
    p.add_argument("--source", default="0", help="webcam index, video file, or 'screen'")
    p.add_argument("--poses", choices=["skeleton", "detector"], default="skeleton",
                   help="skeleton: the source already shows rendered poses; detector: run DWPose on it")
    p.add_argument("--dwpose-dir", default=None, help="folder with the DWPose ONNX files")
    p.add_argument("--loop", action="store_true", help="loop a video file source")
    p.add_argument("--out", default=None, help="write to this file instead of a window")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--json", action="store_true")
    _add_stream_flags(p, {})

    p = sub.add_parser("bench", help="stream throughput: RAIN window vs the m = 1 baseline, side by side")
    p.add_argument("--model", default=None, help="model folder (default: the built-in tiny model)")
    p.add_argument("--vae", default=None)
    p.add_argument("--image-encoder", default=None)
    p.add_argument("--taesdv", default=None)
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--no-baseline", dest="baseline", action="store_false")
    p.add_argument("--json", action="store_true")
    _add_stream_flags(p, {"height": 64, "width": 64})

    p = sub.add_parser("info", help="which model files were found where, device, versions")
    p.add_argument("--models", action="append", help="extra folder to search for checkpoints (repeatable)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("convert", help="convert the authors' .pth files to safetensors (+ rain_config.json)")
    p.add_argument("source", help="folder with reference_unet.pth, motion_unet.pth, pose_guider.pth")
    p.add_argument("target", help="output folder")
    p.add_argument("--json", action="store_true")

    sub.add_parser("train", help="train or fine-tune (stages 1–3); `rain train --help` for its flags", add_help=False)

    p = sub.add_parser("queue", help="batch-render a workflow through a running ComfyUI")
    p.add_argument("workflow", help="workflow .json (UI format or API format)")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input (repeatable)")
    p.add_argument("--sweep", action="append", metavar="INPUT=GLOB", help="one job per matching file (repeatable)")
    p.add_argument("--out", default="out/queue", help="folder for downloaded outputs")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout per request (s)")
    p.add_argument("--job-timeout", type=float, default=3600.0, help="max seconds per job")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "train":
        args, rest = argparse.Namespace(command="train"), argv[1:]
    else:
        args, rest = parser.parse_args(argv), []
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    handlers = {"demo": cmd_demo, "animate": cmd_animate, "live": cmd_live, "bench": cmd_bench, "info": cmd_info,
                "convert": cmd_convert, "queue": cmd_queue}
    try:
        if args.command == "train":
            return cmd_train(args, rest)
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("rain: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one place that turns exceptions into exit codes
        if _is_input_error(error):
            print(f"rain {args.command}: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()
        print(f"rain {args.command}: internal error: {error}. Please report it with the traceback above.",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
