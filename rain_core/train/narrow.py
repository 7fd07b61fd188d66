"""Narrow the top UNet level of a trained model to fewer channels, as a starting point for a fine-tune.

Why: on a CPU the full-resolution level costs the most per tick (its convolutions and the norms and activations
around them), and its width is the one knob that cuts that cost without changing the method. Training a narrower
model from scratch lost ~1 dB (issue 17, NOTES.md); pruning a trained one keeps most of what it learned.

What is kept: the top level's channels form norm groups of `channels / norm_num_groups`; every group keeps its
strongest channels (summed squared weight over every tensor that reads or writes them), so the new groups are the
old ones minus their weakest members. The same index set is used for every top-level channel space (the residual
stream, the resnets' hidden channels, the skips concatenated in the up path, the pose guider's output). The time
embedding keeps its width (`time_channels`), so every level's time conditioning is unchanged; with
`keep_time=False` it follows the top level as in the SD-1.5 layout (sinusoid = channels, MLP = 4 × channels): its
sinusoid columns are remapped to the nearest old frequency and its MLP keeps its strongest units. The rest of the
networks (lower levels, motion modules, attention, CLIP) is copied unchanged. The result is not the same function
(pruning 48 -> 32 channels of the built-in model raised its stage-2 loss from 0.03 to 0.44) and needs training:
`rain train --top-width N --init MODEL`, best with `--distill MODEL` (the model's own outputs as targets)."""

from __future__ import annotations

import math

import torch

from ..models import RainModelConfig, RainModels


def narrow_top_level(models: RainModels, width: int, keep_time: bool = True) -> RainModels:
    """A copy of `models` whose top UNet level (both UNets and the pose guider's output) has `width` channels.
    keep_time: the time embedding keeps its width (`time_channels`), else it narrows with the top level."""
    config = models.config
    old = config.block_out_channels[0]
    groups = config.norm_num_groups
    if width == old:
        return models
    if not 0 < width < old or width % groups:
        raise ValueError(
            f"--top-width {width}: expected a multiple of norm_num_groups ({groups}) below the model's top width "
            f"({old}), e.g. {old - groups}"
        )
    if config.cross_attention_blocks[0] or config.has_motion(0):
        raise ValueError(
            f"--top-width {width}: this model has transformers or motion modules on its top level; only a top level of "
            "plain resnets (as in the built-in model) can be narrowed"
        )
    narrow_config = RainModelConfig.from_dict(
        {
            **config.to_dict(),
            "block_out_channels": [width, *config.block_out_channels[1:]],
            "time_channels": config.time_proj_channels if keep_time else None,
        }
    )
    narrow = RainModels.build(
        narrow_config, vae=getattr(models.codec, "vae", None), with_image_encoder=models.image_encoder is not None
    )
    source = models.state_dict()
    target = narrow.state_dict()
    keep = _strongest(source, old, groups, width)
    time_units = _strongest(source, 4 * old, 1, 4 * width)
    sinusoid = _nearest_frequencies(old, width)
    result = {}
    for name, tensor in target.items():
        value = source[name]
        for dim, (have, want) in enumerate(zip(value.shape, tensor.shape)):
            if have == want:
                continue
            if _is_sinusoid_dim(name, dim):
                index = sinusoid
            elif have == old:
                index = keep
            elif have == 4 * old:
                index = time_units
            elif have - want == 2 * (old - width) and have == 2 * old:
                index = torch.cat([keep, old + keep])  # an up resnet's cat([hidden, skip]), both from the top level
            elif have - want == old - width and have > old:
                index = torch.cat([torch.arange(have - old), have - old + keep])  # cat([hidden from below, skip])
            else:
                raise RuntimeError(f"narrowing {name}: no rule maps dimension {dim} from {have} to {want} channels")
            value = value.index_select(dim, index)
        if value.shape != tensor.shape:
            raise RuntimeError(f"narrowing {name}: got {tuple(value.shape)}, the narrow model needs {tuple(tensor.shape)}")
        result[name] = value.clone()
    narrow.load_state_dict(result)
    return narrow


def _is_sinusoid_dim(name: str, dim: int) -> bool:
    """The dimension that holds the sinusoidal timestep features (the time MLP's input, the w-embedding's output)."""
    return (name.endswith("time_embedding.linear_1.weight") and dim == 1) or (
        ".time_embedding.cond_proj." in f".{name}" and dim == 0
    )


def _nearest_frequencies(old: int, new: int) -> torch.Tensor:
    """Columns of the old sinusoid (cos half, then sin half; diffusers Timesteps with flip_sin_to_cos and shift 0)
    whose frequency is nearest to each column of the new one: frequency i of n is 10000^(-i / (n / 2))."""
    half_old, half_new = old // 2, new // 2
    nearest = [min(half_old - 1, round(j * half_old / half_new)) for j in range(half_new)]
    return torch.tensor(nearest + [half_old + i for i in nearest])


def _strongest(state: dict, size: int, groups: int, keep: int) -> torch.Tensor:
    """Indices (sorted) of the `keep` channels of size-`size` dimensions with the largest summed squared weight,
    the same number from each of `groups` contiguous groups. Each tensor's contribution is normalised by its mean so
    that large tensors do not drown small ones."""
    score = torch.zeros(size, dtype=torch.float64)
    for value in state.values():
        if not value.is_floating_point():
            continue
        for dim, length in enumerate(value.shape):
            if length != size:
                continue
            per_channel = value.double().pow(2).transpose(0, dim).reshape(size, -1).sum(1)
            score += per_channel / per_channel.mean().clamp_min(1e-30)
    per_group, kept_per_group = size // groups, keep // groups
    chosen = []
    for group in range(groups):
        members = score[group * per_group : (group + 1) * per_group]
        best = torch.topk(members, kept_per_group).indices.sort().values
        chosen.append(group * per_group + best)
    index = torch.cat(chosen)
    assert index.numel() == keep and not math.isnan(float(score.sum()))
    return index
