"""Face-morph mode: human face landmarks remapped toward anime proportions, drawn as 26 coloured dots.

This is the RAIN authors' live-demo conditioning (rain-method.md §3). The 68 landmarks (iBUG layout) go
through a fixed list of region operations; each operation takes a landmark range, centres it on its mean,
rotates it into a local frame whose x axis runs between two of its landmarks (so the edit follows head
roll), scales x/y, shifts x/y by a multiple of a reference distance measured on the whole face (so the
edit follows face size and, for left/right pairs, head yaw), and rotates back. Operations apply in
order, each on the result of the previous ones. All of this happens in normalised canvas coordinates,
like the authors' code.

`FaceMorpher` adds the stream behaviour: landmarks missing in a frame are filled from the previous
frame, and the output can be damped by a weighted mean over the last `damping` frames (weights 1..n,
newest heaviest).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from .keypoints import PoseFrame
from .render import _MIN_PIXEL, face_dot_radius


@dataclass(frozen=True)
class FaceMorphParams:
    """The 13 face-morph sliders. Ratios scale a region; corrections shift it by a fraction of a face
    distance (positive = right/down in the image, mirrored where the region has a left/right twin)."""

    face_length: float = 0.75
    eye_height: float = 3.0
    eye_width: float = 1.6
    mouth_height: float = 1.2
    mouth_width: float = 0.67
    jaw_width: float = 0.9
    eye_horizontal_correction: float = 0.15
    eye_distance_correction: float = 0.05
    eye_vertical_correction: float = 0.10
    mouth_horizontal_correction: float = 0.15
    mouth_vertical_correction: float = 0.03
    nose_horizontal_correction: float = 0.1
    nose_vertical_correction: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FaceMorphParams:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"FaceMorphParams: unknown parameters {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class RegionEdit:
    """One operation on landmarks [start, stop).

    axis: two indices *within the region* whose direction is the local x axis (None: image axes).
    scale: (x, y) factors about the region's mean in the local frame.
    shift: (x, y) offsets in the local frame, in units of `unit`.
    unit: two indices into the whole face whose distance is the shift unit (None: 1).
    """

    start: int
    stop: int
    axis: tuple[int, int] | None = None
    scale: tuple[float, float] = (1.0, 1.0)
    shift: tuple[float, float] = (0.0, 0.0)
    unit: tuple[int, int] | None = None


# Landmark ranges of the 68-point layout.
FACE = (0, 68)
JAW_SIDES = (4, 13)
NOSE = (27, 36)
RIGHT_EYE = (36, 42)  # the subject's right eye, on the image's left
LEFT_EYE = (42, 48)
INNER_MOUTH = (60, 68)
EYE_AXIS = (0, 3)  # outer and inner eye corners
MOUTH_AXIS = (0, 4)  # inner mouth corners
NOSE_AXIS = (4, 8)  # outermost nostril points


def region_edits(params: FaceMorphParams) -> list[RegionEdit]:
    """The ordered operations for a parameter set (the authors' live-demo recipe)."""
    p = params
    nose_tip_to_right_jaw, nose_tip_to_left_jaw = (33, 13), (33, 3)
    eye_shift_right = p.eye_horizontal_correction - p.eye_distance_correction
    return [
        RegionEdit(*FACE, axis=(2, 14), scale=(1.0, p.face_length)),
        RegionEdit(*RIGHT_EYE, axis=EYE_AXIS, scale=(p.eye_width, p.eye_height)),
        RegionEdit(*LEFT_EYE, axis=EYE_AXIS, scale=(p.eye_width, p.eye_height)),
        RegionEdit(*INNER_MOUTH, axis=MOUTH_AXIS, scale=(p.mouth_width, p.mouth_height)),
        # Eyes: pushed right by the nose-to-right-jaw distance and left by the nose-to-left-jaw one, so on a
        # frontal face the two cancel except for the eye-distance term; on a turned face they re-centre.
        RegionEdit(*RIGHT_EYE, axis=EYE_AXIS, shift=(eye_shift_right, 0.0), unit=nose_tip_to_right_jaw),
        RegionEdit(*LEFT_EYE, axis=EYE_AXIS, shift=(p.eye_horizontal_correction, 0.0), unit=nose_tip_to_right_jaw),
        RegionEdit(*RIGHT_EYE, axis=EYE_AXIS, shift=(-p.eye_horizontal_correction, 0.0), unit=nose_tip_to_left_jaw),
        RegionEdit(*LEFT_EYE, axis=EYE_AXIS, shift=(-eye_shift_right, 0.0), unit=nose_tip_to_left_jaw),
        RegionEdit(*RIGHT_EYE, axis=EYE_AXIS, shift=(0.0, p.eye_vertical_correction), unit=(19, 6)),
        RegionEdit(*LEFT_EYE, axis=EYE_AXIS, shift=(0.0, p.eye_vertical_correction), unit=(24, 10)),
        RegionEdit(*INNER_MOUTH, axis=MOUTH_AXIS, shift=(p.mouth_horizontal_correction, 0.0), unit=nose_tip_to_right_jaw),
        RegionEdit(*INNER_MOUTH, axis=MOUTH_AXIS, shift=(-p.mouth_horizontal_correction, 0.0), unit=nose_tip_to_left_jaw),
        RegionEdit(*INNER_MOUTH, axis=MOUTH_AXIS, shift=(0.0, p.mouth_vertical_correction), unit=(27, 8)),
        RegionEdit(*NOSE, axis=NOSE_AXIS, shift=(0.0, p.nose_vertical_correction), unit=(27, 8)),
        RegionEdit(*NOSE, axis=NOSE_AXIS, shift=(p.nose_horizontal_correction, 0.0), unit=(22, 16)),
        RegionEdit(*NOSE, axis=NOSE_AXIS, shift=(-p.nose_horizontal_correction, 0.0), unit=(21, 0)),
        RegionEdit(*JAW_SIDES, axis=(0, 8), scale=(p.jaw_width, 1.0)),
    ]


def _apply(edit: RegionEdit, xy: np.ndarray, present: np.ndarray) -> None:
    """Apply one edit to xy (68, 2) in place. Skipped when a landmark it measures with is missing."""
    region = slice(edit.start, edit.stop)
    points, known = xy[region], present[region]
    if not known.any():
        return
    if edit.axis is not None and not known[list(edit.axis)].all():
        return
    if edit.unit is not None and not present[list(edit.unit)].all():
        return
    unit = 1.0
    if edit.unit is not None:
        a, b = xy[edit.unit[0]], xy[edit.unit[1]]
        unit = math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)
    center = points[known].mean(axis=0)
    local = points - center
    if edit.axis is not None:
        a, b = points[edit.axis[0]], points[edit.axis[1]]
        angle = math.atan2(b[1] - a[1], b[0] - a[0])
        cos, sin = math.cos(angle), math.sin(angle)
        to_local = np.array([[cos, -sin], [sin, cos]])  # row vectors: v @ to_local rotates by -angle
        local = local @ to_local
    local[:, 0] = local[:, 0] * edit.scale[0] + edit.shift[0] * unit
    local[:, 1] = local[:, 1] * edit.scale[1] + edit.shift[1] * unit
    if edit.axis is not None:
        local = local @ to_local.T
    xy[region] = center + local


