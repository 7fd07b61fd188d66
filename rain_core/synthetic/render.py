"""Drawing the synthetic world: the ground-truth frame of a character in a pose, and the pose's DWPose-style
skeleton render (through `rain_core.pose.render_pose`, the renderer inference uses)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..pose import Person, PoseFrame, render_pose
from .world import (
    BACKGROUND,
    L_ANKLE,
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    NECK,
    NOSE,
    R_ANKLE,
    R_EAR,
    R_ELBOW,
    R_EYE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    SKELETON_CANVAS,
    SUPERSAMPLE,
    BodyPose,
    Character,
)

# ---- drawing ------------------------------------------------------------------------------


def render_character(character: Character, pose: BodyPose, height: int, width: int) -> np.ndarray:
    """The ground-truth frame: `character` in `pose`, uint8 (height, width, 3) RGB."""
    ss = SUPERSAMPLE
    big_h, big_w = height * ss, width * ss
    canvas = np.empty((big_h, big_w, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    scale, off_x, off_y = _canvas_transform(big_h, big_w)

    def px(point) -> tuple[int, int]:
        return int(round(point[0] * scale + off_x)), int(round(point[1] * scale + off_y))

    def thick(frac: float) -> int:
        return max(1, int(round(frac * scale)))

    ch, kp = character, pose.keypoints
    limb = ch.limb_width
    facing_away = math.cos(pose.yaw) < -0.05
    parts = []  # (depth, draw function) drawn far to near

    def segment(a, b, colour, width_frac, depth):
        parts.append((depth, lambda: cv2.line(canvas, px(kp[a]), px(kp[b]), colour, thick(width_frac), cv2.LINE_AA)))

    def dot(a, colour, radius_frac, depth):
        parts.append((depth, lambda: cv2.circle(canvas, px(kp[a]), thick(radius_frac), colour, -1, cv2.LINE_AA)))

    sleeve = ch.shirt if ch.long_sleeves else ch.skin
    lower_leg = ch.skin if ch.shorts or ch.skirt else ch.trousers
    upper_leg = ch.skin if ch.skirt else ch.trousers
    for sh, el, wr, hp, kn, an in (
        (R_SHOULDER, R_ELBOW, R_WRIST, R_HIP, R_KNEE, R_ANKLE),
        (L_SHOULDER, L_ELBOW, L_WRIST, L_HIP, L_KNEE, L_ANKLE),
    ):
        d = pose.depth
        segment(hp, kn, upper_leg, limb * 1.25, (d[hp] + d[kn]) / 2 - 0.001)
        segment(kn, an, lower_leg, limb * 1.05, (d[kn] + d[an]) / 2 - 0.001)
        dot(an, ch.shoes, limb * 0.75, d[an])
        segment(sh, el, ch.shirt, limb, (d[sh] + d[el]) / 2 + 0.002)
        segment(el, wr, sleeve, limb * 0.9, (d[el] + d[wr]) / 2 + 0.002)
        dot(wr, ch.skin, limb * 0.55, d[wr] + 0.003)
        if ch.wristbands is not None:
            band = (kp[el] + 0.72 * (kp[wr] - kp[el]), kp[el] + 0.9 * (kp[wr] - kp[el]))
            parts.append((d[wr] + 0.0025, lambda band=band: cv2.line(
                canvas, px(band[0]), px(band[1]), ch.wristbands, thick(limb * 1.0), cv2.LINE_AA)))

    if ch.world == "v2":
        parts.append((0.0, lambda: _draw_torso_box(canvas, ch, pose, px, scale, thick)))
    else:
        parts.append((0.0, lambda: torso()))

    def torso():
        quad = np.array([px(kp[R_SHOULDER]), px(kp[L_SHOULDER]), px(kp[L_HIP]), px(kp[R_HIP])], dtype=np.int32)
        mask = np.zeros((big_h, big_w), dtype=np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(quad), 255, cv2.LINE_AA)
        cv2.polylines(mask, [cv2.convexHull(quad)], True, 255, thick(limb * 1.1), cv2.LINE_AA)
        if ch.skirt:
            hip_l, hip_r = kp[L_HIP], kp[R_HIP]
            hem = 0.11 * ch.height
            flare = 0.35 * abs(hip_l[0] - hip_r[0]) + 0.04
            skirt = np.array([px(hip_r), px(hip_l), px(hip_l + [flare, hem]), px(hip_r + [-flare, hem])], dtype=np.int32)
            cv2.fillConvexPoly(canvas, cv2.convexHull(skirt), ch.trousers, cv2.LINE_AA)
        else:
            shorts = np.array([px(kp[R_HIP]), px(kp[L_HIP]), px((kp[L_HIP] + kp[L_KNEE]) / 2), px((kp[R_HIP] + kp[R_KNEE]) / 2)], dtype=np.int32)
            cv2.fillConvexPoly(canvas, cv2.convexHull(shorts), ch.trousers, cv2.LINE_AA)
        shirt = np.zeros_like(canvas)
        shirt[:] = ch.shirt
        if ch.stripe is not None:
            period = max(2, int(ch.stripe_period * scale))
            rows = (np.arange(big_h) - px(kp[NECK])[1]) % period < period // 2
            shirt[rows] = ch.stripe
        alpha = mask[..., None].astype(np.float32) / 255.0
        canvas[:] = (canvas * (1 - alpha) + shirt * alpha + 0.5).astype(np.uint8)

    head_centre = (kp[R_EAR] + kp[L_EAR]) / 2
    head_centre[1] = (kp[R_EYE][1] + kp[L_EYE][1]) / 2 + 0.15 * ch.head_radius

    def head():
        c, r = px(head_centre), thick(ch.head_radius)
        if ch.long_hair:  # behind the neck and head, hanging to the shoulders
            cv2.ellipse(canvas, (c[0], c[1] + r // 2), (int(r * 1.15), int(r * 1.6)), 0, 0, 360, ch.hair, -1, cv2.LINE_AA)
        cv2.line(canvas, px(kp[NECK]), c, ch.skin, thick(limb * 0.9), cv2.LINE_AA)
        cv2.circle(canvas, c, r, ch.hair if facing_away else ch.skin, -1, cv2.LINE_AA)
        if ch.hat is not None:  # crown and brim, the same from every side
            cv2.ellipse(canvas, (c[0], c[1] - int(0.5 * r)), (int(r * 0.92), int(r * 0.75)), 0, 180, 360, ch.hat, -1, cv2.LINE_AA)
            brim_y = c[1] - int(0.45 * r)
            cv2.line(canvas, (c[0] - int(1.3 * r), brim_y), (c[0] + int(1.3 * r), brim_y), ch.hat, max(1, int(0.22 * r)), cv2.LINE_AA)
        if facing_away:
            return
        # hair cap: the top of the head, shifted toward the back of the head when turned
        shift = int(-math.sin(pose.yaw) * 0.35 * r)
        if ch.hat is None:
            cv2.ellipse(canvas, (c[0] + shift, c[1] - r // 5), (int(r * 1.02), int(r * 0.9)), 0, 180, 360, ch.hair, -1, cv2.LINE_AA)
        for eye in (R_EYE, L_EYE):
            if pose.visible[eye]:
                cv2.circle(canvas, px(kp[eye]), thick(ch.head_radius * 0.16), ch.eyes, -1, cv2.LINE_AA)
        if pose.visible[NOSE]:
            mouth = kp[NOSE] + [0.0, 0.45 * ch.head_radius]
            half = 0.3 * ch.head_radius * abs(math.cos(pose.yaw))
            cv2.line(canvas, px(mouth - [half, 0]), px(mouth + [half, 0]), (150, 50, 50), thick(ch.head_radius * 0.1), cv2.LINE_AA)

    parts.append((1.0, head))
    for _, draw in sorted(parts, key=lambda item: item[0]):
        draw()
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)


_TEXTURE_W, _TEXTURE_H, _TEXTURE_MARGIN = 96, 120, 16  # the print in torso coordinates, margin for the rounded edge


def _torso_texture(ch: Character, front: bool) -> np.ndarray:
    """The v2 shirt seen flat: the print, the bag strap and the belt (and on the front the badge and buckle).
    u runs from the right shoulder to the left one, v from the shoulders down to the hips, inside the margin."""
    m, tw, th = _TEXTURE_MARGIN, _TEXTURE_W, _TEXTURE_H
    texture = np.empty((th + 2 * m, tw + 2 * m, 3), dtype=np.uint8)
    texture[:] = ch.shirt
    period = tw / ch.pattern_periods
    half = period / 2
    v, u = np.mgrid[-m : th + m, -m : tw + m].astype(np.float64) + 0.5
    if ch.pattern == "stripes":
        on = (v // half) % 2 == 1
    elif ch.pattern == "checks":
        on = ((u // half) + (v // half)) % 2 == 1
    elif ch.pattern == "dots":
        on = (np.mod(u, period) - half) ** 2 + (np.mod(v, period) - half) ** 2 < (0.28 * period) ** 2
    elif ch.pattern == "diagonal":
        on = ((u + v) // (half * 1.2)) % 2 == 1
    elif ch.pattern == "chevron":
        on = ((v + np.abs(np.mod(u, period) - half)) // half) % 2 == 1
    else:
        on = np.zeros(u.shape, dtype=bool)
    texture[on] = ch.pattern_colour
    if ch.strap is not None:
        a, b = (m + 0.08 * tw, m), (m + 0.92 * tw, m + th)
        cv2.line(texture, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), ch.strap, int(0.1 * tw), cv2.LINE_AA)
    if ch.belt is not None:
        cv2.rectangle(texture, (0, m + int(0.88 * th)), (tw + 2 * m, th + 2 * m), ch.belt, -1)
        if front:
            cv2.rectangle(texture, (m + int(0.42 * tw), m + int(0.86 * th)), (m + int(0.58 * tw), th + m), (200, 180, 60), -1)
    if front and ch.badge is not None:
        cv2.circle(texture, (m + int(0.72 * tw), m + int(0.27 * th)), int(0.13 * tw), ch.badge, -1, cv2.LINE_AA)
    return texture


def _draw_torso_box(canvas: np.ndarray, ch: Character, pose: BodyPose, px, scale: float, thick) -> None:
    """The v2 torso: a box of half-depth `torso_depth` whose visible face carries the print (moving and
    foreshortening with the body, mirrored from behind) and whose side shows in a darker shade when turned."""
    kp = pose.keypoints
    quad = np.array([kp[R_SHOULDER], kp[L_SHOULDER], kp[L_HIP], kp[R_HIP]])
    offset = np.array([ch.torso_depth * math.sin(pose.yaw), 0.0])
    front = math.cos(pose.yaw) >= 0
    face = quad + (offset if front else -offset)
    back = quad - (offset if front else -offset)
    big_h, big_w = canvas.shape[:2]
    rounding = thick(ch.limb_width * 1.1)

    def mask_of(points) -> np.ndarray:
        pts = np.array([px(p) for p in points], dtype=np.int32)
        mask = np.zeros((big_h, big_w), dtype=np.uint8)
        hull = cv2.convexHull(pts)
        cv2.fillConvexPoly(mask, hull, 255, cv2.LINE_AA)
        cv2.polylines(mask, [hull], True, 255, rounding, cv2.LINE_AA)
        return mask

    def blend(mask: np.ndarray, image) -> None:
        alpha = mask[..., None].astype(np.float32) / 255.0
        canvas[:] = (canvas * (1 - alpha) + np.asarray(image, dtype=np.float32) * alpha + 0.5).astype(np.uint8)

    side = tuple(int(c * 0.72) for c in ch.shirt)
    blend(mask_of(np.concatenate([face, back])), side)
    face_px = np.array([px(p) for p in face], dtype=np.float32)
    area = cv2.contourArea(face_px)
    if area < 4.0:  # edge-on: only the side shows
        return
    m, tw, th = _TEXTURE_MARGIN, _TEXTURE_W, _TEXTURE_H
    corners = np.float32([[m, m], [m + tw, m], [m + tw, m + th], [m, m + th]])  # R shoulder, L shoulder, L hip, R hip
    warp = cv2.getPerspectiveTransform(corners, face_px)
    texture = cv2.warpPerspective(_torso_texture(ch, front), warp, (big_w, big_h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
    blend(mask_of(face), texture)


def _canvas_transform(height: int, width: int) -> tuple[float, float, float]:
    """Map the unit square of pose coordinates into the centre of a (height, width) canvas."""
    scale = float(min(height, width))
    return scale, (width - scale) / 2, (height - scale) / 2


def pose_frame(pose: BodyPose, height: int, width: int):
    """`pose` as a `rain_core.pose.PoseFrame` on a (height, width) canvas (body only)."""
    scale, off_x, off_y = _canvas_transform(height, width)
    kp = pose.openpose_keypoints().copy()
    kp[:, 0] = (kp[:, 0] * scale + off_x) / width
    kp[:, 1] = (kp[:, 1] * scale + off_y) / height
    return PoseFrame([Person(body=kp)], canvas_width=width, canvas_height=height)


def render_skeleton(pose: BodyPose, height: int, width: int) -> np.ndarray:
    """The DWPose-style skeleton image of `pose`, uint8 (height, width, 3) RGB.

    Drawn by `rain_core.pose.render_pose` on a canvas of a pose video's size (512 on the short
    side) and area-resized, which is what happens to a real pose video fed to a small model.
    """

    factor = max(1.0, SKELETON_CANVAS / min(height, width))
    big_h, big_w = int(round(height * factor)), int(round(width * factor))
    image = render_pose(pose_frame(pose, big_h, big_w), big_h, big_w)
    if (big_h, big_w) != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image
