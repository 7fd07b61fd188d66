"""Reading checkpoint files and checking them against the networks they fill: the one vocabulary for wrong files
(torch.save archives read with weights_only=True and mapped, safetensors), assignment tensor by tensor in the target dtype."""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .layout import MODEL_FILES, NETWORK_PARTS

log = logging.getLogger(__name__)

CONFIG_NAME = "rain_config.json"
FORMAT = "rain-safetensors/1"
# part -> (our safetensors name, the authors' file name), from the one table in layout.py
PART_FILES = {part: MODEL_FILES[part].inside for part in NETWORK_PARTS}
PART_DESCRIPTIONS = {
    "reference_unet": "the RAIN reference UNet (2D SD-1.5 UNet without conv_out)",
    "denoising_unet": "the RAIN denoising UNet (SD-1.5 UNet with motion_modules.* and time_embedding.cond_proj)",
    "pose_guider": "the RAIN pose guider (conv_in, blocks.0-5, conv_out)",
    "taesdv": "the TAESDV decoder (madebyollin/taesdv taesdv.pth: encoder.*, decoder.*)",
    "vae": "an AutoencoderKL state dict",
    "image_encoder": "a CLIPVisionModelWithProjection state dict",
}
RECOMPUTABLE_SUFFIXES = (".pos_encoder.pe",)  # sinusoidal tables: rebuilt when a file lacks them
DOWNLOAD_HINT = (
    "Download RAIN-v0.1 (Hugging Face Pscgylotti/RAIN-v0.1) into models/rain/RAIN-v0.1/, "
    "or convert it with rain_core.loading.convert_official."
)


class RainLoadError(ValueError):
    """A checkpoint file or folder cannot be used; the message names the file, what was expected, what was found
    and how to fix it."""


# ---- reading files -----------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike, part: str = "checkpoint", mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .pth / .pt / .ckpt / .bin file on the CPU. Pickles load with
    weights_only=True only. Raises RainLoadError for a missing, truncated, corrupt or non-checkpoint file.

    mmap=True maps a torch.save zip archive instead of reading it (its tensors are the file's pages, read when
    touched, never a second copy in memory; the legacy pickle format is read as usual)."""
    return read_tensors(path, part, mmap)[0]


def read_tensors(path: str | os.PathLike, part: str, mmap: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """`read_state_dict`, and whether its tensors are pages of the mapped file."""
    path = Path(path)
    expected = PART_DESCRIPTIONS.get(part, part)
    if not path.exists():
        raise RainLoadError(f"{path}: file not found; expected {expected}. {DOWNLOAD_HINT}")
    if path.is_dir():
        raise RainLoadError(f"{path}: is a folder; expected a file holding {expected}.")
    if path.stat().st_size == 0:
        raise RainLoadError(f"{path}: the file is empty; expected {expected}. Download it again.")
    try:
        mapped = mmap and path.suffix != ".safetensors" and zipfile.is_zipfile(path)
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, **({"mmap": True} if mapped else {}))
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as error:
        # a pickled object, refused by weights_only=True ("This file can still be loaded"; a text file fails the
        # same check without that sentence and is described below)
        if "Weights only load failed" in str(error) and "This file can still be loaded" in str(error):
            held = re.search(r"GLOBAL ([\w.]+)", str(error))
            raise RainLoadError(
                f"{path}: holds pickled Python objects{f' ({held.group(1)})' if held else ''} besides tensors, which "
                f"are refused for safety (loading them could run code); expected {expected} saved as a plain state "
                "dict. Use the released file, or a copy saved as tensors only (a state dict or .safetensors)."
            ) from None
        found = _describe_unreadable(path)
        raise RainLoadError(
            f"{path}: cannot be read as a checkpoint ({found}: {str(error).splitlines()[0][:200]}); "
            f"expected {expected}. Download the file again (it may be truncated or corrupt)."
        ) from error
    except Exception as error:  # weights_only refuses arbitrary objects: say so instead of a bare traceback
        raise RainLoadError(
            f"{path}: not a plain tensor checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            f"expected {expected} saved as a state dict."
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # Lightning-style wrapper (AnimateDiff, LDM checkpoints)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RainLoadError(f"{path}: holds a {type(state).__name__}, not a dict of tensors; expected {expected}.")
    return state, mapped


def _describe_unreadable(path: Path) -> str:
    head = path.read_bytes()[:64]
    if head.startswith(b"PK"):
        return "a truncated or damaged PyTorch zip archive"
    if head[:1] == b"\x80":
        return "a damaged legacy PyTorch pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"an unknown binary format ({path.stat().st_size} bytes)"
    if text.lstrip().startswith("<"):
        return "an HTML/XML page (a failed download?)"
    if text.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the file itself (run git lfs pull)"
    return "a text file"


def describe_contents(keys: list[str]) -> str:
    """What a state dict looks like, for error messages about wrong files."""
    if any("lora" in k.lower() for k in keys):
        return f"a LoRA ({len(keys)} tensors with lora_* names)"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return f"a full Stable Diffusion checkpoint in the original LDM layout ({len(keys)} tensors)"
    has_unet = any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in keys)
    if has_unet and not any("motion_modules." in k for k in keys):
        if any(k.startswith("conv_out.") for k in keys):
            return f"an SD-1.5 UNet (no motion_modules.* tensors, {len(keys)} tensors)"
        return f"a 2D UNet without motion modules ({len(keys)} tensors: the RAIN reference UNet?)"
    if has_unet and all("motion_modules." in k for k in keys):
        return f"AnimateDiff motion-module weights only ({len(keys)} tensors)"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return f"an autoencoder ({len(keys)} tensors)"
    return f"{len(keys)} tensors, e.g. {keys[:3]}"


def check_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, path: str | os.PathLike, part: str, allow_missing=()
) -> None:
    """Compare a state dict with the network it should fill; RainLoadError with the full report unless the only
    gaps are recomputable buffers (or names matching `allow_missing` prefixes/suffixes)."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = [
        k
        for k in expected
        if k not in state and not k.endswith(RECOMPUTABLE_SUFFIXES) and not any(a in k for a in allow_missing)
    ]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in state
        if k in expected and tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or misshaped):
        return
    overlap = len(set(state) & set(expected))
    wants_motion = any("motion_modules." in k for k in expected)
    wrong_kind = (
        overlap < len(expected) // 2
        or (wants_motion and not any("motion_modules." in k for k in state))
        or any("lora" in k.lower() for k in state)
    )
    description = PART_DESCRIPTIONS.get(part, part)
    if wrong_kind:
        found = describe_contents(list(state))
        headline = f"{path}: expected {description} ({len(expected)} tensors); found {found}."
    else:
        headline = f"{path}: does not match {description} of this model size."
    lines = [headline]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:8]) + (f", … (+{len(items) - 8})" if len(items) > 8 else "")
            lines.append(f"  {len(items)} {label}: {shown}")
    lines.append(
        "  Fix: point to the right file, or pass config= matching its size (rain_config.json in our layout). "
        + DOWNLOAD_HINT
    )
    raise RainLoadError("\n".join(lines))


