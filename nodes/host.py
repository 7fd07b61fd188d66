"""The only module that touches ComfyUI. Every hook has a standalone fallback.

Inside ComfyUI: model folders come from `folder_paths`, progress and previews go through
`comfy.utils.ProgressBar` (each update is also an interrupt point), interrupts raise ComfyUI's
`InterruptProcessingException`, and custom websocket events go out through `PromptServer`.
The RAIN networks are handed to ComfyUI's memory manager (`comfy.model_patcher.ModelPatcher` +
`comfy.model_management.load_models_gpu`, as AnimateDiff-Evolved does), so the host's device and precision
flags apply, loading another model can evict them and `POST /free` releases them. Stream state is keyed by
the client that queued the prompt (`PromptServer.instance.client_id`), and events go to that client only.
In plain Python (tests, scripts): folders live under ./models (or $RAIN_MODELS_DIR), progress goes to
optional hooks, interrupts are requested with `interrupt_processing()`, events are kept in `sent_events`,
the networks stay where they were loaded, and the client id is `LOCAL_CLIENT` (or `set_client_id()`).
"""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import threading
from collections import deque
from importlib import metadata
from pathlib import Path

import torch

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

try:  # the host's way to stop downstream nodes without an error (here: a warm-up run with no frames)
    from comfy_execution.graph_utils import ExecutionBlocker
except ImportError:

    class ExecutionBlocker:
        """Standalone stand-in for ComfyUI's ExecutionBlocker: an output that tells consumers not to run."""

        def __init__(self, message):
            self.message = message

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


def models_root() -> Path:
    """The models folder downloads go to: ComfyUI's models/ (or $RAIN_MODELS_DIR / ./models standalone)."""
    if IN_COMFYUI:
        return Path(_folder_paths.models_dir)
    return _standalone_models_dir()


def download_into_models(what: list[str], node_id: str | None = None) -> dict[str, Path]:
    """Fetch the missing files of `what` (items of rain_core.loading.download) into the models folder with ComfyUI's
    progress bar on the node (Cancel stops it; the next run resumes). Returns the README layout's folders."""
    from ..rain_core.loading import download

    root = models_root()
    status = download.item_status(root)
    missing = [name for name in what if status.get(name)]
    if missing:
        progress = Progress(1000, node_id=node_id)
        logger.info("RAIN: downloading %s into %s", ", ".join(missing), root)
        download.download_models(missing, root, progress=lambda done, total, name: progress.update(
            int(1000 * done / total) if total else 0))
    return download.layout_paths(root)


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


def output_directory() -> Path:
    """Where nodes write files: ComfyUI's output folder, or ./output (or $RAIN_OUTPUT_DIR)."""
    if IN_COMFYUI:
        return Path(_folder_paths.get_output_directory())
    return Path(os.environ.get("RAIN_OUTPUT_DIR", "output")).resolve()


def output_file(prefix: str, suffix: str) -> Path:
    """The next free numbered file for a filename prefix ("rain/long" -> <output>/rain/long_00001_.mp4), numbered by
    ComfyUI's own `get_save_image_path` as Save Video numbers (standalone: the same rule); its folder is created.
    A prefix that leads out of the output folder is refused."""
    output = output_directory()
    if IN_COMFYUI:
        folder, name, counter, _, _ = _folder_paths.get_save_image_path(prefix, str(output))
    else:
        folder = os.path.normpath(os.path.join(output, os.path.dirname(os.path.normpath(prefix))))
        name = os.path.basename(os.path.normpath(prefix))
        if os.path.commonpath((str(output), os.path.abspath(folder))) != str(output):
            raise ValueError(f"filename_prefix: {prefix!r} leads out of the output folder {output}")
        numbers = [int(m.group(1)) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                   if (m := re.fullmatch(re.escape(name) + r"_(\d+)_.*", f))]
        counter = max(numbers, default=0) + 1
    os.makedirs(folder, exist_ok=True)
    return Path(folder) / f"{name}_{counter:05}_{suffix}"


def server_routes():
    """The running ComfyUI server's route table (to add the pack's own routes), or None outside a server."""
    instance = getattr(_PromptServer, "instance", None) if _PromptServer is not None else None
    return None if instance is None else instance.routes