def morph_face(face: np.ndarray, params: FaceMorphParams | None = None) -> np.ndarray:
    """Remap 68 face landmarks (68, 3) `[x, y, confidence]` toward anime proportions; returns a new array.

    Missing landmarks (confidence 0) stay missing; an edit that measures with a missing landmark is skipped.
    """
    face = np.asarray(face, dtype=np.float64)
    if face.shape != (68, 3):
        raise ValueError(f"morph_face: expected face landmarks of shape (68, 3), found {face.shape}")
    out = face.copy()
    present = face[:, 2] > 0
    xy = out[:, :2]
    for edit in region_edits(params or FaceMorphParams()):
        _apply(edit, xy, present)
    out[~present] = 0.0
    return out


# The 26 dots: which landmarks each is the mean of, and its colour (RGB).
_JAW, _BROW_R, _BROW_L = (0, 255, 255), (128, 0, 255), (255, 0, 128)
_MOUTH, _NOSE, _EYE_R, _EYE_L = (0, 0, 255), (255, 0, 255), (255, 128, 128), (128, 128, 255)
FACE_DOTS: tuple[tuple[tuple[int, ...], tuple[int, int, int]], ...] = (
    ((1, 2), _JAW), ((4,), _JAW), ((8,), _JAW), ((12,), _JAW), ((15, 14), _JAW),
    ((17,), _BROW_R), ((18, 19), _BROW_R), ((20,), _BROW_R),
    ((23,), _BROW_L), ((24, 25), _BROW_L), ((26,), _BROW_L),
    ((60,), _MOUTH), ((62,), _MOUTH), ((64,), _MOUTH), ((66,), _MOUTH),
    ((33, 30), _NOSE),
    ((36, 37), _EYE_R), ((37, 38), _EYE_R), ((38, 39), _EYE_R), ((40, 39), _EYE_R), ((41,), _EYE_R),
    ((42, 43), _EYE_L), ((43, 44), _EYE_L), ((44, 45), _EYE_L), ((46,), _EYE_L), ((47, 42), _EYE_L),
)


