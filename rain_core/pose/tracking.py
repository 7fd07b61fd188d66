"""Temporal clean-up of a pose stream and alignment of a pose sequence to the reference character.

`PoseTracker` turns raw per-frame detections into a steadier stream:
- confidence threshold: keypoints below it count as missing;
- people are followed across frames by the nearest body centre (greedy, in canvas-normalised units);
- hold: a keypoint (and so a part or a whole person) that goes missing keeps its last seen value for up
  to `hold_frames` frames, then disappears; a stream with nobody left renders as an empty canvas;
- damping: exponential smoothing of present keypoints, `out = damping·previous + (1 − damping)·new`.

`align_to_reference` scales and translates a whole pose sequence with one transform so that it fits the
reference character, as MusePose / UniAnimate users expect: the scale matches body height (neck to
ankles, or neck to hips when ankles are missing) or else shoulder width, and an anchor (neck or feet)
of the first posed frame lands on the reference's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .keypoints import PARTS, Person, PoseFrame

NECK, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP, R_ANKLE, L_ANKLE = 1, 2, 5, 8, 11, 10, 13


@dataclass
class _Track:
    parts: dict[str, np.ndarray]  # last output per part (N, 3)
    age: dict[str, np.ndarray]  # frames since each keypoint was last seen (N,)

    def center(self) -> np.ndarray | None:
        return _body_center(self.parts["body"])


def _body_center(body: np.ndarray) -> np.ndarray | None:
    present = body[:, 2] > 0
    return body[present, :2].mean(axis=0) if present.any() else None


class PoseTracker:
    """Confidence threshold, per-keypoint hold-last with a timeout, and damping, frame by frame.

    confidence_threshold: keypoints with lower confidence are treated as missing.
    hold_frames: how many consecutive frames a missing keypoint keeps its last value (0 = no hold).
    damping: 0 (off) .. <1 (heavier smoothing, more lag).
    match_distance: largest body-centre move (canvas-normalised) still counted as the same person.
    """

    def __init__(self, confidence_threshold: float = 0.3, hold_frames: int = 8, damping: float = 0.0,
                 match_distance: float = 0.25):
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"PoseTracker: damping must be in [0, 1), found {damping}")
        if hold_frames < 0:
            raise ValueError(f"PoseTracker: hold_frames must be >= 0, found {hold_frames}")
        self.confidence_threshold = float(confidence_threshold)
        self.hold_frames = int(hold_frames)
        self.damping = float(damping)
        self.match_distance = float(match_distance)
        self._tracks: list[_Track] = []

    def reset(self) -> None:
        self._tracks.clear()

    def _thresholded(self, person: Person) -> dict[str, np.ndarray]:
        parts = {}
        for part in PARTS:
            array = person.part(part).copy()
            array[~(array[:, 2] >= self.confidence_threshold) | ~(array[:, 2] > 0)] = 0.0
            parts[part] = array
        return parts

    def _match(self, detections: list[dict[str, np.ndarray]]) -> dict[int, int]:
        """Greedy nearest-centre matching: detection index → track index."""
        pairs = []
        for d, parts in enumerate(detections):
            center = _body_center(parts["body"])
            for t, track in enumerate(self._tracks):
                track_center = track.center()
                if center is None or track_center is None:
                    continue
                distance = float(np.linalg.norm(center - track_center))
                if distance <= self.match_distance:
                    pairs.append((distance, d, t))
        matched: dict[int, int] = {}
        used_tracks = set()
        for _, d, t in sorted(pairs):
            if d not in matched and t not in used_tracks:
                matched[d] = t
                used_tracks.add(t)
        # People without a body (e.g. a face-only detection) follow the order of the remaining tracks.
        free_tracks = [t for t in range(len(self._tracks)) if t not in used_tracks]
        for d, parts in enumerate(detections):
            if d not in matched and _body_center(parts["body"]) is None and free_tracks:
                matched[d] = free_tracks.pop(0)
        return matched

    def _update(self, track: _Track, parts: dict[str, np.ndarray] | None) -> None:
        for part in PARTS:
            previous, age = track.parts[part], track.age[part]
            new = parts[part] if parts is not None else np.zeros_like(previous)
            seen = new[:, 2] > 0
            was_shown = previous[:, 2] > 0
            out = previous.copy()
            smooth = seen & was_shown & (age == 0)
            out[smooth, :2] = self.damping * previous[smooth, :2] + (1 - self.damping) * new[smooth, :2]
            out[smooth, 2] = new[smooth, 2]
            fresh = seen & ~smooth
            out[fresh] = new[fresh]
            age = np.where(seen, 0, age + 1)
            out[age > self.hold_frames] = 0.0
            track.parts[part], track.age[part] = out, age

    def __call__(self, frame: PoseFrame) -> PoseFrame:
        detections = [self._thresholded(p) for p in frame.people]
        detections = [d for d in detections if any((a[:, 2] > 0).any() for a in d.values())]
        matched = self._match(detections)
        by_track = {t: d for d, t in matched.items()}
        for t, track in enumerate(self._tracks):
            self._update(track, detections[by_track[t]] if t in by_track else None)
        for d, parts in enumerate(detections):
            if d not in matched:
                self._tracks.append(_Track({k: v.copy() for k, v in parts.items()},
                                           {k: np.zeros(len(v), dtype=np.int64) for k, v in parts.items()}))
        self._tracks = [t for t in self._tracks if any((a[:, 2] > 0).any() for a in t.parts.values())]
        people = [Person(**{k: v.copy() for k, v in t.parts.items()}) for t in self._tracks]
        return PoseFrame(people, frame.canvas_width, frame.canvas_height)

    def run(self, frames: Iterable[PoseFrame]) -> list[PoseFrame]:
        return [self(frame) for frame in frames]


# ---------------------------------------------------------------------------------------------------
# alignment


@dataclass(frozen=True)
class Alignment:
    """p_reference_pixels = scale · (p_source_pixels − source_anchor) + reference_anchor."""

    scale: float
    source_anchor: np.ndarray
    reference_anchor: np.ndarray


def _pixels(person: Person, index: int, frame: PoseFrame) -> np.ndarray | None:
    point = person.body[index]
    if not point[2] > 0:
        return None
    return point[:2] * (frame.canvas_width, frame.canvas_height)


def _measure(frame: PoseFrame, anchor: str) -> dict | None:
    """Height, shoulder width and anchor (pixels) of the frame's largest person, or None."""
    people = sorted(frame.people, key=lambda p: -p.bbox_area())
    for person in people:
        def at(i, person=person):
            return _pixels(person, i, frame)

        neck, shoulders = at(NECK), (at(R_SHOULDER), at(L_SHOULDER))
        if neck is None:
            continue
        ankles = [p for p in (at(R_ANKLE), at(L_ANKLE)) if p is not None]
        hips = [p for p in (at(R_HIP), at(L_HIP)) if p is not None]
        return {
            "neck": neck,
            "ankles": np.mean(ankles, axis=0) if len(ankles) == 2 else None,
            "hips": np.mean(hips, axis=0) if len(hips) == 2 else None,
            "shoulder_width": float(np.linalg.norm(shoulders[0] - shoulders[1])) if all(
                s is not None for s in shoulders) else None,
        }
    return None


