"""The one input path: everything that turns user inputs into the frames the engine takes.

Used by the stream (its coercion of pose frames and references), the CLI, the nodes and the benches, so the same
reference image and pose video give the same frames whichever way they come in:

- `as_frames`: any image batch (tensor, array, list with None for "no pose") → float32 CPU (N, H, W, 3) in [0, 1],
  validated with errors that name the input.
- `fit_frames`: to the stream's size, "letterbox" (scaled to fit, centred on black: no distortion) or "stretch".
  ONE resampler: OpenCV's `cv2.resize` (INTER_AREA when shrinking, INTER_LINEAR when enlarging) on float32, via
  `rain_core.io.video.letterbox` (whose `LetterboxInfo` maps keypoints and detections back).
- `alpha_over_white` / `reference_image` / `read_image`: RGBA and grey references as RGB, transparency composited
  over white (the background RAIN's references were trained on).
- `render_keypoints`: POSE_KEYPOINT / OpenPose frames → pose images at the stream's size, letterboxed (the
  skeleton keeps its proportions), drawn in body or face-morph mode by `rain_core.pose`.
- `pose_source_frames`: a pose video / image folder / keypoint JSON → float pose frames, lazily.

Imports of OpenCV, PIL, PyAV and the pose package sit inside the functions that use them: the nodes import this
module when ComfyUI starts, and those imports would add ~0.15 s to every start-up of ComfyUI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

RESIZE_MODES = ("letterbox", "stretch")


class InputError(ValueError):
    """An input (pose frames, a reference image, a file) the engine cannot use; the message names it."""


def as_frames(
    value, name: str, allow_missing: bool, blank_size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, list[bool]]:
    """Validate and convert images to float32 CPU (N, H, W, 3) in [0, 1]; `None` items (no pose) become zeros
    (of `blank_size` when every item is None)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
        present = [item for item in items if item is not None]
        if not present:
            if items and allow_missing and blank_size is not None:  # no pose at all in this chunk
                return torch.zeros(len(items), *blank_size, 3), [True] * len(items)
            return torch.zeros(0, 0, 0, 3), []
        if not allow_missing and len(present) != len(items):
            raise InputError(f"{name}: expected an image, found None")
        converted = [as_frames(item, f"{name}[{i}]", False)[0] for i, item in enumerate(items) if item is not None]
        shapes = {tuple(frame.shape[1:]) for frame in converted}
        if len(shapes) > 1 or any(frame.shape[0] != 1 for frame in converted):
            raise InputError(f"{name}: expected frames of one size, found sizes {sorted(shapes)}")
        blank = torch.zeros_like(converted[0][0])
        frames, iterator = [], iter(converted)
        for item in items:
            frames.append(blank if item is None else next(iterator)[0])
        return torch.stack(frames), [item is None for item in items]
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            value = value.astype(np.float32) / 255.0
        elif not np.issubdtype(value.dtype, np.floating):
            raise InputError(f"{name}: expected float images in [0, 1] (or uint8), found dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name}: expected a tensor or array of shape (N, H, W, 3), found {type(value).__name__}")
    if value.dtype == torch.uint8:
        value = value.float() / 255.0
    elif not value.is_floating_point():
        raise InputError(f"{name}: expected float images in [0, 1] (or uint8), found dtype {value.dtype}")
    if value.dim() == 3:
        value = value[None]
    if value.dim() != 4:
        raise InputError(f"{name}: expected shape (N, H, W, 3) or (H, W, 3), found {tuple(value.shape)}")
    if value.shape[-1] != 3:
        hint = ""
        if value.shape[1] == 3:
            hint = "; it looks channel-first: use images.permute(0, 2, 3, 1)"
        elif value.shape[-1] == 4:
            hint = "; drop the alpha channel: images[..., :3]"
        elif value.shape[-1] == 1:
            hint = "; repeat the grey channel: images.expand(-1, -1, -1, 3)"
        raise InputError(
            f"{name}: expected 3 colour channels last (N, H, W, 3), found shape {tuple(value.shape)}{hint}"
        )
    value = value.detach().to("cpu", torch.float32)
    if value.shape[0] == 0:
        return value, []
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).flatten(1).any(1).nonzero()[0])
        raise InputError(
            f"{name}: found NaN or Inf values (first in frame {bad}); expected finite values in [0, 1]"
        )
    low, high = value.min().item(), value.max().item()
    if low < 0 or high > 1:
        hint = "; divide 0–255 images by 255" if high > 1 else ""
        raise InputError(f"{name}: expected values in [0, 1], found {low:.3g}…{high:.3g}{hint}")
    return value, [False] * value.shape[0]


