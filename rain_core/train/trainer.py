"""The three RAIN training stages through Hugging Face `accelerate` (one CPU, one GPU, or DDP).

- Stage 1, image pairs: reference UNet + denoising UNet (motion modules frozen) + pose guider, uniform
  t ~ U{0 … T−1}, v-prediction, condition dropout.
- Stage 2, clips of K = p·m frames with the stepped-noise ladder: t0 ~ U{0 … T/p − 1} per clip, cohort g at
  t0 + (T/p)·g, loss per frame at its own t. Trains the motion modules (AnimateAnyone) or everything.
- Stage 3, LCM distillation on the same stepped windows: the student (with its w-embedding) at t must
  agree, through the consistency boundary condition, with an EMA target at t − k after one DDIM step of
  the frozen stage-2 teacher with classifier-free guidance w ~ U[w_min, w_max].

Stages 1 and 2 follow the public reference training code for these networks, Moore-AnimateAnyone's
`train_stage_{1,2}.py` with `configs/train/stage{1,2}.yaml` (`bench/compare_training.py` runs both on the same tiny
networks and batch and checks loss and gradients agree): condition dropout is one coin per batch that skips the
reference UNet (an empty reference bank) and gives CLIP a zero image; the noise offset is one draw per clip and
channel, shared by its frames; min-SNR-γ on SNR + 1; AdamW with weight decay 1e-2 at a constant learning rate;
CLIP and the reference UNet's last up block frozen. With `--levels 1` stage 2 is the reference stage 2 (one t per
clip). Where the defaults differ (learning rate, batch, precision) the reason is written beside them.

Every random draw of step n comes from a generator seeded by (seed, n, process): a resumed run sees
exactly the batches, noise and timesteps it would have seen, so it continues to the same losses. The draws can
also be injected (`Trainer(config, draws=...)` or `Trainer.loss(batch, step, draws=...)`), and a batch may carry
codec latents and CLIP inputs directly, so a check can feed another implementation's exact inputs.

Why one file over 500 lines: the three stages share one loss with its injectable draws, one checkpoint format
and one accelerate loop; the stage-specific parts are a few branches each, clearer side by side.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from ..models import RainModelConfig, RainModels, guidance_embedding
from . import objectives
from .curves import LossLog
from .data import StepIndices, build_dataset, collate

TINY_PRESET = {
    "block_out_channels": (48, 64, 64),
    "codec_factor": 2,
    "cross_attention_blocks": (False, True, False),
    "motion_blocks": (False, False, True),
}
"""Sizes of `--model tiny` (the shipped model is this preset with its top level narrowed to 32 channels after
training: `--top-width 32`, time embedding kept at 48; issue 17, NOTES.md): 3 UNet levels on the 12×32×32
space_to_depth latent of a 64 px image; spatial transformers (self-, reference and CLIP attention) on the 16×16 level only; motion modules on the 8×8 level and
the mid block only. Why: a ×4 latent (48 channels a position) was cheaper per step but still emitted per-pixel
noise after 900 steps (x0 from t = 249: 17.3 dB; 400 steps: 16.3 dB at width 48, 17.8 at 96), while ×2 reached
21.2 dB in 400 steps; dropping attention from the 32×32 level cut the ×2 step on one CPU core from ~3.2 s to
~1.1 s at batch 8; the 32×32 and 16×16 motion modules were half of a CPU tick, and the model without them scores
better (issue 17, NOTES.md). 3.6 M parameters, 14.6 MB (narrowed: 3.3 M, 13 MB)."""


@dataclass
class TrainConfig:
    stage: int
    output: str
    model: str = "tiny"  # "tiny", "sd15" or a rain_config.json; ignored when `init` is given
    motion: bool = True  # False: the m = 1 baseline without motion modules (tiny/sd15 presets only)
    motion_blocks: str | None = None  # "0,0,1": which UNet levels keep motion modules (None: the model's own)
    top_width: int = 0  # narrow the top UNet level to N channels before training (0: keep the model's)
    init: str | None = None  # a RAIN model folder to start from (the previous stage's output)
    teacher: str | None = None  # stage 3: the stage-2 model (default: `init`)
    # stage 2: a trained model (with its w-embedding) whose outputs are the targets instead of the data's velocity:
    # how a narrower architecture relearns a shipped model's function, its stage 3 included, in one stage
    distill: str | None = None
    # stage 2: roll the window this many ticks of the stream with the model itself (no gradient) before the loss, so
    # the model learns from the inputs the stream gives it (its own re-noised predictions) rather than noised ground
    # truth; clips hold rollout_ticks·m more frames. levels − 1 puts every cohort but the newest on that trajectory.
    rollout_ticks: int = 0
    # with rollout_ticks: the share of steps that roll (scheduled sampling); the others train plain stage 2 on the
    # clip's last p·m frames noised from the truth. 1: every step rolls
    rollout_fraction: float = 1.0
    # stage 2 of a model whose w-embedding is trained (an LCM model fine-tuned on data): every forward gets a w drawn
    # in [guidance_min, guidance_max], as the stream feeds it, and no condition dropout (the stream never drops)
    stream_guidance: bool = False
    data: str = "synthetic"
    height: int = 64
    width: int = 64
    batch_size: int = 8
    levels: int = 4  # p
    frames_per_cohort: int = 4  # m; stage 2/3 clips hold p·m frames
    stride: int = 1  # frame stride of video clips
    steps: int = 1000
    # 5e-4, not the reference's 1e-5: that rate fine-tunes pretrained SD-1.5 weights; the tiny preset starts from
    # random weights (NOTES: its stage 1 ran at 6e-4 and annealed)
    lr: float = 5e-4
    lr_scheduler: str = "constant_with_warmup"  # any diffusers get_scheduler name; with 0 warm-up steps: the reference's constant
    warmup_steps: int = 0
    decay_steps: int = 0  # the last `decay_steps` steps anneal the learning rate linearly down to lr / 10
    optimizer: str = "adamw"  # "adamw" (torch) or "adamw8bit" (bitsandbytes, the reference's stage 2; extra train-8bit)
    weight_decay: float = 1e-2  # the reference's AdamW weight decay
    max_grad_norm: float = 1.0
    condition_dropout: float = 0.1  # the reference's uncond_ratio
    noise_offset: float = 0.05  # the reference's; one draw per clip and channel, shared by the clip's frames
    snr_gamma: float = 5.0  # the reference's min-SNR-γ (weights min(SNR + 1, γ) / (SNR + 1)); 0 = plain v-MSE
    train_parts: str = "auto"  # "all" | "motion" | "unet"; auto: stage 1 all but motion, 2 motion, 3 unet
    freeze_image_encoder: bool = True  # the reference never trains CLIP
    freeze_reference_last_up: bool = True  # the reference freezes reference_unet.up_blocks.3 (see select_trainable)
    guidance_min: float = 2.0
    guidance_max: float = 4.5
    skip_step: int = 25
    ema_decay: float = 0.95
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    resume: bool = False
    num_workers: int = 0
    cpu: bool = False
    threads: int = 0  # CPU threads for torch (0: torch's default); 1 is fastest on an oversubscribed machine

    @property
    def frames(self) -> int:
        return 1 if self.stage == 1 else (self.levels + self.rollout_ticks) * self.frames_per_cohort


def model_config(spec: str, motion: bool = True) -> RainModelConfig:
    if spec == "tiny":
        return RainModelConfig.tiny(motion=motion, **TINY_PRESET)
    if spec == "sd15":
        config = RainModelConfig.sd15()
        if not motion:
            config.motion = None
        return config
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--model {spec}: expected 'tiny', 'sd15' or a rain_config.json file; no such file")
    return RainModelConfig.from_dict(json.loads(path.read_text()))


def load_models(folder: str | Path) -> RainModels:
    from ..loading import load_rain

    return load_rain(folder)


def save_models(models: RainModels, folder: str | Path) -> None:
    from ..loading import save_rain

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


def parse_motion_blocks(text: str, levels: int) -> tuple[bool, ...]:
    flags = [part.strip() for part in text.split(",")]
    if len(flags) != levels or any(flag not in ("0", "1") for flag in flags):
        raise ValueError(f"--motion-blocks {text}: expected {levels} comma-separated 0/1 flags, one per UNet level "
                         f"(e.g. {','.join(['0'] + ['1'] * (levels - 1))})")
    return tuple(flag == "1" for flag in flags)


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
            import bitsandbytes
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
    from diffusers.optimization import get_scheduler

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
"""(step, latent shape (B, C, F, h, w)) -> the StepDraws of that step: the trainer's injectable randomness."""


