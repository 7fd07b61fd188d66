"""The pieces a training step is made of: loading/saving the networks, the denoising forward with condition dropout,
which parameters train, the optimiser and its schedule, and the seeded draws of a step (`StepDraws`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from einops import rearrange
from torch import nn

from ..loading import load_rain, save_rain
from ..models import RainModelConfig, RainModels, guidance_embedding
from .config import TrainConfig


def load_models(folder: str | Path) -> RainModels:
    return load_rain(folder)


def save_models(models: RainModels, folder: str | Path) -> None:
    save_rain(models, folder)


def without_motion(models: RainModels, motion_blocks: tuple[bool, ...] | None = None) -> RainModels:
    """The same networks minus motion modules: all of them (the m = 1 baseline starting from a stage-1 model, whose
    zero-initialised, frozen motion modules are identities anyway), or those of the levels `motion_blocks` turns
    off (a cheaper model fine-tuned from a full one)."""
    changes = {"motion": None} if motion_blocks is None else {"motion_blocks": motion_blocks}
    config = RainModelConfig.from_dict({**models.config.to_dict(), **changes})
    stripped = RainModels.build(config, vae=getattr(models.codec, "vae", None), with_image_encoder=models.image_encoder is not None)
    missing, unexpected = stripped.load_state_dict(models.state_dict(), strict=False)
    if missing or any("motion_modules" not in key for key in unexpected):
        raise RuntimeError(f"dropping the motion modules left parameters unmatched: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return stripped


class DenoiseForward(nn.Module):
    """What one training forward runs: CLIP input → CLIP tokens, reference latent → reference cache, pose renders →
    pose features, noisy window → v. Wrapping it in one module lets accelerate/DDP see every trainable part."""

    def __init__(self, models: RainModels):
        super().__init__()
        self.models = models

    def clip_input(self, reference_images: torch.Tensor) -> torch.Tensor | None:
        """CLIP pixel values (B, 3, S, S) of reference images (B, 3, H, W) in [0, 1]; None without an image encoder."""
        encoder = self.models.image_encoder
        return None if encoder is None else encoder.preprocess(reference_images.permute(0, 2, 3, 1))

    def clip_tokens(self, clip: torch.Tensor | None, drop: bool, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(B, 1, D) CLIP tokens from `clip`: CLIP pixel values (B, 3, S, S) go through the image encoder, tokens
        (B, 1, D) are used as they are. A dropped condition is the image encoder's tokens of a zero image, as in the
        reference (zeros without an image encoder or without any CLIP input)."""
        models = self.models
        if clip is not None and clip.dim() == 3 and not drop:
            return clip.to(like.dtype)
        if models.image_encoder is None or clip is None:
            return like.new_zeros(batch, 1, models.config.cross_attention_dim)
        encoder = models.image_encoder.model
        if drop:
            size = encoder.config.image_size
            pixels = like.new_zeros(batch, 3, size, size)
        else:
            pixels = clip
        tokens = encoder(pixel_values=pixels.to(encoder.device, encoder.dtype)).image_embeds.unsqueeze(1)
        return tokens.to(like.dtype)

    def forward(self, noisy, timesteps, ref_latent, clip, poses, drop: bool = False, guidance=None):
        """noisy (B,C,F,h,w); timesteps (B,F); ref_latent (B,C,h,w); clip: CLIP pixel values (B,3,S,S) or tokens
        (B,1,D) or None; poses (B,F,3,H,W) in [0,1]; drop: the whole batch unconditioned (the reference UNet is
        skipped: the denoising UNet's reference attention sees an empty bank, i.e. plain self-attention);
        guidance (B,) w or None."""
        models = self.models
        clip_tokens = self.clip_tokens(clip, drop, noisy.shape[0], noisy)
        cache = None if drop else models.reference_unet(ref_latent.to(noisy.dtype), clip_tokens)
        pose_features = models.pose_guider(rearrange(poses, "b f c h w -> b c f h w").to(noisy.dtype))
        embedding = None
        if guidance is not None:
            embedding = guidance_embedding(guidance, models.config.cond_proj_dim).to(noisy.device, noisy.dtype)
        return models.denoising_unet(noisy, timesteps, clip_tokens, pose_features, embedding, cache,
                                     use_reference_kv_cache=False)


