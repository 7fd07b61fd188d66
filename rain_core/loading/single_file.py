"""Single-file VAE and CLIP vision weights in the layouts ComfyUI's models/vae and models/clip_vision hold.

- VAE: the original LDM layout (`encoder.down.0.block.0.norm1.weight`: vae-ft-mse-840000-ema-pruned.safetensors,
  and what ComfyUI's VAE holds in memory), also under a `first_stage_model.` or `vae.` prefix, converted with
  diffusers' own `convert_ldm_vae_checkpoint`; or diffusers' layout (`encoder.down_blocks.0.resnets.0.…`).
- CLIP vision: transformers' layout (`vision_model.…` + `visual_projection.weight`: ComfyUI's CLIP vision state
  dict, openai/clip-vit-large-patch14, also with the text tower beside it), or open_clip's
  (`visual.transformer.resblocks.…`, which ComfyUI's clip_vision loader also reads), converted here: neither
  diffusers nor transformers ships that conversion as a function.
Whether a file can be offered at all is decided from its safetensors header alone (`vae_file_problem`,
`clip_file_problem`); the sizes are checked against the chosen model when it loads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

# The released RAIN's VAE: stabilityai/sd-vae-ft-mse's config.json (the AutoencoderKL of SD 1.x).
SD_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
}
LATENT_CHANNELS = 4  # every RAIN model with a VAE codec works on SD's 4-channel latents
VAE_PREFIXES = ("", "first_stage_model.", "vae.")
_HEADER_LIMIT = 100 * 2**20


def read_header(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a .safetensors file, from its JSON header alone (no tensor is read).
    ValueError when the file is not a readable safetensors file."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= _HEADER_LIMIT:
            raise ValueError("no safetensors header")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"damaged safetensors header ({error})") from None
    if not isinstance(header, dict):
        raise ValueError("damaged safetensors header")
    return {name: tuple(entry.get("shape", ())) for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict)}


def _file_problem(path: Path, describe, kind: str, socket: str) -> str | None:
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"a folder without config.json (not a {kind} folder)"
    if path.suffix.lower() != ".safetensors":
        return (f"{path.suffix} files are not read here (a pickle cannot be checked without running it); connect "
                f"ComfyUI's own loader to the {socket} input instead, or use a .safetensors file")
    try:
        shapes = read_header(path)
    except (OSError, ValueError) as error:
        return f"not a readable safetensors file ({error})"
    return describe(shapes)


# ---- VAE ------------------------------------------------------------------------------------------------------


def _vae_prefix(names) -> str | None:
    return next((p for p in VAE_PREFIXES if f"{p}decoder.conv_in.weight" in names), None)


def vae_problem(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why tensors (name -> shape) cannot be RAIN's VAE, or None when they are an image VAE it can use."""
    prefix = _vae_prefix(shapes)
    if prefix is None:
        return "not an image VAE (no decoder.conv_in.weight)"
    if not any(f"{prefix}encoder.{name}.0.{part}.0.conv1.weight" in shapes
               for name, part in (("down", "block"), ("down_blocks", "resnets"))):
        return "a VAE in neither the LDM nor the diffusers layout (a TAESD or another decoder?)"
    conv_in = shapes[f"{prefix}decoder.conv_in.weight"]
    if len(conv_in) != 4:
        return f"a video VAE ({len(conv_in) - 2}-D convolutions); RAIN needs an image VAE"
    if conv_in[1] != LATENT_CHANNELS:
        return (f"a VAE with {conv_in[1]} latent channels (SDXL-era VAEs have 4, SD3/Flux 16); RAIN needs "
                f"{LATENT_CHANNELS} (sd-vae-ft-mse)")
    return None


def vae_file_problem(path: str | os.PathLike) -> str | None:
    """Why a file or folder of models/vae cannot be offered, from its header only; None when it can."""
    return _file_problem(Path(path), vae_problem, "diffusers AutoencoderKL", "vae")


def to_diffusers_vae(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A VAE state dict in diffusers' AutoencoderKL layout, from the LDM layout (diffusers' own converter; the
    prefixes `first_stage_model.` / `vae.` dropped) or from diffusers' layout. Tensors are not copied."""
    prefix = _vae_prefix(state) or ""
    state = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
    if "encoder.down.0.block.0.conv1.weight" not in state:
        return state

    return convert_ldm_vae_checkpoint(state, dict(config))


# ---- CLIP vision -------------------------------------------------------------------------------------------------

_OPEN_CLIP_NAMES = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
_OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                    "attn.out_proj": "self_attn.out_proj"}
_OPEN_CLIP_PREFIX = "visual."


def clip_problem(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why tensors (name -> shape) cannot be RAIN's image encoder, or None when they are a CLIP vision tower with the
    image-embedding projection RAIN uses as its cross-attention token."""
    if "vision_model.embeddings.patch_embedding.weight" in shapes:
        if "vision_model.embeddings.class_embedding" not in shapes:
            return "a vision tower without a class token (SigLIP?); RAIN needs CLIP (ViT-L/14 for RAIN-v0.1)"
        if "visual_projection.weight" not in shapes:
            return "a CLIP vision tower without visual_projection; RAIN needs its image embedding"
        return None
    if f"{_OPEN_CLIP_PREFIX}conv1.weight" in shapes:
        if f"{_OPEN_CLIP_PREFIX}proj" not in shapes:
            return "an open_clip vision tower without its projection (visual.proj); RAIN needs the image embedding"
        return None
    return "not a CLIP vision model (no vision_model.* or visual.* tensors: DINOv2, or a text encoder?)"


def clip_file_problem(path: str | os.PathLike) -> str | None:
    """Why a file or folder of models/clip_vision cannot be offered, from its header only; None when it can."""
    return _file_problem(Path(path), clip_problem, "CLIP image_encoder", "clip_vision")


def to_transformers_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPVisionModelWithProjection state dict from transformers' layout (the text tower, logit scale and
    position_ids dropped) or open_clip's (attention in_proj split into q/k/v, `proj` transposed). Names it does not
    know are kept, so the load check reports them."""
    if f"{_OPEN_CLIP_PREFIX}conv1.weight" not in state:
        return {name: tensor for name, tensor in state.items()
                if name.startswith(("vision_model.", "visual_projection.")) and not name.endswith("position_ids")}
    converted = {}
    for key, tensor in state.items():
        if not key.startswith(_OPEN_CLIP_PREFIX):
            continue
        name = key[len(_OPEN_CLIP_PREFIX):]
        layer = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", name)
        if name in _OPEN_CLIP_NAMES:
            converted[_OPEN_CLIP_NAMES[name]] = tensor
        elif name == "proj":
            converted["visual_projection.weight"] = tensor.t().contiguous()
        elif layer is None:
            converted[key] = tensor
        else:
            base, part = f"vision_model.encoder.layers.{layer.group(1)}.", layer.group(2)
            inner = re.fullmatch(r"attn\.in_proj_(weight|bias)", part)
            module, _, kind = part.rpartition(".")
            if inner is not None:
                for projection, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    converted[f"{base}self_attn.{projection}.{inner.group(1)}"] = piece
            elif module in _OPEN_CLIP_LAYER:
                converted[f"{base}{_OPEN_CLIP_LAYER[module]}.{kind}"] = tensor
            else:
                converted[key] = tensor
    return converted
