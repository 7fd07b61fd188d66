"""`rain live`: webcam / video file / screen → live animation, in a window or into a file."""

from __future__ import annotations

import contextlib
import signal
import time

from ..cpu import allow_background_compile
from .common import (
    EXIT_OK,
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
    model_folder_size,
    positive_int,
    read_image,
    run_stream_to_sink,
    signal_name,
    stream_config,
)

SCREEN_EXTRA = "pip install 'comfyui-rain[screen]' (or pip install mss)"


def add_parser(sub) -> None:
    p = sub.add_parser("live", help="webcam / video / screen → live animation (window or --out file)")
    add_model_flags(p)
    p.add_argument("--reference", required=True)
    p.add_argument("--source", default="0", help="webcam index, video file, or 'screen'")
    p.add_argument("--poses", choices=["skeleton", "detector"], default="skeleton",
                   help="skeleton: the source already shows rendered poses; detector: run DWPose on it")
    p.add_argument("--dwpose-dir", default=None, help="folder with the DWPose ONNX files (default: models/rain/dwpose; "
                   "`rain download --what dwpose` fetches them)")
    p.add_argument("--loop", action="store_true", help="loop a video file source")
    add_output_flags(p, what="write here instead of a window")
    p.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many source frames")
    p.add_argument("--no-pose-check", dest="pose_check", action="store_false",
                   help="with --poses skeleton, do not refuse a source that does not look like rendered skeletons")
    p.add_argument("--json", action="store_true")
    add_stream_flags(p)
    p.set_defaults(handler=run)


def _live_source(args, height: int, width: int):
    """Frames of the live source as float (H, W, 3): a webcam index, a video file (optionally looped) or the screen."""
    import numpy as np

    from ..io.video import open_pose_source

    if args.source == "screen":
        try:
            import mss  # optional: screen capture
        except ImportError:
            raise UsageError(f"--source screen needs the optional package mss: {SCREEN_EXTRA}") from None
        from ..io.video import letterbox

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


def _source_fps(args) -> float | None:
    """The frame rate the source reports (a video file's, a webcam's when it says), else None."""
    from ..io.video import VideoSourceError, open_pose_source

    if args.source == "screen":
        return None
    source = int(args.source) if str(args.source).isdigit() else args.source
    try:
        probe = open_pose_source(source)
    except VideoSourceError:
        return None  # opening the source for frames reports the problem
    try:
        fps = getattr(probe, "fps", None)
        return fps if fps and fps > 0 else None
    finally:
        probe.close()


def _detector(args):
    from ..pose import DWPoseDetector
    from ..pose.detector import DetectorUnavailable

    try:
        return DWPoseDetector(args.dwpose_dir) if args.dwpose_dir else DWPoseDetector()
    except DetectorUnavailable as error:
        reason = str(error).replace("folder configurable with folder=", "another folder: --dwpose-dir FOLDER")
        raise UsageError(f"--poses detector: {reason} `rain download --what dwpose` fetches the ONNX files into "
                         "models/rain/dwpose.") from None


def window_problem() -> str | None:
    """Why `rain live` cannot show its window, asked before OpenCV tries (its Qt GUI aborts the whole process when
    there is no display), or None."""
    import os
    import re
    import sys

    import cv2

    gui = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if gui is None or gui.group(1).upper() == "NONE":
        return (f"this OpenCV ({cv2.__version__}) has no GUI (opencv-python-headless?); pip install opencv-python, "
                "the build the pack requires")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set: a server or an SSH session without -X?)"
    return None


def run(args) -> int:
    height, width = args.height, args.width = model_folder_size(args)
    # the output first: a folder that takes no file or a second writer is found before any model loads
    frames = args.max_frames if args.max_frames and not str(args.source).isdigit() else None
    with claim_output(args, frames, height, width) if args.out else contextlib.nullcontext() as claim:
        return _run(args, claim.path if claim is not None else None)


def _run(args, out) -> int:
    import numpy as np

    from ..io.video import VideoSink
    from ..stream import RainStream

    # a live run is a long-lived host: it may build the compiled tick in the background while it runs (the
    # builder ends with this process)
    allow_background_compile()
    height, width = args.height, args.width
    window = out is None
    if window:
        import cv2

        problem = window_problem()
        if problem is None:
            try:
                cv2.namedWindow("rain live")
            except cv2.error as error:
                problem = f"OpenCV could not open one ({str(error).strip().splitlines()[-1][:200]})"
        if problem:
            raise UsageError(f"no window can be opened here: {problem}; pass --out FILE.mp4 to write the stream to "
                             "a file instead") from None
    reference = check_reference(read_image(args.reference, height, width), args.reference)
    detector = _detector(args) if args.poses == "detector" else None
    fps = args.fps or _source_fps(args) or 16.0
    frames = _live_source(args, height, width)
    if detector is None:
        frames = check_pose_frames(frames, f"skeleton (--source {args.source})", args.pose_check)
    models, _ = load_models(args)
    stream = RainStream(models, stream_config(args))
    stream.set_reference(reference)

    def poses():
        from ..pose import render_pose

        for frame in frames:
            if detector is None:
                yield frame
            else:
                people = detector((frame * 255).astype(np.uint8))
                yield render_pose(people, height, width).astype(np.float32) / 255

    sink = VideoSink(out, fps=fps, overwrite_frames=args.overwrite_frames) if out else None
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
        # Ctrl-C is how a live run ends: the frames in flight are flushed; a second Ctrl-C skips the flush.
        _, interrupted = run_stream_to_sink(stream, poses(), target, args.max_frames, flush_on_interrupt=True)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    if sink is not None:
        apply_umask(sink.close())
    stats = stream.stats
    summary = {"output": str(sink.output_path) if sink else None, "frames": stats["frames_out"],
               "output_fps": fps if sink else None, "size": [height, width],
               "interrupted": bool(interrupted), "ms_per_tick": stats["mean_ms_per_tick"],
               "latency_frames": stats["latency_frames"]}
    emit(args, summary, [f"live: {summary['frames']} frames" + (f" → {summary['output']}" if sink else "")
                         + (f" (stopped with {signal_name(interrupted)}, flushed)" if interrupted else "")])
    # Ctrl-C is how a live run ends (0); SIGTERM / SIGHUP stop it the same way but say so in the exit code
    return EXIT_OK if interrupted in (0, signal.SIGINT) else 128 + interrupted
