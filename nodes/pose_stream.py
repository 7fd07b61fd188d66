"""Pose Stream: turns pose images, POSE_KEYPOINT, a pose video or detected video frames into RAIN pose frames."""

from __future__ import annotations

import os

import numpy as np

from ..rain_core.io.inputs import POSE_CHECK_FRAMES, check_pose_render, uint8_frames
from . import host
from .convert import PoseBatch, image_batch

FACE_SLIDERS = {  # name: (default, min, max, tooltip) — defaults are the authors' live demo (rain-method.md §3)
    "face_length": (0.75, 0.1, 3.0, "Face height ratio (anime faces are shorter)."),
    "eye_height": (3.0, 0.1, 6.0, "Eye opening ratio (anime eyes are taller)."),
    "eye_width": (1.6, 0.1, 4.0, "Eye width ratio."),
    "mouth_height": (1.2, 0.1, 4.0, "Mouth opening ratio."),
    "mouth_width": (0.67, 0.1, 4.0, "Mouth width ratio (anime mouths are narrower)."),
    "jaw_width": (0.9, 0.1, 3.0, "Jaw width ratio."),
}
WEBCAM_PREFIX = "webcam"
NO_VIDEO = "none"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
DEFAULT_FPS = 16.0  # RAIN's demo rate: used for pose images that come with no frame rate
PREVIEW_FRAMES = 16  # a video read longer than this stays on disk until the sampler reads it; the preview shows these

# Per client and node: where a looping video or webcam stands (live sources only). The position moves on only
# when the run that used the poses succeeded (see PoseBatch.commit).
_live_state: dict[str, dict] = {}
_fps_cache: dict[tuple, float] = {}


def _no_video(video_path) -> bool:
    return not str(video_path or "").strip() or str(video_path).strip() == NO_VIDEO


def _resolve(video_path: str) -> str:
    """A relative video_path names a file in ComfyUI's input folder; "none" / "" is no video."""
    if _no_video(video_path):
        return ""
    path = video_path.strip()
    if not path.lower().startswith(WEBCAM_PREFIX) and not os.path.isabs(path):
        path = str(host.input_directory() / path)
    return path


def video_choices() -> list[str]:
    """The video_path list: no video, the webcam, then the videos in ComfyUI's input folder."""
    folder = host.input_directory()
    try:
        videos = sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
    except OSError:
        videos = []
    return [NO_VIDEO, WEBCAM_PREFIX] + videos


def _video_fps(path: str) -> float:
    """The frame rate a video file's container states (read once per file version), or DEFAULT_FPS."""
    key = (path, os.path.getmtime(path))
    if key not in _fps_cache:
        import av

        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                _fps_cache[key] = float(rate) if rate else DEFAULT_FPS
        except (av.FFmpegError, IndexError):
            _fps_cache[key] = DEFAULT_FPS
    return _fps_cache[key]


_decoded_videos = None


def _video_cache():
    """Decoded pose videos shared by every Pose Stream in the process: a live workflow reads 4 frames of the same
    short clip each run, and decoding them from the file each time cost an eighth of a tick (rain_core.io.video)."""
    global _decoded_videos
    if _decoded_videos is None:
        from ..rain_core.io.video import DecodedVideoCache

        _decoded_videos = DecodedVideoCache()
    return _decoded_videos


def _clip_frames(clip):
    """(images, preview) of a video clip: a short clip is read at once (images, shown whole in pose_preview, as
    before); a longer one stays a clip the sampler decodes chunk by chunk (images None), and pose_preview shows its
    first PREVIEW_FRAMES frames, so no output of this node grows with the video's length."""
    if len(clip) <= PREVIEW_FRAMES:
        images = uint8_frames(clip.read())
        return images, images
    chunks = clip.chunks(PREVIEW_FRAMES)
    try:
        return None, uint8_frames(next(chunks))
    finally:
        chunks.close()  # closes the file now, not whenever the generator is collected


def _video_file(video) -> str | None:
    """The file behind a core VIDEO (Load Video's VideoFromFile names it through get_stream_source()), or None for
    videos that exist only in memory, which are then read through get_components()."""
    source = getattr(video, "get_stream_source", None)
    try:
        file = source() if callable(source) else None
    except Exception:  # noqa: BLE001 - another VIDEO implementation: fall back to its components
        return None
    return file if isinstance(file, str) and os.path.isfile(file) else None


