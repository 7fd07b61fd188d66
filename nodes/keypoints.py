"""Load Pose Keypoints: an OpenPose / POSE_KEYPOINT JSON file from ComfyUI's input folder, with its frame rate."""

from __future__ import annotations

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


def read_keypoint_file(path: str) -> tuple[list, float | None]:
    """(POSE_KEYPOINT frames, fps or None) through the engine's one keypoint reader (`rain_core.pose.read_keypoints`:
    {"fps", "frames"}, POSE_KEYPOINT lists, one frame, pixel or normalised coordinates by one rule). The frames go
    on normalised, as comfyui_controlnet_aux's POSE_KEYPOINT."""
    from ..rain_core import pose as rain_pose

    try:
        sequence = rain_pose.read_keypoints(path)
    except ValueError as error:
        raise ValueError(f"file: {error}") from None
    return rain_pose.to_pose_keypoint(sequence.frames, include_feet=True), sequence.fps


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
        frames, file_fps = read_keypoint_file(str(host.input_directory() / str(file)))
        return (frames, float(fps) if fps else (file_fps or DEFAULT_FPS))
