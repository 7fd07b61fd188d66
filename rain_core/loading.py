"""Loading RAIN checkpoints: the authors' released files, our safetensors layout, and initialisation for training.

Layouts of a checkpoint folder
- official (Hugging Face Pscgylotti/RAIN-v0.1): `reference_unet.pth`, `motion_unet.pth`, `pose_guider.pth`,
  optionally `taesdv.pth`; the VAE (`sd-vae-ft-mse`, a diffusers folder) and the CLIP `image_encoder` folder
  are passed separately (or found as sibling folders with those names).
- ours: `rain_config.json` + one `.safetensors` per part: reference_unet, denoising_unet, pose_guider,
  image_encoder, and vae / taesdv when the model has them. Preferred when both layouts are present.
Our parameter names equal the authors', so no renaming happens; every file is checked against the network it
fills (missing, unexpected and mis-shaped tensors) before anything is loaded.

Why one file over 500 lines: every loading path (authors' .pth, our safetensors, SD/AnimateDiff init) goes
through the same file checks and the same descriptions of wrong files, which must stay one vocabulary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import single_file
from .layout import MODEL_FILES, NETWORK_PARTS, own_candidates, resolve_model_folder
from .models import RainModelConfig, RainModels
from .models.codecs import SpaceToDepthCodec, VaeCodec
from .models.image_encoder import ClipImageEncoder
from .models.pose_guider import PoseGuider
from .models.taesdv import TAESDV
from .models.unet import DenoisingUNet, ReferenceUNet

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
    return _read(path, part, mmap)[0]


def _read(path: str | os.PathLike, part: str, mmap: bool) -> tuple[dict[str, torch.Tensor], bool]:
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


def _describe_contents(keys: list[str]) -> str:
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
        found = _describe_contents(list(state))
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


def _assign(
    model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None, mapped: bool = False
) -> nn.Module:
    """Load a checked state dict into a meta-device model without allocating twice, then rebuild the
    recomputable buffers the file did not carry. With `dtype`, floating tensors are converted one at a time
    (the file's tensors are dropped from `state` as they go), so a model loads straight into its precision:
    never the whole model in the file's precision and again in the target one. `mapped`: the tensors are pages
    of a mapped file (`_read(..., mmap=True)`), given back as soon as each is converted."""
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
    import ctypes
    import sys

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
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

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


# ---- the public entry --------------------------------------------------------------------------------------


def _read_config_file(folder: Path) -> tuple[RainModelConfig, dict]:
    path = folder / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RainLoadError(f"{path}: not a readable JSON file ({error}); expected the RAIN model config.") from error
    extras = {}
    if "config" in data:  # our layout: {"format", "config", "image_encoder", "vae"}
        extras = {k: v for k, v in data.items() if k != "config"}
        data = data["config"]
    try:
        return RainModelConfig.from_dict(data), extras
    except (TypeError, ValueError) as error:
        raise RainLoadError(f"{path}: not a valid RAIN model config ({error}).") from error


def folder_frame_size(folder: str | os.PathLike) -> tuple[int, int]:
    """A model folder's own (height, width), read from its rain_config.json without loading any weights (a folder
    of the authors' .pth files has none: the released size). Asks `RainModelConfig.own_frame_size`, as a loaded
    model does."""
    folder = Path(folder)
    config = _read_config_file(folder)[0] if (folder / CONFIG_NAME).is_file() else RainModelConfig.sd15()
    return config.own_frame_size()


def _meta_network(part: str, config: RainModelConfig) -> nn.Module:
    """One RAIN network of `config` on the meta device (no memory), ready to receive checked tensors."""
    with torch.device("meta"):
        if part == "reference_unet":
            return ReferenceUNet(config)
        if part == "denoising_unet":
            return DenoisingUNet(config)
        return PoseGuider(config.pose_channels, config.pose_guider_channels)


def _meta_networks(folder: Path, config: RainModelConfig | None):
    """The folder's config (its rain_config.json, else `config`, else SD-1.5 size), the extras stored with it,
    and the three RAIN networks built on the meta device (no memory) ready to receive checked tensors."""
    extras = {}
    if (folder / CONFIG_NAME).exists():
        config, extras = _read_config_file(folder)
    config = config or RainModelConfig.sd15()
    return config, extras, {part: _meta_network(part, config) for part in PART_FILES}


def _fill(network: nn.Module, folder: Path, part: str, dtype: torch.dtype) -> nn.Module:
    """Fill a meta-device network from its file in `folder`, straight into `dtype`: the file is mapped, not read
    (one copy of the weights at most: in float32 the file's own pages, otherwise each tensor converted as it goes)."""
    path = _find_part(folder, part)
    state, mapped = _read(path, part, mmap=True)
    check_state_dict(state, network, path, part)
    return _assign(network, state, dtype, mapped)


def load_network(
    folder: str | os.PathLike,
    part: str,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    config: RainModelConfig | None = None,
) -> nn.Module:
    """One RAIN network of `folder` ("reference_unet", "denoising_unet" or "pose_guider"), in eval mode,
    loaded straight into `dtype` on `device` (see `load_rain` for the folder and `config`)."""
    if part not in PART_FILES:
        raise ValueError(f"load_network: part must be one of {sorted(PART_FILES)}, found {part!r}")
    folder = resolve_model_folder(folder)
    if (folder / CONFIG_NAME).exists():
        config = _read_config_file(folder)[0]
    network = _fill(_meta_network(part, config or RainModelConfig.sd15()), folder, part, dtype)
    return network.to(device).eval()


def load_rain(
    folder: str | os.PathLike,
    vae: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
    taesdv: str | os.PathLike | None = None,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    config: RainModelConfig | None = None,
    release_reference: bool = False,
) -> RainModels:
    """Load RAIN from `folder` (official .pth files or our safetensors layout; safetensors preferred); "tiny" or
    "builtin" is the built-in model, as `--model tiny` is (`rain_core.layout.resolve_model_folder`).

    vae: diffusers AutoencoderKL folder (sd-vae-ft-mse), a single .safetensors file in diffusers' or the LDM layout
    (vae-ft-mse-840000-ema-pruned.safetensors), or its tensors as a mapping; image_encoder: transformers
    CLIPVisionModelWithProjection folder (sd-image-variations `image_encoder`), a single file in transformers' or
    open_clip's layout (ComfyUI's models/clip_vision), or its tensors; taesdv: taesdv.pth (`rain_core.single_file`
    converts the layouts). Each defaults to what the folder holds
    (our layout) or to a sibling folder/file of the usual name. config: the model size when the folder has no
    rain_config.json (default: the released SD-1.5 size).

    Every network goes straight into `dtype`: files are mapped and converted one tensor at a time, so loading
    never holds the weights twice (float32 weights stay the mapped file's pages). release_reference=True frees
    the reference UNet and the image encoder once a reference is encoded (the authors' demo unloads its
    reference part the same way: at full size 4.7 GB in float32, 2.3 GB in bfloat16); they are loaded again,
    in the models' device and dtype at that time, for the next reference or a restored state
    (`RainModels.reference_networks`).
    """
    folder = resolve_model_folder(folder)
    if not folder.is_dir():
        raise RainLoadError(f"{folder}: checkpoint folder not found. {DOWNLOAD_HINT}")
    check_device_dtype(device, dtype)
    config, extras, networks = _meta_networks(folder, config)
    # Every part straight into `dtype`, the small ones first: what their loaders hold for a moment (a mapped
    # file's pages) then comes on top of little, not on top of the UNets.
    codec = _load_codec(folder, config, extras, vae, dtype).to(dtype)
    encoder = _load_image_encoder(folder, config, extras, image_encoder, dtype).to(dtype)
    fast_decoder = _load_taesdv(folder, config, taesdv, dtype)
    for part, network in networks.items():
        _fill(network, folder, part, dtype)
    models = RainModels(
        config,
        networks["reference_unet"],
        networks["denoising_unet"],
        networks["pose_guider"],
        codec,
        encoder,
        fast_decoder,
    )
    models = models.to(device=device, dtype=dtype).eval()

    def reference_unet(device, dtype):
        return _fill(_meta_network("reference_unet", config), folder, "reference_unet", dtype).to(device).eval()

    def image_encoder_again(device, dtype):
        return _load_image_encoder(folder, config, extras, image_encoder, dtype).to(device=device, dtype=dtype).eval()

    models.set_reference_loaders(reference_unet=reference_unet, image_encoder=image_encoder_again)
    models.release_reference_after_use(release_reference)
    return models


def _find_part(folder: Path, part: str) -> Path:
    ours, official = PART_FILES[part]
    for name in (ours, official):
        if (folder / name).exists():
            return folder / name
    raise RainLoadError(
        f"{folder}: no {ours} or {official}; expected {PART_DESCRIPTIONS[part]}. "
        f"Folder holds: {sorted(p.name for p in folder.iterdir())[:12]}. {DOWNLOAD_HINT}"
    )


def _component_path(explicit, defaults: list[Path], missing: str, absent: str) -> Path:
    """Where to load a VAE or image encoder from: `explicit` when given (RainLoadError `missing` when it is
    neither a .safetensors file nor a folder), else the first of `defaults` that is one (RainLoadError `absent`
    when none is)."""

    def usable(path: Path) -> bool:
        return (path.suffix == ".safetensors" and path.is_file()) or path.is_dir()

    if explicit is not None:
        if not usable(Path(explicit)):
            raise RainLoadError(f"{explicit}: {missing}")
        return Path(explicit)
    found = next((path for path in defaults if usable(path)), None)
    if found is None:
        raise RainLoadError(absent)
    return found


def _from_pretrained(model_class, path: Path, expected: str, dtype: torch.dtype | None = None):
    """A diffusers / transformers model from its save_pretrained folder, offline, in `dtype` (loaded straight into it:
    never the whole model in float32 first); RainLoadError if it is not one."""
    kwargs = {}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
        if model_class.__module__.startswith("transformers"):
            import transformers

            if tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2]) >= (4, 56):
                kwargs = {"dtype": dtype}  # `torch_dtype` is deprecated from 4.56 on
    try:
        return model_class.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as error:
        raise RainLoadError(
            f"{path}: not a loadable {model_class.__name__} folder ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); expected {expected}."
        ) from error


