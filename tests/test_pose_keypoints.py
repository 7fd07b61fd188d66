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
    read_keypoints,
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
    assert read_keypoints(single[0]).frames == frames
    files = save_openpose_json(frames, tmp_path / "frames", include_feet=True)
    assert len(files) == 3 and read_keypoints(tmp_path / "frames").frames == frames


def test_openpose_pixel_coordinates_are_normalised_with_the_canvas_size(tmp_path):
    person = {"pose_keypoints_2d": [256.0, 384.0, 0.9] + [0.0, 0.0, 0.0] * 17}
    (tmp_path / "frame.json").write_text(json.dumps({"people": [person]}))
    frame = read_keypoints(tmp_path / "frame.json", canvas_size=(512, 768)).frames[0]
    assert frame.people[0].body[0].tolist() == [0.5, 0.5, 0.9]
    with pytest.raises(PoseFormatError, match="canvas_width"):
        read_keypoints(tmp_path / "frame.json")


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


# ---- the one reader of keypoint files (CLI, nodes, live panel) ----------------------------------------------

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "keypoints"


def test_the_projects_own_keypoint_files_read_with_their_frame_rate():
    for name in ("rain-dance-keypoints.json", "rain-face-keypoints.json"):
        sequence = read_keypoints(SHIPPED / name)
        raw = json.loads((SHIPPED / name).read_text())
        assert sequence.fps == raw["fps"] and len(sequence.frames) == len(raw["frames"])
        assert sequence.coordinates == "normalized"
        assert sequence.frames == from_pose_keypoint(raw["frames"])


@pytest.mark.parametrize("content, message", [
    ({"frames": []}, r"x\.json: holds no frames \(an empty list\)"),
    ([], r"x\.json: holds no frames"),
    ({"fps": 30}, r"x\.json: expected \{'fps': F, 'frames': \[\.\.\.\]\}.*found an object with keys \['fps'\]"),
    ({"fps": 30, "frames": "many"}, r"'frames' must be a list of frame dicts, found str"),
    ({"fps": -2, "frames": [one_person_frame()]}, r"'fps' must be a positive number, found -2"),
    ("text", r"x\.json: expected a list of frame dicts.*found str"),
    ([one_person_frame(), {"canvas_width": 5, "canvas_height": 5}], r"x\.json: frame 1: missing key 'people'"),
])
def test_keypoint_files_get_messages_that_name_the_real_problem(tmp_path, content, message):
    (tmp_path / "x.json").write_text(json.dumps(content))
    with pytest.raises(PoseFormatError, match=message):
        read_keypoints(tmp_path / "x.json")


def test_negative_coordinates_never_make_a_file_pixels_and_far_ones_are_an_error(tmp_path):
    partly_out = one_person_frame(pose_keypoints_2d=[-0.2, 0.5, 1.0] + [0.5, 0.5, 1.0] * 17)
    (tmp_path / "out.json").write_text(json.dumps([partly_out]))
    sequence = read_keypoints(tmp_path / "out.json")
    assert sequence.coordinates == "normalized"
    assert sequence.frames[0].people[0].body[0].tolist() == [-0.2, 0.5, 1.0]  # kept; the renderer clips it
    far = one_person_frame(pose_keypoints_2d=[-3.0, 0.5, 1.0] + [0.5, 0.5, 1.0] * 17)
    (tmp_path / "far.json").write_text(json.dumps([far]))
    with pytest.raises(PoseFormatError, match=r"far\.json: frame 0, people\[0\]\.pose_keypoints_2d: point 0 at "
                                              r"normalised \(-3, 0\.5\) is outside \[-1\.0, 2\.0\]"):
        read_keypoints(tmp_path / "far.json")


def test_pixel_coordinates_are_decided_for_the_whole_file_not_frame_by_frame(tmp_path):
    """OpenPose's own pixel output: a frame whose person stands near the top-left corner (all values < 2) is still
    pixels because the file is."""
    body = [256.0, 384.0, 0.9] + [100.0, 200.0, 0.8] * 17
    corner = [1.0, 1.5, 0.9] + [0.0, 0.0, 0.0] * 17
    frames = [{"people": [{"pose_keypoints_2d": points}], "canvas_width": 512, "canvas_height": 768}
              for points in (body, body, corner)]
    (tmp_path / "pixels.json").write_text(json.dumps(frames))
    sequence = read_keypoints(tmp_path / "pixels.json")
    assert sequence.coordinates == "pixels"
    assert sequence.frames[0].people[0].body[0].tolist() == [0.5, 0.5, 0.9]
    assert sequence.frames[2].people[0].body[0].tolist() == pytest.approx([1.0 / 512, 1.5 / 768, 0.9])
    folder = tmp_path / "per-frame"
    folder.mkdir()
    for index, frame in enumerate(frames):
        (folder / f"frame_{index:06d}.json").write_text(json.dumps(frame))
    assert read_keypoints(folder).frames == sequence.frames
