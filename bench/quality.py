"""Quality of RAIN on held-out synthetic characters and motions, where every frame has a ground truth.

Prints one table: PSNR and SSIM against the ground truth, temporal flicker (mean |Δ output| minus mean
|Δ ground truth| between consecutive frames, in [0, 255] units: above 0 means the output shimmers more
than the motion explains) and drift (PSNR of the last 100 frames of a long stream minus that of its first
100), for
- the RAIN stream window (p levels × m frames per cohort, default 4 × 4),
- the StreamDiffusion-style baseline (m = 1, no motion modules; a separately trained model, --baseline),
- offline denoising of the same model (every frame of a window at the same level, all LCM steps),
- copying the reference image as the output (the floor any model must beat).

    .venv/bin/python bench/quality.py                       # the shipped tiny model, short run
    .venv/bin/python bench/quality.py --baseline runs/tiny-m1-s3/final --drift-frames 10000 --jobs 2

Numbers, never pass/fail: CI only checks that it runs.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rain_core.scheduler import LCMStepper, trailing_timesteps  # noqa: E402
from rain_core.stream import RainStream, StreamConfig  # noqa: E402
from rain_core.train.synthetic import SyntheticWorld, render_character, render_skeleton  # noqa: E402

SHIPPED = ROOT / "rain_core" / "assets" / "tiny-rain"
FPS = 12.0


# ---- metrics (images float32 (N, H, W, 3) in [0, 1]) ------------------------------------------


def psnr(output: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB."""
    mse = ((output.astype(np.float64) - truth.astype(np.float64)) ** 2).reshape(len(output), -1).mean(axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def ssim(output: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004: 11×11 Gaussian window σ = 1.5, on each channel, averaged)."""
    c1, c2 = 0.01**2, 0.03**2
    scores = []
    for a, b in zip(output.astype(np.float64), truth.astype(np.float64)):

        def blur(x):
            return cv2.GaussianBlur(x, (11, 11), 1.5)

        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
        value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        scores.append(value.mean())
    return np.array(scores)


def flicker(output: np.ndarray, truth: np.ndarray) -> float:
    """mean |Δ output| − mean |Δ truth| over consecutive frames, in 0–255 units."""
    if len(output) < 2:
        return float("nan")
    return float((np.abs(np.diff(output, axis=0)).mean() - np.abs(np.diff(truth, axis=0)).mean()) * 255)


# ---- held-out material ------------------------------------------------------------------------


def heldout_clip(world: SyntheticWorld, index: int, frames: int, size: int, start_frame: int = 0):
    """(reference, ground truth, poses) of held-out character/motion `index`, floats (N, H, W, 3) in [0, 1]."""
    heldout_id = SyntheticWorld.ids("heldout", 1, start=index)[0]  # kinds cycle with the id: walk, dance, …
    character, motion = world.character(heldout_id), world.motion(heldout_id)
    poses = world.clip_poses(character, motion, frames, FPS, start_frame / FPS)
    reference = render_character(character, world.reference_pose(character), size, size)
    truth = np.stack([render_character(character, p, size, size) for p in poses])
    skeletons = np.stack([render_skeleton(p, size, size) for p in poses])
    return reference / 255.0, truth.astype(np.float32) / 255.0, skeletons.astype(np.float32) / 255.0


# ---- ways to render ---------------------------------------------------------------------------


def stream_render(models, reference, poses, levels, frames_per_cohort, guidance, seed, size) -> np.ndarray:
    config = StreamConfig(levels=levels, frames_per_cohort=frames_per_cohort, steps=levels, guidance=guidance,
                          height=size, width=size, seed=seed)
    stream = RainStream(models, config)
    stream.set_reference(torch.from_numpy(reference).float())
    outputs = [stream.push(torch.from_numpy(poses)), stream.flush()]
    return torch.cat([o for o in outputs if o.shape[0]]).numpy()


@torch.no_grad()
def offline_render(models, reference, poses, window, steps, guidance, seed) -> np.ndarray:
    """Each chunk of `window` frames denoised together, all at the same level, through `steps` LCM steps."""
    generator = torch.Generator().manual_seed(seed)
    ref = torch.from_numpy(reference).float()[None]
    clip = models.image_encoder.encode(ref)
    cache = models.reference_unet(models.codec.encode(ref.permute(0, 3, 1, 2)), clip)
    embedding = models.guidance_embedding(torch.tensor([guidance]))
    stepper = LCMStepper(steps)
    outputs = []
    for start in range(0, len(poses), window):
        chunk = torch.from_numpy(poses[start : start + window]).float()
        features = models.pose_guider(chunk.permute(3, 0, 1, 2)[None])
        count = chunk.shape[0]
        h, w = chunk.shape[1] // models.codec.downscale, chunk.shape[2] // models.codec.downscale
        sample = torch.randn(1, models.config.latent_channels, count, h, w, generator=generator)
        denoised = sample
        for t in trailing_timesteps(steps).tolist():
            timesteps = torch.full((1, count), t)
            v = models.denoising_unet(sample, timesteps, clip, features, embedding, cache)
            noise = torch.randn(sample.shape, generator=generator)
            sample, denoised = stepper.step(v, timesteps, sample, noise)
        frames = models.codec.decode(denoised[0].permute(1, 0, 2, 3))
        outputs.append(frames.permute(0, 2, 3, 1).numpy())
    return np.concatenate(outputs)


def drift(models, world, levels, frames_per_cohort, guidance, total, size, seed=0, edge=100) -> tuple[float, float]:
    """Stream `total` frames of one held-out clip in chunks; mean PSNR of the first and of the last `edge`
    frames against their ground truth. Nothing but the stream's own state is kept between chunks."""
    config = StreamConfig(levels=levels, frames_per_cohort=frames_per_cohort, steps=levels, guidance=guidance,
                          height=size, width=size, seed=seed)
    stream = RainStream(models, config)
    reference, _, _ = heldout_clip(world, 0, 1, size)
    stream.set_reference(torch.from_numpy(reference).float())
    waiting = deque()  # ground truth of frames pushed but not yet emitted
    first, last, emitted = [], [], 0

    def score(frames):
        nonlocal emitted
        for frame in frames:
            value = psnr(frame[None], waiting.popleft()[None])[0]
            if emitted < edge:
                first.append(value)
            if emitted >= total - edge:
                last.append(value)
            emitted += 1

    chunk = 64
    for start in range(0, total, chunk):
        _, truth, poses = heldout_clip(world, 0, min(chunk, total - start), size, start_frame=start)
        waiting.extend(truth)
        score(stream.push(torch.from_numpy(poses)).numpy())
    score(stream.flush().numpy())
    return float(np.mean(first)), float(np.mean(last))


# ---- the table --------------------------------------------------------------------------------


def evaluate(models, clips, levels, frames_per_cohort, guidance, mode="stream", seed=0):
    size = clips[0][1].shape[1]
    scores = {"psnr": [], "ssim": [], "flicker": []}
    for index, (reference, truth, poses) in enumerate(clips):
        if mode == "stream":
            out = stream_render(models, reference, poses, levels, frames_per_cohort, guidance, seed + index, size)
        elif mode == "offline":
            out = offline_render(models, reference, poses, levels * frames_per_cohort, levels, guidance, seed + index)
        else:  # copy the reference
            out = np.repeat(reference[None].astype(np.float32), len(truth), axis=0)
        scores["psnr"].append(psnr(out, truth).mean())
        scores["ssim"].append(ssim(out, truth).mean())
        scores["flicker"].append(flicker(out, truth))
    return {k: float(np.nanmean(v)) for k, v in scores.items()}


@functools.lru_cache(maxsize=2)
def heldout_clips(count: int, frames: int, size: int) -> tuple:
    """The first `count` held-out clips, rendered once per process (every row of the table scores the same ones)."""
    world = SyntheticWorld(0)
    return tuple(heldout_clip(world, i, frames, size) for i in range(count))


def score_row(job: dict) -> dict:
    """One row of the table (runs in a worker process with --jobs > 1): scores on the held-out clips, then the
    drift stream if asked. The model is loaded here from its folder, so rows can run side by side."""
    from rain_core.loading import load_rain

    torch.set_num_threads(job["threads"])
    clips = heldout_clips(job["clips"], job["frames"], job["size"])
    models = None if job["mode"] == "copy" else load_rain(job["model"]).eval()  # copying needs no network
    p, m, guidance = job["levels"], job["frames_per_cohort"], job["guidance"]
    row = {"name": job["name"], "scores": evaluate(models, clips, p, m, guidance, job["mode"]), "drift": None}
    if job["drift_frames"] and job["mode"] == "stream":
        row["drift"] = drift(models, SyntheticWorld(0), p, m, guidance, job["drift_frames"], job["size"])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED), help="RAIN model folder (default: the shipped tiny model)")
    parser.add_argument("--baseline", default=None, help="m = 1 model folder trained the same way (optional)")
    parser.add_argument("--clips", type=int, default=8, help="held-out character/motion pairs")
    parser.add_argument("--frames", type=int, default=48, help="frames per clip")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--frames-per-cohort", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--drift-frames", type=int, default=0, help="length of the drift stream (10000 for the full check)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row")
    parser.add_argument("--jobs", type=int, default=1, help="rows computed side by side in worker processes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    p, m = args.levels, args.frames_per_cohort
    common = {"clips": args.clips, "frames": args.frames, "size": args.size, "levels": p, "guidance": args.guidance,
              "drift_frames": args.drift_frames, "threads": args.threads}
    jobs = [{**common, "name": f"RAIN stream (p={p}, m={m})", "model": args.model, "frames_per_cohort": m, "mode": "stream"}]
    if args.baseline:
        jobs.append({**common, "name": f"baseline stream (p={p}, m=1, no motion)", "model": args.baseline,
                     "frames_per_cohort": 1, "mode": "stream"})
    jobs.append({**common, "name": f"offline, same model ({p} steps, window {p * m})", "model": args.model,
                 "frames_per_cohort": m, "mode": "offline"})
    jobs.append({**common, "name": "copy the reference", "model": None, "frames_per_cohort": m, "mode": "copy"})
    started = time.time()
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(score_row, jobs))
    else:
        rows = [score_row(job) for job in jobs]
    print(f"held-out: {args.clips} clips × {args.frames} frames at {args.size}px, guidance {args.guidance}, model {args.model}"
          + (f", baseline {args.baseline}" if args.baseline else ""))
    print("| method | PSNR dB | SSIM | flicker | drift dB (first 100 → last 100) |")
    print("|---|---|---|---|---|")
    for row in rows:
        score, drift_text = row["scores"], "–"
        if row["drift"] is not None:
            first, last = row["drift"]
            drift_text = f"{last - first:+.2f} ({first:.2f} → {last:.2f})"
        print(f"| {row['name']} | {score['psnr']:.2f} | {score['ssim']:.3f} | {score['flicker']:+.2f} | {drift_text} |")
    print(f"({time.time() - started:.0f} s; drift streams of {args.drift_frames} frames)" if args.drift_frames
          else f"({time.time() - started:.0f} s)")
    if not all(math.isfinite(row["scores"]["psnr"]) for row in rows):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
