"""PoseFrame ⇄ POSE_KEYPOINT ⇄ OpenPose JSON conversions, and how malformed input is rejected."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rain_core.pose import (
    Person,
    PoseFormatError,
    PoseFrame,
    from_pose_keypoint,
    load_openpose_json,
    save_openpose_json,
    to_pose_keypoint,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pose"


def fixture_pose_keypoint():
    return json.loads((FIXTURES / "people.json").read_text())


def one_person_frame(**overrides):
    person = {
        "pose_keypoints_2d": [0.5, 0.5, 1.0] * 18,
        "face_keypoints_2d": [0.5, 0.2, 1.0] * 68,
        "hand_left_keypoints_2d": None,
        "hand_right_keypoints_2d": [0.3, 0.6, 0.8] * 21,
    }
    person.update(overrides)
    return {"people": [person], "canvas_width": 512, "canvas_height": 768}


def test_pose_keypoint_round_trip_is_exact():
    data = fixture_pose_keypoint()
    frames = from_pose_keypoint(data)
    assert to_pose_keypoint(frames, include_feet=True) == data
    assert from_pose_keypoint(to_pose_keypoint(frames, include_feet=True)) == frames


def test_fixture_parses_into_parts_with_missing_points_zeroed():
    frame = from_pose_keypoint(fixture_pose_keypoint())[0]
    assert (frame.canvas_width, frame.canvas_height) == (512, 512)
    first, second = frame.people
    assert first.has("feet") and first.body.shape == (18, 3) and first.face.shape == (68, 3)
    assert not second.present("body")[[3, 4, 14]].any()
    assert not second.has("right_hand") and (second.right_hand == 0).all()


def test_without_feet_the_body_list_has_18_points_and_feet_are_dropped():
    frame = from_pose_keypoint(fixture_pose_keypoint())[0]
    plain = to_pose_keypoint([frame])
    assert len(plain[0]["people"][0]["pose_keypoints_2d"]) == 54
    assert not from_pose_keypoint(plain)[0].people[0].has("feet")


def test_absent_part_reads_as_missing_and_writes_as_none():
    frame = from_pose_keypoint([one_person_frame()])[0]
    assert not frame.people[0].has("left_hand")
    assert to_pose_keypoint([frame])[0]["people"][0]["hand_left_keypoints_2d"] is None


def test_openpose_json_round_trip_one_file_and_one_file_per_frame(tmp_path):
    frames = from_pose_keypoint(fixture_pose_keypoint()) * 3
    single = save_openpose_json(frames, tmp_path / "all.json", include_feet=True)
    assert load_openpose_json(single[0]) == frames
    files = save_openpose_json(frames, tmp_path / "frames", include_feet=True)
    assert len(files) == 3 and load_openpose_json(tmp_path / "frames") == frames


def test_openpose_pixel_coordinates_are_normalised_with_the_canvas_size(tmp_path):
    person = {"pose_keypoints_2d": [256.0, 384.0, 0.9] + [0.0, 0.0, 0.0] * 17}
    (tmp_path / "frame.json").write_text(json.dumps({"people": [person]}))
    frame = load_openpose_json(tmp_path / "frame.json", canvas_size=(512, 768))[0]
    assert frame.people[0].body[0].tolist() == [0.5, 0.5, 0.9]
    with pytest.raises(PoseFormatError, match="canvas_width"):
        load_openpose_json(tmp_path / "frame.json")


def test_no_people_gives_an_empty_frame():
    frame = from_pose_keypoint([{"people": [], "canvas_width": 64, "canvas_height": 32}])[0]
    assert frame.people == [] and frame.is_empty()


def test_ten_people_are_all_kept_unless_max_people_keeps_the_largest():
    frame = one_person_frame()
    people = []
    for i in range(10):
        s = 0.01 * (i + 1)
        body = [0.0, 0.0, 0.0] * 18
        body[0:3] = [0.5 - s, 0.5 - s, 1.0]
        body[3:6] = [0.5 + s, 0.5 + s, 1.0]
        people.append({"pose_keypoints_2d": body})
    frame["people"] = people
    assert len(from_pose_keypoint([frame])[0].people) == 10
    kept = from_pose_keypoint([frame], max_people=2)[0].people
    assert [p.body[0, 0] for p in kept] == pytest.approx([0.41, 0.40])  # the two largest, in input order


def test_coordinates_slightly_outside_the_canvas_are_kept():
    frame = one_person_frame(pose_keypoints_2d=[1.2, -0.1, 1.0] * 18)
    assert from_pose_keypoint([frame])[0].people[0].body[0].tolist() == [1.2, -0.1, 1.0]


def test_zero_confidence_point_with_nan_coordinates_is_just_missing():
    frame = one_person_frame(pose_keypoints_2d=[math.nan, math.nan, 0.0] + [0.5, 0.5, 1.0] * 17)
    body = from_pose_keypoint([frame])[0].people[0].body
    assert body[0].tolist() == [0.0, 0.0, 0.0] and body[1, 2] == 1.0


@pytest.mark.parametrize(
    "frames, message",
    [
        ([one_person_frame(), one_person_frame(pose_keypoints_2d=[0.5] * 53)], r"frame 1.*pose_keypoints_2d.*54"),
        ([one_person_frame(face_keypoints_2d=[0.5, "0.2", 1.0] * 68)], r"frame 0.*face_keypoints_2d\[1\].*number"),
        ([one_person_frame(hand_right_keypoints_2d=[0.5, math.nan, 1.0] * 21)], r"hand_right_keypoints_2d.*non-finite"),
        ([one_person_frame(pose_keypoints_2d=[0.5, 0.5, math.nan] * 18)], r"pose_keypoints_2d.*confidence"),
        ([one_person_frame(pose_keypoints_2d=[256.0, 300.0, 1.0] * 18)], r"pose_keypoints_2d.*pixel coordinates"),
        ([one_person_frame(pose_keypoints_2d=[0.5, 0.5, -1.0] * 18)], r"negative confidence"),
        ([{"canvas_width": 512, "canvas_height": 512}], r"frame 0.*'people'"),
        ([{"people": []}], r"frame 0.*canvas_width"),
        ([one_person_frame(), "frame"], r"frame 1.*dict"),
        ([{"people": [{"foo": [1]}], "canvas_width": 5, "canvas_height": 5}], r"people\[0\].*none of the keypoint"),
        ([{"people": [], "canvas_width": -5, "canvas_height": 5}], r"canvas_width.*positive integer"),
        ("not a list", r"POSE_KEYPOINT"),
    ],
)
def test_malformed_pose_keypoint_names_frame_and_field(frames, message):
    with pytest.raises(PoseFormatError, match=message):
        from_pose_keypoint(frames)


def test_letterboxed_keeps_proportions_on_a_wider_canvas():
    body = np.zeros((18, 3))
    body[0] = (0.0, 0.0, 1.0)
    body[1] = (1.0, 1.0, 1.0)
    boxed = PoseFrame([Person(body=body)], 100, 200).letterboxed(200, 200)  # tall 100x200 into square
    assert boxed.people[0].body[:2, :2].tolist() == [[0.25, 0.0], [0.75, 1.0]]


# --- fuzzing: the parser either returns frames or raises PoseFormatError, nothing else ------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.text(max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=5), max_leaves=20)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 5))


@st.composite
def frame_like(draw):
    def part(points):
        return draw(st.one_of(
            st.none(),
            st.lists(number, min_size=3 * points, max_size=3 * points),
            st.lists(number, max_size=12),
            json_value,
        ))

    person = {}
    for key, points in [("pose_keypoints_2d", 18), ("face_keypoints_2d", 68), ("hand_left_keypoints_2d", 21),
                        ("hand_right_keypoints_2d", 21)]:
        if draw(st.booleans()):
            person[key] = part(points)
    frame = {"people": draw(st.one_of(st.lists(st.just(person), max_size=3), json_value))}
    for key in ("canvas_width", "canvas_height"):
        if draw(st.integers(0, 4)):
            frame[key] = draw(st.one_of(st.integers(-3, 2000), json_leaf))
    return frame


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(frame_like(), max_size=3), json_value))
def test_fuzzed_pose_keypoint_parses_or_raises_pose_format_error(data):
    try:
        frames = from_pose_keypoint(data)
    except PoseFormatError:
        return
    for frame in frames:
        for person in frame.people:
            for part in ("body", "feet", "face", "left_hand", "right_hand"):
                array = person.part(part)
                assert np.isfinite(array).all() and (array[:, 2] >= 0).all()


valid_points = st.tuples(
    st.floats(-1, 2, allow_nan=False), st.floats(-1, 2, allow_nan=False), st.floats(0, 1, allow_nan=False)
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(valid_points, min_size=18, max_size=18), max_size=3), st.integers(1, 4000))
def test_fuzzed_valid_bodies_round_trip_exactly(bodies, width):
    frame = {"people": [{"pose_keypoints_2d": [v for point in body for v in point]} for body in bodies],
             "canvas_width": width, "canvas_height": 512}
    frames = from_pose_keypoint([frame])
    assert from_pose_keypoint(to_pose_keypoint(frames)) == frames
