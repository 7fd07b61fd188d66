"""The three RAIN training stages through Hugging Face `accelerate` (one CPU, one GPU, or DDP).

- Stage 1, image pairs: reference UNet + denoising UNet (motion modules frozen) + pose guider, uniform
  t ~ U{0 … T−1}, v-prediction, condition dropout.
- Stage 2, clips of K = p·m frames with the stepped-noise ladder: t0 ~ U{0 … T/p − 1} per clip, cohort g at
  t0 + (T/p)·g, loss per frame at its own t. Trains the motion modules (AnimateAnyone) or everything.
- Stage 3, LCM distillation on the same stepped windows: the student (with its w-embedding) at t must
  agree, through the consistency boundary condition, with an EMA target at t − k after one DDIM step of
  the frozen stage-2 teacher with classifier-free guidance w ~ U[w_min, w_max].

Every random draw of step n comes from a generator seeded by (seed, n, process): a resumed run sees
exactly the batches, noise and timesteps it would have seen, so it continues to the same losses.
Condition dropout and the teacher's unconditional branch use a black reference image and zero CLIP
tokens (the reference path cannot be switched off per sample inside a batch).
"""

from __future__ import annotations

import copy
import json
import time
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

TINY_PRESET = {"block_out_channels": (48, 64, 64), "codec_factor": 2, "cross_attention_blocks": (False, True, False)}
"""Sizes of the shipped tiny model: 3 UNet levels on the 12×32×32 space_to_depth latent of a 64 px image, the
transformers (self-, reference and CLIP attention, motion modules) on the 16×16 level only. Why: a ×4 latent
(48 channels a position) was cheaper per step but after 900 steps still emitted per-pixel noise (x0 from t = 249:
17.3 dB), while ×2 reached 21.2 dB in 400 steps; dropping attention from the 32×32 level cut the ×2 step on one
CPU core from ~3.2 s to ~1.1 s at batch 8 (bench/denoise_levels.py, NOTES.md). 4.0 M parameters, 16 MB."""


@dataclass
class TrainConfig:
    stage: int
    output: str
    model: str = "tiny"  # "tiny", "sd15" or a rain_config.json; ignored when `init` is given
    motion: bool = True  # False: the m = 1 baseline without motion modules (tiny/sd15 presets only)
    init: str | None = None  # a RAIN model folder to start from (the previous stage's output)
    teacher: str | None = None  # stage 3: the stage-2 model (default: `init`)
    data: str = "synthetic"
    height: int = 64
    width: int = 64
    batch_size: int = 8
    levels: int = 4  # p
    frames_per_cohort: int = 4  # m; stage 2/3 clips hold p·m frames
    stride: int = 1  # frame stride of video clips
    steps: int = 1000
    lr: float = 5e-4
    warmup_steps: int = 50
    decay_steps: int = 0  # the last `decay_steps` steps anneal the learning rate linearly down to lr / 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    condition_dropout: float = 0.1
    noise_offset: float = 0.0
    snr_gamma: float = 0.0
    train_parts: str = "auto"  # "all" | "motion" | "unet"; auto: stage 1 all but motion, 2 motion, 3 unet
    freeze_image_encoder: bool = False
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
        return 1 if self.stage == 1 else self.levels * self.frames_per_cohort


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


def without_motion(models: RainModels) -> RainModels:
    """The same networks minus the motion modules: the m = 1 baseline starting from a stage-1 model (whose
    zero-initialised, frozen motion modules are identities anyway)."""
    config = RainModelConfig.from_dict({**models.config.to_dict(), "motion": None})
    stripped = RainModels.build(config, vae=getattr(models.codec, "vae", None), with_image_encoder=models.image_encoder is not None)
    state = {k: v for k, v in models.state_dict().items() if "motion_modules" not in k}
    missing, unexpected = stripped.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"dropping the motion modules left parameters unmatched: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return stripped


class DenoiseForward(nn.Module):
    """What one training forward runs: reference image → CLIP tokens and reference cache, pose renders →
    pose features, noisy window → v. Wrapping it in one module lets accelerate/DDP see every trainable part."""

    def __init__(self, models: RainModels):
        super().__init__()
        self.models = models

    def forward(self, noisy, timesteps, ref_latent, reference_images, poses, keep, guidance=None):
        """noisy (B,C,F,h,w); timesteps (B,F); ref_latent (B,C,h,w); reference_images (B,3,H,W) in [0,1];
        poses (B,F,3,H,W) in [0,1]; keep (B,) 1 = conditioned, 0 = dropped; guidance (B,) w or None."""
        models = self.models
        batch = noisy.shape[0]
        if models.image_encoder is not None:
            clip = models.image_encoder.encode(reference_images.permute(0, 2, 3, 1))
        else:
            clip = noisy.new_zeros(batch, 1, models.config.cross_attention_dim)
        clip = clip.to(noisy.dtype) * keep[:, None, None].to(noisy.dtype)
        cache = models.reference_unet(ref_latent, clip)
        pose_features = models.pose_guider(rearrange(poses, "b f c h w -> b c f h w"))
        embedding = None
        if guidance is not None:
            embedding = guidance_embedding(guidance, models.config.cond_proj_dim).to(noisy.device, noisy.dtype)
        return models.denoising_unet(noisy, timesteps, clip, pose_features, embedding, cache, use_reference_kv_cache=False)


