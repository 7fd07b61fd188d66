"""The synthetic world: procedural characters with an exact ground truth for every pose (the project's own
benchmark, used by `rain demo`, training and `bench/quality.py`).

A *character* is a parametric cartoon person (body proportions, skin, clothes, stripes, hair, face);
a *motion* is a smooth function of time that gives an 18-point OpenPose body pose (walk, dance,
wave, turn, jump). Bodies are 3-D stick figures seen through an orthographic camera, so a turn
narrows the shoulders and hides an ear exactly as a pose detector would see it. For any
(character, pose) the drawing is the ground-truth frame, and the pose's DWPose-style skeleton
render (through `rain_core.pose.render_pose`, the renderer inference uses) is the conditioning.

Everything is deterministic by seed. Splits are disjoint id ranges: training characters and motions
come from ids below `HELDOUT_BASE`, held-out ones from ids at or above it, so evaluation always
sees people and movements that training never drew.

Two worlds share this module. `version="v1"` is the world the first tiny models were trained and measured
on (plain or screen-striped shirts, five slow motions); its draws are unchanged, so old figures can be
re-measured. `version="v2"` adds what per-frame generation gets wrong and a window across time can get
right: prints that move with the body (stripes, checks, dots, diagonals, chevrons warped onto a 3-D torso
box), a chest badge that exists only on the front, accessories (hat, belt, bag strap, wristbands), arms
crossing in front of the body (self-occlusion), fast and slow tempos, and full spins (the back of the
character, then the front again).

This module holds the world (characters, motions, the 3-D body); `render.py` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

MOTION_KINDS = ("walk", "dance", "wave", "turn", "jump")
MOTION_KINDS_V2 = MOTION_KINDS + ("cross", "spin", "punch")
"""v2 adds arms crossing over the chest, continuous full turns and fast punches."""
WORLDS = ("v1", "v2")
PATTERNS = ("plain", "stripes", "checks", "dots", "diagonal", "chevron")
TEMPOS = {"slow": 0.45, "normal": 1.0, "fast": 2.2}
"""v2 tempo: a multiplier of a motion's v1 speed (fast walks move a wrist ~0.1 of the frame per frame at 12 fps)."""
HELDOUT_BASE = 1_000_000
"""Ids at or above this are held out (characters and motions alike)."""

SPLITS = ("train", "heldout")

# OpenPose body-18 order (what DWPose and the ControlNet renderer use).
NOSE, NECK, R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST = range(8)
R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE, R_EYE, L_EYE, R_EAR, L_EAR = range(8, 18)

_SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 96], [141, 85, 54], [96, 60, 40]],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [[30, 25, 20], [80, 50, 30], [150, 100, 50], [220, 190, 120], [170, 60, 30], [200, 200, 205], [60, 60, 140]],
    dtype=np.float64,
)
BACKGROUND = (236, 236, 232)
"""Plain background of every frame (RGB)."""

