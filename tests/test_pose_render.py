"""The renderer draws the committed fixture images pixel for pixel.

The fixtures were rendered by our renderer from tests/fixtures/pose/people.json; separately (not in the
repository) our renderer was checked equal to the RAIN authors' DWPose drawing on 300 random renders
(how: tests/fixtures/README.md). These tests pin that output so any drift in limb order, colours, rounding or
dimming fails.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rain_core.pose import Person, PoseFrame, face_dot_radius, from_pose_keypoint, render_pose

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pose"


def fixture_frame() -> PoseFrame:
    return from_pose_keypoint(json.loads((FIXTURES / "people.json").read_text()))[0]


@pytest.mark.parametrize("height,width", [(512, 512), (768, 512), (200, 300)])
def test_render_matches_fixture_pixel_for_pixel(height, width):
    expected = cv2.cvtColor(cv2.imread(str(FIXTURES / f"render_{height}x{width}.png")), cv2.COLOR_BGR2RGB)
    rendered = render_pose(fixture_frame(), height, width)
    assert rendered.dtype == np.uint8 and rendered.shape == (height, width, 3)
    assert np.array_equal(rendered, expected), f"{int((rendered != expected).any(-1).sum())} pixels differ"


def test_empty_frame_renders_black_canvas():
    assert not render_pose(PoseFrame([], 64, 64), 32, 48).any()


def test_body_limbs_are_dimmed_to_sixty_percent_and_joints_are_full_colour():
    body = np.zeros((18, 3))
    body[1] = (0.5, 0.2, 1.0)  # neck
    body[2] = (0.2, 0.2, 1.0)  # right shoulder: limb 0 (neck–r-shoulder), red
    image = render_pose(PoseFrame([Person(body=body)], 100, 100), 100, 100)
    assert tuple(image[20, 35]) == (153, 0, 0)  # middle of the limb: 255 * 0.6
    assert tuple(image[20, 20]) == (255, 170, 0)  # right-shoulder joint circle: joint colour 2, undimmed
    assert tuple(image[20, 50]) == (255, 85, 0)  # neck joint: joint colour 1


def test_draw_flags_select_parts():
    frame = fixture_frame()
    only_face = render_pose(frame, 256, 256, draw_body=False, draw_hands=False)
    everything = render_pose(frame, 256, 256)
    assert only_face.any() and (only_face != everything).any()
    assert not render_pose(frame, 256, 256, draw_body=False, draw_hands=False, draw_face=False).any()


def test_face_dot_radius_grows_with_face_and_is_one_when_anchor_missing():
    face = np.zeros((68, 3))
    face[27] = (0.5, 0.3, 1)
    face[8] = (0.5, 0.6, 1)  # 0.3 apart → size 1 → radius 3
    assert face_dot_radius(face) == 3
    face[8, 1] = 0.9  # 0.6 apart → radius 6
    assert face_dot_radius(face) == 6
    face[8, 2] = 0
    assert face_dot_radius(face) == 1


def test_controlnet_face_style_draws_white_dots_of_radius_three():
    face = np.zeros((68, 3))
    face[30] = (0.5, 0.5, 1.0)
    image = render_pose(PoseFrame([Person(face=face)], 100, 100), 100, 100, face_style="controlnet")
    assert {tuple(int(c) for c in p) for p in image.reshape(-1, 3)} == {(0, 0, 0), (255, 255, 255)}
    assert (image[50, 47:54] == 255).all() and not image[50, 46].any() and not image[50, 54].any()
    with pytest.raises(ValueError, match="face style"):
        render_pose(PoseFrame([Person(face=face)], 100, 100), 10, 10, face_style="anime")