def fit_alignment(source: PoseFrame, reference: PoseFrame, anchor: str = "neck") -> Alignment:
    """The transform that puts `source`'s main person over `reference`'s main person."""
    if anchor not in ("neck", "feet"):
        raise ValueError(f"align_to_reference: anchor must be 'neck' or 'feet', found {anchor!r}")
    ref = _measure(reference, anchor)
    if ref is None:
        raise ValueError(
            "align_to_reference: the reference frame has no person with a neck keypoint; it needs the "
            "reference character's body keypoints (e.g. run the pose detector on the reference image)"
        )
    src = _measure(source, anchor)
    if src is None:
        raise ValueError("align_to_reference: no frame of the pose sequence has a person with a neck keypoint")
    scale = None
    for lower in ("ankles", "hips"):
        if src[lower] is not None and ref[lower] is not None:
            src_height = np.linalg.norm(src[lower] - src["neck"])
            if src_height > 0:
                scale = float(np.linalg.norm(ref[lower] - ref["neck"]) / src_height)
                break
    if scale is None and src["shoulder_width"] and ref["shoulder_width"]:
        scale = ref["shoulder_width"] / src["shoulder_width"]
    if scale is None:
        raise ValueError(
            "align_to_reference: cannot measure body size; both the reference and the sequence need the neck "
            "plus both ankles, both hips or both shoulders"
        )
    if anchor == "feet":
        if src["ankles"] is None or ref["ankles"] is None:
            raise ValueError("align_to_reference: anchor='feet' needs both ankles in the reference and the sequence")
        return Alignment(scale, src["ankles"], ref["ankles"])
    return Alignment(scale, src["neck"], ref["neck"])


def apply_alignment(frame: PoseFrame, alignment: Alignment, reference: PoseFrame) -> PoseFrame:
    """Map a frame through `alignment` onto the reference's canvas."""
    source_size = np.array([frame.canvas_width, frame.canvas_height], dtype=np.float64)
    target_size = np.array([reference.canvas_width, reference.canvas_height], dtype=np.float64)
    return frame.map_points(
        lambda xy: (alignment.scale * (xy * source_size - alignment.source_anchor) + alignment.reference_anchor)
        / target_size,
        reference.canvas_width,
        reference.canvas_height,
    )


def align_to_reference(sequence: Iterable[PoseFrame], reference_frame: PoseFrame, anchor: str = "neck") -> list[PoseFrame]:
    """Scale and translate a whole pose sequence (one transform, so motion is kept) to fit the reference.

    The transform is measured on the first frame that has a person with a neck: body height (neck to
    ankles, else neck to hips, else shoulder width) sets the scale, and `anchor` ("neck" or "feet")
    of that person lands on the reference's. Output frames use the reference's canvas size.
    """
    frames = list(sequence)
    source = next((f for f in frames if _measure(f, anchor) is not None), None)
    if source is None:
        raise ValueError("align_to_reference: no frame of the pose sequence has a person with a neck keypoint")
    alignment = fit_alignment(source, reference_frame, anchor)
    return [apply_alignment(frame, alignment, reference_frame) for frame in frames]