def step_generator(seed: int, step: int, process_index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, process_index]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ---- checkpoints (safetensors + JSON; nothing pickled) ----------------------------------------


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """The optimizer's state as safetensors (tensors) + JSON (the rest); nested per-parameter entries (bitsandbytes
    keeps its 8-bit state in a dict) are flattened to dotted names."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}

    def flatten(prefix: str, entries: dict) -> None:
        for key, value in entries.items():
            name = f"{prefix}.{key}"
            if isinstance(value, dict):
                flatten(name, value)
            elif torch.is_tensor(value):  # a copy each: bitsandbytes shares its quantisation maps across parameters
                tensors[name] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[name] = value

    for index, entries in state["state"].items():
        flatten(str(index), entries)
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    tensors = load_file(folder / "optimizer.safetensors")
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, *path, key = name.split(".")
        entries = state.setdefault(int(index), {})
        for part in path:
            entries = entries.setdefault(part, {})
        entries[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def latest_checkpoint(output: str | Path) -> Path | None:
    folders = sorted(Path(output, "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [f for f in folders if (f / "trainer_state.json").exists()]
    return complete[-1] if complete else None


# ---- the loop ---------------------------------------------------------------------------------


class Trainer:
    def __init__(self, config: TrainConfig, draws: DrawSource | None = None):
        """`draws`: where each step's noise, timesteps and dropout decision come from (default: the step's own
        seeded generator, `seeded_draws`)."""
        try:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs
        except ImportError as error:
            raise ImportError("training needs Hugging Face accelerate (a training-only extra): "
                              "pip install 'comfyui-rain[train]' or pip install accelerate") from error

        if config.stage not in (1, 2, 3):
            raise ValueError(f"--stage: expected 1, 2 or 3, found {config.stage}")
        if config.distill and config.stage != 2:
            raise ValueError(f"--distill trains stage 2 against a model's outputs; found --stage {config.stage}")
        if config.stream_guidance and config.stage != 2:
            raise ValueError(f"--stream-guidance feeds stage 2's forwards a w; stage {config.stage} has its own use of w")
        if config.rollout_ticks < 0 or (config.rollout_ticks and (config.stage != 2 or config.distill)):
            raise ValueError(f"--rollout-ticks {config.rollout_ticks}: expected 0, or a positive number of ticks in a "
                             "stage 2 trained on data (not --stage 1/3, not --distill)")
        if not 0 < config.rollout_fraction <= 1 or (config.rollout_fraction < 1 and not config.rollout_ticks):
            raise ValueError(f"--rollout-fraction {config.rollout_fraction}: expected a share of steps in (0, 1], "
                             "given with --rollout-ticks (the steps that roll)")
        if config.stage == 3 and not (config.init or config.teacher):
            raise ValueError("--stage 3 distils a stage-2 model: pass --init (and optionally --teacher) with its folder")
        self.config = config
        self.lr_factor = learning_rate_factor(config)
        self._draws = draws
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        # a dropped condition skips the reference UNet, so under DDP its parameters are unused on those steps
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu, kwargs_handlers=[ddp])
        self.output = Path(config.output)
        if config.init:
            self.models = load_models(config.init)
            if not config.motion and self.models.config.motion is not None:
                self.models = without_motion(self.models)
        else:
            self.models = RainModels.build(model_config(config.model, config.motion))
        if config.motion_blocks is not None and not config.motion:
            raise ValueError(f"--motion-blocks {config.motion_blocks} with --no-motion: the m = 1 baseline has no motion "
                             "modules to choose from; drop one of the two flags")
        if config.motion_blocks is not None and self.models.config.motion is not None:
            blocks = parse_motion_blocks(config.motion_blocks, len(self.models.config.block_out_channels))
            for level, keep in enumerate(blocks):
                if keep and not self.models.config.has_motion(level):
                    raise ValueError(f"--motion-blocks {config.motion_blocks}: level {level} has no motion modules "
                                     "to keep in this model; only dropping them is supported")
            self.models = without_motion(self.models, blocks)
        if config.top_width:
            from .narrow import narrow_top_level

            self.models = narrow_top_level(self.models, config.top_width)
        if config.stage == 3 and self.models.config.cond_proj_dim is None:
            raise ValueError("stage 3 needs a denoising UNet with a w-embedding (cond_proj_dim); this model has none")
        if config.gradient_checkpointing:
            self.models.reference_unet.enable_gradient_checkpointing()  # diffusers ModelMixin's
            self.models.denoising_unet.enable_gradient_checkpointing()
        self.params = select_trainable(self.models, config)
        self.optimizer = build_optimizer(self.params, config)
        self.forward = DenoiseForward(self.models)
        self.forward, self.optimizer = self.accelerator.prepare(self.forward, self.optimizer)
        self.device = self.accelerator.device
        self.teacher = self.target = self.ema = None
        if config.distill:
            teacher = load_models(config.distill)
            for name, model in (("--distill", teacher), ("the trained model", self.models)):
                if model.config.cond_proj_dim is None:
                    raise ValueError(f"--distill matches outputs at a guidance w, but {name} has no w-embedding "
                                     "(cond_proj_dim is None); distil from and into a stage-3 (LCM) model")
            self.teacher = self._frozen_forward(teacher)
        if config.stage == 3:
            from diffusers.training_utils import EMAModel

            teacher = load_models(config.teacher) if config.teacher else copy.deepcopy(self.models)
            self.teacher = self._frozen_forward(teacher)
            self.target = self._frozen_forward(copy.deepcopy(self.models))
            # LCM's target network: a constant-rate EMA of the student's denoising UNet from the first update
            # (min_decay = decay and update_after_step = -1 turn off EMAModel's warm-up ramp). Its shadow tensors
            # are the target network's own parameters, so no third copy of the UNet is kept.
            target_params = list(self.target.models.denoising_unet.parameters())
            self.ema = EMAModel(target_params, decay=config.ema_decay, min_decay=config.ema_decay, update_after_step=-1)
            for param, shadow in zip(target_params, self.ema.shadow_params):
                param.data = shadow
        self.step = 0
        if config.resume:
            checkpoint = latest_checkpoint(self.output)
            if checkpoint is not None:
                self._load(checkpoint)
        self.dataset = build_dataset(config.data, config.height, config.width, config.frames, config.seed, config.stride)

    def _frozen_forward(self, models: RainModels) -> DenoiseForward:
        """A forward that is never trained (a teacher or a target network), on the training device."""
        return DenoiseForward(models.requires_grad_(False).eval()).to(self.device)

    # parameters of the module being trained, whatever wrapper accelerate put around it
    @property
    def _models(self) -> RainModels:
        return self.accelerator.unwrap_model(self.forward).models

    def learning_rate(self, step: int) -> float:
        return self.config.lr * self.lr_factor(step)

    def _batches(self):
        sampler = StepIndices(self.step, self.config.batch_size, self.accelerator.process_index, self.accelerator.num_processes)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.config.batch_size, sampler=sampler,
                                             collate_fn=collate, num_workers=self.config.num_workers)
        yield from loader

    def seeded_draws(self, step: int, shape: tuple[int, ...]) -> StepDraws:
        """The default draws of `step` from its own generator (seed, step, process): one dropout coin for the batch,
        ε plus the noise offset (one value per clip and channel, shared by the clip's frames, as in the reference),
        the timesteps (stage 1: t ~ U{0 … T−1}; 2/3: the stepped ladder), and the w of stage 3 and --distill."""
        config = self.config
        lcm_targets = config.stage == 3 or bool(config.distill)  # targets from an LCM model at a guidance w
        generator = step_generator(config.seed, step, self.accelerator.process_index)
        batch = shape[0]
        drop = bool(torch.rand((), generator=generator) < config.condition_dropout) and config.stage < 3
        drop = drop and not config.stream_guidance
        noise = torch.randn(shape, generator=generator)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn((*shape[:2], 1, 1, 1), generator=generator)
        step_noise = None
        if config.stage == 1:
            timesteps = torch.randint(0, objectives.NUM_TRAIN_TIMESTEPS, (batch, 1), generator=generator)
        elif config.rollout_ticks and (config.rollout_fraction >= 1
                                       or bool(torch.rand((), generator=generator) < config.rollout_fraction)):
            # the stream's own ladder: the window is rolled as the p-step stream rolls it (the coin is drawn only
            # for a fraction below 1, so runs without one keep their draws)
            width = config.levels * config.frames_per_cohort
            timesteps = objectives.stream_ladder(batch, config.levels, config.frames_per_cohort)
            step_noise = torch.randn((config.rollout_ticks, *shape[:2], width, *shape[3:]), generator=generator)
        else:
            # stage 3, and distilling an LCM model: on the grid it was distilled on, which holds the stream's timesteps
            grid = config.skip_step if lcm_targets else 1
            timesteps = objectives.sample_stepped_timesteps(batch, config.levels, config.frames_per_cohort, generator, grid)
        guidance = None
        if lcm_targets or config.stream_guidance:
            guidance = config.guidance_min + (config.guidance_max - config.guidance_min) * torch.rand(batch, generator=generator)
        return StepDraws(noise, timesteps, drop, guidance, step_noise)

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(latents (B,C,F,h,w), reference latent (B,C,h,w), CLIP input) of a batch; never trained.

        A batch holds `frames` (B,F,3,H,W) and `reference` (B,3,H,W) in [0, 1], or their codec latents directly as
        `latents` and `ref_latent`; CLIP's input is `clip_pixels` (B,3,S,S, CLIP-normalised) or `clip_tokens`
        (B,1,D) when given, else the image encoder's preprocessing of `reference`."""
        codec = self._models.codec
        with torch.no_grad():
            if "latents" in batch:
                latents = batch["latents"].to(self.device).float()
            else:
                frames = batch["frames"].to(self.device)
                latents = codec.encode(rearrange(frames, "b f c h w -> (b f) c h w"))
                latents = rearrange(latents, "(b f) c h w -> b c f h w", b=frames.shape[0]).float()
            if "ref_latent" in batch:
                ref_latent = batch["ref_latent"].to(self.device).float()
            else:
                ref_latent = codec.encode(batch["reference"].to(self.device)).float()
        if "clip_tokens" in batch:
            clip = batch["clip_tokens"].to(self.device)
        elif "clip_pixels" in batch:
            clip = batch["clip_pixels"].to(self.device)
        else:
            clip = self.accelerator.unwrap_model(self.forward).clip_input(batch["reference"])
            clip = None if clip is None else clip.to(self.device)
        return latents, ref_latent, clip

    def loss(self, batch, step: int, draws: StepDraws | None = None) -> torch.Tensor:
        """The loss of `step` on `batch`; every random decision comes from `draws` when given, else from the
        trainer's draw source (by default the step's own seeded generator)."""
        config = self.config
        latents, ref_latent, clip = self.encode(batch)
        if draws is None:
            draws = (self._draws or self.seeded_draws)(step, tuple(latents.shape))
        if draws.noise.shape != latents.shape:
            raise ValueError(f"draws.noise: expected the latent shape {tuple(latents.shape)}, found {tuple(draws.noise.shape)}")
        noise, timesteps = draws.noise.to(self.device, latents.dtype), draws.timesteps.to(self.device).long()
        poses = batch["poses"].to(self.device)
        # every step rolls unless --rollout-fraction left this one plain (its draws then hold no step noise)
        rolled = bool(config.rollout_ticks) and (draws.step_noise is not None or config.rollout_fraction >= 1)
        if rolled:
            # the window the stream leaves after the rollout, and the v that leads each of its frames to the truth
            noisy, timesteps, latents, poses = self._rolled_window(latents, noise, draws, ref_latent, clip, poses)
            target = objectives.velocity_towards(noisy, latents, timesteps)
        else:
            if config.rollout_ticks:  # a plain step of a --rollout-fraction run: the clip's last p·m frames
                last = slice(config.rollout_ticks * config.frames_per_cohort, None)
                latents, noise, poses = latents[:, :, last], noise[:, :, last], poses[:, last]
            noisy = objectives.add_noise(latents, noise, timesteps)
        if config.distill:
            # the conditioned stream is what the model is for: no condition dropout
            w = draws.guidance.to(self.device)
            with torch.no_grad(), self.accelerator.autocast():
                target = self.teacher(noisy, timesteps, ref_latent, clip, poses, guidance=w).float()
            with self.accelerator.autocast():
                v = self.forward(noisy, timesteps, ref_latent, clip, poses, guidance=w)
            return objectives.per_frame_mse(v.float(), target)
        if config.stage < 3:
            if not rolled:  # noised truth: the data's own velocity
                target = objectives.velocity(latents, noise, timesteps)
            with self.accelerator.autocast():
                v = self.forward(noisy, timesteps, ref_latent, clip, poses, draws.drop, guidance=self._stream_w(draws))
            weights = objectives.snr_weights(timesteps, config.snr_gamma) if config.snr_gamma > 0 else None
            return objectives.per_frame_mse(v, target, weights)

        if draws.guidance is None:
            raise ValueError("stage 3 draws need guidance: the teacher's CFG scale w per clip, shape (B,)")
        w = draws.guidance.to(self.device)
        previous = timesteps - config.skip_step
        with torch.no_grad(), self.accelerator.autocast():
            conditioned = self.teacher(noisy, timesteps, ref_latent, clip, poses).float()
            # the unconditional branch is what condition dropout trained: no reference, CLIP of a zero image
            unconditioned = self.teacher(noisy, timesteps, ref_latent, clip, poses, drop=True).float()
            guided = unconditioned + w[:, None, None, None, None] * (conditioned - unconditioned)
            solved = objectives.ddim_step(noisy, guided, timesteps, previous)
            target_t = previous.clamp(min=0)  # ᾱ(−1) = 1 and c_skip(0) = 1: the target is then the solved sample
            v_target = self.target(solved, target_t, ref_latent, clip, poses, guidance=w).float()
            target = objectives.consistency_output(solved, v_target, target_t)
        with self.accelerator.autocast():
            v = self.forward(noisy, timesteps, ref_latent, clip, poses, guidance=w)
        prediction = objectives.consistency_output(noisy, v.float(), timesteps)
        return objectives.pseudo_huber(prediction, target)

    def _stream_w(self, draws: StepDraws) -> torch.Tensor | None:
        """The w that stage 2's forwards feed the w-embedding: with --stream-guidance the drawn one, else none."""
        if not self.config.stream_guidance:
            return None
        if draws.guidance is None:
            raise ValueError("--stream-guidance draws need guidance: the w per clip, shape (B,)")
        return draws.guidance.to(self.device)

    @torch.no_grad()
    def _rolled_window(self, latents, noise, draws: StepDraws, ref_latent, clip, poses):
        """(window, its timesteps, its ground-truth latents, its poses) after --rollout-ticks ticks of the stream run
        by the model being trained, conditioned (dropout, if drawn, applies to the loss's forward only)."""
        config = self.config
        if draws.step_noise is None:
            raise ValueError("--rollout-ticks draws need step_noise: each tick's fresh ε, shape (R, B, C, p·m, h, w)")
        w = self._stream_w(draws)

        def predict(window, timesteps, frames):
            with self.accelerator.autocast():
                return self.forward(window, timesteps, ref_latent, clip, poses[:, frames], guidance=w)

        window, timesteps = objectives.roll_window(latents, noise, draws.step_noise.to(self.device, latents.dtype),
                                                   config.levels, config.frames_per_cohort, predict)
        last = slice(config.rollout_ticks * config.frames_per_cohort, None)
        return window, timesteps, latents[:, :, last], poses[:, last]

    @torch.no_grad()
    def _update_target(self) -> None:
        self.ema.step(self._models.denoising_unet.parameters())

    def train(self) -> Path:
        config, accelerator = self.config, self.accelerator
        log = LossLog(self.output, start_step=self.step) if accelerator.is_main_process else None
        self._write_config()
        start, window = time.time(), []
        last_line = start
        batches = self._batches()
        while self.step < config.steps:
            batch = next(batches)
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(self.step)
            loss = self.loss(batch, self.step)
            accelerator.backward(loss)
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.params, config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.target is not None:
                self._update_target()
            self.step += 1
            window.append(accelerator.reduce(loss.detach(), reduction="mean").item())
            if log is not None and (self.step % config.log_every == 0 or self.step == config.steps):
                now = time.time()
                log.append(self.step, sum(window) / len(window), self.learning_rate(self.step - 1), now - start)
                log.draw(f"stage {config.stage}")
                # seconds per step since the previous line (a resumed log's earlier rows are not this run's)
                print(f"stage {config.stage} step {self.step}/{config.steps} loss {sum(window) / len(window):.5f} "
                      f"{(now - last_line) / len(window):.2f}s/step", flush=True)
                window, last_line = [], now
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < config.steps:
                self.save_checkpoint()
        final = self.output / "final"
        if accelerator.is_main_process:
            save_models(self._models, final)
        accelerator.wait_for_everyone()
        return final

    def _write_config(self) -> None:
        if self.accelerator.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "train_config.json").write_text(json.dumps(asdict(self.config), indent=2))

    def save_checkpoint(self) -> Path:
        folder = self.output / "checkpoints" / f"step-{self.step:06d}"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in self._models.state_dict().items()},
                      folder / "models.safetensors")
            if self.target is not None:
                save_file({k: v.cpu().contiguous() for k, v in self.target.models.denoising_unet.state_dict().items()},
                          folder / "target.safetensors")
            _save_optimizer(self.optimizer, folder)
            save_models(self._models, folder / "model")  # loadable with load_rain, for evaluating mid-run
            # written last: its presence marks a complete checkpoint
            (folder / "trainer_state.json").write_text(json.dumps({"step": self.step, "config": asdict(self.config)}))
        self.accelerator.wait_for_everyone()
        return folder

    def _load(self, folder: Path) -> None:
        state = json.loads((folder / "trainer_state.json").read_text())
        self._models.load_state_dict(load_file(folder / "models.safetensors"))
        if self.target is not None and (folder / "target.safetensors").exists():
            # copies into the parameters in place, i.e. into the EMA's shadow tensors
            self.target.models.denoising_unet.load_state_dict(load_file(folder / "target.safetensors"))
            self.ema.optimization_step = int(state["step"])
        _load_optimizer(self.optimizer, folder)
        self.step = int(state["step"])
        self.accelerator.print(f"resumed from {folder} at step {self.step}")


def train(config: TrainConfig) -> Path:
    """Run one stage; returns the folder of the trained model (our safetensors layout)."""
    return Trainer(config).train()

