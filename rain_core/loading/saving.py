"""Writing our layout (`rain_config.json` + one safetensors per network, atomically) and converting the authors' files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models import RainModelConfig, RainModels
from ..models.codecs import VaeCodec
from .files import CONFIG_NAME, DOWNLOAD_HINT, FORMAT, PART_FILES, RainLoadError, check_state_dict, read_state_dict
from .networks import load_codec, load_image_encoder, load_taesdv, meta_networks

log = logging.getLogger(__name__)


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
    config, extras, networks = meta_networks(src, config)
    states = {}
    for part, network in networks.items():
        path = src / PART_FILES[part][1]
        state = read_state_dict(path, part)
        check_state_dict(state, network, path, part)
        states[part] = state
    codec = load_codec(src, config, extras, vae)
    encoder = load_image_encoder(src, config, extras, image_encoder)
    decoder = load_taesdv(src, config, taesdv)

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