def _poses_are_taken(prompt, unique_id) -> bool:
    """Whether any node of this prompt takes this node's `poses` output (output 0), read from the prompt's links.

    Why this, for when a live position moves on: the position is always handed to the consumer of the poses, as
    part of the RAIN_POSES value (`PoseBatch.commit`, which RAIN Sampler calls after a run that succeeded; a
    cancelled or failed run never calls it, so the next run reads the same poses again). That is ComfyUI's own
    contract between nodes: a value and whoever receives it. The only graph where nobody would ever commit is one
    where nothing takes the poses (e.g. only pose_preview is shown, to watch a camera): there the position moves on
    at once. Which graph this is follows from the links alone (the hidden PROMPT's `[node id, output]` pairs), not
    from what kind of node is on the other end, so any node that takes RAIN_POSES works the same way. A consumer
    that took the poses but never started (a Cancel between the two nodes) leaves them uncommitted: they are read
    again, as for a failed run. Deciding at the next run instead ("commit whatever nobody claimed") would skip
    those poses in that case, which is why it is not done."""
    if not isinstance(prompt, dict) or unique_id is None:
        return False
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for value in (inputs or {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(unique_id) and value[1] == 0:
                return True
    return False


def _detector(node_id=None):
    """One DWPose detector per process (its onnxruntime sessions are cached); files in models/rain/dwpose.

    Missing files are fetched from yzd-v/DWPose on first use, with ComfyUI's progress bar, as comfyui_controlnet_aux
    does for its preprocessors (HF_HUB_OFFLINE=1 turns that off; `rain download --what dwpose` does it ahead of time)."""
    from ..rain_core import pose as rain_pose
    from ..rain_core.pose.detector import _import_onnxruntime

    folders = [folder / "dwpose" for folder in host.model_folders("rain")]
    folder = next((f for f in folders if f.is_dir()), folders[0] if folders else None)
    key = str(folder)
    if key not in _detectors:
        _import_onnxruntime()  # what to install comes first: no 200 MB download for a detector that cannot run
        try:
            _detectors[key] = rain_pose.DWPoseDetector(folder)
        except rain_pose.DetectorUnavailable as missing:
            _detectors[key] = rain_pose.DWPoseDetector(_download_detector(missing, node_id))
    return _detectors[key]


def _download_detector(missing: Exception, node_id=None):
    from ..rain_core.loading import download
    from ..rain_core.pose import DetectorUnavailable

    if download.offline():
        raise DetectorUnavailable(f"{missing} (HF_HUB_OFFLINE is set, so it was not downloaded; unset it, or run "
                                  "`rain download --what dwpose --models-dir <ComfyUI>/models` where there is a network)"
                                  ) from missing
    return host.download_into_models(["dwpose"], node_id)["dwpose"]


_detectors: dict[str, object] = {}


def _read_webcam(path: str, count: int, state: dict):
    """`count` frames (uint8 RGB) from the camera named by 'webcam' / 'webcam:N'; the camera stays open across runs."""
    from ..rain_core.io.video import open_pose_source

    index_text = path.split(":", 1)[1] if ":" in path else "0"
    if not index_text.strip().isdigit():
        raise ValueError(f"video_path: {path!r}: expected 'webcam' or 'webcam:N' with a camera index N")
    index = int(index_text)
    if state.get("camera_index") != index:
        if state.get("camera") is not None:
            state["camera"].close()
        state["camera"] = open_pose_source(index, as_uint8=True)
        state["camera_index"] = index
    frames = []
    for frame in state["camera"]:
        frames.append(frame)
        if len(frames) >= max(count, 1):
            break
    if not frames:
        raise RuntimeError(f"video_path: camera {index} gave no frame")
    return np.stack(frames)


def _is_live(video_path: str, loop: bool) -> bool:
    return video_path.strip().lower().startswith(WEBCAM_PREFIX) or (bool(video_path.strip()) and loop)


class PoseStream:
    CATEGORY = "RAIN"
    DESCRIPTION = ("Prepares the pose frames RAIN Sampler follows. Sources: rendered pose images (IMAGE), "
                   "POSE_KEYPOINT from comfyui_controlnet_aux (DWPose / OpenPose), a rendered pose video read "
                   "frame by frame from video_path (optionally looping: a live source for Auto Queue), or video "
                   "frames / a webcam through the optional DWPose detector. Mode body draws the DWPose skeleton; "
                   "face-morph draws the anime face dots of the authors' live demo.")
    RETURN_TYPES = ("RAIN_POSES", "IMAGE")
    RETURN_NAMES = ("poses", "pose_preview")
    OUTPUT_TOOLTIPS = ("Pose frames for RAIN Sampler. A pose video is read from its file while the sampler runs, a "
                       "few frames at a time: any length fits in memory.",
                       f"The pose frames as drawn, for a Preview Image node (of a video read longer than "
                       f"{PREVIEW_FRAMES} frames: its first {PREVIEW_FRAMES}).")
    FUNCTION = "prepare"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "mode": (["body", "face-morph"], {
                "default": "body",
                "tooltip": "body: DWPose skeleton (body, hands, face points). face-morph: the face landmarks "
                           "remapped to anime proportions, drawn as 26 dots (needs keypoints, not pose images)."}),
            "video_path": (video_choices(), {
                "default": NO_VIDEO,
                "video_upload": True,
                "tooltip": "Optional: a rendered pose video (skeleton on black) from ComfyUI's input folder (upload "
                           "one with the button), read frame by frame at its own frame rate; an absolute path also "
                           "works in the API. Or 'webcam' / 'webcam:1' for a camera (needs the detector). none: use "
                           "the connected input."}),
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                                    "tooltip": "First frame of video_path to read."}),
            "frames_per_run": ("INT", {"default": 0, "min": 0, "max": 100_000,
                                       "tooltip": "Frames read from video_path per run; 0 = the whole video. With "
                                                  "loop on, each run continues where the last one stopped."}),
            "loop": ("BOOLEAN", {"default": False,
                                 "tooltip": "Treat video_path as an endless live source: each run reads the next "
                                            "frames_per_run frames, wrapping at the end (use with Auto Queue)."}),
            "smoothing": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.95, "step": 0.05,
                                    "tooltip": "Temporal damping of keypoints: 0 = off, higher = smoother but "
                                               "laggier. Keypoint sources only (rendered pose images are used as "
                                               "they are)."}),
            "align_to_reference": ("BOOLEAN", {
                "default": False,
                "tooltip": "Scale and move the poses so the body fits the reference character (needs "
                           "reference_pose and keypoint input)."}),
        }
        for name, (default, low, high, tip) in FACE_SLIDERS.items():
            required[name] = ("FLOAT", {"default": default, "min": low, "max": high, "step": 0.01,
                                        "tooltip": f"face-morph: {tip}"})
        return {
            "required": required,
            "optional": {
                "pose_images": ("IMAGE", {"tooltip": "Rendered pose images (skeletons on black), e.g. a pose "
                                                     "video from VideoHelperSuite's Load Video (connect its fps to "
                                                     "fps too)."}),
                "video": ("VIDEO", {"tooltip": "A rendered pose video (core Load Video's VIDEO); its frame rate "
                                               "travels with the poses."}),
                "fps": ("FLOAT", {"forceInput": True, "default": DEFAULT_FPS, "min": 0.0, "max": 240.0,
                                  "tooltip": "Frame rate of pose_images / pose_keypoint / video_frames (e.g. "
                                             "Get Video Components' fps). Without it: 16 fps."}),
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "Keypoints from DWPose Estimator / OpenPose Pose "
                                                               "(comfyui_controlnet_aux)."}),
                "video_frames": ("IMAGE", {"tooltip": "Ordinary video frames; poses are detected with DWPose "
                                                      "(needs onnxruntime; the DWPose files are fetched into "
                                                      "models/rain/dwpose on first use)."}),
                "reference_pose": ("POSE_KEYPOINT", {"tooltip": "Keypoints of the reference character, for "
                                                                "align_to_reference."}),
                "pose_check": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Refuse pose images or a pose video that look like camera footage instead of "
                               "rendered skeletons (their animation would be colour noise). Turn off only for an "
                               "unusual render (e.g. skeletons on a light background)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, video_path=NO_VIDEO):
        # Taking video_path here replaces ComfyUI's list check for it: absolute paths and webcam:N are valid too.
        if _no_video(video_path) or str(video_path).strip().lower().startswith(WEBCAM_PREFIX):
            return True
        path = _resolve(video_path)
        if not os.path.isfile(path):
            return (f"video_path: no file at {path!r}. Choose a video from the list (or upload one), give the full "
                    "path of a rendered pose video, or choose none to use a connected input.")
        return True

    @classmethod
    def IS_CHANGED(cls, video_path="", loop=False, start_frame=0, frames_per_run=0, **_):
        # A live source yields new frames every run: NaN never equals itself, so ComfyUI always re-runs it.
        if _is_live(video_path, loop):
            return float("nan")
        path = _resolve(video_path)
        return f"{path}|{os.path.getmtime(path) if path and os.path.exists(path) else ''}|{start_frame}|{frames_per_run}"

    def prepare(self, mode, video_path, start_frame, frames_per_run, loop, smoothing, align_to_reference,
                pose_images=None, pose_keypoint=None, video_frames=None, reference_pose=None, video=None, fps=None,
                pose_check=True, unique_id=None, prompt=None, **face_sliders):
        from ..rain_core import pose as rain_pose

        live = _is_live(video_path, loop)
        state = _live_state.setdefault(host.state_key("poses", unique_id), {}) if live else {}
        frames = images = clip = preview = None
        commit = None
        source_fps = float(fps) if fps else DEFAULT_FPS
        path = _resolve(video_path)
        if path.lower().startswith(WEBCAM_PREFIX):
            detector = _detector(unique_id)  # fails first, with what to install, before the camera is opened
            camera_frames = _read_webcam(path, frames_per_run or 4, state)
            frames = [detector(frame) for frame in camera_frames]
        elif path:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"video_path: no file at {path!r}. Give the full path of a rendered pose "
                                        "video, or leave it empty to use a connected input.")
            if state.get("path") != path:
                state.update(path=path, position=start_frame)
            first = state["position"] if live else start_frame
            clip = _video_cache().clip(path, first, frames_per_run, loop, name="video_path")
            if live:
                def commit(state=state, path=path, position=clip.next_start):
                    if state.get("path") == path:
                        state["position"] = position
            images, preview = _clip_frames(clip)
            source_fps = _video_fps(path)
        elif video is not None:
            if not hasattr(video, "get_components"):
                raise ValueError(f"video: expected a VIDEO (core Load Video), found {type(video).__name__}.")
            file = _video_file(video)
            if file:  # read from its file as the sampler consumes it, as video_path is
                clip = _video_cache().clip(file, 0, 0, False, name="video")
                images, preview = _clip_frames(clip)
                source_fps = _video_fps(file)
            else:
                components = video.get_components()
                images = image_batch(components.images, "video")
                source_fps = float(components.frame_rate) or DEFAULT_FPS
        elif pose_keypoint is not None:
            frames = rain_pose.from_pose_keypoint(pose_keypoint)
        elif pose_images is not None:
            images = image_batch(pose_images, "pose_images")
        elif video_frames is not None:
            detector = _detector(unique_id)
            frames = [detector(frame) for frame in image_batch(video_frames, "video_frames").numpy()]
        else:
            raise ValueError("Pose Stream: no pose source. Connect pose_images, pose_keypoint, video or "
                             "video_frames, or choose a video_path.")
        if not (frames or images is not None and images.shape[0] or clip is not None and len(clip)):
            raise ValueError("Pose Stream: the pose source gave no frames.")
        first_images = images if images is not None else preview
        if first_images is not None and pose_check:
            source = "video_path" if path else "video" if video is not None else "pose_images"
            check_pose_render(first_images[:POSE_CHECK_FRAMES].numpy(), source)  # the one check, as the CLI's

        if frames is not None:
            # Confidence threshold, hold-last for missing keypoints, and the damping.
            frames = rain_pose.PoseTracker(damping=float(smoothing)).run(frames)
        if align_to_reference:
            if frames is None or reference_pose is None:
                raise ValueError("align_to_reference: needs keypoints (pose_keypoint) and reference_pose (the "
                                 "reference character's keypoints, e.g. DWPose Estimator on the reference image).")
            frames = rain_pose.align_to_reference(frames, rain_pose.from_pose_keypoint(reference_pose)[0])

        render_options = {"mode": mode}
        if mode == "face-morph":
            if frames is None:
                raise ValueError("mode: face-morph needs keypoints (pose_keypoint), not rendered pose images: the "
                                 "face landmarks are remapped before drawing. Connect DWPose Estimator's "
                                 "POSE_KEYPOINT, or use mode body.")
            render_options["face_morph"] = {name: float(face_sliders[name]) for name in FACE_SLIDERS}
        if commit is not None and not _poses_are_taken(prompt, unique_id):
            commit()  # nothing takes the poses, so nothing will confirm the run: move on now
            commit = None
        batch = PoseBatch(frames=frames, images=images, clip=None if images is not None else clip, live=live,
                          render_options=render_options, fps=source_fps, on_commit=commit)
        if frames is not None:
            canvas = frames[0]
            preview = batch.render(canvas.canvas_height, canvas.canvas_width)
        elif preview is None:
            preview = images
        return (batch, preview)
