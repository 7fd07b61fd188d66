"""CLIP image encoder with the sd-image-variations preprocessing: its `image_embeds` token is the
cross-attention context of both UNets (no text)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .config import ClipConfig

try:  # transformers 5.x: the PIL processor has its own name; plain CLIPImageProcessor is torchvision-based there
    from transformers import CLIPImageProcessorPil as _PilClipProcessor
except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL/numpy processor the authors' pipeline used
    from transformers import CLIPImageProcessor as _PilClipProcessor


def build_clip(config: ClipConfig) -> CLIPVisionModelWithProjection:
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            image_size=config.image_size,
            patch_size=config.patch_size,
            projection_dim=config.projection_dim,
        )
    )


class ClipImageEncoder(nn.Module):
    def __init__(self, model: CLIPVisionModelWithProjection):
        super().__init__()
        self.model = model
        size = model.config.image_size
        # the authors' pipeline uses CLIPImageProcessor() defaults (224: resize shortest side bicubic, centre crop,
        # CLIP mean/std) on a PIL image; the PIL processor on uint8 pixels reproduces it exactly
        self.processor = _PilClipProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, H, W, 3) float in [0, 1] -> pixel_values (N, 3, S, S)."""
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"image encoder: expected images (N, H, W, 3) in [0, 1], found {tuple(images.shape)}")
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        values = self.processor(images=list(pixels), return_tensors="np")["pixel_values"]
        return torch.from_numpy(np.asarray(values))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, H, W, 3) in [0, 1] -> clip tokens (N, 1, D)."""
        pixel_values = self.preprocess(images).to(device=self.model.device, dtype=self.model.dtype)
        return self.model(pixel_values=pixel_values).image_embeds.unsqueeze(1)
