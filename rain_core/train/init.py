"""Initialisation for training the AnimateAnyone way (`rain train --init-sd-unet ... --init-motion-modules ...`):
both UNets from SD-1.5 / sd-image-variations UNet weights, motion modules from AnimateDiff, a fresh pose guider."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from ..loading import (
    RECOMPUTABLE_SUFFIXES,
    RainLoadError,
    check_state_dict,
    describe_contents,  # the loader's own wording for a wrong file
    load_image_encoder,
    read_state_dict,
)
from ..models import RainModelConfig, RainModels


def diffusers_unet_config(config: RainModelConfig) -> dict:
    blocks = config.cross_attention_blocks
    return {
        "in_channels": config.latent_channels,
        "out_channels": config.latent_channels,
        "block_out_channels": list(config.block_out_channels),
        "down_block_types": ["CrossAttnDownBlock2D" if b else "DownBlock2D" for b in blocks],
        "up_block_types": ["CrossAttnUpBlock2D" if b else "UpBlock2D" for b in reversed(blocks)],
        "layers_per_block": config.layers_per_block,
        "attention_head_dim": config.attention_heads,
        "cross_attention_dim": config.cross_attention_dim,
        "norm_num_groups": config.norm_num_groups,
        "norm_eps": config.norm_eps,
    }


def read_sd_unet(source: str | os.PathLike, config: RainModelConfig) -> dict[str, torch.Tensor]:
    """SD-1.5 / sd-image-variations UNet weights in diffusers names, from a diffusers folder (the model folder
    with unet/, or the unet folder itself) or a single file (diffusers names, or the original LDM layout with
    model.diffusion_model.* keys, converted with diffusers' own key map)."""
    source = Path(source)
    if source.is_dir():
        folder = source / "unet" if (source / "unet").is_dir() else source
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (folder / name).exists():
                return read_state_dict(folder / name, "an SD-1.5 UNet")
        raise RainLoadError(
            f"{folder}: no diffusion_pytorch_model.safetensors/.bin; expected a diffusers UNet folder "
            "(e.g. runwayml/stable-diffusion-v1-5/unet or lambdalabs/sd-image-variations-diffusers/unet)."
        )
    state = read_state_dict(source, "an SD-1.5 UNet")
    if any(k.startswith("model.diffusion_model.") for k in state):
        state = convert_ldm_unet_checkpoint(state, diffusers_unet_config(config))
    return state


def read_motion_modules(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """AnimateDiff motion-module weights in their original key format (mm_sd_v15*.ckpt / .safetensors):
    `{down,mid,up}_blocks.*.motion_modules.*.temporal_transformer.*` (a `module.` prefix is dropped)."""
    state = read_state_dict(source, "AnimateDiff motion-module weights")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    foreign = [k for k in state if "motion_modules." not in k]
    if foreign:
        raise RainLoadError(
            f"{source}: expected AnimateDiff motion-module weights (only *.motion_modules.* tensors); found "
            f"{describe_contents(list(state))}. Use an AnimateDiff motion module such as mm_sd_v15_v2.ckpt."
        )
    return state


def init_for_training(
    sd_unet: str | os.PathLike,
    motion_modules: str | os.PathLike | None = None,
    config: RainModelConfig | None = None,
    vae=None,
    image_encoder: str | os.PathLike | None = None,
) -> RainModels:
    """RAIN networks initialised the AnimateAnyone way: both UNets from SD-1.5 / sd-image-variations UNet
    weights, motion modules from AnimateDiff (absent ones, e.g. the mid block of v1 files, stay zero-initialised,
    so they start as the identity), a fresh pose guider and cond_proj (zero outputs)."""
    config = config or RainModelConfig.sd15()
    models = RainModels.build(config, vae=vae, with_image_encoder=image_encoder is None)
    if image_encoder is not None:
        models.image_encoder = load_image_encoder(Path(image_encoder), config, {}, image_encoder)
    unet_state = read_sd_unet(sd_unet, config)
    reference_state = {k: v for k, v in unet_state.items() if not k.startswith(("conv_norm_out.", "conv_out."))}
    check_state_dict(reference_state, models.reference_unet, sd_unet, "reference_unet")
    models.reference_unet.load_state_dict(reference_state)

    denoising_state = dict(unet_state)
    if motion_modules is not None:
        motion_state = read_motion_modules(motion_modules)
        expected = models.denoising_unet.state_dict()
        for key, value in motion_state.items():
            # a different position-table length (AnimateDiff v1: 24) is recomputed, not copied
            if key.endswith(RECOMPUTABLE_SUFFIXES) and key in expected and value.shape != expected[key].shape:
                continue
            denoising_state[key] = value
    allowed = ("motion_modules.", "time_embedding.cond_proj.")
    check_state_dict(denoising_state, models.denoising_unet, sd_unet, "denoising_unet", allow_missing=allowed)
    models.denoising_unet.load_state_dict(denoising_state, strict=False)
    return models


def vae_folder(path: str | os.PathLike | None):
    """The AutoencoderKL of a diffusers folder (sd-vae-ft-mse), or None (a VAE built from the model config)."""
    if path is None:
        return None

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise RainLoadError(f"--vae {path}: expected a diffusers AutoencoderKL folder (config.json + "
                            "diffusion_pytorch_model.safetensors), e.g. models/vae/sd-vae-ft-mse")
    return AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
