"""TAESDV (madebyollin/taesdv): a tiny temporal decoder whose MemBlocks read the previous frame's activations.

Structure and parameter names equal `taesdv.pth` (`encoder.*`, `decoder.*`). The memory (the input of every
MemBlock for the last decoded frame) is explicit: `decode(latents, memory) -> (images, memory)`, so a stream
can carry it from tick to tick and save/restore it.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


class MemBlock(nn.Module):
    """Block whose first conv also sees the same layer's input for the previous frame."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(
            _conv(n_in * 2, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out)
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x, previous):
        return self.act(self.conv(torch.cat([x, previous], 1)) + self.skip(x))


class TAESDV(nn.Module):
    """Released size: latent_channels=4, channels=64, 3 upsamplings (×8). Tiny sizes use the same classes."""

    def __init__(self, latent_channels: int = 4, channels: int = 64, upsamplings: int = 3):
        super().__init__()
        c = channels
        encoder = [_conv(3, c), _Block(c, c)]
        for _ in range(upsamplings):
            encoder += [_conv(c, c, stride=2, bias=False), _Block(c, c), _Block(c, c), _Block(c, c)]
        self.encoder = nn.Sequential(*encoder, _conv(c, latent_channels))
        decoder = [_Clamp(), _conv(latent_channels, c), nn.ReLU()]
        for _ in range(upsamplings):
            decoder += [
                MemBlock(c, c),
                MemBlock(c, c),
                MemBlock(c, c),
                nn.Upsample(scale_factor=2),
                _conv(c, c, bias=False),
            ]
        self.decoder = nn.Sequential(*decoder, MemBlock(c, c), _conv(c, 3))
        self.latent_channels = latent_channels
        self.downscale = 2**upsamplings

    def decode(self, latents: torch.Tensor, memory: list[torch.Tensor] | None = None):
        """latents (N, C, h, w): N consecutive frames of one stream, oldest first, UNet-space (no 1/0.18215).
        memory: what the previous call returned (None at stream start: zeros).
        Returns images (N, 3, H, W) clamped to [0, 1] and the memory for the next call (one (1, c, h_i, w_i)
        tensor per MemBlock: that block's input for the newest frame)."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"TAESDV.decode: expected latents (N, {self.latent_channels}, h, w), found {tuple(latents.shape)}"
            )
        frames = latents.shape[0]
        x = latents
        new_memory, index = [], 0
        for layer in self.decoder:
            if isinstance(layer, MemBlock):
                previous = memory[index] if memory is not None else torch.zeros_like(x[:1])
                shifted = torch.cat([previous.to(x.dtype), x[:-1]], dim=0)  # frame n sees frame n-1's input
                new_memory.append(x[-1:].detach().clone())
                x = layer(x, shifted)
                index += 1
            else:
                x = layer(x)
        assert x.shape[0] == frames
        return x.clamp(0, 1), new_memory

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) in [0, 1] -> latents (N, C, H/8, W/8) (TAESDV's own encoder, per frame)."""
        return self.encoder(images)
