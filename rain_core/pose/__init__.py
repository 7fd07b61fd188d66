"""Pose streams: keypoint data model, POSE_KEYPOINT / OpenPose JSON interop, DWPose-exact rendering,
anime face morphing, temporal tracking and alignment, and an optional DWPose detector.

Nothing here needs onnxruntime or ComfyUI; the detector imports onnxruntime only when it is built.
"""

from .detector import DetectorUnavailable, DWPoseDetector
from .face_morph import FACE_DOTS, FaceMorpher, FaceMorphParams, morph_face, render_face_morph
from .keypoints import (
    PART_SIZES,
    PARTS,
    KeypointSequence,
    Person,
    PoseFormatError,
    PoseFrame,
    coordinates_of,
    frame_from_dict,
    frame_to_dict,
    from_pose_keypoint,
    parse_keypoints,
    read_keypoints,
    save_openpose_json,
    to_pose_keypoint,
)
from .render import draw_body, draw_face, draw_hand, face_dot_radius, render_pose
from .tracking import Alignment, PoseTracker, align_to_reference, apply_alignment, fit_alignment

__all__ = [
    "DWPoseDetector",
    "DetectorUnavailable",
    "Alignment",
    "PoseTracker",
    "align_to_reference",
    "apply_alignment",
    "fit_alignment",
    "FACE_DOTS",
    "FaceMorphParams",
    "FaceMorpher",
    "morph_face",
    "render_face_morph",
    "PART_SIZES",
    "PARTS",
    "Person",
    "PoseFormatError",
    "PoseFrame",
    "draw_body",
    "draw_face",
    "draw_hand",
    "face_dot_radius",
    "frame_from_dict",
    "frame_to_dict",
    "from_pose_keypoint",
    "parse_keypoints",
    "read_keypoints",
    "KeypointSequence",
    "coordinates_of",
    "render_pose",
    "save_openpose_json",
    "to_pose_keypoint",
]
