"""Per-frame LCM steps on RAIN's stepped-noise ladder.

Pure tensor math, no model (rain-method.md §2). The noise schedule is the one RAIN was trained with:
1000 steps, scaled_linear betas 0.00085 → 0.012 rescaled to zero terminal SNR (so ᾱ(999) = 0 exactly),
trailing timesteps, v-prediction. The ladder and the step reproduce the authors' own LCM scheduler,
which differs from diffusers' current `LCMScheduler.set_timesteps` (that one subsamples a 50-step
"original" schedule and picks [999, 759, 499, 259] for 4 steps instead of [999, 749, 499, 249]).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
# Consistency-model boundary condition (LCM): σ_data and the factor applied to t before it.
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10


class ScheduleError(ValueError):
    """A ladder or step request that the schedule cannot serve."""


SCHEDULE_CONFIG = dict(
    num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    rescale_betas_zero_snr=True,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    clip_sample=False,
)
"""RAIN's noise schedule (training and inference) as diffusers scheduler arguments."""


@functools.lru_cache(maxsize=1)
def _alphas_cumprod_cpu() -> torch.Tensor:
    # diffusers builds exactly the training schedule (float32 betas, zero-SNR rescale, cumprod);
    # the alphas are taken from it rather than re-derived so the float32 rounding is the same.
    from diffusers import LCMScheduler

    schedule = LCMScheduler(**SCHEDULE_CONFIG)
    alphas_cumprod = schedule.alphas_cumprod.to(torch.float32).clone()
    if alphas_cumprod[-1].item() != 0.0:
        raise ScheduleError(
            f"the zero-terminal-SNR schedule must end at ᾱ(999) = 0; diffusers gave {alphas_cumprod[-1].item()!r}"
        )
    return alphas_cumprod


def alphas_cumprod(device: torch.device | str = "cpu") -> torch.Tensor:
    """ᾱ(t) for t = 0 … 999 (float32); ᾱ(999) is exactly 0."""
    return _alphas_cumprod_cpu().to(device)


