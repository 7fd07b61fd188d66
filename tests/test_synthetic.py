"""The synthetic character world: deterministic, split cleanly, drawn to match its own skeletons."""

import math
from dataclasses import replace

import numpy as np
import pytest

from rain_core.pose import render_pose
from rain_core.synthetic.render import pose_frame, render_character, render_skeleton
from rain_core.synthetic.world import (
    BACKGROUND,
    HELDOUT_BASE,
    L_EAR,
    L_WRIST,
    MOTION_KINDS,
    MOTION_KINDS_V2,
    PATTERNS,
    R_EAR,
    R_WRIST,
    BodyPose,
    SyntheticWorld,
)
from rain_core.train.data import SyntheticClips, build_dataset


def test_same_seed_draws_identical_frames_and_other_seeds_differ():
    a, b, c = SyntheticWorld(3), SyntheticWorld(3), SyntheticWorld(4)
    frame = [render_character(w.character(5), w.pose(w.character(5), w.motion(2), 1.3), 48, 48) for w in (a, b, c)]
    assert np.array_equal(frame[0], frame[1])
    assert not np.array_equal(frame[0], frame[2])


def test_train_and_heldout_ids_never_overlap():
    train = SyntheticWorld.ids("train", 100)
    heldout = SyntheticWorld.ids("heldout", 100)
    assert max(train) < HELDOUT_BASE <= min(heldout)
    assert {SyntheticWorld.split_of(i) for i in train} == {"train"}
    clips = SyntheticClips(32, 32, frames=1, split="heldout", heldout_pool=8)
    for index in range(20):
        character_id, motion_id, _, _ = clips.ids(index)
        assert HELDOUT_BASE <= character_id < HELDOUT_BASE + 8 and HELDOUT_BASE <= motion_id < HELDOUT_BASE + 8
    with pytest.raises(ValueError, match="split"):
        SyntheticWorld.ids("test", 1)


