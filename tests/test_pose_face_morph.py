"""Face-morph: the default parameters move landmarks as the method specifies; dots, fill and damping."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rain_core.pose import Person, PoseFrame, from_pose_keypoint
from rain_core.pose.face_morph import FACE_DOTS, FaceMorpher, FaceMorphParams, morph_face, render_face_morph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pose"


def frontal_face() -> np.ndarray:
    """The fixture's upright, left-right symmetric face, scaled up to fill a good part of the canvas."""
    face = from_pose_keypoint(json.loads((FIXTURES / "people.json").read_text()))[0].people[0].face.copy()
    center = face[:, :2].mean(axis=0)
    face[:, :2] = (face[:, :2] - center) * 5 + 0.5
    return face


def extent(points: np.ndarray) -> np.ndarray:
    return points[:, :2].max(axis=0) - points[:, :2].min(axis=0)


def test_defaults_are_the_thirteen_published_values():
    assert FaceMorphParams().to_dict() == {
        "face_length": 0.75, "eye_height": 3.0, "eye_width": 1.6, "mouth_height": 1.2, "mouth_width": 0.67,
        "jaw_width": 0.9, "eye_horizontal_correction": 0.15, "eye_distance_correction": 0.05,
        "eye_vertical_correction": 0.10, "mouth_horizontal_correction": 0.15, "mouth_vertical_correction": 0.03,
        "nose_horizontal_correction": 0.1, "nose_vertical_correction": 0.05,
    }


def test_default_morph_scales_eyes_mouth_face_and_jaw_as_specified():
    face = frontal_face()
    morphed = morph_face(face)
    for eye in (slice(36, 42), slice(42, 48)):
        width, height = extent(morphed[eye]) / extent(face[eye])
        assert width == pytest.approx(1.6) and height == pytest.approx(0.75 * 3.0)
    width, height = extent(morphed[60:68]) / extent(face[60:68])
    assert width == pytest.approx(0.67) and height == pytest.approx(0.75 * 1.2)
    # chin to eyebrow: only the face-length compression moves these vertically
    assert (morphed[8, 1] - morphed[19, 1]) / (face[8, 1] - face[19, 1]) == pytest.approx(0.75)
    # jaw sides 4..12 pulled in horizontally by 0.9 about their mean
    jaw, jaw_before = morphed[4:13, 0], face[4:13, 0]
    assert np.ptp(jaw) / np.ptp(jaw_before) == pytest.approx(0.9)


def test_default_morph_moves_eyes_apart_and_down_by_the_corrections():
    face = frontal_face()
    morphed = morph_face(face)
    compressed = face[:, :2].copy()  # the face after the first edit: vertical ×0.75 about its mean
    compressed[:, 1] = compressed[:, 1].mean() + 0.75 * (compressed[:, 1] - compressed[:, 1].mean())
    nose_to_jaw = np.linalg.norm(compressed[33] - compressed[13])
    spacing = morphed[42:48, 0].mean() - morphed[36:42, 0].mean()
    assert spacing - (face[42:48, 0].mean() - face[36:42, 0].mean()) == pytest.approx(2 * 0.05 * nose_to_jaw)
    brow_to_jaw = np.linalg.norm(compressed[19] - compressed[6])
    eye_drop = morphed[36:42, 1].mean() - compressed[36:42, 1].mean()
    assert eye_drop == pytest.approx(0.10 * brow_to_jaw)


def test_neutral_parameters_leave_the_face_unchanged():
    neutral = FaceMorphParams(1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
    face = frontal_face()
    assert np.allclose(morph_face(face, neutral), face, atol=1e-12)


def test_morph_follows_head_roll():
    face = frontal_face()
    angle = math.radians(25)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rolled = face.copy()
    rolled[:, :2] = (face[:, :2] - 0.5) @ rotation.T + 0.5
    unrolled = morph_face(rolled)
    unrolled[:, :2] = (unrolled[:, :2] - 0.5) @ rotation + 0.5
    assert np.allclose(unrolled, morph_face(face), atol=1e-9)


def test_missing_landmarks_stay_missing_and_edits_measuring_with_them_are_skipped():
    face = frontal_face()
    face[13, 2] = 0  # the jaw point the eye corrections measure with
    morphed = morph_face(face)
    assert (morphed[13] == 0).all()
    assert np.isfinite(morphed).all()


def test_face_morph_render_draws_26_dots_in_the_region_colours():
    face = frontal_face()
    image = render_face_morph(PoseFrame([Person(face=face)], 512, 512), 512, 512)
    colours = {tuple(int(c) for c in pixel) for pixel in image.reshape(-1, 3)} - {(0, 0, 0)}
    assert colours == {colour for _, colour in FACE_DOTS}
    assert len(FACE_DOTS) == 26


def test_face_morpher_fills_missing_landmarks_from_the_previous_frame():
    morpher = FaceMorpher(damping=1)
    first = frontal_face()
    second = first.copy()
    second[:, 0] += 0.01
    second[36:42, 2] = 0  # right eye lost in this frame
    morpher.smooth(first)
    out = morpher.smooth(second)
    assert np.array_equal(out[36:42], first[36:42]) and np.allclose(out[42:], second[42:])


def test_face_morpher_damping_weights_newest_heaviest():
    morpher = FaceMorpher(damping=2)
    first = frontal_face()
    second = first.copy()
    second[:, 1] += 0.03
    morpher.smooth(first)
    out = morpher.smooth(second)
    assert np.allclose(out[:, 1], (first[:, 1] + 2 * second[:, 1]) / 3)
    third = second.copy()
    third[:, 1] += 0.03
    assert np.allclose(morpher.smooth(third)[:, 1], (second[:, 1] + 2 * third[:, 1]) / 3)  # window of 2


def test_face_morpher_renders_black_until_a_face_is_seen():
    morpher = FaceMorpher()
    assert not morpher(PoseFrame([], 64, 64), 64, 64).any()
    assert morpher(PoseFrame([Person(face=frontal_face())], 64, 64), 64, 64).any()
    assert morpher(PoseFrame([], 64, 64), 64, 64).any()  # the last face is held
