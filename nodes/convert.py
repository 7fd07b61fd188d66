"""Values that travel between the RAIN nodes, and the conversions between ComfyUI values and engine values.

ComfyUI's IMAGE is a float tensor (N, H, W, C) in [0, 1]; the engine takes the same layout with C = 3.
Custom socket types: RAIN_MODEL carries a `RainModelHandle`, RAIN_POSES carries a `PoseBatch`.
"""

from __future__ import annotations

import hashlib
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass
class RainModelHandle:
    """What Load RAIN Model hands to RAIN Sampler: the loaded networks and how they were loaded."""

    models: Any  # rain_core RainModels
    source: str  # the model folder, for messages and the stream's settings
    decoder: str  # "auto" | "taesdv" | "vae": which decoder the streams use
    keep_loaded: bool  # False: move the networks to the CPU between runs
    device: Any = None
    dtype: Any = None
    patcher: Any = None  # ComfyUI's ModelPatcher around the networks (None outside ComfyUI)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # this load, as opposed to another

    @property
    def key(self) -> str:
        """Identifies these weights in a stream's settings (a stream cannot switch models mid-way)."""
        return f"{self.source}|{self.decoder}|{self.dtype}|load {self.token}"


class PoseBatch:
    """What Pose Stream hands to RAIN Sampler: pose frames, as keypoints, as rendered pose images, or as a clip of a
    pose video that is decoded only while the sampler reads it (`clip`, a rain_core.io.video.VideoClip).

    Keypoint frames are rendered by the sampler at the stream's size; rendered images are letterboxed by the
    engine. `chunks()` hands the frames over a few at a time, so a clip of any length costs memory for those few
    only; `images` and `render()` give them all at once (for short sources). `live` marks sources that change
    between runs (webcam, screen, looping video).

    The consumer's part of the contract: a source that moves on between runs (a looping video) moves on only when
    the consumer calls `commit()` after the run that used these poses succeeded; a failed or cancelled run never
    commits, and the next run reads the same poses again.
    """

    def __init__(self, frames: list | None = None, images: torch.Tensor | None = None, clip: Any = None,
                 live: bool = False, render_options: dict | None = None, fps: float = 16.0,
                 arrived: float | None = None, on_commit: Any = None):
        self.frames = frames  # rain_core.pose.PoseFrame per frame
        self._images = images  # (N, H, W, 3) in [0, 1]
        self.clip = clip  # frames of a video file, decoded on demand
        self.live = live
        self.render_options = dict(render_options or {})  # passed to the renderer (face-morph mode etc.)
        self.fps = fps  # frame rate of the source, carried through to the sampler's fps output
        self.arrived = time.monotonic() if arrived is None else arrived  # when these poses came in (latency)
        self.on_commit = on_commit  # moves a live source past these poses; called once the run using them succeeded

    @property
    def images(self) -> torch.Tensor | None:
        """Rendered pose images, all at once: a clip is decoded whole here (use `chunks` for long ones)."""
        if self._images is None and self.clip is not None:
            from ..rain_core.io.inputs import uint8_frames

            return uint8_frames(self.clip.read())
        return self._images

    def commit(self) -> None:
        """The run that used these poses succeeded: a live source may move on (an interrupted run re-reads them)."""
        if self.on_commit is not None:
            callback, self.on_commit = self.on_commit, None
            callback()

    def __len__(self) -> int:
        if self.frames is not None:
            return len(self.frames)
        return len(self.clip) if self._images is None else int(self._images.shape[0])

    def render(self, height: int, width: int) -> torch.Tensor:
        """The pose frames as the model sees them: (N, height, width, 3) for keypoints, as given for images.

        Keypoints are letterboxed onto the canvas (no distortion) and drawn in the chosen mode; pose images
        are returned unchanged (the stream letterboxes them to its size).
        """
        if self.frames is None:
            return self.images
        from ..rain_core.io.inputs import render_keypoints

        return render_keypoints(self.frames, height, width, self.render_options.get("mode", "body"),
                                self.render_options.get("face_morph", {}))

    def chunks(self, size: int, height: int, width: int) -> Iterator[torch.Tensor]:
        """The frames of `render(height, width)`, `size` at a time (the last chunk may be shorter), equal to slicing
        it: a clip is decoded chunk by chunk and body keypoints are drawn chunk by chunk (face-morph is drawn all
        at once: its morpher carries state from frame to frame)."""
        size = max(1, int(size))
        if self.frames is None and self._images is None and self.clip is not None:
            from ..rain_core.io.inputs import uint8_frames

            for block in self.clip.chunks(size):
                yield uint8_frames(block)
            return
        if self.frames is not None and self.render_options.get("mode", "body") == "body":
            from ..rain_core.io.inputs import render_keypoints

            for first in range(0, len(self.frames), size):
                yield render_keypoints(self.frames[first:first + size], height, width, "body")
            return
        everything = self.render(height, width)
        for first in range(0, int(everything.shape[0]), size):
            yield everything[first:first + size]


class TensorMemo:
    """Values attached to tensor objects, by identity, kept as long as the tensor lives. (WeakKeyDictionary
    cannot hold tensors: it compares keys with ==, which is elementwise for tensors.)"""

    def __init__(self):
        self._entries: dict[int, tuple] = {}

    def get(self, tensor, default=None):
        entry = self._entries.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else default

    def set(self, tensor, value) -> None:
        key = id(tensor)
        self._entries[key] = (weakref.ref(tensor, lambda _, key=key: self._entries.pop(key, None)), value)


# IMAGE batch from RAIN Sampler -> per frame, when its pose arrived (time.monotonic). Frame Queue measures its
# latency from there. An entry lives as long as ComfyUI keeps the output.
frame_origins = TensorMemo()


def image_batch(value, input_name: str) -> torch.Tensor:
    """Check a ComfyUI IMAGE and return it as float32 (N, H, W, 3); an alpha channel is composited over white.

    White is what the RAIN references were trained on (characters on a plain light background), so a
    transparent PNG keeps its character on the background the model expects.
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{input_name}: expected an IMAGE (a tensor of shape (N, H, W, 3)), "
                         f"found {type(value).__name__}.")
    if value.ndim == 3:
        value = value.unsqueeze(0)
    if value.ndim != 4 or value.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{input_name}: expected an IMAGE of shape (N, H, W, 3) (RGB, or RGBA/grey which are "
                         f"converted), found shape {tuple(value.shape)}.")
    if value.shape[0] == 0:
        raise ValueError(f"{input_name}: the image batch is empty; connect a node that outputs at least one image.")
    from ..rain_core.io.inputs import alpha_over_white

    return alpha_over_white(value.float()).clamp(0.0, 1.0).contiguous()


def tensor_fingerprint(value: torch.Tensor) -> str:
    """A short content hash, so a stream can tell whether its reference image changed between runs."""
    array = np.ascontiguousarray(value.detach().to("cpu", torch.float32).numpy())
    return hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()[:16]


def to_pil(frame: torch.Tensor, max_size: int | None = None) -> Image.Image:
    """One (H, W, 3) frame in [0, 1] as a PIL image, optionally shrunk to fit `max_size` (for previews)."""
    array = (frame.detach().to("cpu", torch.float32).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    image = Image.fromarray(array)
    if max_size is not None and max(image.size) > max_size:
        image.thumbnail((max_size, max_size))
    return image

