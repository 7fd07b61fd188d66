"""AnimateDiff "Vanilla" motion module: self-attention along the frame axis at every spatial position.

Parameter names follow the AnimateDiff / RAIN checkpoints (`temporal_transformer.transformer_blocks.0.
attention_blocks.{0,1}`, `norms`, `ff`, `ff_norm`), so those files load without renaming.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from einops import rearrange
from torch import nn

from .config import MotionConfig


class TemporalSelfAttention(Attention):
    """diffusers `Attention` plus the sinusoidal frame-position table AnimateDiff adds to its input."""

    def __init__(self, dim: int, heads: int, max_frames: int):
        super().__init__(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
        self.pos_encoder = SinusoidalPositionalEmbedding(dim, max_seq_length=max_frames)

    def forward(self, frames_as_tokens: torch.Tensor) -> torch.Tensor:  # (batch * positions, frames, dim)
        if frames_as_tokens.shape[1] > self.pos_encoder.pe.shape[1]:
            raise ValueError(
                f"motion module: window of {frames_as_tokens.shape[1]} frames exceeds the position table "
                f"({self.pos_encoder.pe.shape[1]} frames); use a window of at most that many frames"
            )
        return super().forward(self.pos_encoder(frames_as_tokens))


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, config: MotionConfig):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalSelfAttention(dim, config.num_attention_heads, config.max_frames)
            for _ in range(config.attention_blocks)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(config.attention_blocks))
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            hidden_states = attention(norm(hidden_states)) + hidden_states
        return self.ff(self.ff_norm(hidden_states)) + hidden_states


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, config: MotionConfig):
        super().__init__()
        # GroupNorm runs per frame, as in AnimateDiff (frames folded into the batch before the norm)
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(channels, config) for _ in range(config.num_transformer_blocks)
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """hidden_states: (batch * frames, C, h, w) with frames folded into the batch (frame-major per item)."""
        residual = hidden_states
        height, width = hidden_states.shape[-2:]
        tokens = rearrange(self.norm(hidden_states), "(b f) c h w -> (b h w) f c", f=num_frames)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = self.proj_out(tokens)
        return rearrange(tokens, "(b h w) f c -> (b f) c h w", h=height, w=width) + residual


class MotionModule(nn.Module):
    """One motion module; its only child is named `temporal_transformer` like the checkpoints."""

    def __init__(self, channels: int, config: MotionConfig):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, config)
        # zero-initialised output projection: a fresh module is the identity (AnimateDiff's zero_initialize)
        nn.init.zeros_(self.temporal_transformer.proj_out.weight)
        nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temporal_transformer(hidden_states, num_frames)
