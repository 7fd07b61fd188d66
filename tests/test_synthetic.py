"""The synthetic character world: deterministic, split cleanly, drawn to match its own skeletons."""

import numpy as np
import pytest

from rain_core.pose import render_pose
from rain_core.train.data import SyntheticClips
from rain_core.train.synthetic import (
    BACKGROUND,
    HELDOUT_BASE,
    L_EAR,
    MOTION_KINDS,
    R_EAR,
    SyntheticWorld,
    pose_frame,
    render_character,
    render_skeleton,
)


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