def _load_codec(folder: Path, config: RainModelConfig, extras: dict, vae_path, dtype=None) -> nn.Module:
    """The model's codec. `vae_path`: a diffusers folder, a single file (diffusers or LDM keys), or the tensors
    themselves (a mapping, e.g. ComfyUI's VAE's state dict)."""
    if config.codec == "space_to_depth":
        return SpaceToDepthCodec(config.codec_factor)
    from diffusers import AutoencoderKL

    if isinstance(vae_path, Mapping):
        return VaeCodec(_vae_from_state(vae_path, "vae (the VAE given)", extras, config, dtype),
                        config.vae_scaling_factor)
    defaults = own_candidates(folder, "vae")
    path = _component_path(
        vae_path,
        defaults,
        "VAE not found; expected a diffusers AutoencoderKL folder (sd-vae-ft-mse) or a .safetensors VAE "
        "(e.g. vae-ft-mse-840000-ema-pruned.safetensors).",
        f"{folder}: this model decodes with the SD VAE but none was given or found; pass vae= the sd-vae-ft-mse "
        "folder (Hugging Face stabilityai/sd-vae-ft-mse, e.g. models/vae/sd-vae-ft-mse).",
    )
    if path.is_dir():
        vae = _from_pretrained(AutoencoderKL, path, "sd-vae-ft-mse (config.json + diffusion_pytorch_model.safetensors)",
                               dtype)
        return VaeCodec(vae, config.vae_scaling_factor)
    return VaeCodec(_vae_from_state(read_state_dict(path, "vae"), path, extras, config, dtype),
                    config.vae_scaling_factor)


