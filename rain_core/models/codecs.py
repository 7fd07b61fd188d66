"""Codecs between images and the UNets' latent space.

Both take images (N, 3, H, W) in [0, 1] and give latents already in UNet scale, and back.
- `VaeCodec`: diffusers AutoencoderKL (sd-vae-ft-mse): posterior mean × 0.18215; decode divides by 0.18215,
  decodes and maps [-1, 1] -> [0, 1].
- `SpaceToDepthCodec`: exact, parameter-free: pixel_unshuffle(factor) of the [-1, 1] image (3·f² channels);
  the tiny trainable model works in this space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VaeCodec(nn.Module):
    def __init__(self, vae, scaling_factor: float = 0.18215):
        super().__init__()
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.latent_channels = vae.config.latent_channels
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.downscale)
        x = images.to(self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample
        return (images / 2 + 0.5).clamp(0, 1)


class SpaceToDepthCodec(nn.Module):
    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.latent_channels = 3 * factor * factor
        self.downscale = factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.factor)
        return F.pixel_unshuffle(images * 2 - 1, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (F.pixel_shuffle(latents, self.factor) / 2 + 0.5).clamp(0, 1)


def _check_images(images: torch.Tensor, multiple: int) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"codec.encode: expected images (N, 3, H, W) in [0, 1], found shape {tuple(images.shape)}")
    if images.shape[-1] % multiple or images.shape[-2] % multiple:
        raise ValueError(
            f"codec.encode: height and width must be multiples of {multiple}, found {tuple(images.shape[-2:])}"
        )
