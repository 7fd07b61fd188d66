"""`RainModels`: the networks of one RAIN model, on one device and dtype."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
from collections.abc import Callable

import torch
from diffusers import AutoencoderKL
from torch import nn

from .codecs import SpaceToDepthCodec, VaeCodec
from .config import RainModelConfig
from .image_encoder import ClipImageEncoder, build_clip
from .pose_guider import PoseGuider
from .taesdv import TAESDV
from .unet import DenoisingUNet, ReferenceUNet


def guidance_embedding(w, dim: int = 512, dtype=torch.float32) -> torch.Tensor:
    """LCM w-embedding: sinusoidal embedding of w·1000 (sin half, then cos half), like the authors.
    w: float or (B,) tensor -> (B, dim)."""
    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1) * 1000.0
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding.to(dtype)


class RainModels(nn.Module):
    """reference_unet, denoising_unet, pose_guider, codec, fast_decoder (TAESDV or None), image_encoder,
    plus config, device, dtype. Build with `RainModels.build(config)` (random weights) or `load_rain(...)`."""

    def __init__(self, config, reference_unet, denoising_unet, pose_guider, codec, image_encoder, fast_decoder=None):
        super().__init__()
        self.config = config
        self.reference_unet = reference_unet
        self.denoising_unet = denoising_unet
        self.pose_guider = pose_guider
        self.codec = codec
        self.image_encoder = image_encoder
        self.fast_decoder = fast_decoder
        # the networks only a new reference needs, and how to load them again once released (set by load_rain)
        self._reference_loaders: dict[str, Callable] = {}
        self._release_reference = False

    @classmethod
    def build(cls, config: RainModelConfig, vae=None, with_image_encoder: bool = True) -> RainModels:
        """Fresh networks of `config` (authors' initialisation: zero cond_proj, pose conv_out, motion proj_out).
        `vae`: an AutoencoderKL for codec="vae"; built from `config.vae` when None."""
        if config.codec == "vae":
            if vae is None:
                if config.vae is None:
                    raise ValueError("codec 'vae' needs a VAE: pass vae= or set config.vae to an AutoencoderKL config")
                vae = AutoencoderKL(**config.vae)
            codec = VaeCodec(vae, config.vae_scaling_factor)
        else:
            codec = SpaceToDepthCodec(config.codec_factor)
        fast_decoder = None
        if config.taesdv_channels is not None:
            fast_decoder = TAESDV(config.latent_channels, config.taesdv_channels, int(math.log2(config.codec_factor)))
        return cls(
            config,
            ReferenceUNet(config),
            DenoisingUNet(config),
            PoseGuider(config.pose_channels, config.pose_guider_channels),
            codec,
            ClipImageEncoder(build_clip(config.clip)) if with_image_encoder else None,
            fast_decoder,
        )

    # ---- the reference part: needed only to encode a new reference -----------------------------------------------
    REFERENCE_PART = ("reference_unet", "image_encoder")

    def set_reference_loaders(self, **loaders: Callable) -> None:
        """How to load `reference_unet` / `image_encoder` again after `release_reference_networks()`: each a
        callable (device, dtype) -> the network (`load_rain` gives its files)."""
        unknown = set(loaders) - set(self.REFERENCE_PART)
        if unknown:
            raise ValueError(f"set_reference_loaders: unknown networks {sorted(unknown)}; known: {self.REFERENCE_PART}")
        self._reference_loaders = dict(loaders)

    def release_reference_after_use(self, enabled: bool = True) -> bool:
        """Free the reference part after every `reference_networks()` block (once the reference is encoded), as the
        authors' demo unloads its reference UNet. Only networks with a loader are freed; returns whether any is."""
        self._release_reference = bool(enabled)
        return bool(enabled and self._reference_loaders)

    @property
    def reference_released(self) -> bool:
        """True while a network of the reference part is freed (it loads again in `reference_networks()`)."""
        return any(getattr(self, name) is None for name in self._reference_loaders)

    def release_reference_networks(self) -> None:
        """Free the reference UNet and the image encoder now (those that can be loaded again); the denoising
        networks and everything a running stream holds stay."""
        for name in self._reference_loaders:
            setattr(self, name, None)
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed heap pages otherwise

            ctypes.CDLL("libc.so.6").malloc_trim(0)

    @contextlib.contextmanager
    def reference_networks(self):
        """The reference UNet and image encoder for the block, loaded again (in the models' current device and
        dtype) when they were released; released again after it when `release_reference_after_use` is on."""
        for name, loader in self._reference_loaders.items():
            if getattr(self, name) is None:
                setattr(self, name, loader(self.device, self.dtype))
        try:
            yield self
        finally:
            if self._release_reference and self._reference_loaders:
                self.release_reference_networks()

    @property
    def device(self) -> torch.device:
        return next(self.denoising_unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoising_unet.parameters()).dtype

    def guidance_embedding(self, w) -> torch.Tensor | None:
        """The w-embedding for this model on its device/dtype, or None for a UNet without cond_proj."""
        if self.config.cond_proj_dim is None:
            return None
        return guidance_embedding(w, self.config.cond_proj_dim).to(self.device, self.dtype)
