"""Skeleton images drawn exactly the way the RAIN/DWPose models saw them in training.

The drawing follows the DWPose/ControlNet convention as the RAIN authors use it (their
`src/dwpose/util.py`): body limbs as filled ellipse polygons (stick width 4) in 17 colours, the whole
limb layer dimmed to 60 %, then 18 joint circles of radius 4; hands as 20 HSV-coloured lines of width 2
plus radius-4 blue points; face landmarks as dots coloured by region whose radius grows with the face
(nose bridge to chin). Integer truncation, drawing order and the 0.6 dimming are reproduced so that the
same keypoints give the same pixels at any canvas size (checked against the authors' code, see
tests/test_pose_render.py and NOTES.md).

Normalised coordinates are stretched to (height, width); use `PoseFrame.letterboxed` first to keep the
aspect ratio of a pose measured on a canvas of another shape.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from .keypoints import PoseFrame

STICK_WIDTH = 4
JOINT_RADIUS = 4

# Limbs as pairs of body-point indices (0-based OpenPose order). The last two entries (ear–shoulder) are
# part of the classic table but are never drawn by DWPose; only the first 17 are.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)
DRAWN_LIMBS = 17

BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
# Hue runs around the colour wheel along the 20 edges; cv2 rounds the float colour when drawing.
HAND_EDGE_COLORS = tuple(
    tuple(channel * 255 for channel in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
    for i in range(len(HAND_EDGES))
)
HAND_POINT_COLOR = (0, 0, 255)
HAND_LINE_WIDTH = 2


def _face_region_color(index: int) -> tuple[int, int, int]:
    """Colour of face landmark `index` (68-point layout) by region: jaw+brows, nose, eyes, lips."""
    if index <= 26:
        return (0, 255, 255)  # jaw line and eyebrows
    if index <= 35:
        return (255, 0, 255)  # nose
    if index <= 41:
        return (255, 128, 128)  # right eye
    if index <= 47:
        return (128, 128, 255)  # left eye
    if index <= 54:
        return (173, 255, 68)  # upper outer lip
    if index <= 59:
        return (68, 173, 255)  # lower outer lip
    if index <= 64:
        return (68, 255, 173)  # upper inner lip
    return (173, 68, 255)  # lower inner lip


FACE_COLORS = tuple(_face_region_color(i) for i in range(68))

# Pixel positions must be > this to be drawn (hands, face): 0 means "missing" in detector output.
_MIN_PIXEL = 0.01


def face_dot_radius(face: np.ndarray) -> int:
    """Dot radius for a face: three times (nose-bridge-to-chin distance / 0.3) in normalised units, ≥ 1.

    Measured on landmarks 27 (top of the nose bridge) and 8 (chin); 1 when either is missing.
    """
    if not (face[27, 2] > 0 and face[8, 2] > 0):
        return 1
    size = np.sqrt((face[27, 0] - face[8, 0]) ** 2 + (face[27, 1] - face[8, 1]) ** 2) / 0.3
    return max(int(3 * size), 1)


def draw_body(canvas: np.ndarray, frame: PoseFrame) -> np.ndarray:
    """Limb ellipses for every person, dimmed to 60 %, then the joints. Returns the new canvas."""
    height, width = canvas.shape[:2]
    # Limb-major order (all people's limb 0, then limb 1, ...) decides which limb ends up on top.
    for limb_index in range(DRAWN_LIMBS):
        a, b = LIMBS[limb_index]
        for person in frame.people:
            body = person.body
            if not (body[a, 2] > 0 and body[b, 2] > 0):
                continue
            xs = (body[a, 0] * float(width), body[b, 0] * float(width))
            ys = (body[a, 1] * float(height), body[b, 1] * float(height))
            center_x, center_y = np.mean(xs), np.mean(ys)
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly(
                (int(center_x), int(center_y)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1
            )
            cv2.fillConvexPoly(canvas, polygon, BODY_COLORS[limb_index])
    canvas = (canvas * 0.6).astype(np.uint8)
    for joint in range(18):
        for person in frame.people:
            x, y, confidence = person.body[joint]
            if not confidence > 0:
                continue
            cv2.circle(canvas, (int(x * width), int(y * height)), JOINT_RADIUS, BODY_COLORS[joint], thickness=-1)
    return canvas


def _pixel(point: np.ndarray, width: int, height: int) -> tuple[int, int] | None:
    if not point[2] > 0:
        return None
    x, y = int(point[0] * width), int(point[1] * height)
    if x > _MIN_PIXEL and y > _MIN_PIXEL:
        return x, y
    return None


def draw_hand(canvas: np.ndarray, hand: np.ndarray) -> np.ndarray:
    """20 coloured finger segments, then 21 points, drawn in place."""
    height, width = canvas.shape[:2]
    pixels = [_pixel(point, width, height) for point in hand]
    for edge_index, (a, b) in enumerate(HAND_EDGES):
        if pixels[a] is not None and pixels[b] is not None:
            cv2.line(canvas, pixels[a], pixels[b], HAND_EDGE_COLORS[edge_index], thickness=HAND_LINE_WIDTH)
    for pixel in pixels:
        if pixel is not None:
            cv2.circle(canvas, pixel, JOINT_RADIUS, HAND_POINT_COLOR, thickness=-1)
    return canvas


FACE_STYLES = ("rain", "controlnet")
CONTROLNET_FACE_RADIUS = 3


def draw_face(canvas: np.ndarray, face: np.ndarray, style: str = "rain") -> np.ndarray:
    """68 landmark dots drawn in place.

    style "rain": coloured by region, radius from the face size (the RAIN authors' drawing).
    style "controlnet": white, radius 3 (ControlNet/DWPose and Moore-AnimateAnyone, e.g. the
    shared/data/anyone-video-*_kps.mp4 renders).
    """
    if style not in FACE_STYLES:
        raise ValueError(f"face style must be one of {FACE_STYLES}, found {style!r}")
    height, width = canvas.shape[:2]
    radius = face_dot_radius(face) if style == "rain" else CONTROLNET_FACE_RADIUS
    for index, point in enumerate(face):
        pixel = _pixel(point, width, height)
        if pixel is not None:
            color = FACE_COLORS[index] if style == "rain" else (255, 255, 255)
            cv2.circle(canvas, pixel, radius, color, thickness=-1)
    return canvas


def render_pose(frame: PoseFrame, height: int, width: int, draw_body: bool = True, draw_hands: bool = True,
                draw_face: bool = True, face_style: str = "rain") -> np.ndarray:
    """Draw a pose frame as a DWPose skeleton image: uint8 RGB (height, width, 3) on black.

    Order: body (all people), hands (every person's left hand, then every right hand), faces.
    face_style: "rain" (coloured, size-scaled dots, the authors' drawing) or "controlnet" (white dots
    of radius 3, as in ControlNet/AnimateAnyone pose videos); see `draw_face`.
    """
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"render_pose: height and width must be positive, found {height}x{width}")
    canvas = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    if draw_body:
        canvas = _draw_body(canvas, frame)
    if draw_hands:
        for hand in [p.left_hand for p in frame.people] + [p.right_hand for p in frame.people]:
            draw_hand(canvas, hand)
    if draw_face:
        for person in frame.people:
            if person.has("face"):
                _draw_face(canvas, person.face, face_style)
    return canvas


# render_pose's boolean arguments shadow the drawing functions' names inside it.
_draw_body = draw_body
_draw_face = draw_face