SUPERSAMPLE = 4  # draw at 4x and area-downsample: anti-aliased edges at any size
SKELETON_CANVAS = 512
_GROUND = 0.96  # y of the feet in pose coordinates  # skeletons are drawn at a pose video's size and resized like one


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _colour(rng: np.random.Generator, saturation=(0.35, 0.9), value=(0.35, 0.95)) -> tuple[int, int, int]:
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _contrasting(rng: np.random.Generator, colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour far enough from `colour` to be seen at 64 px (a print the same colour as its shirt is no test)."""
    for _ in range(20):
        candidate = _colour(rng, saturation=(0.3, 1.0), value=(0.25, 1.0))
        if np.abs(np.subtract(candidate, colour)).sum() > 180:
            return candidate
    return tuple(255 - c for c in colour)


@dataclass(frozen=True)
class Character:
    """Everything needed to draw one person; lengths are fractions of the frame height."""

    id: int
    height: float
    shoulder_half_width: float
    hip_half_width: float
    limb_width: float
    head_radius: float
    skin: tuple[int, int, int]
    shirt: tuple[int, int, int]
    stripe: tuple[int, int, int] | None
    stripe_period: float
    long_sleeves: bool
    trousers: tuple[int, int, int]
    shorts: bool
    skirt: bool
    shoes: tuple[int, int, int]
    hair: tuple[int, int, int]
    long_hair: bool
    eyes: tuple[int, int, int]
    # v2 only (v1 characters keep these defaults and draw exactly as before)
    world: str = "v1"
    pattern: str = "plain"  # one of PATTERNS: a print on the torso box, in body coordinates
    pattern_colour: tuple[int, int, int] | None = None
    pattern_periods: float = 2.5  # pattern repeats across the shoulders
    badge: tuple[int, int, int] | None = None  # a disc on the chest: visible only from the front
    hat: tuple[int, int, int] | None = None
    belt: tuple[int, int, int] | None = None
    strap: tuple[int, int, int] | None = None  # a bag strap from one shoulder to the other hip
    wristbands: tuple[int, int, int] | None = None
    torso_depth: float = 0.0  # half-thickness of the torso box (fraction of the frame height)


@dataclass(frozen=True)
class Motion:
    """A procedural movement: `kind` plus the parameters that vary between instances of it."""

    id: int
    kind: str
    speed: float  # cycles per second
    amplitude: float  # 0.5 .. 1.0
    phase: float
    yaw: float  # base facing angle, radians (0 = facing the camera)
    side: int  # +1 / -1: which arm waves, which way a turn starts
    sway: float
    tempo: str = "normal"  # v2: one of TEMPOS (already folded into `speed`)


@dataclass(frozen=True)
class BodyPose:
    """One pose: 18 keypoints in [0, 1] image coordinates (x right, y down), their visibility,
    and the depth and facing the drawing needs (the skeleton render ignores them)."""

    keypoints: np.ndarray  # (18, 2) float64, normalised to a square canvas of side 1
    visible: np.ndarray  # (18,) bool
    depth: np.ndarray  # (18,) float64, toward the camera is positive
    yaw: float

    def openpose_keypoints(self) -> np.ndarray:
        """(18, 3) [x, y, confidence] like DWPose output; confidence 0 marks a hidden point."""
        return np.concatenate([self.keypoints, self.visible[:, None].astype(np.float64)], axis=1)


class SyntheticWorld:
    """Deterministic source of characters, motions, poses, frames and skeletons."""

    def __init__(self, seed: int = 0, version: str = "v1"):
        if version not in WORLDS:
            raise ValueError(f"world version: expected one of {WORLDS}, found {version!r}")
        self.seed = int(seed)
        self.version = version

    @property
    def motion_kinds(self) -> tuple[str, ...]:
        return MOTION_KINDS_V2 if self.version == "v2" else MOTION_KINDS

    # ---- ids and splits -------------------------------------------------------------------
    @staticmethod
    def split_of(item_id: int) -> str:
        return "heldout" if item_id >= HELDOUT_BASE else "train"

    @staticmethod
    def ids(split: str, count: int, start: int = 0) -> list[int]:
        """`count` ids of `split` ("train" or "heldout")."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, found {split!r}")
        base = HELDOUT_BASE if split == "heldout" else 0
        if split == "train" and start + count > HELDOUT_BASE:
            raise ValueError(f"train ids must stay below {HELDOUT_BASE}; asked for {start}..{start + count}")
        return [base + start + i for i in range(count)]

    # ---- characters -----------------------------------------------------------------------
    def character(self, character_id: int) -> Character:
        rng = _rng(self.seed, 1, character_id)
        stripes = rng.random() < 0.45
        base = Character(
            id=character_id,
            height=rng.uniform(0.80, 0.92),
            shoulder_half_width=rng.uniform(0.085, 0.125),
            hip_half_width=rng.uniform(0.055, 0.085),
            limb_width=rng.uniform(0.045, 0.07),
            head_radius=rng.uniform(0.06, 0.078),
            skin=tuple(int(c) for c in _SKIN_TONES[rng.integers(len(_SKIN_TONES))]),
            shirt=_colour(rng),
            stripe=_colour(rng) if stripes else None,
            stripe_period=rng.uniform(0.035, 0.06),
            long_sleeves=bool(rng.random() < 0.5),
            trousers=_colour(rng, saturation=(0.2, 0.8), value=(0.2, 0.7)),
            shorts=bool(rng.random() < 0.3),
            skirt=bool(rng.random() < 0.2),
            shoes=_colour(rng, saturation=(0.0, 0.6), value=(0.1, 0.5)),
            hair=tuple(int(c) for c in _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))]),
            long_hair=bool(rng.random() < 0.4),
            eyes=(20, 20, 30),
        )
        return self._dress_v2(base) if self.version == "v2" else base

    def _dress_v2(self, base: Character) -> Character:
        """The v2 wardrobe on top of the v1 body (its own random stream: the v1 draws stay as they were)."""
        rng = _rng(self.seed, 3, base.id)
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        maybe = lambda p, **kw: _colour(rng, **kw) if rng.random() < p else None  # noqa: E731
        return replace(
            base,
            world="v2",
            stripe=None,  # v1's screen-row stripes give way to a print that moves with the body
            pattern=pattern,
            pattern_colour=_contrasting(rng, base.shirt),
            pattern_periods=float(rng.uniform(1.8, 3.2)),
            badge=_contrasting(rng, base.shirt) if rng.random() < 0.5 else None,
            hat=maybe(0.35),
            belt=maybe(0.5, value=(0.1, 0.6)),
            strap=maybe(0.4, value=(0.15, 0.6)),
            wristbands=maybe(0.4, saturation=(0.6, 1.0)),
            torso_depth=float(rng.uniform(0.035, 0.05)),
        )

    # ---- motions --------------------------------------------------------------------------
    def motion(self, motion_id: int, kind: str | None = None) -> Motion:
        """Motion `motion_id`; its kind cycles through the world's kinds (`motion_kinds`) unless `kind` is given.
        In v2 a tempo (slow, normal, fast) multiplies the speed."""
        rng = _rng(self.seed, 2, motion_id)
        kinds = self.motion_kinds
        kind = kind or kinds[motion_id % len(kinds)]
        if kind not in kinds:
            raise ValueError(f"motion kind: expected one of {kinds} (world {self.version}), found {kind!r}")
        base_yaw = {"walk": rng.uniform(0.5, 1.2) * rng.choice([-1, 1]), "turn": 0.0}.get(kind, rng.uniform(-0.4, 0.4))
        base = Motion(
            id=motion_id,
            kind=kind,
            # slow enough that no joint moves more than a few pixels between frames at 12 fps
            speed=rng.uniform(0.25, 0.5) if kind != "turn" else rng.uniform(0.1, 0.2),
            amplitude=rng.uniform(0.6, 1.0),
            phase=rng.uniform(0, 2 * math.pi),
            yaw=float(base_yaw),
            side=int(rng.choice([-1, 1])),
            sway=rng.uniform(-0.03, 0.03),
        )
        if self.version == "v1":
            return base
        tempo_rng = _rng(self.seed, 4, motion_id)
        tempo = ("slow", "normal", "fast")[int(tempo_rng.integers(3))]
        speed = base.speed * TEMPOS[tempo]
        if kind == "spin":  # a full turn every 2.5–7 s: the back of the character, then the front again
            speed = tempo_rng.uniform(0.15, 0.4) * (0.6 if tempo == "slow" else 1.0)
        elif kind == "punch" and tempo == "slow":
            tempo = "normal"
            speed = base.speed
        return replace(base, speed=float(speed), tempo=tempo)

    def pose(self, character: Character, motion: Motion, time_s: float) -> BodyPose:
        """The pose of `character` doing `motion` at `time_s` seconds."""
        return _pose(character, motion, time_s)

    def clip_poses(self, character: Character, motion: Motion, frames: int, fps: float = 12.0, start_s: float = 0.0):
        return [self.pose(character, motion, start_s + i / fps) for i in range(frames)]

    def reference_pose(self, character: Character) -> BodyPose:
        """The neutral, camera-facing standing pose used as the reference image."""
        still = Motion(id=-1, kind="dance", speed=0.0, amplitude=0.0, phase=0.0, yaw=0.0, side=1, sway=0.0)
        return _pose(character, still, 0.0)