def select_trainable(models: RainModels, config: TrainConfig) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze the parts this stage trains; returns the trainable parameters.

    Like the reference (train_stage_1.py), the reference UNet's last up block (`up_blocks.3` at SD size) stays
    frozen unless `freeze_reference_last_up` is off. Only part of that block's output is unused: the reference pass
    feeds nothing but the captured attn1 inputs, so the tail after the last capture (that transformer's attn1
    projections, attn2, feed-forward and proj_out) never gets a gradient. The rest does: measured on the 4-level
    tiny UNet with the freeze off, 56 of the block's 76 tensors (92 k of 113 k parameters: its resnets and the
    earlier transformers) receive gradients, 20 (21 k) never do. Freezing the used part is the reference's choice,
    with no published reason; no measurement here says otherwise, so the default keeps the recipe equal to the
    reference (bench/compare_training.py checks the trainable sets are the same). The untouched tail would also
    need find_unused_parameters under DDP, which the trainer sets anyway (condition dropout skips the whole
    reference UNet)."""
    parts = config.train_parts
    if parts == "auto":
        parts = {1: "all", 2: "motion", 3: "unet"}[config.stage]
    if parts not in ("all", "motion", "unet"):
        raise ValueError(f"--train-parts: expected auto, all, motion or unet, found {parts!r}")
    models.requires_grad_(False)
    chosen: list[nn.Parameter] = []

    def take(module_or_params):
        params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
        for param in params:
            param.requires_grad_(True)
            chosen.append(param)

    motion = [p for n, p in models.denoising_unet.named_parameters() if "motion_modules" in n]
    if parts == "motion":
        if not motion:
            raise ValueError("--train-parts motion: this model has no motion modules (built with --no-motion)")
        take(motion)
    elif parts == "unet":
        take(models.denoising_unet)
    else:
        last_up = f"up_blocks.{len(models.reference_unet.up_blocks) - 1}."
        take([p for n, p in models.reference_unet.named_parameters()
              if not (config.freeze_reference_last_up and n.startswith(last_up))])
        take(models.pose_guider)
        if config.stage == 1:  # a single frame cannot teach the temporal layers anything
            take([p for n, p in models.denoising_unet.named_parameters() if "motion_modules" not in n])
        else:
            take(models.denoising_unet)
        if models.image_encoder is not None and not config.freeze_image_encoder:
            take(models.image_encoder)
    return chosen


def build_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW as the reference sets it up (betas 0.9/0.999, eps 1e-8, weight decay `config.weight_decay`), from torch
    or, with `optimizer="adamw8bit"`, bitsandbytes' 8-bit AdamW (the reference's stage 2: moments in 8 bits, for GPU
    memory at SD size; bitsandbytes >= 0.45 also runs it on the CPU)."""
    kwargs = dict(lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes  # optional: 8-bit AdamW only
        except ImportError as error:
            raise ImportError("--optimizer adamw8bit needs bitsandbytes: pip install 'comfyui-rain[train-8bit]' "
                              "(or pip install bitsandbytes), or use --optimizer adamw") from error
        return bitsandbytes.optim.AdamW8bit(params, **kwargs)
    raise ValueError(f"--optimizer: expected adamw or adamw8bit, found {config.optimizer!r}")


def learning_rate_factor(config: TrainConfig) -> Callable[[int], float]:
    """step -> multiplier of `config.lr`: diffusers' `get_scheduler(config.lr_scheduler)` times the optional final
    anneal (`decay_steps`: linear down to 1/10 over the last steps). With the default constant_with_warmup schedule
    the rate does not depend on `steps` until the anneal starts, so a run stopped early and resumed with the final
    `--steps` is the same run."""
    if config.lr_scheduler == "constant" and config.warmup_steps:
        raise ValueError("--lr-scheduler constant ignores --warmup-steps: use constant_with_warmup for a warm-up")
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        schedule = get_scheduler(config.lr_scheduler, probe, num_warmup_steps=config.warmup_steps,
                                 num_training_steps=config.steps).lr_lambdas[0]
    except ValueError as error:
        raise ValueError(f"--lr-scheduler {config.lr_scheduler!r}: {error}") from error
    decay_start = config.steps - config.decay_steps

    def factor(step: int) -> float:
        rate = schedule(step)
        if config.decay_steps > 0 and step >= decay_start:
            rate *= 1.0 - 0.9 * (step - decay_start + 1) / config.decay_steps
        return rate

    return factor


@dataclass
class StepDraws:
    """Every random decision of one training step.

    noise: (B, C, F, h, w) ε, noise offset included; timesteps: (B, F) int64, the t of each frame (with
    --rollout-ticks: of the window's p·m frames, the stream's ladder, which the rollout always uses); drop: the
    whole batch without its conditions (condition dropout; never in stage 3); guidance: the w per clip (B,) of
    stage 3's teacher, --distill and --stream-guidance, else None; step_noise: with --rollout-ticks R, each tick's
    fresh ε (R, B, C, p·m, h, w), else None (also on the steps --rollout-fraction leaves plain)."""

    noise: torch.Tensor
    timesteps: torch.Tensor
    drop: bool = False
    guidance: torch.Tensor | None = None
    step_noise: torch.Tensor | None = None


DrawSource = Callable[[int, tuple[int, ...]], StepDraws]


def step_generator(seed: int, step: int, process_index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, process_index]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