def check_steps(levels: int, steps: int) -> None:
    """Raise `ScheduleError` unless `steps` LCM steps can be spread over `levels` cohorts."""
    if not isinstance(levels, int) or levels < 1:
        raise ScheduleError(f"levels: expected a positive whole number of cohorts in flight, found {levels!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ScheduleError(f"steps: expected a positive whole number of LCM steps, found {steps!r}")
    if steps % levels:
        raise ScheduleError(
            f"steps: expected a multiple of levels ({levels}) so that every tick makes the same number of UNet calls; "
            f"found steps={steps}. Use steps={levels * max(1, round(steps / levels))} or change levels."
        )
    if steps > NUM_TRAIN_TIMESTEPS:
        raise ScheduleError(f"steps: at most {NUM_TRAIN_TIMESTEPS} (the training schedule's length), found {steps}")


def trailing_timesteps(steps: int) -> torch.Tensor:
    """The `steps` trailing timesteps, noisiest first: 4 → [999, 749, 499, 249]."""
    ratio = NUM_TRAIN_TIMESTEPS / steps
    # Same float arithmetic as the trailing spacing of the authors' scheduler (and diffusers'),
    # which matters when 1000 / steps is not a whole number.
    return torch.from_numpy(np.round(np.arange(NUM_TRAIN_TIMESTEPS, 0, -ratio)).astype(np.int64) - 1)


def step_length(steps: int) -> int:
    """How far one LCM step moves t (the authors' `prev = t − 1000 // steps`)."""
    return NUM_TRAIN_TIMESTEPS // steps


def ladder(levels: int, steps: int) -> torch.Tensor:
    """Timesteps of every level for every UNet call of a tick, shape (steps // levels, levels), int64.

    Row j is the j-th call of a tick, column k the level, oldest (cleanest) cohort first. With
    levels = 4: steps = 4 gives [[249, 499, 749, 999]]; steps = 8 gives two calls per tick,
    [[249, 499, 749, 999], [124, 374, 624, 874]]: each call moves every cohort one step of 125.
    """
    check_steps(levels, steps)
    calls = steps // levels
    schedule = trailing_timesteps(steps)
    # Level k's first timestep is the schedule entry (k + 1)·calls from the clean end; the later calls of a
    # tick subtract whole step lengths from it (the authors' `ut - step_length * j`).
    first = schedule[[steps - (k + 1) * calls for k in range(levels)]]
    offsets = torch.arange(calls, dtype=torch.int64)[:, None] * step_length(steps)
    return first[None, :] - offsets


class LCMStepper:
    """One LCM step of many frames at once, each frame at its own timestep.

    `timesteps` is (B, F); samples are (B, C, F, h, w). The frames whose next timestep is below 0
    have α = 1 afterwards: they come out as the model's denoised estimate and get no noise.
    """

    def __init__(self, steps: int, device: torch.device | str = "cpu"):
        if not isinstance(steps, int) or not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
            raise ScheduleError(f"steps: expected a whole number in 1…{NUM_TRAIN_TIMESTEPS}, found {steps!r}")
        self.steps = steps
        self.step_length = step_length(steps)
        self.alphas_cumprod = alphas_cumprod(device)
        self.final_alpha_cumprod = torch.tensor(1.0, device=device)

    def to(self, device: torch.device | str) -> LCMStepper:
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        self.final_alpha_cumprod = self.final_alpha_cumprod.to(device)
        return self

    def next_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps - self.step_length

    def boundary_scalings(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c_skip(t), c_out(t) of the consistency boundary condition, float32."""
        # The square is taken on the integer scaled timestep and rounded to float32 once, as the
        # authors' scheduler does with its int64 timesteps.
        scaled = timesteps.to(torch.int64) * TIMESTEP_SCALING
        denominator = (scaled * scaled).to(torch.float32) + SIGMA_DATA**2
        c_skip = SIGMA_DATA**2 / denominator
        c_out = scaled.to(torch.float32) / denominator**0.5
        return c_skip, c_out

    def step(
        self,
        v: torch.Tensor,
        timesteps: torch.Tensor,
        sample: torch.Tensor,
        noise: torch.Tensor | None,
        check: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (next sample, denoised estimate) for v-prediction `v` at per-frame `timesteps`.

        `noise` (same shape as `sample`) is the fresh N(0, I) of this step; it may be None only when
        every frame reaches the end of the ladder in this step (then it would be multiplied by 0).
        Scalars are float32; the result has the dtype of the float32-promoted product, callers cast.
        check=False skips the value checks (timestep range, noise needed): they read `timesteps` back to
        the host, a sync when they live on a GPU. For callers whose timesteps come from `ladder`.
        """
        if v.shape != sample.shape:
            raise ScheduleError(
                f"model output: expected the sample's shape {tuple(sample.shape)}, found {tuple(v.shape)}"
            )
        if timesteps.dim() != 2 or tuple(timesteps.shape) != (sample.shape[0], sample.shape[2]):
            raise ScheduleError(
                f"timesteps: expected one per frame, shape {(sample.shape[0], sample.shape[2])}, found {tuple(timesteps.shape)}"
            )
        # Checked where the caller's values are (free for a CPU ladder), before they move to the schedule's device.
        if check and bool(((timesteps < 0) | (timesteps >= NUM_TRAIN_TIMESTEPS)).any()):
            raise ScheduleError(
                f"timesteps: expected values in 0…{NUM_TRAIN_TIMESTEPS - 1}, found {timesteps.tolist()}"
            )
        timesteps = timesteps.to(device=self.alphas_cumprod.device, dtype=torch.int64)
        previous = self.next_timesteps(timesteps)
        finishing = previous < 0
        alpha = self.alphas_cumprod[timesteps]
        alpha_next = torch.where(finishing, self.final_alpha_cumprod, self.alphas_cumprod[previous.clamp(min=0)])
        c_skip, c_out = self.boundary_scalings(timesteps)

        def per_frame(x: torch.Tensor) -> torch.Tensor:  # (B, F) -> broadcastable over (B, C, F, h, w)
            return x[:, None, :, None, None]

        alpha, alpha_next, c_skip, c_out = (per_frame(x) for x in (alpha, alpha_next, c_skip, c_out))
        original = alpha.sqrt() * sample - (1 - alpha).sqrt() * v
        denoised = c_out * original + c_skip * sample
        if noise is None:
            if check and not bool(finishing.all()):
                raise ScheduleError("noise: required while some frames still have steps to go")
            return alpha_next.sqrt() * denoised, denoised
        if noise.shape != sample.shape:
            raise ScheduleError(f"noise: expected the sample's shape {tuple(sample.shape)}, found {tuple(noise.shape)}")
        return alpha_next.sqrt() * denoised + (1 - alpha_next).sqrt() * noise, denoised


class FusedLCMStep:
    """The per-frame LCM step for fixed timesteps as one multiply-add per element.

    With ᾱ, ᾱ' the alphas of t and of the next timestep (1 past the end), and c_skip, c_out the boundary
    scalings of t (see `LCMStepper`):
        z' = sqrt(ᾱ')·(c_out·(sqrt(ᾱ)·z − sqrt(1−ᾱ)·v) + c_skip·z) + sqrt(1−ᾱ')·ε = A·z + B·v + C·ε.
    A, B, C are computed once in float64 from the stepper's float32 schedule, one per (call, frame); the
    update runs in float32 like `LCMStepper.step` and needs no host check of the timesteps.
    """

    def __init__(self, stepper: LCMStepper, timesteps: torch.Tensor, device=None):
        """timesteps: (calls, F) int, the timesteps of every frame for each UNet call of a tick."""
        if timesteps.dim() != 2:
            raise ValueError(f"FusedLCMStep: expected timesteps (calls, frames), found {tuple(timesteps.shape)}")
        alphas = alphas_cumprod("cpu").to(torch.float64)  # the schedule's values, wherever the stepper lives
        t = timesteps.to("cpu", torch.int64)
        if bool(((t < 0) | (t >= alphas.shape[0])).any()):  # checked once here, never inside a tick
            raise ValueError(f"FusedLCMStep: timesteps outside 0…{alphas.shape[0] - 1}: {t.tolist()}")
        previous = stepper.next_timesteps(t)
        alpha = alphas[t]
        alpha_next = torch.where(previous < 0, torch.ones_like(alpha), alphas[previous.clamp(min=0)])
        c_skip, c_out = (c.to(torch.float64) for c in stepper.boundary_scalings(t))
        device = device if device is not None else stepper.alphas_cumprod.device
        shape = (*t.shape[:1], 1, 1, t.shape[1], 1, 1)  # (calls, B=1, C=1, F, 1, 1) broadcasts over (B, C, F, h, w)
        self.sample_scale = (
            (alpha_next.sqrt() * (c_out * alpha.sqrt() + c_skip)).reshape(shape).to(device, torch.float32)
        )
        self.v_scale = (-alpha_next.sqrt() * c_out * (1 - alpha).sqrt()).reshape(shape).to(device, torch.float32)
        self.noise_scale = (1 - alpha_next).sqrt().reshape(shape).to(device, torch.float32)
        self.timesteps = t

    def __call__(
        self,
        call: int,
        sample: torch.Tensor,
        v: torch.Tensor,
        noise: torch.Tensor | None,
        frames: slice = slice(None),
    ) -> torch.Tensor:
        """Next sample (float32) for UNet call number `call` of the tick, for the frames `frames` of the
        timesteps given at construction (a partial window); `noise` may be None only where every frame finishes
        (its scale is 0)."""
        sample_scale = self.sample_scale[call][:, :, frames]
        out = sample_scale * sample.float() + self.v_scale[call][:, :, frames] * v.float()
        if noise is not None:
            out = out + self.noise_scale[call][:, :, frames] * noise
        return out