def enable_gradient_checkpointing(unet: nn.Module) -> None:
    """Recompute each UNet block in the backward pass instead of keeping its activations.

    The reference-attention processors hold per-call state (the reference tokens, the frame count) that
    the UNet clears after its forward; each checkpointed block remembers that state and puts it back
    while it is recomputed.
    """
    from torch.utils.checkpoint import checkpoint

    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        processors = [m.processor for m in block.modules() if hasattr(m, "processor") and hasattr(m.processor, "num_frames")]

        def checkpointed(*args, _forward=block.forward, _processors=processors, **kwargs):
            state = [(p.reference, p.num_frames) for p in _processors]

            def run(*inner_args, **inner_kwargs):
                previous = [(p.reference, p.num_frames) for p in _processors]
                for p, (reference, frames) in zip(_processors, state):
                    p.reference, p.num_frames = reference, frames
                try:
                    return _forward(*inner_args, **inner_kwargs)
                finally:
                    for p, (reference, frames) in zip(_processors, previous):
                        p.reference, p.num_frames = reference, frames

            return checkpoint(run, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed  # instance attribute: parameter names and the class stay untouched


def select_trainable(models: RainModels, config: TrainConfig) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze the parts this stage trains; returns the trainable parameters."""
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
        take(models.reference_unet)
        take(models.pose_guider)
        if config.stage == 1:  # a single frame cannot teach the temporal layers anything
            take([p for n, p in models.denoising_unet.named_parameters() if "motion_modules" not in n])
        else:
            take(models.denoising_unet)
        if models.image_encoder is not None and not config.freeze_image_encoder:
            take(models.image_encoder)
    return chosen


def step_generator(seed: int, step: int, process_index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, process_index]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ---- checkpoints (safetensors + JSON; nothing pickled) ----------------------------------------


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    tensors = load_file(folder / "optimizer.safetensors")
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def latest_checkpoint(output: str | Path) -> Path | None:
    folders = sorted(Path(output, "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [f for f in folders if (f / "trainer_state.json").exists()]
    return complete[-1] if complete else None


# ---- the loop ---------------------------------------------------------------------------------


class Trainer:
    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator

        if config.stage not in (1, 2, 3):
            raise ValueError(f"--stage: expected 1, 2 or 3, found {config.stage}")
        if config.stage == 3 and not (config.init or config.teacher):
            raise ValueError("--stage 3 distils a stage-2 model: pass --init (and optionally --teacher) with its folder")
        self.config = config
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
        self.output = Path(config.output)
        if config.init:
            self.models = load_models(config.init)
            if not config.motion and self.models.config.motion is not None:
                self.models = without_motion(self.models)
        else:
            self.models = RainModels.build(model_config(config.model, config.motion))
        if config.stage == 3 and self.models.config.cond_proj_dim is None:
            raise ValueError("stage 3 needs a denoising UNet with a w-embedding (cond_proj_dim); this model has none")
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.models.reference_unet)
            enable_gradient_checkpointing(self.models.denoising_unet)
        self.params = select_trainable(self.models, config)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.forward = DenoiseForward(self.models)
        self.forward, self.optimizer = self.accelerator.prepare(self.forward, self.optimizer)
        self.device = self.accelerator.device
        self.teacher = self.target = None
        if config.stage == 3:
            teacher = load_models(config.teacher) if config.teacher else copy.deepcopy(self.models)
            self.teacher = DenoiseForward(teacher.requires_grad_(False).eval()).to(self.device)
            self.target = DenoiseForward(copy.deepcopy(self.models).requires_grad_(False).eval()).to(self.device)
        self.step = 0
        if config.resume:
            checkpoint = latest_checkpoint(self.output)
            if checkpoint is not None:
                self._load(checkpoint)
        self.dataset = build_dataset(config.data, config.height, config.width, config.frames, config.seed, config.stride)

    # parameters of the module being trained, whatever wrapper accelerate put around it
    @property
    def _models(self) -> RainModels:
        return self.accelerator.unwrap_model(self.forward).models

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, constant, then (with decay_steps) a linear anneal to lr / 10 at the last step. Until the
        anneal starts the rate does not depend on `steps`, so a run stopped early and resumed with the final
        `--steps` is the same run."""
        config = self.config
        rate = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
        decay_start = config.steps - config.decay_steps
        if config.decay_steps > 0 and step >= decay_start:
            rate *= 1.0 - 0.9 * (step - decay_start + 1) / config.decay_steps
        return rate

    def _batches(self):
        sampler = StepIndices(self.step, self.config.batch_size, self.accelerator.process_index, self.accelerator.num_processes)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.config.batch_size, sampler=sampler,
                                             collate_fn=collate, num_workers=self.config.num_workers)
        yield from loader

    def _encode(self, batch):
        """Codec latents of the frames (B,C,F,h,w) and of the reference (B,C,h,w); the codec is never trained."""
        codec = self._models.codec
        frames = batch["frames"].to(self.device)
        with torch.no_grad():
            latents = codec.encode(rearrange(frames, "b f c h w -> (b f) c h w"))
            latents = rearrange(latents, "(b f) c h w -> b c f h w", b=frames.shape[0]).float()
        return latents

    def loss(self, batch, step: int) -> torch.Tensor:
        """The loss of `step` on `batch` (all randomness drawn from the step's own generator)."""
        config = self.config
        generator = step_generator(config.seed, step, self.accelerator.process_index)
        latents = self._encode(batch)
        batch_size = latents.shape[0]
        keep = (torch.rand(batch_size, generator=generator) >= config.condition_dropout).float()
        if config.stage == 3:
            keep = torch.ones(batch_size)
        reference = batch["reference"] * keep[:, None, None, None]  # dropped: a black reference
        reference = reference.to(self.device)
        with torch.no_grad():
            ref_latent = self._models.codec.encode(reference).float()
        poses = batch["poses"].to(self.device)
        noise = torch.randn(latents.shape, generator=generator)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn((*latents.shape[:3], 1, 1), generator=generator)
        if config.stage == 1:
            timesteps = torch.randint(0, objectives.NUM_TRAIN_TIMESTEPS, (batch_size, 1), generator=generator)
        else:
            grid = config.skip_step if config.stage == 3 else 1
            timesteps = objectives.sample_stepped_timesteps(batch_size, config.levels, config.frames_per_cohort, generator, grid)
        noise, timesteps, keep = noise.to(self.device), timesteps.to(self.device), keep.to(self.device)
        noisy = objectives.add_noise(latents, noise, timesteps)
        if config.stage < 3:
            target = objectives.velocity(latents, noise, timesteps)
            with self.accelerator.autocast():
                v = self.forward(noisy, timesteps, ref_latent, reference, poses, keep)
            weights = objectives.snr_weights(timesteps, config.snr_gamma) if config.snr_gamma > 0 else None
            return objectives.per_frame_mse(v, target, weights)

        w = config.guidance_min + (config.guidance_max - config.guidance_min) * torch.rand(batch_size, generator=generator)
        w = w.to(self.device)
        previous = timesteps - config.skip_step
        with torch.no_grad(), self.accelerator.autocast():
            conditioned = self.teacher(noisy, timesteps, ref_latent, reference, poses, keep).float()
            black = torch.zeros_like(reference)
            unconditioned = self.teacher(noisy, timesteps, self._models.codec.encode(black), black, poses, torch.zeros_like(keep)).float()
            guided = unconditioned + w[:, None, None, None, None] * (conditioned - unconditioned)
            solved = objectives.ddim_step(noisy, guided, timesteps, previous)
            target_t = previous.clamp(min=0)  # ᾱ(−1) = 1 and c_skip(0) = 1: the target is then the solved sample
            v_target = self.target(solved, target_t, ref_latent, reference, poses, keep, guidance=w).float()
            target = objectives.consistency_output(solved, v_target, target_t)
        with self.accelerator.autocast():
            v = self.forward(noisy, timesteps, ref_latent, reference, poses, keep, guidance=w)
        prediction = objectives.consistency_output(noisy, v.float(), timesteps)
        return objectives.pseudo_huber(prediction, target)

    @torch.no_grad()
    def _update_target(self) -> None:
        decay = self.config.ema_decay
        student = self._models.denoising_unet.state_dict()
        for name, value in self.target.models.denoising_unet.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(student[name].to(value.dtype), alpha=1 - decay)

    def train(self) -> Path:
        config, accelerator = self.config, self.accelerator
        log = LossLog(self.output, start_step=self.step) if accelerator.is_main_process else None
        self._write_config()
        start, window = time.time(), []
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
                log.append(self.step, sum(window) / len(window), self.learning_rate(self.step - 1), time.time() - start)
                log.draw(f"stage {config.stage}")
                print(f"stage {config.stage} step {self.step}/{config.steps} loss {sum(window) / len(window):.5f} "
                      f"{(time.time() - start) / max(1, len(log.rows)) :.1f}s/log", flush=True)
                window = []
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
            self.target.models.denoising_unet.load_state_dict(load_file(folder / "target.safetensors"))
        _load_optimizer(self.optimizer, folder)
        self.step = int(state["step"])
        self.accelerator.print(f"resumed from {folder} at step {self.step}")


def train(config: TrainConfig) -> Path:
    """Run one stage; returns the folder of the trained model (our safetensors layout)."""
    return Trainer(config).train()