def torch_device(choice: str):
    """The torch device for a node's device widget; "auto" follows ComfyUI's choice (or CUDA when present)."""
    if choice != "auto":
        return torch.device(choice)
    if IN_COMFYUI:
        return _comfy_mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device(load_device):
    """Where the networks wait while not in use: ComfyUI's choice (--highvram / --gpu-only keep them loaded)."""
    if IN_COMFYUI and load_device == _comfy_mm.get_torch_device():
        return _comfy_mm.unet_offload_device()
    return torch.device("cpu")


def auto_dtype(device):
    """Precision "auto": ComfyUI's UNet precision for the device (honours --fp16-unet, --bf16-unet, --fp32-unet,
    --force-fp32), or fp16 on a GPU and fp32 on the CPU outside ComfyUI."""
    if IN_COMFYUI:
        return _comfy_mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    from ..rain_core.stream.config import resolve_precision  # the engine's one "auto" rule

    return resolve_precision("auto", device)


# ------------------------------------------------------------------------------------------ model memory


def _holder(models, device):
    class RainNetworks(torch.nn.Module):
        """What ComfyUI's ModelPatcher manages: the RAIN networks plus the writable `device` it keeps."""

        def __init__(self):
            super().__init__()
            self.rain = models
            self.device = device

    return RainNetworks()


def manage_model(models, load_device, offload_to):
    """Hand the loaded networks (on `offload_to`) to ComfyUI's memory manager; returns the ModelPatcher, or None
    outside ComfyUI (the networks then stay where they are)."""
    if not IN_COMFYUI:
        return None
    import comfy.model_patcher as _model_patcher

    return _model_patcher.ModelPatcher(_holder(models, offload_to), load_device=load_device,
                                       offload_device=offload_to)


def load_model(patcher) -> None:
    """Bring the networks onto their device through ComfyUI (evicting other models if memory is short)."""
    if patcher is not None:
        _comfy_mm.load_models_gpu([patcher])


def unload_model(patcher) -> None:
    """Move the networks back to their offload device now (Load RAIN Model's keep_loaded off), through the
    ModelPatcher's own `detach`; ComfyUI's list of loaded models is left to ComfyUI (the entry then reports nothing
    loaded, and the next `load_model` brings the networks back)."""
    if patcher is not None:
        patcher.detach(unpatch_all=True)


def give_memory_back(delay_s: float = 0.0) -> None:
    """The one way the pack returns freed memory to the system: gc, glibc's heap (it keeps freed pages otherwise,
    so RSS would stay high after POST /free or a closed live session) and CUDA's cache (ComfyUI's
    soft_empty_cache). With `delay_s` it runs that long from now, for callers that are still dropping the last
    references (finalizers)."""
    def release():
        gc.collect()
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass
        if IN_COMFYUI:
            _comfy_mm.soft_empty_cache()
        else:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    if delay_s <= 0:
        release()
        return
    timer = threading.Timer(delay_s, release)
    timer.daemon = True
    timer.start()


# ------------------------------------------------------------------------------------ ComfyUI's own models


def vae_weights(vae) -> dict:
    """The tensors of a VAE from ComfyUI's Load VAE (`comfy.sd.VAE`): its model's state dict as ComfyUI holds it
    (the LDM layout for SD VAEs). Read, not copied: ComfyUI keeps its own object."""
    return dict(vae.get_sd())


def clip_vision_weights(clip_vision) -> dict:
    """The tensors of a CLIP vision model from ComfyUI's Load CLIP Vision (`comfy.clip_vision.ClipVisionModel`),
    in transformers' layout (`vision_model.*`, `visual_projection.weight`)."""
    return dict(clip_vision.get_sd())


# ------------------------------------------------------------------------------------------------ clients

LOCAL_CLIENT = "local"
_standalone_client: str | None = None


def set_client_id(client: str | None) -> None:
    """Standalone: act as this client (tests of client isolation). Inside ComfyUI the prompt decides."""
    global _standalone_client
    _standalone_client = client


def client_id() -> str:
    """Who queued the running prompt: its `client_id` (each browser tab has its own), or "anonymous" for a prompt
    queued without one. Stream state is keyed by it so that two clients never share a stream by accident."""
    if IN_COMFYUI and _PromptServer is not None and getattr(_PromptServer, "instance", None) is not None:
        return getattr(_PromptServer.instance, "client_id", None) or "anonymous"
    return _standalone_client or LOCAL_CLIENT