def draw_face_dots(canvas: np.ndarray, face: np.ndarray, radius: int) -> np.ndarray:
    """Draw the 26 dots of a (morphed) face in place; a dot whose landmarks are not all present is skipped."""
    height, width = canvas.shape[:2]
    for indices, color in FACE_DOTS:
        points = face[list(indices)]
        if not (points[:, 2] > 0).all():
            continue
        x, y = np.mean(points[:, :2], axis=0)
        x, y = int(x * width), int(y * height)
        if x > _MIN_PIXEL and y > _MIN_PIXEL:
            cv2.circle(canvas, (x, y), radius, color, thickness=-1)
    return canvas


def render_face_morph(frame: PoseFrame, height: int, width: int, params: FaceMorphParams | None = None) -> np.ndarray:
    """Face-morph conditioning image: every person's morphed face as 26 dots on black, uint8 RGB.

    The dot radius comes from the face before morphing (nose bridge to chin), as in the authors' demo.
    """
    canvas = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    for person in frame.people:
        if person.has("face"):
            draw_face_dots(canvas, morph_face(person.face, params), face_dot_radius(person.face))
    return canvas


class FaceMorpher:
    """Stateful face morphing for a stream: fill missing landmarks from the previous frame, damp, morph.

    damping: number of recent frames averaged with weights 1..n (newest heaviest); 1 = no damping.
    Follows the first person that has a face (people are not re-identified across frames).
    """

    def __init__(self, params: FaceMorphParams | None = None, damping: int = 1):
        if int(damping) < 1:
            raise ValueError(f"FaceMorpher: damping must be >= 1 frame, found {damping}")
        self.params = params or FaceMorphParams()
        self.damping = int(damping)
        self._history: list[np.ndarray] = []

    def reset(self) -> None:
        self._history.clear()

    def smooth(self, face: np.ndarray | None) -> np.ndarray | None:
        """Fill-from-previous and damping of raw (68, 3) landmarks; None when nothing has been seen yet."""
        if face is None or not (face[:, 2] > 0).any():
            if not self._history:
                return None
            face = np.zeros((68, 3))
        face = np.array(face, dtype=np.float64)
        if self._history:
            missing = ~(face[:, 2] > 0)
            face[missing] = self._history[-1][missing]
        self._history.append(face)
        del self._history[:-self.damping]
        count = len(self._history)
        stacked = np.stack(self._history)  # (n, 68, 3)
        # Weights 1..n, newest heaviest; a landmark never seen in an older frame gets no weight there.
        weights = np.arange(1, count + 1, dtype=np.float64)[:, None] * (stacked[:, :, 2] > 0)
        total = weights.sum(axis=0)
        seen = total > 0
        damped = np.zeros((68, 3))
        damped[seen] = np.einsum("nk,nkc->kc", weights[:, seen], stacked[:, seen]) / total[seen, None]
        return damped

    def __call__(self, frame: PoseFrame, height: int, width: int) -> np.ndarray:
        """Render the next frame of the stream (uint8 RGB, 26 dots of the followed face)."""
        face = next((p.face for p in frame.people if p.has("face")), None)
        canvas = np.zeros((int(height), int(width), 3), dtype=np.uint8)
        smoothed = self.smooth(face)
        if smoothed is not None:
            draw_face_dots(canvas, morph_face(smoothed, self.params), face_dot_radius(smoothed))
        return canvas
