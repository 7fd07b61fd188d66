"""What a training run is: `TrainConfig` (every flag of `rain train`), the model sizes it builds, the tiny preset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..models import RainModelConfig

TINY_PRESET = {
    "block_out_channels": (48, 64, 64),
    "codec_factor": 2,
    "cross_attention_blocks": (False, True, False),
    "motion_blocks": (False, False, True),
}


@dataclass
class TrainConfig:
    stage: int
    output: str
    model: str = "tiny"  # "tiny", "sd15" or a rain_config.json; ignored when `init` is given
    motion: bool = True  # False: the m = 1 baseline without motion modules (tiny/sd15 presets only)
    motion_blocks: str | None = None  # "0,0,1": which UNet levels keep motion modules (None: the model's own)
    top_width: int = 0  # narrow the top UNet level to N channels before training (0: keep the model's)
    init: str | None = None  # a RAIN model folder to start from (the previous stage's output)
    # a fresh model of `model`'s size initialised the AnimateAnyone way (rain_core.train.init): both UNets from SD-1.5
    # / sd-image-variations UNet weights, motion modules from AnimateDiff; the VAE and image encoder from folders
    init_sd_unet: str | None = None
    init_motion_modules: str | None = None
    vae: str | None = None
    image_encoder: str | None = None
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


def parse_motion_blocks(text: str, levels: int) -> tuple[bool, ...]:
    flags = [part.strip() for part in text.split(",")]
    if len(flags) != levels or any(flag not in ("0", "1") for flag in flags):
        raise ValueError(f"--motion-blocks {text}: expected {levels} comma-separated 0/1 flags, one per UNet level "
                         f"(e.g. {','.join(['0'] + ['1'] * (levels - 1))})")
    return tuple(flag == "1" for flag in flags)

