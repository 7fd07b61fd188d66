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

The run's settings are in config.py, the pieces of a step (forward, parameters, optimiser, draws) in parts.py,
checkpoints in checkpoints.py; this module is the loop.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from einops import rearrange
from safetensors.torch import load_file, save_file

from ..models import RainModels
from . import objectives
from .checkpoints import latest_checkpoint, load_optimizer, save_optimizer
from .config import TrainConfig, model_config, parse_motion_blocks
from .curves import LossLog
from .data import StepIndices, build_dataset, collate
from .init import init_for_training, vae_folder
from .narrow import narrow_top_level
from .parts import (
    DenoiseForward,
    DrawSource,
    StepDraws,
    build_optimizer,
    learning_rate_factor,
    load_models,
    save_models,
    select_trainable,
    step_generator,
    without_motion,
)


class Trainer:
    def __init__(self, config: TrainConfig, draws: DrawSource | None = None):
        """`draws`: where each step's noise, timesteps and dropout decision come from (default: the step's own
        seeded generator, `seeded_draws`)."""
        try:
            from accelerate import Accelerator  # optional extra [train]
            from accelerate.utils import DistributedDataParallelKwargs  # optional extra [train]
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
        if config.init and config.init_sd_unet:
            raise ValueError("--init and --init-sd-unet both say where to start: pass one of them")
        if config.init:
            self.models = load_models(config.init)
            if not config.motion and self.models.config.motion is not None:
                self.models = without_motion(self.models)
        elif config.init_sd_unet:
            self.models = init_for_training(config.init_sd_unet, config.init_motion_modules,
                                            model_config(config.model, config.motion), vae_folder(config.vae),
                                            config.image_encoder)
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
            save_optimizer(self.optimizer, folder)
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
        load_optimizer(self.optimizer, folder)
        self.step = int(state["step"])
        self.accelerator.print(f"resumed from {folder} at step {self.step}")


def train(config: TrainConfig) -> Path:
    """Run one stage; returns the folder of the trained model (our safetensors layout)."""
    return Trainer(config).train()

