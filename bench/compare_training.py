"""Compare our training step with the public reference training code on the same tiny networks and batch.

The reference is Moore-AnimateAnyone's `train_stage_1.py` / `train_stage_2.py` (Apache-2.0), the nearest public
training code for RAIN's networks. Its side runs in its own environment (diffusers 0.24) through
`bench/compare_training_reference.py`, a subprocess with its own Python; tensors travel as safetensors files. For
every row both sides start from the same random weights (every parameter random, official file layout), the same
latents, CLIP input, pose renders, noise, timesteps and dropout coin, and the script prints the relative error of
the loss and of every trainable parameter's gradient (the worst tensor, and all gradients together).

Set up the reference side once (outside this repository; nothing of it is committed):

    fetch github:MooreThreads/Moore-AnimateAnyone, then
    git --git-dir=MIRROR archive HEAD | tar -x -C $MAA_SRC
    python3 -m venv $REF_VENV && $REF_VENV/bin/pip install -q torch==2.13.0 diffusers==0.24.0 \\
        huggingface-hub==0.25.1 transformers==4.44.2 omegaconf einops "numpy<2" safetensors

Then:

    .venv/bin/python bench/compare_training.py --reference-python $REF_VENV/bin/python \\
        --reference-src $MAA_SRC [--run RUN_DIR]

Rows: stage 1 (one image per sample) and stage 2 with one level (`--levels 1`: 4 frames, one t per clip, motion
modules trained), each with min-SNR γ = 0 / 5 and condition dropout off / on (the whole batch dropped). The
timesteps include t = 999 (SNR 0) where γ is on. Target: ≤ 1e-5 relative on every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rain_core.loading import convert_official
from rain_core.models import RainModelConfig
from rain_core.models.config import ClipConfig, MotionConfig
from rain_core.train.config import TrainConfig
from rain_core.train.parts import StepDraws
from rain_core.train.trainer import Trainer

BATCH, FRAMES_STAGE2 = 2, 4
REFERENCE_SCRIPT = Path(__file__).resolve().with_name("compare_training_reference.py")


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    scale = theirs.double().norm()
    difference = (ours.double() - theirs.double()).norm()
    return (difference / scale).item() if scale > 0 else difference.item()


def compare_gradients(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], zero_share: float = 1e-4) -> dict:
    """Our gradients against the reference's, tensor by tensor, over every parameter either side gives one.

    A parameter that one side gives no gradient (it took no part in that side's loss: our single-CLIP-token
    cross-attention skips to_q, to_k and the norm before them, where softmax over one key is 1 and their
    gradient is analytically zero) is compared as a zero gradient, with the same tolerance: never skipped, so a
    gradient that really differs still fails. A tensor whose reference gradient is numerically zero (at most
    `zero_share` of the whole gradient's norm) is measured against the whole gradient's norm, every other
    tensor against its own. Returns names, "all" (all tensors together), "worst" / "worst_error" (the worst
    tensor measured against itself), "zeros" (tensors measured against the whole), "zero_error" (their worst),
    and "one_sided" (the names only one side produced)."""
    names = sorted(set(ours) | set(theirs))
    if not names:
        raise ValueError("no gradients to compare")
    mine = {n: ours[n] if n in ours else torch.zeros_like(theirs[n]) for n in names}
    reference = {n: theirs[n] if n in theirs else torch.zeros_like(ours[n]) for n in names}
    flat_ours = torch.cat([mine[n].flatten() for n in names])
    flat_theirs = torch.cat([reference[n].flatten() for n in names])
    total = flat_theirs.double().norm().item()
    zeros = [n for n in names if reference[n].double().norm().item() <= zero_share * total]
    errors = {n: relative_error(mine[n], reference[n]) for n in names if n not in zeros}
    scale = total if total > 0 else 1.0
    zero_error = max([(mine[n] - reference[n]).double().norm().item() / scale for n in zeros], default=0.0)
    worst = max(errors, key=errors.get) if errors else None
    return {"names": names, "all": relative_error(flat_ours, flat_theirs), "worst": worst,
            "worst_error": errors[worst] if worst else 0.0, "zeros": zeros, "zero_error": zero_error,
            "one_sided": sorted(set(ours) ^ set(theirs))}


def our_config(sizes: dict, motion: bool) -> RainModelConfig:
    motion_kwargs = sizes["motion"]["motion_module_kwargs"]
    return RainModelConfig(
        latent_channels=4,
        block_out_channels=tuple(sizes["block_out_channels"]),
        cross_attention_blocks=(True, True, True, False),
        layers_per_block=1,
        attention_heads=sizes["attention_heads"],
        cross_attention_dim=sizes["cross_attention_dim"],
        norm_num_groups=32,
        cond_proj_dim=None,  # Moore-AnimateAnyone's UNet has no LCM w-embedding
        motion=MotionConfig(num_attention_heads=motion_kwargs["num_attention_heads"],
                            max_frames=motion_kwargs["temporal_position_encoding_max_len"]) if motion else None,
        pose_guider_channels=tuple(sizes["pose_guider_channels"]),
        codec="vae",
        codec_factor=8,
        vae={"block_out_channels": [32] * 4, "down_block_types": ["DownEncoderBlock2D"] * 4,
             "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 1, "latent_channels": 4},
        clip=ClipConfig(**sizes["clip"]),
        taesdv_channels=None,
    )


def rows() -> list[dict]:
    table = []
    for stage in (1, 2):
        for gamma in (0.0, 5.0):
            for drop in (False, True):
                table.append({"stage": stage, "snr_gamma": gamma, "drop": drop, "uncond_ratio": 0.1,
                              "noise_offset": 0.05})
    return table


def make_inputs(table: list[dict], latent: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images (only their shape reaches the VAE stand-in), raw latents, CLIP pixels, pose renders, noise,
    offset noise and timesteps of every row."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    image = latent * 8
    for index, row in enumerate(table):
        frames = 1 if row["stage"] == 1 else FRAMES_STAGE2
        images = (BATCH, 3, image, image) if row["stage"] == 1 else (BATCH, frames, 3, image, image)
        t = torch.randint(0, 1000, (BATCH,), generator=generator)
        t[0] = 999  # SNR 0 on the zero-terminal-SNR schedule: weight 1 with γ on (the bug of issue 18 gave 0)
        values = {
            "images": torch.rand(images, generator=generator),
            "raw_latents": torch.randn(BATCH * frames, 4, latent, latent, generator=generator),
            "raw_ref_latents": torch.randn(BATCH, 4, latent, latent, generator=generator),
            "reference": torch.rand(BATCH, 3, image, image, generator=generator),
            "clip_pixels": torch.randn(BATCH, 3, 32, 32, generator=generator),
            "poses": torch.rand(BATCH, frames, 3, image, image, generator=generator),
            "noise": torch.randn(BATCH, 4, frames, latent, latent, generator=generator),
            "offset": torch.randn(BATCH, 4, 1, 1, 1, generator=generator),
            "timesteps": t,
        }
        inputs.update({f"row{index}.{k}": v for k, v in values.items()})
    return inputs


def run_reference(python: str, source: Path, run: Path, command: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([python, str(REFERENCE_SCRIPT), command, str(source), str(run)], env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"reference side ({command}) failed:\n{result.stderr[-4000:]}")


def our_models(run: Path, sizes: dict, stage: int) -> Path:
    """The reference side's official-layout files converted into our layout (bit-exact copies)."""
    official, ours = run / f"ckpt-s{stage}", run / f"ours-s{stage}"
    if not (ours / "rain_config.json").exists():
        config = our_config(sizes, motion=stage == 2)
        if not (official / "sd-vae-ft-mse").exists():  # never used (latents are fed directly): the loader wants one
            from diffusers import AutoencoderKL

            AutoencoderKL(**config.vae).save_pretrained(official / "sd-vae-ft-mse")
        convert_official(official, ours, config=config)
    return ours


def our_step(run: Path, sizes: dict, row: dict, x: dict, theirs: dict) -> dict:
    stage = row["stage"]
    frames = 1 if stage == 1 else FRAMES_STAGE2
    config = TrainConfig(stage=stage, output=str(run / "out"), init=str(our_models(run, sizes, stage)),
                         motion=stage == 2, height=sizes["latent"] * 8, width=sizes["latent"] * 8, batch_size=BATCH, levels=1,
                         frames_per_cohort=frames, snr_gamma=row["snr_gamma"], condition_dropout=row["uncond_ratio"],
                         noise_offset=row["noise_offset"], checkpoint_every=0, threads=1)
    trainer = Trainer(config)
    batch = {"latents": theirs["latents"], "ref_latent": theirs["ref_image_latents"], "clip_pixels": x["clip_pixels"],
             "poses": x["poses"]}
    timesteps = theirs["timesteps"][:, None].expand(BATCH, frames)  # one t per clip, as --levels 1 draws it
    loss = trainer.loss(batch, step=0, draws=StepDraws(theirs["noise"], timesteps, drop=row["drop"]))
    loss.backward()
    grads, trainable = {}, []
    models = trainer.models
    for part in ("reference_unet", "denoising_unet", "pose_guider", "image_encoder"):
        for name, param in getattr(models, part).named_parameters():
            name = f"{part}.{name}" if part != "image_encoder" else f"{part}.{name.removeprefix('model.')}"
            if param.requires_grad:
                trainable.append(name)
                if param.grad is not None:
                    grads[name] = param.grad
    return {"loss": loss.detach(), "grads": grads, "trainable": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-python", required=True, help="Python of the reference environment (diffusers 0.24)")
    parser.add_argument("--reference-src", required=True, type=Path, help="Moore-AnimateAnyone checkout")
    parser.add_argument("--run", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    if not (args.reference_src / "train_stage_1.py").exists():
        raise SystemExit(f"--reference-src {args.reference_src}: expected a Moore-AnimateAnyone checkout "
                         "(train_stage_1.py); see this script's docstring for how to get one")
    torch.set_num_threads(1)
    run = args.run or Path(tempfile.mkdtemp(prefix="compare-training-"))
    run.mkdir(parents=True, exist_ok=True)
    table = rows()
    run_reference(args.reference_python, args.reference_src, run, "build")
    (run / "rows.json").write_text(json.dumps(table))
    sizes = json.loads((run / "sizes.json").read_text())
    inputs = make_inputs(table, sizes["latent"])
    save_file(inputs, run / "inputs.safetensors")
    run_reference(args.reference_python, args.reference_src, run, "step")
    reference = load_file(run / "reference.safetensors")
    report = json.loads((run / "reference.json").read_text())

    print("errors relative to the reference: loss; all gradients together; the worst gradient tensor; tensors whose\n"
          "reference gradient is numerically zero (<= 1e-4 of the whole), against the whole gradient")
    print(f"{'row':44s} {'loss':>9s} {'loss':>8s} {'grads':>8s} {'worst':>8s} {'zeros':>8s}  tensors  worst tensor")
    worst_overall = 0.0
    for index, row in enumerate(table):
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(f"row{index}.")}
        theirs = {k.split(".", 1)[1]: v for k, v in reference.items() if k.startswith(f"row{index}.")}
        their_grads = {k[len("grad.") :]: v for k, v in theirs.items() if k.startswith("grad.")}
        ours = our_step(run, sizes, row, x, theirs)
        if report[str(index)]["uncond_fwd"] != row["drop"]:
            raise SystemExit(f"row {index}: the reference did not take the dropout decision it was given")
        # their reference UNet keeps an output head the released files (and ours) do not have; it gets no gradient
        their_trainable = {n for n in report[str(index)]["trainable"] if not n.startswith(("reference_unet.conv_norm_out", "reference_unet.conv_out"))}
        if their_trainable != set(ours["trainable"]):
            only_theirs = sorted(their_trainable - set(ours["trainable"]))[:5]
            only_ours = sorted(set(ours["trainable"]) - their_trainable)[:5]
            raise SystemExit(f"row {index}: trainable parameters differ: only theirs {only_theirs}, only ours {only_ours}")
        grads = compare_gradients(ours["grads"], their_grads)
        loss_error = relative_error(ours["loss"], theirs["loss"][0])
        worst_overall = max(worst_overall, loss_error, grads["all"], grads["worst_error"], grads["zero_error"])
        label = (f"stage {row['stage']}{' (levels 1, 4 frames)' if row['stage'] == 2 else ''}, "
                 f"γ={row['snr_gamma']:g}, dropout {'on' if row['drop'] else 'off'}")
        print(f"{label:44s} {ours['loss'].item():9.6f} {loss_error:8.1e} {grads['all']:8.1e} {grads['worst_error']:8.1e} "
              f"{grads['zero_error']:8.1e}  {len(grads['names']) - len(grads['zeros'])}+{len(grads['zeros'])}  "
              f"{grads['worst']}")
        if grads["one_sided"]:
            print(f"{'':44s} gradient on one side only, compared against zero: {', '.join(grads['one_sided'][:4])}"
                  f"{' …' if len(grads['one_sided']) > 4 else ''} ({len(grads['one_sided'])} tensors)")
    print(f"largest relative error of any loss or gradient tensor: {worst_overall:.1e} (target ≤ 1e-5)")
    print(f"run folder: {run}")
    sys.exit(0 if worst_overall <= 1e-5 else 1)


if __name__ == "__main__":
    main()