def fit_frames(frames: torch.Tensor, height: int, width: int, mode: str = "letterbox") -> torch.Tensor:
    """(N, H, W, 3) float frames at (height, width): unchanged when they already are, else letterboxed (scaled to
    fit without distortion, centred on black) or stretched; float32 CPU in [0, 1]."""
    if mode not in RESIZE_MODES:
        raise InputError(f"resize: expected one of {RESIZE_MODES}, found {mode!r}")
    if tuple(frames.shape[1:3]) == (height, width):
        return frames
    import cv2

    from .video import letterbox

    array = np.ascontiguousarray(frames.detach().to("cpu", torch.float32).numpy())
    if mode == "stretch":
        shrinking = height < array.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        fitted = [cv2.resize(frame, (width, height), interpolation=interpolation) for frame in array]
    else:
        fitted = [letterbox(frame, height, width)[0] for frame in array]
    return torch.from_numpy(np.stack(fitted).reshape(len(fitted), height, width, 3)).clamp_(0, 1)


def alpha_over_white(images: torch.Tensor) -> torch.Tensor:
    """(..., C) float images with C = 1 (grey), 3 (RGB) or 4 (RGBA) → (..., 3) RGB; transparency over white."""
    if images.shape[-1] == 1:
        return images.expand(*images.shape[:-1], 3)
    if images.shape[-1] == 4:
        rgb, alpha = images[..., :3], images[..., 3:4]
        return rgb * alpha + (1.0 - alpha)
    return images


def reference_image(value, name: str = "reference") -> torch.Tensor:
    """A reference as the stream takes it: (1, H, W, 3) float32 in [0, 1]. Accepts (H, W, C) or (N, H, W, C) with
    C = 1, 3 or 4 (the first image of a batch is used), float in [0, 1] or uint8."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.array(value))  # a copy: PIL's arrays are read-only
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name}: expected an image tensor or array (H, W, 3), found {type(value).__name__}")
    if value.dim() == 3:
        value = value[None]
    if value.dim() != 4 or value.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"{name}: expected an image of shape (H, W, 3) or (N, H, W, 3) (RGB, or RGBA/grey which are "
            f"converted), found shape {tuple(value.shape)}"
        )
    if value.shape[0] == 0:
        raise InputError(f"{name}: the image batch is empty; give at least one image")
    value = value[:1].float() / 255.0 if value.dtype == torch.uint8 else value[:1].float()
    return alpha_over_white(value).clamp(0.0, 1.0).contiguous()


def read_image(path: str | Path, name: str = "reference") -> torch.Tensor:
    """An image file as a reference (1, H, W, 3) float32 in [0, 1] (alpha over white, palette and grey as RGB)."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise InputError(f"{name} {path}: file not found")
    try:
        with Image.open(file) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")
            elif image.mode != "RGB":
                image = image.convert("RGB")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{name} {path}: not a readable image ({error}); use a PNG or JPEG") from None
    return reference_image(array, name)


def render_keypoints(frames, height: int, width: int, mode: str = "body", face_morph: dict | None = None) -> torch.Tensor:
    """Keypoint frames (`rain_core.pose.PoseFrame`) → pose images (N, height, width, 3) float32 in [0, 1]:
    letterboxed onto the canvas (proportions kept, like images) and drawn as the DWPose skeleton ("body") or the
    anime face dots of the authors' live demo ("face-morph", with `face_morph` slider values)."""
    from .. import pose as rain_pose

    fitted = [frame.letterboxed(height, width) for frame in frames]
    if mode == "face-morph":
        morpher = rain_pose.FaceMorpher(rain_pose.FaceMorphParams(**(face_morph or {})))  # fills gaps frame to frame
        drawn = [morpher(frame, height, width) for frame in fitted]
    elif mode == "body":
        drawn = [rain_pose.render_pose(frame, height, width) for frame in fitted]
    else:
        raise InputError(f"mode: expected 'body' or 'face-morph', found {mode!r}")
    if not drawn:
        return torch.zeros(0, height, width, 3)
    return torch.from_numpy(np.stack(drawn).astype(np.float32) / 255.0)


