"""Writes the example pose keypoints in examples/keypoints/ (OpenPose / POSE_KEYPOINT JSON, 30 fps).

They are procedural: hand-written sine motions of an 18-point OpenPose body and a 68-point face, not captured
from a person. They exist so the keypoint and face-morph workflows run right after install, with no detector
and no download. Run from the repository root: '.venv/bin/python examples/make_keypoints.py'.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent / "keypoints"
FPS = 30
FRAMES = 60  # 2 s


def ellipse(cx, cy, rx, ry, start, stop, count, endpoint=True):
    steps = count - 1 if endpoint else count
    angles = [start + (stop - start) * i / steps for i in range(count)]
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def face_points(cx, cy, w, h, mouth_open=0.0, blink=0.0, turn=0.0):
    """The 68 iBUG / DWPose face landmarks of a face centred at (cx, cy), w x h (normalised units)."""
    points = []
    # jaw 0-16, from the left ear through the chin (y grows downward, so angle pi/2 is the chin) to the right
    points += ellipse(cx + turn * w * 0.1, cy - 0.05 * h, w / 2, h * 0.55, math.pi, 0, 17)
    for side in (-1, 1):  # eyebrows 17-21 (left in the image), 22-26; each from left to right
        base = cx + side * w * 0.22 + turn * w * 0.15
        points += [(base + w * 0.2 * (i / 4 - 0.5), cy - h * 0.28 - h * 0.04 * math.sin(math.pi * i / 4))
                   for i in range(5)]
    nose_x = cx + turn * w * 0.2
    points += [(nose_x, cy - h * 0.18 + h * 0.07 * i) for i in range(4)]  # bridge 27-30
    points += [(nose_x + w * 0.06 * (i - 2), cy + h * 0.06 + h * 0.01 * abs(i - 2)) for i in range(5)]  # 31-35
    for side in (-1, 1):  # eyes 36-41, 42-47
        ex = cx + side * w * 0.2 + turn * w * 0.15
        ey = cy - h * 0.14
        open_ = h * 0.05 * (1.0 - blink)
        points += [(ex - w * 0.08, ey), (ex - w * 0.03, ey - open_), (ex + w * 0.03, ey - open_), (ex + w * 0.08, ey),
                   (ex + w * 0.03, ey + open_), (ex - w * 0.03, ey + open_)]
    mx, my = cx + turn * w * 0.15, cy + h * 0.22
    mh = h * (0.03 + 0.1 * mouth_open)
    points += ellipse(mx, my, w * 0.18, mh, math.pi, -math.pi, 12, endpoint=False)  # outer lip 48-59
    points += ellipse(mx, my, w * 0.12, mh * 0.6, math.pi, -math.pi, 8, endpoint=False)  # inner lip 60-67
    assert len(points) == 68, len(points)
    return points


def flat(points):
    return [round(v, 5) for x, y in points for v in (x, y, 1.0)]


def body_points(t, scale=1.0, cx=0.5, top=0.12, wave=1.0):
    """18 OpenPose (COCO) body points of a person dancing in place: arms waving, hips swaying, knees bending."""
    sway = 0.03 * math.sin(2 * math.pi * t * 0.5)
    bob = 0.015 * abs(math.sin(2 * math.pi * t))
    s = scale
    neck = (cx + sway, top + 0.12 * s + bob)
    nose = (neck[0], neck[1] - 0.09 * s)
    points = {0: nose, 1: neck}
    arm = 2 * math.pi * t
    for side, (shoulder, elbow, wrist, hip, knee, ankle, eye, ear) in ((-1, (2, 3, 4, 8, 9, 10, 14, 16)),
                                                                       (1, (5, 6, 7, 11, 12, 13, 15, 17))):
        sx, sy = neck[0] + side * 0.09 * s, neck[1]
        lift = wave * (0.5 + 0.5 * math.sin(arm + (0 if side < 0 else math.pi)))
        ex, ey = sx + side * 0.1 * s, sy + 0.1 * s - 0.18 * s * lift
        wx, wy = ex + side * 0.05 * s, ey + 0.08 * s - 0.22 * s * lift
        hx, hy = neck[0] + side * 0.06 * s, neck[1] + 0.3 * s
        bend = 0.02 * (1 + math.sin(2 * math.pi * t))
        kx, ky = hx + side * (0.01 + bend) * s, hy + 0.2 * s
        ax, ay = hx + side * 0.01 * s, ky + 0.2 * s
        points.update({shoulder: (sx, sy), elbow: (ex, ey), wrist: (wx, wy), hip: (hx, hy), knee: (kx, ky),
                       ankle: (ax, ay), eye: (nose[0] + side * 0.02 * s, nose[1] - 0.02 * s),
                       ear: (nose[0] + side * 0.045 * s, nose[1] - 0.01 * s)})
    return [points[i] for i in range(18)]


def dance():
    frames = []
    for index in range(FRAMES):
        t = index / FPS
        body = body_points(t)
        nose = body[0]
        face = face_points(nose[0], nose[1], 0.07, 0.08, mouth_open=0.5 + 0.5 * math.sin(2 * math.pi * t * 1.5),
                           blink=1.0 if index % 45 in (20, 21) else 0.0)
        frames.append({"people": [{"pose_keypoints_2d": flat(body), "face_keypoints_2d": flat(face),
                                   "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}],
                       "canvas_width": 512, "canvas_height": 704})
    return {"fps": FPS, "frames": frames}


def portrait():
    """Head and shoulders filling the frame: talking (mouth), blinking, turning a little — for face morph."""
    frames = []
    for index in range(FRAMES):
        t = index / FPS
        turn = 0.6 * math.sin(2 * math.pi * t * 0.5)
        cx, cy = 0.5 + 0.02 * math.sin(2 * math.pi * t * 0.5), 0.42
        face = face_points(cx, cy, 0.42, 0.48, mouth_open=max(0.0, math.sin(2 * math.pi * t * 2.0)),
                           blink=1.0 if index % 40 in (30, 31, 32) else 0.0, turn=turn)
        body = [(cx + turn * 0.04, cy), (0.5, 0.9)] + [(0.0, 0.0)] * 16
        confidence = [1, 1] + [0] * 16
        body[2], body[5] = (0.22, 0.95), (0.78, 0.95)  # shoulders at the bottom edge
        confidence[2] = confidence[5] = 1
        body_flat = [round(v, 5) for (x, y), c in zip(body, confidence) for v in (x, y, float(c))]
        frames.append({"people": [{"pose_keypoints_2d": body_flat, "face_keypoints_2d": flat(face),
                                   "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}],
                       "canvas_width": 512, "canvas_height": 512})
    return {"fps": FPS, "frames": frames}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, build in (("rain-dance-keypoints.json", dance), ("rain-face-keypoints.json", portrait)):
        (HERE / name).write_text(json.dumps(build(), separators=(",", ":")) + "\n")
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
