"""Training data: clips of (reference image, frames, pose renders), drawn deterministically by index.

Every dataset maps an index to one random clip through `numpy.random.default_rng([seed, index])`, so
sample n of a run is the same whatever process draws it and whenever: resuming a run, or sharding it
over many GPUs, needs no sampler state (the trainer hands out disjoint index ranges per step and rank).

- `SyntheticClips`: procedural characters rendered on the fly (`synthetic.py`).
- `VideoClips`: folders of videos with their pose videos (or OpenPose keypoint JSON), listed in a meta
  file; frames are decoded from disk only when a clip needs them.

A sample is a dict of float32 tensors in [0, 1]: `reference` (3, H, W), `frames` (F, 3, H, W) and
`poses` (F, 3, H, W).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from ..pose import read_keypoints, render_pose
from ..synthetic import HELDOUT_BASE, SyntheticWorld, render_character, render_skeleton


class DataError(ValueError):
    """A meta file or video that cannot serve training clips; the message names the file."""


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> float32 (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


class SyntheticClips(torch.utils.data.Dataset):
    """Clips of procedural characters: the ground truth and the skeleton of every frame.

    The reference is the character standing still, facing the camera, half of the time, and a pose from
    another moment of another motion otherwise (AnimateAnyone picks the reference from the same video).
    `split="heldout"` draws only held-out characters and motions (the first `heldout_pool` of each).
    """

    def __init__(self, height: int = 64, width: int = 64, frames: int = 1, split: str = "train", seed: int = 0,
                 fps: float = 12.0, length: int = 10**9, heldout_pool: int = 64, world_seed: int = 0,
                 world: str = "v1"):
        if frames < 1:
            raise ValueError(f"frames: expected at least 1 frame per clip, found {frames}")
        self.world = SyntheticWorld(world_seed, version=world)
        self.height, self.width, self.frames = int(height), int(width), int(frames)
        self.split, self.seed, self.fps, self.length = split, int(seed), float(fps), int(length)
        self.heldout_pool = int(heldout_pool)
        SyntheticWorld.ids(split, 1)  # validates the split name

    def __len__(self) -> int:
        return self.length

    def ids(self, index: int) -> tuple[int, int, float, bool]:  # the same for both worlds
        """(character id, motion id, start time in s, neutral reference?) of sample `index`."""
        rng = np.random.default_rng([self.seed, index])
        pool = self.heldout_pool if self.split == "heldout" else HELDOUT_BASE
        base = HELDOUT_BASE if self.split == "heldout" else 0
        return (base + int(rng.integers(pool)), base + int(rng.integers(pool)), float(rng.uniform(0, 20)),
                bool(rng.random() < 0.5))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        character_id, motion_id, start, neutral = self.ids(index)
        world, h, w = self.world, self.height, self.width
        character, motion = world.character(character_id), world.motion(motion_id)
        if neutral:
            ref_pose = world.reference_pose(character)
        else:
            other = world.motion(motion_id + 1 if motion_id + 1 != HELDOUT_BASE else motion_id - 1)
            ref_pose = world.pose(character, other, start + 7.3)
        poses = world.clip_poses(character, motion, self.frames, self.fps, start)
        return {
            "reference": _to_tensor([render_character(character, ref_pose, h, w)])[0],
            "frames": _to_tensor([render_character(character, p, h, w) for p in poses]),
            "poses": _to_tensor([render_skeleton(p, h, w) for p in poses]),
        }


def _resize_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale to cover (height, width) and centre-crop: the same geometry for a frame and its pose render."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return image[top : top + height, left : left + width]


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DataError(f"{path}: cannot open it as a video (expected an mp4/avi/webm file readable by OpenCV)")
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def _read_frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    """RGB frames at `indices` (sorted, may repeat), decoding only from the first one onward."""
    capture = cv2.VideoCapture(str(path))
    frames: dict[int, np.ndarray] = {}
    try:
        wanted = sorted(set(indices))
        capture.set(cv2.CAP_PROP_POS_FRAMES, wanted[0])
        position = wanted[0]
        for index in wanted:
            while position <= index:
                ok, frame = capture.read()
                if not ok:
                    raise DataError(f"{path}: could not decode frame {position} (the file reports more frames than it has)")
                position += 1
            frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    return [frames[i] for i in indices]


class VideoClips(torch.utils.data.Dataset):
    """Clips from real videos listed in a meta file.

    The meta file is JSON: a list (or `{"videos": [...]}`) of entries
    `{"video": "dancer1.mp4", "pose": "dancer1_kps.mp4"}` or `{"video": ..., "keypoints": "dancer1.json"}`
    (OpenPose JSON, rendered with `rain_core.pose.render_pose`); relative paths are relative to the meta
    file. A clip is `frames` frames `stride` apart from a random video; the reference is a random frame of
    the same video.
    """

    def __init__(self, meta: str | Path, height: int = 512, width: int = 512, frames: int = 1, stride: int = 1,
                 seed: int = 0, length: int = 10**9):
        self.meta = Path(meta)
        if not self.meta.is_file():
            raise DataError(f"--data {self.meta}: no such meta file; expected a JSON list of "
                            '{"video": ..., "pose": ...} entries, or "synthetic"')
        try:
            entries = json.loads(self.meta.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{self.meta}: not valid JSON ({error})") from error
        if isinstance(entries, dict):
            entries = entries.get("videos")
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{self.meta}: expected a non-empty list of video entries (or {{\"videos\": [...]}})")
        self.height, self.width, self.frames, self.stride = int(height), int(width), int(frames), int(stride)
        self.seed, self.length = int(seed), int(length)
        self.videos = []
        span = (self.frames - 1) * self.stride + 1
        for number, entry in enumerate(entries):
            if not isinstance(entry, dict) or "video" not in entry or not ({"pose", "keypoints"} & set(entry)):
                raise DataError(f"{self.meta}: entry {number} must have \"video\" and \"pose\" (or \"keypoints\"), found {entry!r}")
            video = self._path(entry["video"])
            count = _frame_count(video)
            if "pose" in entry:
                pose = self._path(entry["pose"])
                count = min(count, _frame_count(pose))
                keypoints = None
            else:
                pose = None
                keypoints = read_keypoints(self._path(entry["keypoints"])).frames
                count = min(count, len(keypoints))
            if count < span:
                raise DataError(f"{video}: {count} frames, fewer than a clip needs ({span} = frames {self.frames} at stride {self.stride})")
            self.videos.append((video, pose, keypoints, count))

    def _path(self, name: str) -> Path:
        path = Path(name)
        path = path if path.is_absolute() else self.meta.parent / path
        if not path.is_file():
            raise DataError(f"{self.meta}: listed file {path} does not exist")
        return path

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        video, pose, keypoints, count = self.videos[int(rng.integers(len(self.videos)))]
        span = (self.frames - 1) * self.stride + 1
        start = int(rng.integers(count - span + 1))
        indices = [start + i * self.stride for i in range(self.frames)]
        reference_index = int(rng.integers(count))
        h, w = self.height, self.width
        images = _read_frames(video, [reference_index, *indices])
        images = [_resize_crop(image, h, w) for image in images]
        if pose is not None:
            pose_images = [_resize_crop(image, h, w) for image in _read_frames(pose, indices)]
        else:
            pose_images = []
            for i in indices:
                frame = keypoints[i]
                canvas_h, canvas_w = frame.canvas_height, frame.canvas_width
                pose_images.append(_resize_crop(render_pose(frame, canvas_h, canvas_w), h, w))
        return {"reference": _to_tensor(images[:1])[0], "frames": _to_tensor(images[1:]), "poses": _to_tensor(pose_images)}


SYNTHETIC_DATA = {"synthetic": "v1", "synthetic-v1": "v1", "synthetic-v2": "v2"}
"""`--data` names of the procedural worlds (synthetic.py): v1 as the first models saw it, v2 with prints,
accessories, self-occlusion, tempos and spins."""


def build_dataset(data: str, height: int, width: int, frames: int, seed: int, stride: int = 1):
    """`data` is "synthetic" / "synthetic-v1" / "synthetic-v2" (procedural characters) or the path of a meta
    file of videos."""
    if data in SYNTHETIC_DATA:
        return SyntheticClips(height, width, frames, split="train", seed=seed, world=SYNTHETIC_DATA[data])
    return VideoClips(data, height, width, frames, stride=stride, seed=seed)


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


class StepIndices(torch.utils.data.Sampler):
    """Sample indices of steps `start_step`, `start_step + 1`, … for one process: disjoint across
    processes and steps, identical after a resume."""

    def __init__(self, start_step: int, batch_size: int, process_index: int = 0, num_processes: int = 1):
        self.start_step, self.batch_size = start_step, batch_size
        self.process_index, self.num_processes = process_index, num_processes

    def __iter__(self):
        step = self.start_step
        while True:
            first = (step * self.num_processes + self.process_index) * self.batch_size
            yield from range(first, first + self.batch_size)
            step += 1
