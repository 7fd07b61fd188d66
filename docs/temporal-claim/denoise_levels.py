"""How well a RAIN model denoises each level of the stream, one frame at a time, on held-out characters.

For each held-out frame, the ground-truth latent is noised to t ∈ {999, 749, 499, 249} (the 4-step LCM grid
the stream walks), the denoising UNet predicts v, and the x0 it implies is decoded and scored (PSNR against
the ground truth). A model that has learnt the pose → image mapping scores well at t = 999; one that has
also learnt to denoise scores higher still at t = 249, which is the level whose estimate the stream emits.
A quick training diagnostic (seconds per checkpoint), not the quality table: that is bench/quality.py.

With `--motion-off` every model that has motion modules is scored a second time without them (the same
weights, the temporal layers removed): the gap in x0 PSNR and in x0 temporal error (mean |Δ x0 − Δ truth|
between consecutive frames of the window, 0–255 units) is what the motion modules contribute so far.

With `--staircase` the window is laid out as the stream holds it (and as stage 2 trains it): the clip's frames in
four cohorts, the oldest at t = 249 and the newest at t = 999, each cohort scored at its own level. All-one-level
windows (the default) are outside what a RAIN model trains on, so only the staircase reading is fair to its
motion modules; a model without them sees the same per-frame inputs either way.

    .venv/bin/python docs/temporal-claim/denoise_levels.py RAIN_MODEL BASELINE_MODEL --world v2 --clips 8 --frames 16 --staircase
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file is docs/temporal-claim/denoise_levels.py)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.quality import heldout_clips, psnr, temporal_error  # noqa: E402
from rain_core.train import objectives  # noqa: E402
from rain_core.train.parts import DenoiseForward  # noqa: E402


@torch.no_grad()
def level_psnr(models, clips, timesteps, guidance: float | None, seed: int = 0) -> dict[int, float]:
    """x0 PSNR per level (see `level_scores`)."""
    return {t: scores[0] for t, scores in level_scores(models, clips, timesteps, guidance, seed).items()}


def x0_images(forward, latents, steps, condition, guidance, generator) -> np.ndarray:
    """The window `latents` (1, C, F, h, w) noised to `steps` (1, F), one UNet call, its x0 decoded (F, H, W, 3);
    condition = (reference latent, CLIP input, poses)."""
    noisy = objectives.add_noise(latents, torch.randn(latents.shape, generator=generator), steps)
    x0 = objectives.x0_from_v(noisy, forward(noisy, steps, *condition, guidance=guidance), steps)
    return forward.models.codec.decode(x0[0].permute(1, 0, 2, 3)).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def level_scores(models, clips, timesteps, guidance: float | None, seed: int = 0,
                 staircase: bool = False) -> dict[int, tuple[float, float]]:
    """(x0 PSNR, x0 temporal error) per level t: each clip's frames form one window, all noised to t, or, with
    `staircase`, split into len(timesteps) cohorts, oldest first at the lowest level (timesteps descending)."""
    forward = DenoiseForward(models).eval()
    codec = models.codec
    generator = torch.Generator().manual_seed(seed)
    scores = {t: [] for t in timesteps}
    changes = {t: [] for t in timesteps}
    w = None if guidance is None else torch.tensor([guidance])
    for reference, truth, poses in clips:
        frames = torch.from_numpy(truth).permute(0, 3, 1, 2).float()  # (F,3,H,W)
        latents = codec.encode(frames).float().permute(1, 0, 2, 3)[None]  # (1,C,F,h,w)
        ref = torch.from_numpy(reference).permute(2, 0, 1).float()[None]
        ref_latent = codec.encode(ref).float()
        pose = torch.from_numpy(poses).permute(0, 3, 1, 2).float()[None]
        clip = forward.clip_input(ref)  # CLIP pixel values of the reference (None without an image encoder)
        condition = (ref_latent, clip, pose)
        if staircase:
            levels = len(timesteps)
            cohort = latents.shape[2] // levels
            if cohort * levels != latents.shape[2]:
                raise ValueError(f"--frames {latents.shape[2]} must be a multiple of the {levels} levels for --staircase")
            steps = objectives.cohort_timesteps(torch.tensor([min(timesteps)]), levels, cohort)
            images = x0_images(forward, latents, steps, condition, w, generator)
            for k, t in enumerate(sorted(timesteps)):
                part = slice(k * cohort, (k + 1) * cohort)
                scores[t].append(psnr(images[part], truth[part]).mean())
                changes[t].append(temporal_error(images[part], truth[part]))
            continue
        for t in timesteps:
            images = x0_images(forward, latents, torch.full((1, latents.shape[2]), t), condition, w, generator)
            scores[t].append(psnr(images, truth).mean())
            changes[t].append(temporal_error(images, truth))
    return {t: (float(np.mean(scores[t])), float(np.mean(changes[t]))) for t in timesteps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="RAIN model folders")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip: one window through the UNet")
    parser.add_argument("--staircase", action="store_true",
                        help="lay the window out as the stream does (oldest cohort at t=249, newest at t=999)")
    parser.add_argument("--motion-off", action="store_true", help="also score each model without its motion modules")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=None, help="w fed to the w-embedding (LCM models)")
    parser.add_argument("--world", default="v1", choices=("v1", "v2"), help="synthetic world of the held-out clips")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from rain_core.loading import load_rain

    clips = heldout_clips(args.clips, args.frames, args.size, args.world)
    copy = np.mean([psnr(np.repeat(r[None], len(t), 0), t).mean() for r, t, _ in clips])
    timesteps = [999, 749, 499, 249]
    print(f"held-out world {args.world}: {args.clips} clips × {args.frames} frames at {args.size}px; copying the reference: {copy:.2f} dB")
    print("| model | " + " | ".join(f"x0 PSNR / temporal error t={t}" for t in timesteps) + " |")
    print("|---|" + "---|" * len(timesteps))
    for folder in args.models:
        models = load_rain(folder).eval()
        variants = [(folder, models)]
        if args.motion_off and models.config.motion is not None:
            from rain_core.train.parts import without_motion

            variants.append((f"{folder} without motion modules", without_motion(models).eval()))
        for name, variant in variants:
            scores = level_scores(variant, clips, timesteps, args.guidance, staircase=args.staircase)
            print(f"| {name} | " + " | ".join(f"{scores[t][0]:.2f} / {scores[t][1]:.2f}" for t in timesteps) + " |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
