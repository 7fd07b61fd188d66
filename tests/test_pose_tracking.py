"""PoseTracker (threshold, hold-last with timeout, damping, person matching) and align_to_reference."""

import json
from pathlib import Path

import numpy as np
import pytest

from rain_core.pose import Person, PoseFrame, from_pose_keypoint, render_pose
from rain_core.pose.tracking import PoseTracker, align_to_reference

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pose"


def fixture_people():
    return from_pose_keypoint(json.loads((FIXTURES / "people.json").read_text()))[0].people


def frame_of(*people, width=512, height=512):
    return PoseFrame([p.copy() for p in people], width, height)


def shifted(person: Person, dx: float, dy: float = 0.0) -> Person:
    moved = person.copy()
    for part in ("body", "feet", "face", "left_hand", "right_hand"):
        array = moved.part(part)
        present = array[:, 2] > 0
        array[present, 0] += dx
        array[present, 1] += dy
    return moved


def test_low_confidence_keypoints_are_dropped():
    person = fixture_people()[0]
    person.body[0, 2] = 0.2
    out = PoseTracker(confidence_threshold=0.3, hold_frames=0)(frame_of(person))
    assert out.people[0].body[0, 2] == 0 and out.people[0].body[1, 2] > 0


def test_missing_person_is_held_for_hold_frames_then_the_canvas_is_empty():
    person = fixture_people()[0]
    tracker = PoseTracker(hold_frames=2)
    first = tracker(frame_of(person))
    held = [tracker(frame_of()) for _ in range(3)]
    assert held[0] == first and held[1] == first
    assert held[2].people == [] and not render_pose(held[2], 64, 64).any()


def test_missing_part_is_held_while_the_rest_moves():
    person = fixture_people()[0]
    tracker = PoseTracker(hold_frames=3)
    tracker(frame_of(person))
    moved = shifted(person, 0.01)
    moved.left_hand[:, 2] = 0
    out = tracker(frame_of(moved)).people[0]
    assert np.array_equal(out.left_hand, person.left_hand)  # held where it was last seen
    assert np.array_equal(out.body, moved.body)


def test_damping_blends_previous_output_and_new_detection():
    person = fixture_people()[0]
    tracker = PoseTracker(damping=0.75)
    tracker(frame_of(person))
    out = tracker(frame_of(shifted(person, 0.04))).people[0]
    present = person.body[:, 2] > 0
    assert np.allclose(out.body[present, 0], person.body[present, 0] + 0.01)  # 0.25 of the move
    out = tracker(frame_of(shifted(person, 0.04))).people[0]
    assert np.allclose(out.body[present, 0], person.body[present, 0] + 0.0175)


def test_people_keep_their_slot_when_detection_order_swaps():
    big, small = fixture_people()
    tracker = PoseTracker(hold_frames=0)
    first = tracker(frame_of(big, small))
    second = tracker(frame_of(shifted(small, 0.01), shifted(big, 0.01)))
    assert second.people[0].body[1, 0] == pytest.approx(first.people[0].body[1, 0] + 0.01)
    assert second.people[1].body[1, 0] == pytest.approx(first.people[1].body[1, 0] + 0.01)


def scaled(person: Person, scale: float, offset, size) -> Person:
    """The same pose scaled in pixels about the origin then offset (pixels), on a canvas of `size`."""
    out = person.copy()
    for part in ("body", "feet", "face", "left_hand", "right_hand"):
        array = out.part(part)
        present = array[:, 2] > 0
        pixels = array[present, :2] * 512 * scale + offset
        array[present, :2] = pixels / size
    return out


def test_align_to_reference_undoes_scale_and_offset():
    reference_person = fixture_people()[0]
    reference = frame_of(reference_person)
    driving = [PoseFrame([scaled(reference_person, 0.5, (100, 40), (640, 360))], 640, 360)]
    aligned = align_to_reference(driving, reference)[0]
    assert (aligned.canvas_width, aligned.canvas_height) == (512, 512)
    assert np.allclose(aligned.people[0].body, reference_person.body)
    assert np.allclose(aligned.people[0].face, reference_person.face)


def test_align_to_reference_keeps_motion_and_anchors_the_first_frame():
    reference_person = fixture_people()[0]
    driver = scaled(reference_person, 2.0, (-300, -200), (512, 512))
    sequence = [frame_of(driver), frame_of(shifted(driver, 0.1))]
    aligned = align_to_reference(sequence, frame_of(reference_person), anchor="feet")
    ankles = [10, 13]
    assert np.allclose(aligned[0].people[0].body[ankles, :2], reference_person.body[ankles, :2])
    move = aligned[1].people[0].body[1, 0] - aligned[0].people[0].body[1, 0]
    assert move == pytest.approx(0.05)  # the 0.1 step, at half the size


def test_align_to_reference_without_reference_body_says_what_is_needed():
    face_only = Person(face=fixture_people()[0].face)
    with pytest.raises(ValueError, match="reference frame has no person with a neck"):
        align_to_reference([frame_of(fixture_people()[0])], frame_of(face_only))
