"""Cross-attention to a single context token, without the attention.

RAIN's spatial cross-attention (attn2) attends to the CLIP image embedding of the reference: one token per frame.
With one key, softmax gives that key weight exp(0) / exp(0) = 1 exactly, so every query's output is that token's
value, whatever the query: attn2(x) = to_out(to_v(context)), the same row for every token of a frame. The query and
key projections, the score, the softmax and the weighted sum are all skipped; the gradients are the same too (the
query and key weights get exactly zero either way). Any other case (several context tokens, a mask, the
processor options diffusers' default handles) goes to diffusers' `AttnProcessor2_0`.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class SingleTokenCrossAttnProcessor:
    def __init__(self):
        self.general = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ):
        if not self._single_token(attn, hidden_states, encoder_hidden_states, attention_mask):
            return self.general(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        value = attn.to_out[1](attn.to_out[0](attn.to_v(encoder_hidden_states)))  # (B, 1, C)
        return value.expand(-1, hidden_states.shape[1], -1)

    @staticmethod
    def _single_token(attn: Attention, hidden_states, encoder_hidden_states, attention_mask) -> bool:
        return (
            encoder_hidden_states is not None
            and encoder_hidden_states.dim() == 3
            and encoder_hidden_states.shape[1] == 1
            and hidden_states.dim() == 3
            and attention_mask is None
            and attn.norm_cross is None
            and attn.spatial_norm is None
            and attn.group_norm is None
            and not attn.residual_connection
            and attn.rescale_output_factor == 1.0
        )


def use_single_token_cross_attention(module: torch.nn.Module) -> None:
    """Give every spatial cross-attention (a transformer block's attn2) of `module` the single-token shortcut."""
    for name, layer in module.named_modules():
        if name.endswith(".attn2") and isinstance(layer, Attention) and layer.is_cross_attention:
            layer.set_processor(SingleTokenCrossAttnProcessor())