def _vae_from_state(state, source, extras: dict, config: RainModelConfig, dtype=None) -> nn.Module:
    """The AutoencoderKL of this model (its stored config, else sd-vae-ft-mse's) filled with `state` in diffusers'
    or the LDM layout (ComfyUI's models/vae files and its VAE in memory)."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(extras.get("vae") or config.vae or single_file.SD_VAE_CONFIG)
    state = single_file.to_diffusers_vae(state, vae.config)
    check_state_dict(state, vae, source, "vae")
    return _assign(vae, state, dtype)


def _load_image_encoder(
    folder: Path, config: RainModelConfig, extras: dict, encoder_path, dtype=None
) -> ClipImageEncoder:
    """The CLIP image encoder. `encoder_path`: a transformers folder, a single file (transformers or open_clip
    keys), or the tensors themselves (a mapping, e.g. ComfyUI's CLIP vision state dict)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .models.image_encoder import build_clip

    if isinstance(encoder_path, Mapping):
        state, path = encoder_path, "clip_vision (the CLIP vision model given)"
    else:
        path = _component_path(
            encoder_path,
            own_candidates(folder, "image_encoder"),
            "image encoder not found; expected a CLIP image_encoder folder or a .safetensors CLIP vision file.",
            f"{folder}: no image encoder given or found; pass image_encoder= the sd-image-variations image_encoder "
            "folder (lambdalabs/sd-image-variations-diffusers/image_encoder, e.g. models/clip_vision/"
            "sd-image-variations).",
        )
        if path.is_dir():
            return ClipImageEncoder(
                _from_pretrained(CLIPVisionModelWithProjection, path, "the sd-image-variations image_encoder folder",
                                 dtype)
            )
        state = read_state_dict(path, "image_encoder")
    clip_config = CLIPVisionConfig.from_dict(extras["image_encoder"]) if "image_encoder" in extras else None
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(clip_config) if clip_config else build_clip(config.clip)
    state = single_file.to_transformers_clip(state)
    check_state_dict(state, model, path, "image_encoder", allow_missing=("position_ids",))
    return ClipImageEncoder(_assign_clip(model, state, dtype))


def _assign_clip(model: nn.Module, state: dict[str, torch.Tensor], dtype=None) -> nn.Module:
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    for module in model.modules():  # position_ids is a non-persistent arange buffer
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                module.register_buffer(name, torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)
    return model


def _load_taesdv(folder: Path, config: RainModelConfig, taesdv_path, dtype=None) -> TAESDV | None:
    candidates = (
        [Path(taesdv_path)] if taesdv_path is not None else own_candidates(folder, "taesdv")
    )
    for path in candidates:
        if path.is_file() or taesdv_path is not None:
            upsamplings = int(math.log2(config.codec_factor))
            with torch.device("meta"):
                decoder = TAESDV(config.latent_channels, config.taesdv_channels or 64, upsamplings)
            state = read_state_dict(path, "taesdv")
            check_state_dict(state, decoder, path, "taesdv")
            return _assign(decoder, state, dtype)
    log.info("%s: no taesdv.pth; the fast decoder is off (the codec decodes)", folder)
    return None


# ---- writing our layout --------------------------------------------------------------------------------------


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write next to the target, then rename: a failed save never leaves a partial file in place of a good one."""
    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def _write_config(folder: Path, config: RainModelConfig, image_encoder_config=None, vae_config=None) -> None:
    data = {"format": FORMAT, "config": config.to_dict()}
    if image_encoder_config is not None:
        data["image_encoder"] = image_encoder_config
    if vae_config is not None:
        data["vae"] = vae_config
    tmp = folder / (CONFIG_NAME + ".partial")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, folder / CONFIG_NAME)


def save_rain(models: RainModels, folder: str | os.PathLike) -> Path:
    """Write `models` in our layout: rain_config.json + one .safetensors per part (tensors as they are)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomic(models.reference_unet.state_dict(), folder / "reference_unet.safetensors")
    _save_atomic(models.denoising_unet.state_dict(), folder / "denoising_unet.safetensors")
    _save_atomic(models.pose_guider.state_dict(), folder / "pose_guider.safetensors")
    clip_config = None
    if models.image_encoder is not None:
        _save_atomic(models.image_encoder.model.state_dict(), folder / "image_encoder.safetensors")
        clip_config = models.image_encoder.model.config.to_dict()
    vae_config = None
    if isinstance(models.codec, VaeCodec):
        _save_atomic(models.codec.vae.state_dict(), folder / "vae.safetensors")
        vae_config = dict(models.codec.vae.config)
    if models.fast_decoder is not None:
        _save_atomic(models.fast_decoder.state_dict(), folder / "taesdv.safetensors")
    _write_config(folder, models.config, clip_config, vae_config)
    return folder


def convert_official(
    src_folder: str | os.PathLike,
    dst_folder: str | os.PathLike,
    vae: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
    taesdv: str | os.PathLike | None = None,
    config: RainModelConfig | None = None,
) -> Path:
    """Convert the authors' .pth files (+ VAE / image encoder folders, taesdv.pth) into our safetensors layout.
    The tensors are copied as stored (same dtype, bit-exact); each file is checked first."""
    src, dst = Path(src_folder), Path(dst_folder)
    if not src.is_dir():
        raise RainLoadError(f"{src}: checkpoint folder not found. {DOWNLOAD_HINT}")
    config, extras, networks = _meta_networks(src, config)
    states = {}
    for part, network in networks.items():
        path = src / PART_FILES[part][1]
        state = read_state_dict(path, part)
        check_state_dict(state, network, path, part)
        states[part] = state
    codec = _load_codec(src, config, extras, vae)
    encoder = _load_image_encoder(src, config, extras, image_encoder)
    decoder = _load_taesdv(src, config, taesdv)

    dst.mkdir(parents=True, exist_ok=True)
    for part, state in states.items():
        _save_atomic(state, dst / PART_FILES[part][0])
    _save_atomic(encoder.model.state_dict(), dst / "image_encoder.safetensors")
    vae_config = None
    if isinstance(codec, VaeCodec):
        _save_atomic(codec.vae.state_dict(), dst / "vae.safetensors")
        vae_config = dict(codec.vae.config)
    if decoder is not None:
        _save_atomic(decoder.state_dict(), dst / "taesdv.safetensors")
    _write_config(dst, config, encoder.model.config.to_dict(), vae_config)
    return dst
