"""The only module that touches ComfyUI. Every hook has a standalone fallback.

Inside ComfyUI: model folders come from `folder_paths`, progress and previews go through
`comfy.utils.ProgressBar` (each update is also an interrupt point), interrupts raise ComfyUI's
`InterruptProcessingException`, and custom websocket events go out through `PromptServer`.
In plain Python (tests, scripts): folders live under ./models (or $RAIN_MODELS_DIR), progress goes to
optional hooks, interrupts are requested with `interrupt_processing()`, events are kept in `sent_events`.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path

logger = logging.getLogger("rain")

try:  # ComfyUI's modules are importable only inside a running ComfyUI
    import comfy.model_management as _comfy_mm
    import comfy.utils as _comfy_utils
    import folder_paths as _folder_paths

    IN_COMFYUI = hasattr(_folder_paths, "folder_names_and_paths") and hasattr(_comfy_utils, "ProgressBar")
except ImportError:
    _comfy_mm = _comfy_utils = _folder_paths = None
    IN_COMFYUI = False

try:
    from server import PromptServer as _PromptServer  # absent in plain Python
except ImportError:
    _PromptServer = None

RAIN_FOLDER = "rain"
MODEL_EXTENSIONS = {".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".json"}


# ------------------------------------------------------------------------------------------- model folders


def _standalone_models_dir() -> Path:
    return Path(os.environ.get("RAIN_MODELS_DIR", "models")).resolve()


def register_model_folders() -> None:
    """Add `models/rain` to ComfyUI's folder registry (kept alongside paths from extra_model_paths.yaml)."""
    if not IN_COMFYUI:
        return
    default = os.path.join(_folder_paths.models_dir, RAIN_FOLDER)
    _folder_paths.add_model_folder_path(RAIN_FOLDER, default, is_default=True)
    paths, extensions = _folder_paths.folder_names_and_paths[RAIN_FOLDER]
    if not extensions:
        _folder_paths.folder_names_and_paths[RAIN_FOLDER] = (paths, set(MODEL_EXTENSIONS))


def model_folders(kind: str) -> list[Path]:
    """Every folder that may hold models of `kind` ("rain", "vae", "clip_vision", "vae_approx")."""
    if IN_COMFYUI:
        try:
            return [Path(p) for p in _folder_paths.get_folder_paths(kind)]
        except KeyError:
            return [Path(_folder_paths.models_dir) / kind]
    return [_standalone_models_dir() / kind]


def list_models(kind: str, folders: bool = True, files: bool = True) -> list[str]:
    """Names (relative to their model folder) of the sub-folders and model files found for `kind`."""
    names = set()
    for root in model_folders(kind):
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if entry.name.startswith("."):
                continue
            if folders and entry.is_dir():
                names.add(entry.name)
            elif files and entry.is_file() and entry.suffix.lower() in MODEL_EXTENSIONS:
                names.add(entry.name)
    return sorted(names)


def find_model(kind: str, name: str) -> Path | None:
    """The full path of `name` in the first folder of `kind` that has it, or None."""
    for root in model_folders(kind):
        candidate = root / name
        if candidate.exists():
            return candidate
    return None


def input_directory() -> Path:
    """Where relative file names given to a node are looked up: ComfyUI's input folder, or ./input."""
    if IN_COMFYUI:
        return Path(_folder_paths.get_input_directory())
    return Path(os.environ.get("RAIN_INPUT_DIR", "input")).resolve()


def torch_device(choice: str):
    """The torch device for a node's device widget; "auto" follows ComfyUI's choice (or CUDA when present)."""
    import torch

    if choice != "auto":
        return torch.device(choice)
    if IN_COMFYUI:
        return _comfy_mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------- progress and interrupts

if IN_COMFYUI:
    Interrupted = _comfy_mm.InterruptProcessingException
else:

    class Interrupted(Exception):
        """Raised at a progress point after `interrupt_processing()` (ComfyUI raises its own equivalent)."""


_standalone_interrupt = False
# Standalone progress hooks: fn(node_id, value, total, preview_image_or_None). Tests use them to interrupt.
progress_hooks: list = []


def interrupt_processing(value: bool = True) -> None:
    """Ask the running node to stop at its next progress point (ComfyUI: the Cancel button)."""
    global _standalone_interrupt
    if IN_COMFYUI:
        _comfy_mm.interrupt_current_processing(value)
    else:
        _standalone_interrupt = value


def throw_if_interrupted() -> None:
    global _standalone_interrupt
    if IN_COMFYUI:
        _comfy_mm.throw_exception_if_processing_interrupted()
    elif _standalone_interrupt:
        _standalone_interrupt = False
        raise Interrupted("processing interrupted")


class Progress:
    """Progress of one node run; `update(value, preview)` shows a preview and is an interrupt point."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = max(1, int(total))
        self.node_id = node_id
        self._bar = _comfy_utils.ProgressBar(self.total, node_id=node_id) if IN_COMFYUI else None

    def update(self, value: int, preview=None) -> None:
        """`preview`: a PIL image shown on the node (ComfyUI) or passed to the standalone hooks."""
        value = min(int(value), self.total)
        if self._bar is not None:
            # ComfyUI's progress hook checks for an interrupt and raises InterruptProcessingException.
            self._bar.update_absolute(value, self.total, ("JPEG", preview, 512) if preview is not None else None)
        else:
            for hook in list(progress_hooks):
                hook(self.node_id, value, self.total, preview)
        throw_if_interrupted()


# ------------------------------------------------------------------------------------------ websocket events

# Standalone: the most recent events, newest last, for tests and scripts.
sent_events: deque = deque(maxlen=32)


def send_event(event: str, data: dict) -> None:
    """Send a custom websocket event to the browser (e.g. "rain.frame" for the Frame Queue widget)."""
    if IN_COMFYUI and _PromptServer is not None and getattr(_PromptServer, "instance", None) is not None:
        _PromptServer.instance.send_sync(event, data)
    else:
        sent_events.append((event, data))
