"""`rain train`: one command line per stage, the same on a CPU, one GPU or many (accelerate launch)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from pathlib import Path

from ..io.outputs import OutputError, OutputLock
from .config import TrainConfig
from .trainer import train

_HELP = {
    "stage": "1: image pairs (reference UNet + denoising UNet + pose guider); 2: clips with motion modules and "
    "stepped noise; 3: LCM distillation to `levels` steps with the w-embedding",
    "output": "folder for checkpoints, loss.csv/loss.png and the trained model (OUTPUT/final)",
    "model": "network sizes for a fresh model: tiny, sd15 or a rain_config.json (ignored with --init)",
    "motion": "build the denoising UNet with motion modules (--no-motion: the m = 1 StreamDiffusion baseline)",
    "motion_blocks": "comma-separated 0/1 per UNet level, e.g. 0,0,1: drop the motion modules of the 0 levels (with "
    "--init: fine-tune the rest; the built-in model was made so)",
    "top_width": "narrow the top UNet level to N channels (a multiple of the norm groups) before training; with --init "
    "the trained channels are pruned, keeping each norm group's strongest, and the run fine-tunes the rest",
    "init": "RAIN model folder to start from (the previous stage's OUTPUT/final, or converted official weights)",
    "init_sd_unet": "a fresh model of --model's size with both UNets from SD-1.5 / sd-image-variations UNet weights (a "
    "diffusers folder with unet/, the unet folder, or a single LDM/diffusers file), the AnimateAnyone way",
    "init_motion_modules": "with --init-sd-unet: AnimateDiff motion-module weights (e.g. mm_sd_v15_v2.ckpt); absent "
    "ones start as the identity",
    "vae": "with --init-sd-unet and an SD-size model: the sd-vae-ft-mse diffusers folder",
    "image_encoder": "with --init-sd-unet: the sd-image-variations image_encoder folder (default: a fresh one of the "
    "model's size)",
    "distill": "stage 2: a trained (stage-3) model folder whose outputs, at guidance w drawn as in stage 3, are the "
    "targets instead of the data; retrains a narrower architecture (--top-width) to a model's function",
    "rollout_ticks": "stage 2: before each loss, run the 4-step stream over the clip for N ticks with the model itself "
    "(no gradient) and train on the window it leaves, towards the ground truth: the inputs the stream really gives "
    "the model (its own re-noised predictions). levels − 1 puts every cohort but the newest on that path; clips hold "
    "N × frames-per-cohort more frames",
    "rollout_fraction": "with --rollout-ticks: the share of steps that roll (scheduled sampling); the others train "
    "plain stage 2 on the clip's last p·m frames noised from the ground truth (default 1: every step)",
    "stream_guidance": "stage 2 of a model with a trained w-embedding (an LCM model fine-tuned on data): feed every "
    "forward a w drawn in [guidance-min, guidance-max], as the stream does, and drop no conditions",
    "teacher": "stage 3: the stage-2 model folder used as teacher (default: --init)",
    "data": "'synthetic' (procedural characters) or a meta JSON listing {\"video\", \"pose\"|\"keypoints\"} entries",
    "levels": "p: noise levels in flight (stage 2/3 clips hold levels × frames-per-cohort frames)",
    "frames_per_cohort": "m: frames sharing one noise level",
    "train_parts": "auto (stage 1: all but motion, 2: motion, 3: denoising UNet), all, motion or unet",
    "skip_step": "stage 3: teacher DDIM step length k (must divide 1000 / levels)",
    "ema_decay": "stage 3: EMA rate of the consistency target network",
    "guidance_min": "stage 3, --distill and --stream-guidance: smallest teacher CFG scale w drawn",
    "guidance_max": "stage 3, --distill and --stream-guidance: largest teacher CFG scale w drawn",
    "decay_steps": "anneal the learning rate linearly to lr/10 over the last N steps (a run stopped early and "
    "resumed with the final --steps and --decay-steps is the same run)",
    "snr_gamma": "min-SNR-γ loss weighting min(SNR + 1, γ) / (SNR + 1) (v-prediction; 0: plain v-MSE; the reference uses 5)",
    "mixed_precision": "no, fp16 or bf16 (accelerate's autocast)",
    "gradient_checkpointing": "recompute UNet blocks in the backward pass (less memory, more time)",
    "resume": "continue from the latest complete checkpoint in OUTPUT/checkpoints",
    "threads": "torch CPU threads (0: torch's default); on a busy shared CPU 1 thread avoids spin-waiting and runs ~10x faster",
    "cpu": "force the CPU even when a GPU is present",
    "checkpoint_every": "steps between checkpoints (0: none)",
    "condition_dropout": "probability that a batch trains unconditioned: no reference UNet pass (empty reference bank) "
    "and CLIP of a zero image, one coin per batch as in the reference training code",
    "freeze_image_encoder": "keep the CLIP image encoder fixed, as the reference does (--no-freeze-image-encoder trains it)",
    "freeze_reference_last_up": "keep the reference UNet's last up block (up_blocks.3 at SD size) fixed, as the reference does",
    "noise_offset": "add offset × N(0, 1) per clip and channel (shared by the clip's frames) to the noise",
    "lr_scheduler": "diffusers get_scheduler name: constant_with_warmup (constant after --warmup-steps; 0 = the reference's "
    "constant), constant, linear, cosine, polynomial, … (the decaying ones depend on --steps)",
    "warmup_steps": "linear warm-up from 0 over N steps (diffusers' warm-up)",
    "optimizer": "adamw (torch) or adamw8bit (bitsandbytes' 8-bit AdamW, the reference's stage-2 choice, for GPU memory; "
    "pip install 'comfyui-rain[train-8bit]')",
    "weight_decay": "AdamW weight decay (the reference: 1e-2)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rain train",
        description="Train or fine-tune RAIN: stage 1, 2 or 3. Multi-GPU: `accelerate launch -m rain_core.train ...`.",
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        help_text = _HELP.get(field.name, "")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
            continue
        kind = {"int": int, "float": float}.get(str(field.type), str)
        required = field.default is dataclasses.MISSING
        parser.add_argument(flag, type=kind, required=required, default=None if required else field.default,
                            help=f"{help_text} (default: {field.default})" if not required else help_text)
    return parser


def claim_output_folder(config: TrainConfig):
    """Check --output before training and lock it (a context manager; nothing is held by other ranks).

    A new run starts in a new or empty folder: an earlier run's loss.csv, checkpoints and final model there would
    be overwritten step by step, and rain never replaces what the user did not name. `--resume` names the folder
    as the run to continue. One trainer per folder: the lock (`.NAME.lock` beside it) refuses a second one."""
    output = Path(config.output)
    if not output.parent.is_dir():
        raise OutputError(f"--output {output}: the folder {output.parent} does not exist; create it first.")
    if os.path.lexists(output) and not output.is_dir():
        raise OutputError(f"--output {output}: this is a file; --output is a folder.")
    if output.is_dir() and any(os.scandir(output)) and not config.resume:
        held = sorted(entry.name for entry in os.scandir(output))
        raise OutputError(f"--output {output}: the folder already holds {', '.join(held[:4])}"
                          f"{' …' if len(held) > 4 else ''}; a new run starts in a new or empty folder. Pass "
                          "--resume to continue the run there, or choose another --output.")
    # under `accelerate launch` every process runs this; the main one (RANK 0) holds the lock for all
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) != 0:
        return contextlib.nullcontext()
    lock = OutputLock(output)
    try:
        lock.acquire("--output")
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"--output {output}: cannot write in {output.parent} ({error.strerror or error}).") from None
    held = contextlib.ExitStack()
    held.callback(lock.release)
    return held


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of `rain train` and `python -m rain_core.train`; prints where the model went."""
    args = build_parser().parse_args(argv)
    config = TrainConfig(**vars(args))
    with claim_output_folder(config):
        final = train(config)
    print(f"trained model: {final}")
    return 0