def test_skeleton_is_the_inference_renderer_output():
    world = SyntheticWorld(0)
    character = world.character(1)
    pose = world.pose(character, world.motion(1, "dance"), 0.7)
    expected = render_pose(pose_frame(pose, 512, 512), 512, 512)
    assert np.array_equal(render_skeleton(pose, 512, 512), expected)
    small = render_skeleton(pose, 64, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8 and small.any()


def test_ground_truth_covers_the_posed_keypoints():
    world = SyntheticWorld(0)
    for kind in MOTION_KINDS:
        character = world.character(7)
        pose = world.pose(character, world.motion(3, kind), 2.1)
        image = render_character(character, pose, 128, 128)
        body = np.any(np.abs(image.astype(int) - BACKGROUND) > 20, axis=-1)
        ys, xs = np.nonzero(body)
        kp = pose.keypoints[pose.visible] * 128
        # every visible keypoint lies inside the drawn figure's bounding box (small margin for anti-aliasing)
        assert xs.min() - 3 <= kp[:, 0].min() and kp[:, 0].max() <= xs.max() + 3, kind
        assert ys.min() - 3 <= kp[:, 1].min() and kp[:, 1].max() <= ys.max() + 3, kind


def test_motions_move_smoothly_and_a_turn_hides_an_ear():
    world = SyntheticWorld(0)
    character = world.character(2)
    for kind in MOTION_KINDS:
        poses = world.clip_poses(character, world.motion(4, kind), frames=48, fps=12.0)
        keypoints = np.stack([p.keypoints for p in poses])
        steps = np.abs(np.diff(keypoints, axis=0)).max()
        assert 0.0 < steps < 0.1, f"{kind}: largest per-frame move {steps:.3f} of the frame"
        assert np.ptp(keypoints, axis=0).max() > 0.03, f"{kind} hardly moves"
    turn = world.clip_poses(character, world.motion(9, "turn"), frames=60, fps=12.0)
    assert any(p.visible[R_EAR] != p.visible[L_EAR] for p in turn)


def test_synthetic_clip_sample_has_reference_frames_and_poses_in_unit_range():
    sample = SyntheticClips(32, 48, frames=3, seed=1)[5]
    assert sample["reference"].shape == (3, 32, 48)
    assert sample["frames"].shape == sample["poses"].shape == (3, 3, 32, 48)
    for value in sample.values():
        assert value.min() >= 0 and value.max() <= 1
    again = SyntheticClips(32, 48, frames=3, seed=1)[5]
    assert all(np.array_equal(sample[k].numpy(), again[k].numpy()) for k in sample)


# ---- world v2: prints, accessories, self-occlusion, tempos, spins ---------------------------------


def test_v1_world_is_still_the_default_and_draws_no_v2_wardrobe():
    character = SyntheticWorld(0).character(11)
    assert character.world == "v1" and character.pattern == "plain" and character.hat is None
    assert SyntheticWorld(0).motion_kinds == MOTION_KINDS
    with pytest.raises(ValueError, match="world version"):
        SyntheticWorld(0, version="v3")
    with pytest.raises(ValueError, match="cross"):
        SyntheticWorld(0).motion(1, "cross")  # a v2 kind is not part of v1


def test_v2_wardrobe_covers_every_print_and_accessory_and_keeps_the_v1_body():
    v1, v2 = SyntheticWorld(0), SyntheticWorld(0, version="v2")
    characters = [v2.character(i) for i in range(60)]
    assert {c.pattern for c in characters} == set(PATTERNS)
    for field in ("badge", "hat", "belt", "strap", "wristbands"):
        assert any(getattr(c, field) is not None for c in characters), field
        assert any(getattr(c, field) is None for c in characters), field
    assert v2.character(3).height == v1.character(3).height and v2.character(3).skin == v1.character(3).skin
    assert {v2.motion(i).kind for i in range(16)} == set(MOTION_KINDS_V2)
    assert {v2.motion(i).tempo for i in range(40)} == {"slow", "normal", "fast"}


def _figure_box(image):
    body = np.any(np.abs(image.astype(int) - BACKGROUND) > 20, axis=-1)
    ys, xs = np.nonzero(body)
    return xs.min(), xs.max(), ys.min(), ys.max()


def test_v2_ground_truth_covers_the_posed_keypoints_for_every_kind():
    world = SyntheticWorld(0, version="v2")
    for kind in MOTION_KINDS_V2:
        character = world.character(8)
        pose = world.pose(character, world.motion(5, kind), 1.9)
        image = render_character(character, pose, 128, 128)
        x0, x1, y0, y1 = _figure_box(image)
        kp = pose.keypoints[pose.visible] * 128
        assert x0 - 3 <= kp[:, 0].min() and kp[:, 0].max() <= x1 + 3, kind
        assert y0 - 3 <= kp[:, 1].min() and kp[:, 1].max() <= y1 + 3, kind


def test_v2_print_moves_with_the_torso():
    """The print is in body coordinates: shifting the whole pose sideways shifts the drawn print by the same
    amount (v1's screen-row stripes would stay put vertically but this checks the horizontal carry)."""
    world = SyntheticWorld(0, version="v2")
    character = next(c for c in (world.character(i) for i in range(40)) if c.pattern == "checks")
    pose = world.reference_pose(character)
    moved = BodyPose(pose.keypoints + [0.125, 0.0], pose.visible, pose.depth, pose.yaw)
    a, b = render_character(character, pose, 128, 128), render_character(character, moved, 128, 128)
    assert np.array_equal(a[:, :96], b[:, 16:112])  # 0.125 of 128 px = 16 px, the figure fits in either crop
    plain = replace(character, pattern="plain", badge=None, strap=None, belt=None)
    assert not np.array_equal(a, render_character(plain, pose, 128, 128))  # the print is really drawn


def test_v2_badge_shows_from_the_front_only_and_a_spin_shows_the_back():
    world = SyntheticWorld(0, version="v2")
    character = replace(world.character(2), badge=(255, 0, 0), pattern="plain", shirt=(40, 160, 40), strap=None)
    pose = world.reference_pose(character)
    front = render_character(character, pose, 128, 128)
    back = render_character(character, BodyPose(pose.keypoints, pose.visible, pose.depth, math.pi), 128, 128)
    red = lambda im: np.sum((im[..., 0] > 200) & (im[..., 1] < 80) & (im[..., 2] < 80))  # noqa: E731
    assert red(front) > 10 and red(back) == 0
    spin = world.clip_poses(character, world.motion(6, "spin"), frames=120, fps=12.0)
    facing = {math.cos(p.yaw) > 0 for p in spin}
    assert facing == {True, False}


def test_v2_arms_cross_in_front_of_the_body():
    world = SyntheticWorld(0, version="v2")
    character = world.character(4)
    poses = world.clip_poses(character, world.motion(5, "cross"), frames=48, fps=12.0)
    crossed = [p for p in poses if p.keypoints[R_WRIST, 0] > p.keypoints[L_WRIST, 0]]  # right wrist left of the left one
    assert crossed, "the forearms never cross"
    for p in crossed:
        assert p.depth[R_WRIST] > 0 and p.depth[L_WRIST] > 0  # in front of the torso: they occlude the print


def test_v2_tempos_move_at_different_speeds_and_stay_trackable():
    world = SyntheticWorld(0, version="v2")
    character = world.character(2)
    fastest = {}
    for motion_id in range(48):
        motion = world.motion(motion_id)
        keypoints = np.stack([p.keypoints for p in world.clip_poses(character, motion, 36, 12.0)])
        step = np.abs(np.diff(keypoints, axis=0)).max()
        assert step < 0.2, f"{motion.kind}/{motion.tempo}: {step:.3f} of the frame per frame"
        fastest[motion.tempo] = max(fastest.get(motion.tempo, 0.0), step)
    assert fastest["fast"] > 0.1 > fastest["slow"]


def test_v2_synthetic_clips_are_deterministic_and_differ_from_v1():
    v2 = SyntheticClips(32, 32, frames=2, seed=1, world="v2")[4]
    again = SyntheticClips(32, 32, frames=2, seed=1, world="v2")[4]
    v1 = SyntheticClips(32, 32, frames=2, seed=1)[4]
    assert all(np.array_equal(v2[k].numpy(), again[k].numpy()) for k in v2)
    assert not np.array_equal(v2["frames"].numpy(), v1["frames"].numpy())
    assert isinstance(build_dataset("synthetic-v2", 32, 32, 2, seed=1).world, SyntheticWorld)
    assert build_dataset("synthetic-v2", 32, 32, 2, seed=1).world.version == "v2"
    assert build_dataset("synthetic", 32, 32, 2, seed=1).world.version == "v1"
