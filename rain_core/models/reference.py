"""Reference attention as diffusers attention processors.

The reference UNet runs once per reference image; `CaptureProcessor` records the input of every spatial
self-attention (the first transformer block's norm1 output: 16 tensors at SD size). In the denoising UNet,
`ReferenceAttnProcessor` lets each frame's self-attention also attend to those reference tokens:
Q = frame tokens, K/V = concat(frame tokens, reference tokens). The reference tokens are the same for every
frame and every tick, so their K/V projections are computed once and kept in the `ReferenceCache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, _ = x.shape
    return x.view(batch, tokens, attn.heads, -1).transpose(1, 2)


def _attend(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    batch = query.shape[0]
    out = F.scaled_dot_product_attention(_heads(attn, query), _heads(attn, key), _heads(attn, value))
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class CaptureProcessor:
    """Plain self-attention that also records its input (write mode of the authors' ReferenceAttentionControl)."""

    def __init__(self):
        self.captured: torch.Tensor | None = None

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        self.captured = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return _attend(attn, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context))


class ReferenceAttnProcessor:
    """Self-attention over frame tokens + reference tokens (read mode).

    Before a forward pass the UNet puts this layer's reference into `reference` as either a (key, value)
    pair already projected (cached path) or raw tokens (recomputed path, used to check the cache).
    The reference batch is B; frames arrive as B*F (frame-major per batch item); each frame sees its item's
    reference.
    """

    def __init__(self):
        self.reference: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None
        self.num_frames = 1

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        if self.reference is not None:
            if isinstance(self.reference, torch.Tensor):
                ref_key, ref_value = attn.to_k(self.reference), attn.to_v(self.reference)
            else:
                ref_key, ref_value = self.reference
            key = torch.cat([key, _per_frame(ref_key, hidden_states.shape[0], self.num_frames)], dim=1)
            value = torch.cat([value, _per_frame(ref_value, hidden_states.shape[0], self.num_frames)], dim=1)
        return _attend(attn, query, key, value)


def _per_frame(ref: torch.Tensor, batch_frames: int, num_frames: int) -> torch.Tensor:
    """(B, L, C) reference -> (B*F, L, C); a single reference serves any batch."""
    batch = batch_frames // num_frames
    if ref.shape[0] == 1 and batch != 1:
        ref = ref.expand(batch, -1, -1)
    if ref.shape[0] != batch:
        raise ValueError(f"reference batch {ref.shape[0]} does not match sample batch {batch}")
    return ref.repeat_interleave(num_frames, dim=0)


@dataclass
class ReferenceCache:
    """Everything the denoising UNet needs about one reference image, computed once.

    tokens: layer name -> (B, L, C) captured reference tokens (from the reference UNet).
    kv:     layer name -> (key, value) projections by the denoising UNet's attn1 (filled on first use).
    """

    tokens: dict[str, torch.Tensor]
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def to(self, device=None, dtype=None) -> ReferenceCache:
        return ReferenceCache(
            {k: v.to(device=device, dtype=dtype) for k, v in self.tokens.items()},
            {k: (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)) for k, (a, b) in self.kv.items()},
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"tokens.{k}": v for k, v in self.tokens.items()}
        for k, (key, value) in self.kv.items():
            state[f"key.{k}"], state[f"value.{k}"] = key, value
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ReferenceCache:
        tokens = {k[len("tokens.") :]: v for k, v in state.items() if k.startswith("tokens.")}
        kv = {
            k[len("key.") :]: (v, state[f"value.{k[len('key.') :]}"]) for k, v in state.items() if k.startswith("key.")
        }
        return cls(tokens, kv)