def assign_tensors(
    model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None, mapped: bool = False
) -> nn.Module:
    """Load a checked state dict into a meta-device model without allocating twice, then rebuild the
    recomputable buffers the file did not carry. With `dtype`, floating tensors are converted one at a time
    (the file's tensors are dropped from `state` as they go), so a model loads straight into its precision:
    never the whole model in the file's precision and again in the target one. `mapped`: the tensors are pages
    of a mapped file (`read_tensors(..., mmap=True)`), given back as soon as each is converted."""
    if dtype is not None:
        state = dict(state)  # the caller's mapping stays as it was
        for name in list(state):
            tensor = state.pop(name)
            converted = tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != dtype else tensor
            if mapped and converted is not tensor:
                _release_pages(tensor)
            state[name] = converted
    model.load_state_dict(state, strict=False, assign=True)
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                module.register_buffer(name, _rebuild_buffer(module, name), persistent=name in module.state_dict())
    for name, param in model.named_parameters():
        if param.is_meta:
            raise RainLoadError(f"internal: parameter {name} was not loaded")
    return model


def _release_pages(tensor: torch.Tensor) -> None:
    """Give back the memory pages of a tensor read from a mapped file once it has been converted (they would
    otherwise stay resident until the whole file is unmapped: a 5 GB file converted to bf16 would peak at 1.5×
    its size). Only clean pages of a file mapping are dropped; touching them again would read the file again.
    Call it only on tensors of a file mapping; a no-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // page) * page, end // page * page  # whole pages inside this tensor only
    if last > first:
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED


def _rebuild_buffer(module: nn.Module, name: str) -> torch.Tensor:
    if isinstance(module, SinusoidalPositionalEmbedding) and name == "pe":
        _, length, dim = module.pe.shape
        with torch.device("cpu"):
            return SinusoidalPositionalEmbedding(dim, length).pe
    raise RainLoadError(f"internal: buffer {type(module).__name__}.{name} missing and not recomputable")


# ---- device and dtype --------------------------------------------------------------------------------------


def check_device_dtype(device, dtype) -> None:
    """Run the ops the networks need on `device` in `dtype`; RainLoadError if the pair cannot run."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise RainLoadError(f"dtype: expected a floating torch dtype (float32, float16, bfloat16), found {dtype!r}")
    try:
        device = torch.device(device)
        x = torch.randn(1, 8, 4, 4, device=device, dtype=dtype)
        nn.functional.conv2d(x, torch.randn(8, 8, 3, 3, device=device, dtype=dtype), padding=1)
        nn.functional.group_norm(x, 4)
        q = torch.randn(1, 2, 4, 8, device=device, dtype=dtype)
        nn.functional.scaled_dot_product_attention(q, q, q)
    except (RuntimeError, AssertionError, TypeError, ValueError) as error:
        raise RainLoadError(
            f"device/dtype: {device} cannot run the RAIN networks in {dtype} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]}). "
            "Use float32 on CPU; float16 or bfloat16 need a GPU that supports them."
        ) from error