def state_key(kind: str, name: str) -> str:
    """The registry key of a piece of stream state: per client, unless the name starts with "shared:" (a stream
    every client deliberately joins)."""
    name = str(name)
    if name.startswith("shared:"):
        return f"{kind}|{name}"
    return f"{kind}|{client_id()}|{name}"


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
            # The preview's size is the frame's own (at most 512): ComfyUI scales it to the third value, and the
            # front end captions it with the scaled size.
            shown = ("JPEG", preview, min(512, max(preview.size))) if preview is not None else None
            self._bar.update_absolute(value, self.total, shown)
        else:
            for hook in list(progress_hooks):
                hook(self.node_id, value, self.total, preview)
        throw_if_interrupted()


# ------------------------------------------------------------------------------------------ websocket events

# Standalone: the most recent events, newest last, for tests and scripts.
sent_events: deque = deque(maxlen=32)


def send_event(event: str, data: dict) -> None:
    """Send a custom websocket event (e.g. "rain.frame" for the Frame Queue widget) to the client that queued the
    running prompt only; a prompt queued without a client id has no one to show it to."""
    if IN_COMFYUI and _PromptServer is not None and getattr(_PromptServer, "instance", None) is not None:
        client = getattr(_PromptServer.instance, "client_id", None)
        if client is not None:
            _PromptServer.instance.send_sync(event, data, client)
    else:
        sent_events.append((event, dict(data, client=client_id())))


# ------------------------------------------------------------------------------------------------ OpenCV

OPENCV_BUILDS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def opencv_builds() -> dict[str, str]:
    """The OpenCV distributions installed beside the pack (name -> version); each of them owns the same cv2 folder."""
    found = {}
    for name in OPENCV_BUILDS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def opencv_advice(builds: dict[str, str] | None = None) -> str | None:
    """What to do when more than one OpenCV build shares the one cv2 folder (pip lets them overwrite each other's
    files: the last installed wins, and uninstalling any of them breaks cv2 for all), or None when there is one."""
    builds = opencv_builds() if builds is None else builds
    if len(builds) < 2:
        return None
    keep = "opencv-contrib-python" if any("contrib" in name for name in builds) else "opencv-python"
    why = " (it holds everything opencv-python has, and a GUI)" if keep == "opencv-contrib-python" else ""
    listed = ", ".join(f"{name} {version}" for name, version in builds.items())
    return (f"RAIN: {len(builds)} OpenCV builds share one cv2 folder ({listed}); the one pip installed last "
            f"wins, and uninstalling any of them breaks cv2 for all. Keep one{why}: pip uninstall -y "
            f"{' '.join(builds)}, then pip install {keep}")


def warn_about_opencv() -> None:
    """At load: log `opencv_advice` once (the pack works either way; the next install or uninstall may not)."""
    advice = opencv_advice()
    if advice:
        logger.warning(advice)


# ---------------------------------------------------------------------------------------- example inputs


def install_examples(source: Path, suffixes=(".png", ".mp4")) -> list[str]:
    """Copy the pack's example inputs into ComfyUI's input folder so the shipped workflows run as shipped.

    A file already there is never touched (it may be the user's); a copy appears under its final name only when
    complete. Returns the names copied. Standalone: does nothing (there is no shared input folder)."""
    if not IN_COMFYUI or not source.is_dir():
        return []

    from ..rain_core.io.files import temporary_beside

    target = input_directory()
    copied = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            destination = target / path.name
            if path.suffix.lower() not in suffixes or not path.is_file() or destination.exists():
                continue
            handle, temporary = temporary_beside(destination, suffix=".part")
            os.close(handle)
            try:
                shutil.copyfile(path, temporary)
                if destination.exists():  # appeared meanwhile: the user's file wins
                    os.unlink(temporary)
                    continue
                os.replace(temporary, destination)
            except BaseException:
                if os.path.exists(temporary):
                    os.unlink(temporary)
                raise
            copied.append(path.name)
    except OSError as error:  # a read-only input folder must not stop the pack from loading
        logger.warning("RAIN: could not copy the example inputs into %s: %s", target, error)
    if copied:
        logger.info("RAIN: copied example inputs into %s: %s", target, ", ".join(copied))
    return copied
