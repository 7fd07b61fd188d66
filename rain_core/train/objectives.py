"""Noise, timesteps and targets of the three training stages (pure tensor math, no model).

The schedule is the one the stream samples with (`rain_core.scheduler`): 1000 steps, scaled_linear
betas, zero terminal SNR, trailing spacing, v-prediction. diffusers' `DDPMScheduler` does the forward
process (`add_noise`, `get_velocity`); videos (B, C, F, h, w) with one timestep per frame (B, F) are
folded into frames so its per-sample broadcasting applies.
"""

from __future__ import annotations

import functools

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from einops import rearrange

from ..scheduler import NUM_TRAIN_TIMESTEPS, SCHEDULE_CONFIG, LCMStepper, alphas_cumprod


@functools.lru_cache(maxsize=1)
def noise_schedule():
    """diffusers' DDPMScheduler configured exactly like RAIN's training schedule."""
    schedule = DDPMScheduler(**SCHEDULE_CONFIG)
    if not torch.equal(schedule.alphas_cumprod.float(), alphas_cumprod()):
        raise RuntimeError("the training schedule differs from rain_core.scheduler's: both must be RAIN's")
    return schedule


def _frames_first(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b c f h w -> (b f) c h w")


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε per frame; latents (B, C, F, h, w), timesteps (B, F)."""
    frames = latents.shape[2]
    noisy = noise_schedule().add_noise(_frames_first(latents), _frames_first(noise), timesteps.reshape(-1).cpu())
    return rearrange(noisy, "(b f) c h w -> b c f h w", f=frames)


def velocity(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The v-prediction target sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0 per frame."""
    frames = latents.shape[2]
    v = noise_schedule().get_velocity(_frames_first(latents), _frames_first(noise), timesteps.reshape(-1).cpu())
    return rearrange(v, "(b f) c h w -> b c f h w", f=frames)


def velocity_towards(sample: torch.Tensor, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The v whose x0 estimate from `sample` at `timesteps` is exactly `latents`: (sqrt(ᾱ)·x_t − x_0) / sqrt(1 − ᾱ).

    For a sample noised from `latents` this is `velocity`; for a sample the stream made (its own earlier predictions,
    re-noised) it is the target that steers the model back to the ground truth. t ≤ 999 keeps 1 − ᾱ > 0."""
    alpha = _per_frame(alphas_cumprod(sample.device)[timesteps])
    return (alpha.sqrt() * sample - latents) / (1 - alpha).sqrt()


def roll_window(latents: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor, levels: int,
                frames_per_cohort: int, predict) -> tuple[torch.Tensor, torch.Tensor]:
    """The window the p-step stream holds after rolling over a clip for R = len(step_noise) ticks.

    latents, noise (B, C, p·m + R·m, h, w): the clip's ground truth and its ε; step_noise (R, B, C, p·m, h, w): each
    tick's fresh ε. The first window is the ground truth's first p·m frames noised to the inference ladder
    [249, 499, 749, 999]; each tick asks `predict(window, timesteps, frames)` for v (frames: the slice of the clip the
    window holds), takes one LCM step of every cohort, lets the finished cohort go and takes in the next m frames
    at t = 999 (pure noise). Returns (window, timesteps) after the last tick, holding the clip's last p·m frames:
    with R ≥ p − 1 every cohort but the newest is the stream's own re-noised prediction."""
    m, width = frames_per_cohort, levels * frames_per_cohort
    ticks = step_noise.shape[0]
    if latents.shape[2] != width + ticks * m:
        raise ValueError(f"roll_window: {ticks} ticks of a {levels}×{m} window need {width + ticks * m} frames, "
                         f"found {latents.shape[2]}")
    timesteps = stream_ladder(latents.shape[0], levels, m).to(latents.device)
    stepper = LCMStepper(levels, latents.device)
    window = add_noise(latents[:, :, :width], noise[:, :, :width], timesteps)
    for tick in range(ticks):
        v = predict(window, timesteps, slice(tick * m, tick * m + width))
        moved, _ = stepper.step(v.float(), timesteps, window, step_noise[tick])
        entering = slice(width + tick * m, width + (tick + 1) * m)
        fresh = add_noise(latents[:, :, entering], noise[:, :, entering], timesteps[:, -m:])
        window = torch.cat([moved[:, :, m:], fresh], dim=2).to(latents.dtype)
    return window, timesteps


def stream_ladder(batch: int, levels: int, frames_per_cohort: int) -> torch.Tensor:
    """(B, p·m) timesteps of the window the p-step stream holds: [249, 499, 749, 999] for p = 4, oldest first."""
    return cohort_timesteps(torch.full((batch,), NUM_TRAIN_TIMESTEPS // levels - 1), levels, frames_per_cohort)


def cohort_timesteps(t0: torch.Tensor, levels: int, frames_per_cohort: int) -> torch.Tensor:
    """Stepped noise of a training window: frame group g (oldest first) gets t0 + (T/p)·g.

    t0 (B,) -> (B, levels·frames_per_cohort). With t0 = 249, p = 4 this is the inference ladder
    [249, 499, 749, 999], each level repeated for its m frames.
    """
    span = NUM_TRAIN_TIMESTEPS // levels
    offsets = torch.arange(levels, device=t0.device).repeat_interleave(frames_per_cohort) * span
    return t0[:, None].long() + offsets[None, :]


def sample_stepped_timesteps(batch: int, levels: int, frames_per_cohort: int, generator: torch.Generator,
                             grid: int = 1) -> torch.Tensor:
    """Stage-2/3 timesteps: t0 ~ U{0 … T/p − 1} per clip (on multiples of `grid` ending at T/p − 1
    when grid > 1, LCM's skipping-step grid), then the cohort ladder above it. (B, p·m) int64."""
    span = NUM_TRAIN_TIMESTEPS // levels
    if span % grid:
        raise ValueError(f"skip step {grid} must divide the level spacing {span} (= {NUM_TRAIN_TIMESTEPS} // {levels})")
    slots = torch.randint(0, span // grid, (batch,), generator=generator)
    t0 = span - 1 - slots * grid
    return cohort_timesteps(t0, levels, frames_per_cohort)


def snr_weights(timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weights of a v-prediction loss: min(SNR + 1, γ) / (SNR + 1); ones when gamma <= 0.

    SNR comes from diffusers' `compute_snr` on RAIN's schedule. With v-prediction the loss is the ε-loss scaled
    by SNR + 1, so Min-SNR clamps SNR + 1 (diffusers' train_text_to_image.py and the reference training code,
    Moore-AnimateAnyone's train_stage_{1,2}.py, do the same). Clamping SNR alone, min(SNR, γ) / (SNR + 1),
    gives the noisiest rung zero weight on a zero-terminal-SNR schedule: ᾱ(999) = 0, so the t = 999 level,
    where every frame enters the stream, would never be trained. Here t = 999 gets weight 1 (for γ >= 1).
    """
    if gamma <= 0:
        return torch.ones_like(timesteps, dtype=torch.float32)

    snr_plus_one = compute_snr(noise_schedule(), timesteps) + 1
    return torch.clamp(snr_plus_one, max=gamma) / snr_plus_one


def per_frame_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of each frame (B, F), optionally weighted, then averaged: every frame's loss
    counts with its own timestep's weight."""
    per_frame = (prediction.float() - target.float()).pow(2).mean(dim=(1, 3, 4))
    if weights is not None:
        per_frame = per_frame * weights
    return per_frame.mean()


def _per_frame(x: torch.Tensor) -> torch.Tensor:
    return x[:, None, :, None, None]


def x0_from_v(sample: torch.Tensor, v: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    alpha = _per_frame(alphas_cumprod(sample.device)[timesteps])
    return alpha.sqrt() * sample - (1 - alpha).sqrt() * v


def eps_from_v(sample: torch.Tensor, v: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    alpha = _per_frame(alphas_cumprod(sample.device)[timesteps])
    return (1 - alpha).sqrt() * sample + alpha.sqrt() * v


def ddim_step(sample: torch.Tensor, v: torch.Tensor, timesteps: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM move of every frame from its t to its `previous` t (< 0 means clean, ᾱ = 1):
    the teacher's ODE solver step in LCM distillation."""
    x0, eps = x0_from_v(sample, v, timesteps), eps_from_v(sample, v, timesteps)
    alphas = alphas_cumprod(sample.device)
    alpha_prev = torch.where(previous >= 0, alphas[previous.clamp(min=0)], torch.ones_like(previous, dtype=alphas.dtype))
    alpha_prev = _per_frame(alpha_prev)
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


def consistency_output(sample: torch.Tensor, v: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂_0: the denoised estimate an LCM step emits (the stream's
    `LCMStepper` boundary condition, so training and sampling use one formula)."""
    c_skip, c_out = _stepper().boundary_scalings(timesteps)
    return _per_frame(c_out) * x0_from_v(sample, v, timesteps) + _per_frame(c_skip) * sample


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float = 0.001) -> torch.Tensor:
    """LCM's distillation loss: mean of sqrt((a − b)² + c²) − c over every element of every frame."""
    difference = prediction.float() - target.float()
    return (torch.sqrt(difference * difference + c * c) - c).mean()


@functools.lru_cache(maxsize=1)
def _stepper() -> LCMStepper:
    return LCMStepper(1)  # boundary_scalings depends only on the timesteps