# ---- kinematics ---------------------------------------------------------------------------


def _direction(swing: float, abduction: float, lateral_sign: float) -> np.ndarray:
    """Unit vector of a limb hanging down, swung forward by `swing` and out sideways by `abduction`."""
    return np.array(
        [lateral_sign * math.sin(abduction), math.cos(abduction) * math.cos(swing), math.cos(abduction) * math.sin(swing)]
    )


def _pose(ch: Character, mo: Motion, t: float) -> BodyPose:
    h = ch.height
    torso, neck_len = 0.30 * h, 0.05 * h
    upper_arm, forearm, thigh, shin = 0.16 * h, 0.15 * h, 0.21 * h, 0.21 * h
    w = 2 * math.pi * mo.speed * t + mo.phase
    a = mo.amplitude
    s = math.sin(w)

    yaw, lift, lean = mo.yaw, 0.0, 0.0
    # joint angles, right side then left side: (arm swing, arm abduction, elbow bend, leg swing, leg abduction, knee)
    r = dict(arm_swing=0.0, arm_abd=0.12, elbow=0.15, leg_swing=0.0, leg_abd=0.04, knee=0.0)
    left = dict(r)
    if mo.kind == "walk":
        r.update(arm_swing=-0.6 * a * s, elbow=0.3 + 0.2 * a * max(0.0, -s), leg_swing=0.5 * a * s, knee=0.6 * a * max(0.0, -s))
        left.update(arm_swing=0.6 * a * s, elbow=0.3 + 0.2 * a * max(0.0, s), leg_swing=-0.5 * a * s, knee=0.6 * a * max(0.0, s))
    elif mo.kind == "dance":
        up = 0.5 + 0.5 * s
        r.update(arm_abd=0.25 + 2.2 * a * up, elbow=0.6 * a * (1 - up))
        left.update(arm_abd=0.25 + 2.2 * a * (1 - up) if mo.side < 0 else 0.25 + 2.2 * a * up, elbow=0.6 * a * up)
        knee = 0.4 * a * (0.5 + 0.5 * math.sin(2 * w))
        r.update(leg_abd=0.12, knee=knee, leg_swing=-knee / 2)
        left.update(leg_abd=0.12, knee=knee, leg_swing=-knee / 2)
        lean = 0.12 * a * math.sin(w)
        yaw = mo.yaw + 0.3 * a * math.sin(w / 2)
    elif mo.kind == "wave":
        wave = dict(arm_abd=2.3, arm_swing=0.2, elbow=-(0.4 + 0.5 * a * (0.5 + 0.5 * math.sin(2 * w))))
        (r if mo.side > 0 else left).update(wave)
        lean = 0.05 * math.sin(w)
    elif mo.kind == "turn":
        yaw = mo.side * 1.8 * a * math.sin(w)
        r.update(arm_swing=0.15 * s, arm_abd=0.2)
        left.update(arm_swing=-0.15 * s, arm_abd=0.2)
    elif mo.kind == "jump":
        cycle = (w / (2 * math.pi)) % 1.0
        air = max(0.0, math.sin(2 * math.pi * cycle))  # first half of the cycle in the air
        crouch = max(0.0, -math.sin(2 * math.pi * cycle))
        for side in (r, left):
            side.update(arm_abd=0.3 + 1.5 * air, elbow=0.3 * crouch, knee=1.0 * crouch + 0.3 * air, leg_swing=-0.5 * crouch)
        lift = 0.08 * a * air
    elif mo.kind == "cross":  # forearms cross in front of the chest, then open: the arms hide the print
        x = 0.5 + 0.5 * s
        for side, extra in ((r, 0.0), (left, 0.08 * mo.side)):
            side.update(arm_swing=0.05 + 0.6 * x + extra, arm_abd=0.12 - 0.45 * x, elbow=0.15 + 1.05 * x,
                        cross=(0.7 + 0.4 * a) * x)
        lean = 0.04 * math.sin(w)
    elif mo.kind == "spin":  # continuous full turns: the back of the character, then the front again
        yaw = mo.yaw + mo.side * w
        r.update(arm_abd=0.25 + 0.1 * s, arm_swing=0.1 * s)
        left.update(arm_abd=0.25 - 0.1 * s, arm_swing=-0.1 * s)
    elif mo.kind == "punch":  # fists up in front of the chest, alternate straight punches forward
        for side, extend in ((r, max(0.0, s)), (left, max(0.0, -s))):
            side.update(arm_swing=0.5 + 0.9 * a * extend, arm_abd=0.15 - 0.1 * extend, elbow=1.5 * (1 - extend),
                        cross=0.55 * (1 - extend))
        r.update(leg_abd=0.1, knee=0.2, leg_swing=-0.1)
        left.update(leg_abd=0.1, knee=0.2, leg_swing=-0.1)
        yaw = mo.yaw + 0.15 * a * s
    lateral_shift = mo.sway * math.sin(w) if mo.speed > 0 else 0.0

    # 3-D joints in the body frame (x: the person's left, y: down, z: toward the camera when yaw = 0)
    pelvis = np.array([0.0, 0.0, 0.0])
    up_dir = np.array([math.sin(lean), -math.cos(lean), 0.0])
    neck = pelvis + torso * up_dir
    lateral = np.array([math.cos(lean), math.sin(lean), 0.0])
    joints = np.zeros((18, 3))
    joints[NECK] = neck
    for sign, side, sh, el, wr, hp, kn, an in (
        (-1, r, R_SHOULDER, R_ELBOW, R_WRIST, R_HIP, R_KNEE, R_ANKLE),
        (1, left, L_SHOULDER, L_ELBOW, L_WRIST, L_HIP, L_KNEE, L_ANKLE),
    ):
        joints[sh] = neck + sign * ch.shoulder_half_width * lateral
        joints[el] = joints[sh] + upper_arm * _direction(side["arm_swing"], side["arm_abd"], sign)
        forearm_abd = side["arm_abd"] + min(0.0, side["elbow"]) * -1.0 - side.get("cross", 0.0)
        joints[wr] = joints[el] + forearm * _direction(side["arm_swing"] + abs(side["elbow"]), forearm_abd, sign)
        joints[hp] = pelvis + sign * ch.hip_half_width * np.array([1.0, 0.0, 0.0])
        joints[kn] = joints[hp] + thigh * _direction(side["leg_swing"], side["leg_abd"], sign)
        joints[an] = joints[kn] + shin * _direction(side["leg_swing"] - side["knee"], side["leg_abd"], sign)
    head = neck + (neck_len + ch.head_radius) * up_dir
    rad = ch.head_radius
    joints[NOSE] = head + np.array([0.0, 0.15 * rad, 0.95 * rad])
    joints[R_EYE] = head + np.array([-0.38 * rad, -0.15 * rad, 0.85 * rad])
    joints[L_EYE] = head + np.array([0.38 * rad, -0.15 * rad, 0.85 * rad])
    joints[R_EAR] = head + np.array([-rad, 0.0, 0.0])
    joints[L_EAR] = head + np.array([rad, 0.0, 0.0])

    # rotate by yaw about the vertical axis (around the pelvis), project orthographically
    cy, sy = math.cos(yaw), math.sin(yaw)
    x = joints[:, 0] * cy + joints[:, 2] * sy
    z = -joints[:, 0] * sy + joints[:, 2] * cy
    head_z = -head[0] * sy + head[2] * cy
    feet_y = max(joints[R_ANKLE, 1], joints[L_ANKLE, 1])
    # the lowest foot stands on the ground line unless the body is in the air
    root = np.array([0.5 + lateral_shift, _GROUND - feet_y - lift])
    keypoints = np.stack([x, joints[:, 1]], axis=1) + root
    visible = np.ones(18, dtype=bool)
    rel = z - head_z
    for i in (NOSE, R_EYE, L_EYE):
        visible[i] = rel[i] > 0.25 * rad
    for i in (R_EAR, L_EAR):
        visible[i] = rel[i] > -0.45 * rad
    return BodyPose(keypoints=keypoints, visible=visible, depth=z, yaw=yaw)
