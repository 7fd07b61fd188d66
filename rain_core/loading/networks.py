"""Building RAIN networks from a folder: the config, each network on the meta device filled from its file, the VAE,
image encoder and TAESDV; `load_rain` and `load_network`."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn

from ..models import RainModelConfig, RainModels
from ..models.codecs import SpaceToDepthCodec, VaeCodec
from ..models.image_encoder import ClipImageEncoder, build_clip
from ..models.pose_guider import PoseGuider
from ..models.taesdv import TAESDV
from ..models.unet import DenoisingUNet, ReferenceUNet
from . import single_file
from .files import (
    CONFIG_NAME,
    DOWNLOAD_HINT,
    PART_DESCRIPTIONS,
    PART_FILES,
    RainLoadError,
    assign_tensors,
    check_device_dtype,
    check_state_dict,
    read_state_dict,
    read_tensors,
)
from .layout import own_candidates, resolve_model_folder

log = logging.getLogger(__name__)


# ---- the public entry --------------------------------------------------------------------------------------


def read_config_file(folder: Path) -> tuple[RainModelConfig, dict]:
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
    config = read_config_file(folder)[0] if (folder / CONFIG_NAME).is_file() else RainModelConfig.sd15()
    return config.own_frame_size()


def _meta_network(part: str, config: RainModelConfig) -> nn.Module:
    """One RAIN network of `config` on the meta device (no memory), ready to receive checked tensors."""
    with torch.device("meta"):
        if part == "reference_unet":
            return ReferenceUNet(config)
        if part == "denoising_unet":
            return DenoisingUNet(config)
        return PoseGuider(config.pose_channels, config.pose_guider_channels)


def meta_networks(folder: Path, config: RainModelConfig | None):
    """The folder's config (its rain_config.json, else `config`, else SD-1.5 size), the extras stored with it,
    and the three RAIN networks built on the meta device (no memory) ready to receive checked tensors."""
    extras = {}
    if (folder / CONFIG_NAME).exists():
        config, extras = read_config_file(folder)
    config = config or RainModelConfig.sd15()
    return config, extras, {part: _meta_network(part, config) for part in PART_FILES}


def _fill(network: nn.Module, folder: Path, part: str, dtype: torch.dtype) -> nn.Module:
    """Fill a meta-device network from its file in `folder`, straight into `dtype`: the file is mapped, not read
    (one copy of the weights at most: in float32 the file's own pages, otherwise each tensor converted as it goes)."""
    path = _find_part(folder, part)
    state, mapped = read_tensors(path, part, mmap=True)
    check_state_dict(state, network, path, part)
    return assign_tensors(network, state, dtype, mapped)


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
        config = read_config_file(folder)[0]
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
    "builtin" is the built-in model, as `--model tiny` is (`rain_core.loading.layout.resolve_model_folder`).

    vae: diffusers AutoencoderKL folder (sd-vae-ft-mse), a single .safetensors file in diffusers' or the LDM layout
    (vae-ft-mse-840000-ema-pruned.safetensors), or its tensors as a mapping; image_encoder: transformers
    CLIPVisionModelWithProjection folder (sd-image-variations `image_encoder`), a single file in transformers' or
    open_clip's layout (ComfyUI's models/clip_vision), or its tensors; taesdv: taesdv.pth (`rain_core.loading.single_file`
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
    config, extras, networks = meta_networks(folder, config)
    # Every part straight into `dtype`, the small ones first: what their loaders hold for a moment (a mapped
    # file's pages) then comes on top of little, not on top of the UNets.
    codec = load_codec(folder, config, extras, vae, dtype).to(dtype)
    encoder = load_image_encoder(folder, config, extras, image_encoder, dtype).to(dtype)
    fast_decoder = load_taesdv(folder, config, taesdv, dtype)
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
        return load_image_encoder(folder, config, extras, image_encoder, dtype).to(device=device, dtype=dtype).eval()

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
            import transformers  # optional layout: only for a transformers folder (import time)

            if tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2]) >= (4, 56):
                kwargs = {"dtype": dtype}  # `torch_dtype` is deprecated from 4.56 on
    try:
        return model_class.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as error:
        raise RainLoadError(
            f"{path}: not a loadable {model_class.__name__} folder ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); expected {expected}."
        ) from error


def load_codec(folder: Path, config: RainModelConfig, extras: dict, vae_path, dtype=None) -> nn.Module:
    """The model's codec. `vae_path`: a diffusers folder, a single file (diffusers or LDM keys), or the tensors
    themselves (a mapping, e.g. ComfyUI's VAE's state dict)."""
    if config.codec == "space_to_depth":
        return SpaceToDepthCodec(config.codec_factor)

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
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(extras.get("vae") or config.vae or single_file.SD_VAE_CONFIG)
    state = single_file.to_diffusers_vae(state, vae.config)
    check_state_dict(state, vae, source, "vae")
    return assign_tensors(vae, state, dtype)


def load_image_encoder(
    folder: Path, config: RainModelConfig, extras: dict, encoder_path, dtype=None
) -> ClipImageEncoder:
    """The CLIP image encoder. `encoder_path`: a transformers folder, a single file (transformers or open_clip
    keys), or the tensors themselves (a mapping, e.g. ComfyUI's CLIP vision state dict)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # transformers' lazy modules

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


def load_taesdv(folder: Path, config: RainModelConfig, taesdv_path, dtype=None) -> TAESDV | None:
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
            return assign_tensors(decoder, state, dtype)
    log.info("%s: no taesdv.pth; the fast decoder is off (the codec decodes)", folder)
    return None


