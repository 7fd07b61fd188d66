"""Pose Stream: turns pose images, POSE_KEYPOINT, a pose video or detected video frames into RAIN pose frames."""

from __future__ import annotations

import os

from . import host
from .convert import PoseBatch, image_batch, uint8_to_image

FACE_SLIDERS = {  # name: (default, min, max, tooltip) — defaults are the authors' live demo (rain-method.md §3)
    "face_length": (0.75, 0.1, 3.0, "Face height ratio (anime faces are shorter)."),
    "eye_height": (3.0, 0.1, 6.0, "Eye opening ratio (anime eyes are taller)."),
    "eye_width": (1.6, 0.1, 4.0, "Eye width ratio."),
    "mouth_height": (1.2, 0.1, 4.0, "Mouth opening ratio."),
    "mouth_width": (0.67, 0.1, 4.0, "Mouth width ratio (anime mouths are narrower)."),
    "jaw_width": (0.9, 0.1, 3.0, "Jaw width ratio."),
}
WEBCAM_PREFIX = "webcam"

# Per node: where a looping video or webcam stands, and the face morpher's history (live sources only).
_live_state: dict[str, dict] = {}


def _resolve(video_path: str) -> str:
    """A relative video_path names a file in ComfyUI's input folder."""
    path = video_path.strip()
    if path and not path.lower().startswith(WEBCAM_PREFIX) and not os.path.isabs(path):
        path = str(host.input_directory() / path)
    return path


def _detector():
    """One DWPose detector per process (its onnxruntime sessions are cached); files in models/rain/dwpose."""
    from ..rain_core import pose as rain_pose

    folders = [folder / "dwpose" for folder in host.model_folders("rain")]
    folder = next((f for f in folders if f.is_dir()), folders[0] if folders else None)
    key = str(folder)
    if key not in _detectors:
        _detectors[key] = rain_pose.DWPoseDetector(folder)
    return _detectors[key]


_detectors: dict[str, object] = {}


def _read_webcam(path: str, count: int, state: dict):
    """`count` frames (uint8 RGB) from the camera named by 'webcam' / 'webcam:N'; the camera stays open across runs."""
    import numpy as np

    from ..rain_core.video import open_pose_source

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
    OUTPUT_TOOLTIPS = ("Pose frames for RAIN Sampler.", "The pose frames as drawn, for a Preview Image node.")
    FUNCTION = "prepare"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "mode": (["body", "face-morph"], {
                "default": "body",
                "tooltip": "body: DWPose skeleton (body, hands, face points). face-morph: the face landmarks "
                           "remapped to anime proportions, drawn as 26 dots (needs keypoints, not pose images)."}),
            "video_path": ("STRING", {
                "default": "",
                "tooltip": "Optional: a rendered pose video (skeleton on black) read frame by frame; a relative name is "
                           "looked up in ComfyUI's input folder. Or "
                           "'webcam' / 'webcam:1' for a camera (needs the detector). Empty: use the connected "
                           "input."}),
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
                                                     "video loaded with Load Video → Get Video Components."}),
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "Keypoints from DWPose Estimator / OpenPose Pose "
                                                               "(comfyui_controlnet_aux)."}),
                "video_frames": ("IMAGE", {"tooltip": "Ordinary video frames; poses are detected with DWPose "
                                                      "(needs onnxruntime and the DWPose files)."}),
                "reference_pose": ("POSE_KEYPOINT", {"tooltip": "Keypoints of the reference character, for "
                                                                "align_to_reference."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, video_path="", loop=False, start_frame=0, frames_per_run=0, **_):
        # A live source yields new frames every run: NaN never equals itself, so ComfyUI always re-runs it.
        if _is_live(video_path, loop):
            return float("nan")
        path = _resolve(video_path)
        return f"{path}|{os.path.getmtime(path) if path and os.path.exists(path) else ''}|{start_frame}|{frames_per_run}"

    def prepare(self, mode, video_path, start_frame, frames_per_run, loop, smoothing, align_to_reference,
                pose_images=None, pose_keypoint=None, video_frames=None, reference_pose=None, unique_id=None,
                **face_sliders):
        from ..rain_core import pose as rain_pose
        from ..rain_core.video import read_video_frames

        live = _is_live(video_path, loop)
        state = _live_state.setdefault(str(unique_id), {}) if live else {}
        frames = images = None
        path = _resolve(video_path)
        if path.lower().startswith(WEBCAM_PREFIX):
            detector = _detector()  # fails first, with what to install, before the camera is opened
            camera_frames = _read_webcam(path, frames_per_run or 4, state)
            frames = [detector(frame) for frame in camera_frames]
        elif path:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"video_path: no file at {path!r}. Give the full path of a rendered pose "
                                        "video, or leave it empty to use a connected input.")
            if state.get("path") != path:
                state.update(path=path, position=start_frame)
            first = state["position"] if live else start_frame
            decoded, next_position, _ = read_video_frames(path, first, frames_per_run, loop, name="video_path")
            if live:
                state["position"] = next_position
            images = uint8_to_image(decoded)
        elif pose_keypoint is not None:
            frames = rain_pose.from_pose_keypoint(pose_keypoint)
        elif pose_images is not None:
            images = image_batch(pose_images, "pose_images")
        elif video_frames is not None:
            detector = _detector()
            frames = [detector(frame) for frame in image_batch(video_frames, "video_frames").numpy()]
        else:
            raise ValueError("Pose Stream: no pose source. Connect pose_images, pose_keypoint or video_frames, or "
                             "set video_path.")
        if not (frames or images is not None and images.shape[0]):
            raise ValueError("Pose Stream: the pose source gave no frames.")

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
        batch = PoseBatch(frames=frames, images=images, live=live, render_options=render_options)
        if frames is not None:
            canvas = frames[0]
            preview = batch.render(canvas.canvas_height, canvas.canvas_width)
        else:
            preview = images
        return (batch, preview)
