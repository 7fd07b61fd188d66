"""Load Pose Keypoints: an OpenPose / POSE_KEYPOINT JSON file from ComfyUI's input folder, with its frame rate."""

from __future__ import annotations

import json
import os

from . import host

DEFAULT_FPS = 30.0


def keypoint_files() -> list[str]:
    """The .json files in ComfyUI's input folder (where the pack's example keypoints are copied too)."""
    try:
        return sorted(f.name for f in host.input_directory().iterdir()
                      if f.is_file() and f.suffix.lower() == ".json" and not f.name.startswith("."))
    except OSError:
        return []


def read_keypoints(path: str) -> tuple[list, float | None]:
    """(POSE_KEYPOINT frames, fps or None) from a file holding a list of frame dicts, one frame dict, or
    {"fps": F, "frames": [...]}. Errors name the file and what was expected."""
    from ..rain_core import pose as rain_pose

    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"file: {os.path.basename(path)} is not valid JSON ({error}); expected OpenPose / "
                         "POSE_KEYPOINT JSON (a list of frames with 'people').") from error
    fps = None
    if isinstance(data, dict) and "frames" in data:
        fps = data.get("fps")
        data = data["frames"]
    frames = data if isinstance(data, list) else [data]
    if not frames:
        raise ValueError(f"file: {os.path.basename(path)} holds no frames.")
    try:
        rain_pose.from_pose_keypoint(frames)  # the same check Pose Stream makes, but naming this file
    except ValueError as error:
        raise ValueError(f"file: {os.path.basename(path)}: {error}") from error
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"file: {os.path.basename(path)}: 'fps' must be a positive number, found {fps!r}.")
    return frames, (float(fps) if fps is not None else None)


class LoadPoseKeypoints:
    CATEGORY = "RAIN"
    DESCRIPTION = ("Loads pose keypoints saved as OpenPose / POSE_KEYPOINT JSON (comfyui_controlnet_aux's format: a "
                   "list of frames, each with 'people' and the canvas size; optionally {'fps': F, 'frames': [...]}) "
                   "from ComfyUI's input folder, for Pose Stream. The pack ships rain-dance-keypoints.json and "
                   "rain-face-keypoints.json there.")
    RETURN_TYPES = ("POSE_KEYPOINT", "FLOAT")
    RETURN_NAMES = ("pose_keypoint", "fps")
    OUTPUT_TOOLTIPS = ("The keypoint frames, for Pose Stream's pose_keypoint.",
                       "Their frame rate, for Pose Stream's fps (it travels on to the sampler and the video).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = keypoint_files()
        return {"required": {
            "file": (files or ["rain-dance-keypoints.json"], {
                "tooltip": "A .json file in ComfyUI's input folder holding OpenPose / POSE_KEYPOINT frames."}),
            "fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
                              "tooltip": "Frame rate of the keypoints. 0: the file's own 'fps' (30 when it names "
                                         "none)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        path = host.input_directory() / str(file)
        if not path.is_file():
            return (f"file: no {file!r} in {host.input_directory()}. Put an OpenPose / POSE_KEYPOINT .json file "
                    "there (the pack copies its examples there when ComfyUI starts).")
        return True

    @classmethod
    def IS_CHANGED(cls, file, fps=0.0):
        path = host.input_directory() / str(file)
        return f"{path}|{os.path.getmtime(path) if path.is_file() else ''}|{fps}"

    def load(self, file, fps):
        frames, file_fps = read_keypoints(str(host.input_directory() / str(file)))
        return (frames, float(fps) if fps else (file_fps or DEFAULT_FPS))
