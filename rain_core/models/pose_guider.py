"""Pose guider: a small conv net mapping a rendered pose image to a feature on the latent grid, added to the
output of the denoising UNet's conv_in (not a ControlNet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class PoseGuider(nn.Module):
    """conv_in (3 -> c0), then per step (conv c_i -> c_i, stride-2 conv c_i -> c_{i+1}), SiLU after each conv,
    zero-initialised conv_out -> `out_channels`. Released sizes: (16, 32, 96, 256) -> 320, three stride-2 convs
    (1/8, the VAE's grid)."""

    def __init__(self, out_channels: int, channels=(16, 32, 96, 256), in_channels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # a fresh guider adds nothing to the UNet
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.blocks) // 2)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """pose (B, 3, F, H, W) RGB in [0, 1] (the authors' layout) or (N, 3, H, W) -> features on the latent grid,
        (B, Cp, F, H/d, W/d) or (N, Cp, H/d, W/d)."""
        video = pose.dim() == 5
        frames = pose.shape[2] if video else 1
        x = rearrange(pose, "b c f h w -> (b f) c h w") if video else pose
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        x = self.conv_out(x)
        return rearrange(x, "(b f) c h w -> b c f h w", f=frames) if video else x
