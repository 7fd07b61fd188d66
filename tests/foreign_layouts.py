"""Write weights the way ComfyUI users have them: a VAE in the original LDM layout (vae-ft-mse-840000-ema-pruned
.safetensors, ComfyUI's VAE in memory) and a CLIP vision tower in open_clip's layout. Written by hand from the
layouts' own names (not with the converters the loader uses), so a wrong conversion cannot pass unnoticed."""

from __future__ import annotations

import re

import torch

_RESNET = {"conv_shortcut": "nin_shortcut"}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def to_ldm_vae(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> the LDM layout (attention projections as 1×1 convolutions)."""
    ups = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.up_blocks."))
    ldm = {}
    for name, tensor in state.items():
        new = name.replace("conv_norm_out", "norm_out")
        if (m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", new)):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif (m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)",
                            new)):
            new = f"{m[1]}.mid.attn_1.{_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and tensor.dim() == 2:
                tensor = tensor[:, :, None, None]
        elif (m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", new)):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_RESNET.get(m[3], m[3])}.{m[4]}"
        elif (m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", new)):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif (m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", new)):
            new = f"decoder.up.{ups - 1 - int(m[1])}.block.{m[2]}.{_RESNET.get(m[3], m[3])}.{m[4]}"
        elif (m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", new)):
            new = f"decoder.up.{ups - 1 - int(m[1])}.upsample.conv.{m[2]}"
        ldm[prefix + new] = tensor.contiguous()
    return ldm


_OPEN_CLIP = {
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPVisionModelWithProjection state dict -> open_clip's `visual.*` layout."""
    out, qkv = {}, {}
    for name, tensor in state.items():
        if name.endswith("position_ids"):
            continue
        if name in _OPEN_CLIP:
            out["visual." + _OPEN_CLIP[name]] = tensor
        elif name == "visual_projection.weight":
            out["visual.proj"] = tensor.t().contiguous()
        else:
            m = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
            base = f"visual.transformer.resblocks.{m[1]}."
            if m[2] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((base, m[3]), {})[m[2][10]] = tensor
            else:
                out[f"{base}{_OPEN_CLIP_LAYER[m[2]]}.{m[3]}"] = tensor
    for (base, kind), parts in qkv.items():
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def with_text_tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full CLIP file as openai/clip-vit-large-patch14 ships it: the vision tower beside a (tiny) text tower."""
    extra = {"text_model.embeddings.token_embedding.weight": torch.zeros(8, 4), "logit_scale": torch.tensor(2.0),
             "text_projection.weight": torch.zeros(4, 4), "vision_model.embeddings.position_ids": torch.arange(5)[None]}
    return {**state, **extra}