def uint8_frames(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 RGB (video decoders, renderers) → float32 frames in [0, 1]."""
    array = np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy(array.astype(np.float32) / 255.0)


# ---- cheap checks that catch a wrong file before minutes of compute ------------------------------------------

SKELETON_DARK_FRACTION = 0.6  # DWPose / OpenPose renders: ~0.95 of the pixels are black; photos: under 0.05
POSE_CHECK_FRAMES = 8  # the first frames of a pose source that the check looks at
MIN_REFERENCE_SIDE = 16


class NotAPoseRender(InputError):
    """Frames given as pose renders look like camera footage; the message says the ways out."""


def dark_fraction(frames) -> float:
    """Share of near-black pixels (brightest channel under 0.1) of images, float in [0, 1] or uint8, (H, W, 3) or
    (N, H, W, 3)."""
    array = np.asarray(frames)
    array = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    return float((array.max(axis=-1) < 0.1).mean()) if array.size else 1.0


def check_pose_render(frames, source: str) -> None:
    """THE pose-video check of the CLI, Pose Stream and the live panel: raise `NotAPoseRender` when frames given
    as rendered skeletons (float in [0, 1] or uint8, (H, W, 3) or (N, H, W, 3); pass the first
    POSE_CHECK_FRAMES) look like camera footage, whose animation would be colour noise. Measured on the examples:
    the two DWPose videos and pose-1.png are 0.95–0.97 dark, the reference photos 0.001–0.03."""
    dark = dark_fraction(frames)
    if dark >= SKELETON_DARK_FRACTION:
        return
    raise NotAPoseRender(
        f"{source}: these frames do not look like rendered skeletons ({dark:.0%} of the pixels are black; a "
        "DWPose/OpenPose render is ~95% black with thin coloured limbs). RAIN follows pose renders, not camera "
        "footage. For footage of a person, detect the poses: `rain live --poses detector`, Pose Stream's "
        "video_frames input, or the live panel's DWPose detection mode. If this really is a render, turn the "
        "check off: `--no-pose-check`, Pose Stream's pose_check, or the live panel's pose check box.")


def reference_problem(image) -> str | None:
    """Why an image (H, W, 3) in [0, 1] cannot be a reference picture, or None: too small, or one flat colour."""
    array = np.asarray(image, dtype=np.float32)
    height, width = array.shape[:2]
    if min(height, width) < MIN_REFERENCE_SIDE:
        return (f"it is {width}×{height} pixels; expected a picture of the character (at least "
                f"{MIN_REFERENCE_SIDE} px a side, ideally the model's size or larger)")
    if float(array.std()) < 0.01:
        return "it is a single flat colour (blank); expected a picture of the character"
    return None


def is_keypoint_source(path: str | Path) -> bool:
    """A POSE_KEYPOINT / OpenPose .json file, or a folder of them (and no pose images)."""
    source = Path(path)
    if source.suffix.lower() == ".json":
        return True
    return source.is_dir() and any(source.glob("*.json")) and not any(source.glob("*.png"))


def pose_source_frames(path: str | Path, height: int, width: int) -> Iterator[torch.Tensor]:
    """Pose frames (H, W, 3) float32 in [0, 1], one at a time, from a pose video, a folder of pose images, or
    POSE_KEYPOINT / OpenPose JSON (rendered at (height, width) by `render_keypoints`). Video and image frames come
    at their own size: the stream fits them (`fit_frames`), exactly as it does for frames from the nodes."""
    if is_keypoint_source(path):
        from ..pose import read_keypoints

        for frame in read_keypoints(Path(path)).frames:
            yield render_keypoints([frame], height, width)[0]
        return
    from .video import open_pose_source

    reader = open_pose_source(Path(path), as_uint8=True)
    try:
        for frame in reader:
            yield uint8_frames(frame)[0]
    finally:
        close = getattr(reader, "close", None)
        if close:
            close()


__all__ = [
    "InputError",
    "NotAPoseRender",
    "POSE_CHECK_FRAMES",
    "check_pose_render",
    "dark_fraction",
    "reference_problem",
    "RESIZE_MODES",
    "alpha_over_white",
    "as_frames",
    "fit_frames",
    "is_keypoint_source",
    "pose_source_frames",
    "read_image",
    "reference_image",
    "render_keypoints",
    "uint8_frames",
]
