"""Pose-frame data model and its interchange formats.

A `PoseFrame` is one video frame: a canvas size and a list of `Person` (0..n people). Each person holds
five parts, every part an (N, 3) float64 array of `[x, y, confidence]` rows with x, y normalised to the
canvas (0..1, like comfyui_controlnet_aux's `POSE_KEYPOINT`):

    body        18  OpenPose/COCO order (nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, ...)
    feet         6  COCO-WholeBody order: l-big-toe, l-small-toe, l-heel, r-big-toe, r-small-toe, r-heel
    face        68  iBUG/dlib 68-landmark order
    left_hand   21  OpenPose hand order
    right_hand  21

A keypoint is *present* when its confidence is > 0. Missing keypoints are stored canonically as
`[0, 0, 0]` (the value comfyui_controlnet_aux writes for them), so conversions round-trip exactly.

Interchange:
- `POSE_KEYPOINT` (comfyui_controlnet_aux): a list with one dict per frame,
  `{"people": [{"pose_keypoints_2d": [...], "face_keypoints_2d": [...], "hand_left_keypoints_2d": [...],
  "hand_right_keypoints_2d": [...]}], "canvas_width": W, "canvas_height": H}`, flat `[x, y, c, ...]`
  lists, a part may be `None`/absent when it was not detected. `pose_keypoints_2d` holds 18 points, or
  24 when the six feet points are appended (`include_feet=True` writes that form).
- OpenPose JSON files: the same dict per frame, one file per frame or one file holding a list.
  Coordinates may be normalised or in pixels (OpenPose's own output); see the rule below.
- This project's keypoint files: `{"fps": F, "frames": [frame dict, ...]}` (examples/keypoints/).
`read_keypoints` is the one reader of keypoint files for the CLI, the nodes and the live panel; it accepts
every form above and returns a `KeypointSequence` (frames + fps).

Rules for odd input (all tested):
- no people → a frame with an empty `people` list (renders as an empty canvas; tracking may hold the
  last pose);
- many people → all are kept; `max_people=n` keeps the n largest (by body bounding box) and drops the
  rest;
- coordinates: THE rule, applied to a whole sequence at once by `read_keypoints` / `parse_keypoints`: a
  sequence is normalised (0..1, POSE_KEYPOINT) unless most of its present points (the median of max(x, y)) lie
  beyond 2, which only pixel coordinates do (OpenPose's own output); then every point is divided by its
  frame's canvas size. Negative values never make a sequence "pixels". After that, points outside the canvas
  but within one canvas of it ([-1, 2] normalised: a person partly out of frame) are kept and the renderer
  clips what it draws at the canvas edge; a point further out is a `PoseFormatError` naming frame, person,
  field and point — never reinterpreted;
- a point with confidence 0 is missing whatever its coordinates (NaN included);
- NaN/inf confidences, NaN/inf coordinates of present points, negative confidences, lists whose length is
  not 3·(points of the part), strings, missing `people`/canvas keys → `PoseFormatError`, whose message
  names the frame index and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PART_SIZES = {"body": 18, "feet": 6, "face": 68, "left_hand": 21, "right_hand": 21}
PARTS = tuple(PART_SIZES)

# POSE_KEYPOINT / OpenPose JSON field of each part (feet travel appended to the body list).
JSON_FIELDS = {
    "body": "pose_keypoints_2d",
    "face": "face_keypoints_2d",
    "left_hand": "hand_left_keypoints_2d",
    "right_hand": "hand_right_keypoints_2d",
}

# Normalised coordinates beyond this margin around the canvas are treated as a format error.
_NORMALISED_LIMITS = (-1.0, 2.0)


class PoseFormatError(ValueError):
    """Malformed pose data; the message names the frame index and the field."""


def _empty(part: str) -> np.ndarray:
    return np.zeros((PART_SIZES[part], 3), dtype=np.float64)


def _canonical(part: str, points) -> np.ndarray:
    """(N, 3) float64 copy with missing points (confidence <= 0 or not finite x/y) zeroed."""
    if points is None:
        return _empty(part)
    array = np.array(points, dtype=np.float64).reshape(-1, 3) if np.size(points) else _empty(part)
    if array.shape != (PART_SIZES[part], 3):
        raise ValueError(f"Person.{part}: expected shape ({PART_SIZES[part]}, 3), found {array.shape}")
    missing = ~(array[:, 2] > 0) | ~np.isfinite(array[:, :2]).all(axis=1)
    array[missing] = 0.0
    return array


@dataclass(eq=False)
class Person:
    """One person's keypoints; every part is (N, 3) `[x, y, confidence]`, x/y normalised to the canvas."""

    body: np.ndarray = field(default_factory=lambda: _empty("body"))
    feet: np.ndarray = field(default_factory=lambda: _empty("feet"))
    face: np.ndarray = field(default_factory=lambda: _empty("face"))
    left_hand: np.ndarray = field(default_factory=lambda: _empty("left_hand"))
    right_hand: np.ndarray = field(default_factory=lambda: _empty("right_hand"))

    def __post_init__(self):
        for part in PARTS:
            setattr(self, part, _canonical(part, getattr(self, part)))

    def part(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def present(self, name: str) -> np.ndarray:
        """Boolean mask of the part's present keypoints."""
        return getattr(self, name)[:, 2] > 0

    def has(self, name: str) -> bool:
        return bool(self.present(name).any())

    def is_empty(self) -> bool:
        return not any(self.has(part) for part in PARTS)

    def copy(self) -> Person:
        return Person(**{part: getattr(self, part).copy() for part in PARTS})

    def bbox_area(self) -> float:
        """Area of the bounding box of all present body/feet points (0 when fewer than two)."""
        points = np.concatenate([self.body[self.present("body")], self.feet[self.present("feet")]])
        if len(points) < 2:
            return 0.0
        extent = points[:, :2].max(axis=0) - points[:, :2].min(axis=0)
        return float(extent[0] * extent[1])

    def __eq__(self, other) -> bool:
        if not isinstance(other, Person):
            return NotImplemented
        return all(np.array_equal(getattr(self, p), getattr(other, p)) for p in PARTS)


@dataclass(eq=False)
class PoseFrame:
    """One frame: the canvas it was measured on and the people in it (possibly none)."""

    people: list[Person] = field(default_factory=list)
    canvas_width: int = 512
    canvas_height: int = 512

    def __post_init__(self):
        self.people = list(self.people)
        if int(self.canvas_width) <= 0 or int(self.canvas_height) <= 0:
            raise ValueError(
                f"PoseFrame canvas must be positive, found {self.canvas_width}x{self.canvas_height}"
            )
        self.canvas_width = int(self.canvas_width)
        self.canvas_height = int(self.canvas_height)

    def copy(self) -> PoseFrame:
        return PoseFrame([p.copy() for p in self.people], self.canvas_width, self.canvas_height)

    def is_empty(self) -> bool:
        return all(person.is_empty() for person in self.people)

    def __eq__(self, other) -> bool:
        if not isinstance(other, PoseFrame):
            return NotImplemented
        return (
            self.canvas_width == other.canvas_width
            and self.canvas_height == other.canvas_height
            and len(self.people) == len(other.people)
            and all(a == b for a, b in zip(self.people, other.people))
        )

    def letterboxed(self, height: int, width: int) -> PoseFrame:
        """The same pose on a (height, width) canvas, scaled without distortion and centred.

        Normalised coordinates stretch with the canvas when rendered; this remaps them so that a pose
        measured on a canvas of another aspect ratio keeps its proportions (black bars, like `letterbox`).
        """
        scale = min(width / self.canvas_width, height / self.canvas_height)
        size = np.array([self.canvas_width * scale / width, self.canvas_height * scale / height])
        return self.map_points(lambda xy: xy * size + (1.0 - size) / 2.0, width, height)

    def map_points(self, mapping, width: int, height: int) -> PoseFrame:
        """The same people on a (width, height) canvas with every present point's normalised (x, y) mapped by
        `mapping`: an (N, 2) array → an (N, 2) array. Missing points stay missing; confidences are kept."""
        people = []
        for person in self.people:
            parts = {}
            for part in PARTS:
                array = person.part(part).copy()
                present = array[:, 2] > 0
                array[present, :2] = mapping(array[present, :2])
                parts[part] = array
            people.append(Person(**parts))
        return PoseFrame(people, width, height)


# ---------------------------------------------------------------------------------------------------
# POSE_KEYPOINT / OpenPose JSON parsing


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _parse_points(values, part: str, frame_index: int, person_index: int, field_name: str, count: int,
                  scale: tuple[float, float] | None) -> np.ndarray:
    where = f"frame {frame_index}, people[{person_index}].{field_name}"
    if values is None:
        return np.zeros((count, 3), dtype=np.float64)
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise PoseFormatError(f"{where}: expected a flat list [x, y, confidence, ...], found {type(values).__name__}")
    if len(values) == 0:
        return np.zeros((count, 3), dtype=np.float64)
    if len(values) != 3 * count:
        raise PoseFormatError(
            f"{where}: expected {3 * count} numbers ({count} points × [x, y, confidence]), found {len(values)}"
        )
    for i, value in enumerate(values):
        if not _is_number(value):
            raise PoseFormatError(f"{where}[{i}]: expected a number, found {value!r} ({type(value).__name__})")
    try:
        array = np.asarray(values, dtype=np.float64).reshape(count, 3)
    except OverflowError as error:
        raise PoseFormatError(f"{where}: a number is too large for float64 ({error})") from error
    confidence = array[:, 2]
    if not np.isfinite(confidence).all():
        bad = int(np.flatnonzero(~np.isfinite(confidence))[0])
        raise PoseFormatError(f"{where}: point {bad} has a non-finite confidence ({confidence[bad]})")
    if (confidence < 0).any():
        bad = int(np.flatnonzero(confidence < 0)[0])
        raise PoseFormatError(f"{where}: point {bad} has a negative confidence ({confidence[bad]}); expected >= 0")
    present = confidence > 0
    xy = array[present, :2]
    if not np.isfinite(xy).all():
        bad = int(np.flatnonzero(present)[np.flatnonzero(~np.isfinite(xy).all(axis=1))[0]])
        raise PoseFormatError(
            f"{where}: point {bad} has confidence {confidence[bad]} but non-finite coordinates {array[bad, :2]}"
        )
    if scale is not None:
        array[:, 0] /= scale[0]
        array[:, 1] /= scale[1]
    low, high = _NORMALISED_LIMITS
    xy = array[present, :2]
    if len(xy) and (xy.min() < low or xy.max() > high):
        bad = int(np.flatnonzero(present)[np.flatnonzero(((xy < low) | (xy > high)).any(axis=1))[0]])
        hint = (
            "they look like pixel coordinates: POSE_KEYPOINT needs x/canvas_width, y/canvas_height"
            if scale is None
            else "the point is far outside the canvas; check canvas_width/canvas_height"
        )
        raise PoseFormatError(
            f"{where}: point {bad} at normalised ({array[bad, 0]:.4g}, {array[bad, 1]:.4g}) is outside "
            f"[{low}, {high}]; {hint}"
        )
    array[~present] = 0.0
    return array


def _canvas_size(frame: dict, frame_index: int, key: str, default: int | None) -> int:
    value = frame.get(key, default)
    if value is None:
        raise PoseFormatError(f"frame {frame_index}: missing {key!r} (the canvas size in pixels); pass canvas size")
    if not _is_number(value) or not 0 < value < 1_000_000 or value != int(value):
        raise PoseFormatError(f"frame {frame_index}.{key}: expected a positive integer, found {value!r}")
    return int(value)


def frame_from_dict(frame: dict, frame_index: int = 0, coordinates: str = "normalized",
                    canvas_size: tuple[int, int] | None = None, max_people: int | None = None) -> PoseFrame:
    """One POSE_KEYPOINT / OpenPose JSON frame dict → `PoseFrame`.

    coordinates: "normalized" (POSE_KEYPOINT) or "pixels" (OpenPose's own output); a whole sequence is decided
    at once by `coordinates_of` (a frame alone cannot tell). canvas_size (width, height) is used when the dict
    has none.
    """
    if not isinstance(frame, dict):
        raise PoseFormatError(
            f"frame {frame_index}: expected a dict with 'people', 'canvas_width', 'canvas_height', "
            f"found {type(frame).__name__}"
        )
    if "people" not in frame:
        raise PoseFormatError(
            f"frame {frame_index}: missing key 'people' (a list, empty when nobody is in view); "
            f"found keys {sorted(frame)[:8]}"
        )
    people = frame["people"]
    if not isinstance(people, (list, tuple)):
        raise PoseFormatError(f"frame {frame_index}.people: expected a list, found {type(people).__name__}")
    default_w, default_h = canvas_size if canvas_size is not None else (None, None)
    width = _canvas_size(frame, frame_index, "canvas_width", default_w)
    height = _canvas_size(frame, frame_index, "canvas_height", default_h)
    if coordinates not in ("normalized", "pixels"):
        raise ValueError(f"coordinates must be 'normalized' or 'pixels', found {coordinates!r}")
    scale = (float(width), float(height)) if coordinates == "pixels" else None

    parsed = []
    for person_index, person in enumerate(people):
        if not isinstance(person, dict):
            raise PoseFormatError(
                f"frame {frame_index}, people[{person_index}]: expected a dict of keypoint lists, "
                f"found {type(person).__name__}"
            )
        if not any(key in person for key in JSON_FIELDS.values()):
            raise PoseFormatError(
                f"frame {frame_index}, people[{person_index}]: none of the keypoint fields "
                f"{list(JSON_FIELDS.values())} is present"
            )
        parts = {}
        body_values = person.get(JSON_FIELDS["body"])
        body_count = 18
        if isinstance(body_values, (list, tuple)) and len(body_values) == 3 * 24:
            body_count = 24  # 18 body points followed by the 6 feet points
        body = _parse_points(body_values, "body", frame_index, person_index, JSON_FIELDS["body"], body_count, scale)
        parts["body"], parts["feet"] = body[:18], (body[18:] if body_count == 24 else None)
        for part in ("face", "left_hand", "right_hand"):
            parts[part] = _parse_points(person.get(JSON_FIELDS[part]), part, frame_index, person_index,
                                        JSON_FIELDS[part], PART_SIZES[part], scale)
        parsed.append(Person(**parts))
    if max_people is not None and len(parsed) > max_people:
        order = sorted(range(len(parsed)), key=lambda i: -parsed[i].bbox_area())[:max_people]
        parsed = [parsed[i] for i in sorted(order)]
    return PoseFrame(parsed, width, height)


def coordinates_of(frames: Sequence) -> str:
    """THE coordinate rule (module docstring): "pixels" when the median present point of the whole sequence lies
    beyond 2 in x or y, else "normalized". Negative values never count as pixels."""
    extents = []
    for frame in frames:
        people = frame.get("people") if isinstance(frame, dict) else None
        for person in people if isinstance(people, (list, tuple)) else ():
            if not isinstance(person, dict):
                continue
            for key in JSON_FIELDS.values():
                values = person.get(key)
                if not isinstance(values, (list, tuple)) or len(values) % 3:
                    continue
                for i in range(0, len(values), 3):
                    x, y, c = values[i:i + 3]
                    if all(_is_number(v) for v in (x, y, c)) and c > 0 and math.isfinite(x) and math.isfinite(y):
                        extents.append(max(x, y))
    if not extents:
        return "normalized"
    return "pixels" if float(np.median(extents)) > 2.0 else "normalized"


@dataclass
class KeypointSequence:
    """What a keypoint source holds: its frames, its frame rate when it names one, and how its coordinates were
    read ("normalized" or "pixels", by `coordinates_of`)."""

    frames: list[PoseFrame]
    fps: float | None = None
    coordinates: str = "normalized"


def parse_keypoints(data, source: str = "POSE_KEYPOINT", coordinates: str = "auto",
                    canvas_size: tuple[int, int] | None = None, max_people: int | None = None,
                    frame_names: Sequence[str] | None = None) -> KeypointSequence:
    """Keypoints already parsed from JSON → `KeypointSequence`. `data` is `{"fps": F, "frames": [...]}`, a list
    of frame dicts (POSE_KEYPOINT) or one frame dict. Errors name `source` (or the frame's entry of
    `frame_names`), the frame and the field. coordinates: "auto" (the rule of `coordinates_of`), "normalized"
    or "pixels"."""
    fps = None
    if isinstance(data, dict) and "people" not in data:
        if "frames" not in data:
            raise PoseFormatError(
                f"{source}: expected {{'fps': F, 'frames': [...]}}, a list of frames or one frame with 'people'; "
                f"found an object with keys {sorted(data)[:8]}")
        fps = data.get("fps")
        if fps is not None and (not _is_number(fps) or not math.isfinite(fps) or fps <= 0):
            raise PoseFormatError(f"{source}: 'fps' must be a positive number, found {fps!r}")
        data = data["frames"]
        if not isinstance(data, (list, tuple)):
            raise PoseFormatError(f"{source}: 'frames' must be a list of frame dicts, found {type(data).__name__}")
    elif isinstance(data, dict):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise PoseFormatError(
            f"{source}: expected a list of frame dicts (POSE_KEYPOINT), {{'fps', 'frames'}} or one frame dict, "
            f"found {type(data).__name__}")
    if not data:
        raise PoseFormatError(f"{source}: holds no frames (an empty list); expected at least one frame dict with "
                              "'people' and the canvas size")
    if coordinates == "auto":
        coordinates = coordinates_of(data)
    frames = []
    for index, frame in enumerate(data):
        try:
            frames.append(frame_from_dict(frame, index, coordinates, canvas_size, max_people))
        except PoseFormatError as error:
            where = frame_names[index] if frame_names is not None else source
            raise PoseFormatError(f"{where}: {error}") from None
    return KeypointSequence(frames, float(fps) if fps is not None else None, coordinates)


def from_pose_keypoint(pose_keypoint, max_people: int | None = None) -> list[PoseFrame]:
    """comfyui_controlnet_aux `POSE_KEYPOINT` (a list of frame dicts, or one dict; normalised by definition)
    → list of `PoseFrame`."""
    return parse_keypoints(pose_keypoint, "POSE_KEYPOINT", "normalized", max_people=max_people).frames


def _json_file(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PoseFormatError(f"{file.name}: not valid JSON ({error}); expected OpenPose / POSE_KEYPOINT JSON (a "
                              "list of frames with 'people', or {'fps': F, 'frames': [...]})") from error


def read_keypoints(path, coordinates: str = "auto", canvas_size: tuple[int, int] | None = None,
                   max_people: int | None = None) -> KeypointSequence:
    """THE reader of keypoint files (CLI, nodes, live panel, training data): a .json file holding
    `{"fps", "frames"}`, a POSE_KEYPOINT list or one frame dict, or a folder of OpenPose JSON files (one frame
    dict per file, sorted by name). canvas_size (width, height) stands in for frames that carry none (OpenPose's
    own pixel output). Errors name the file, the frame and the field."""
    path = Path(path)
    if path.is_file():
        return parse_keypoints(_json_file(path), path.name, coordinates, canvas_size, max_people)
    if not path.is_dir():
        raise FileNotFoundError(f"keypoints: {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".json")
    if not files:
        raise PoseFormatError(f"{path}: folder holds no .json files; expected one OpenPose JSON file per frame")
    frames = []
    for file in files:
        data = _json_file(file)
        if not (isinstance(data, dict) and "people" in data):
            raise PoseFormatError(f"{file.name}: a folder of OpenPose JSON holds one frame dict (with 'people') per "
                                  f"file; found {type(data).__name__}")
        frames.append(data)
    return parse_keypoints(frames, path.name, coordinates, canvas_size, max_people, [f.name for f in files])


def _flatten(array: np.ndarray) -> list[float] | None:
    present = array[:, 2] > 0
    if not present.any():
        return None
    # Missing points are written as [0, 0, 0] even if a caller edited only their confidence.
    return [float(v) for v in np.where(present[:, None], array, 0.0).reshape(-1)]


def frame_to_dict(frame: PoseFrame, include_feet: bool = False) -> dict:
    """`PoseFrame` → one POSE_KEYPOINT / OpenPose JSON frame dict (normalised coordinates).

    Parts without any present point are written as None, as comfyui_controlnet_aux does.
    include_feet appends the 6 feet points to `pose_keypoints_2d` (24 points) when any is present.
    """
    people = []
    for person in frame.people:
        body = person.body
        if include_feet and person.has("feet"):
            body = np.concatenate([person.body, person.feet])
        entry = {JSON_FIELDS["body"]: _flatten(body)}
        for part in ("face", "left_hand", "right_hand"):
            entry[JSON_FIELDS[part]] = _flatten(person.part(part))
        people.append(entry)
    return {"people": people, "canvas_width": frame.canvas_width, "canvas_height": frame.canvas_height}


def to_pose_keypoint(frames: Iterable[PoseFrame], include_feet: bool = False) -> list[dict]:
    """List of `PoseFrame` → comfyui_controlnet_aux `POSE_KEYPOINT`."""
    return [frame_to_dict(frame, include_feet) for frame in frames]


# ---------------------------------------------------------------------------------------------------
# OpenPose JSON files


def save_openpose_json(frames: Sequence[PoseFrame], path, one_file_per_frame: bool | None = None,
                       include_feet: bool = False) -> list[Path]:
    """Write OpenPose JSON (normalised coordinates, with canvas size). A path ending in .json gets one file
    holding a list; otherwise path is a folder that gets `frame_000000.json`, ... Returns the files written."""
    path = Path(path)
    if one_file_per_frame is None:
        one_file_per_frame = path.suffix.lower() != ".json"
    if not one_file_per_frame:
        path.write_text(json.dumps(to_pose_keypoint(frames, include_feet)))
        return [path]
    path.mkdir(parents=True, exist_ok=True)
    written = []
    for index, frame in enumerate(frames):
        file = path / f"frame_{index:06d}.json"
        file.write_text(json.dumps(frame_to_dict(frame, include_feet)))
        written.append(file)
    return written
