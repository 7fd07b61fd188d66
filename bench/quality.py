"""Quality of RAIN on held-out synthetic characters and motions, where every frame has an exact ground truth.

Scores, per held-out clip, then as a mean over clips with a bootstrap 95 % interval:
- PSNR and SSIM against the ground truth; SSIM also where the truth is flat (there residual speckle costs SSIM far
  more than PSNR);
- temporal error: mean |Δ output − Δ ground truth| between consecutive frames, in [0, 255] units. 0 means the
  output changes from frame to frame exactly as the ground truth does; flicker, wrong motion and frozen detail
  all raise it (unlike flicker, mean |Δ output| − mean |Δ truth|, which is also printed and can cancel out);
  "where the truth is still" restricts it to pixels the ground truth does not change (pure output flicker);
- drift: PSNR of the last `edge` frames of a stream of `--drift-frames` frames minus that of its first `edge`
  frames, per drift clip (`--drift-clips`).

Rows (methods):
- `rain`: the RAIN stream window, p levels × m frames per cohort (default 4 × 4);
- `baseline`: the StreamDiffusion-style stream, m = 1 without motion modules (a separately trained model);
- ablations of the same RAIN model, by flag: `--windows 4x2,2x4,4x1` (4x1 keeps the motion modules),
  `--offline` (every frame of a window at the same level, all LCM steps), `--operating-points` (the authors'
  live-demo guidance 2.5 vs the offline 3.5 of the main row);
- the baseline's own operating points: `--baseline-levels P` streams it with P levels (default: `--levels`, so
  each method can run at its best), `--baseline-windows 2,3` adds rows at other levels, paired with `baseline`;
- `--shared-noise`: the RAIN and baseline streams with one noise for every frame (StreamDiffusion's fixed
  noise; not the method): how much of the temporal error is each frame's own fresh noise;
- `copy`: the reference image as the output (the floor any model must beat).

And the paired difference RAIN − baseline per clip (same clips, same seeds), with its bootstrap interval.
`--json` writes everything (default bench/results/quality.json); `--picture` draws one clip's ground truth,
RAIN and baseline frames and the per-frame temporal error of both (docs/temporal-claim/quality_strip.jpg,
docs/temporal-claim/temporal_error.png, the figures of the temporal-claim study, docs/temporal-claim.md).

    .venv/bin/python bench/quality.py                       # the shipped tiny model, short run
    .venv/bin/python bench/quality.py --model A --baseline B --clips 16 --frames 32 --windows 4x2,2x4,4x1 \
        --offline --drift-frames 256 --drift-clips 8 --jobs 2 --picture

Numbers, never pass/fail: CI only checks that it runs.
"""

from __future__ import annotations

import argparse
import functools
import json
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

from rain_core import metrics  # noqa: E402
from rain_core.io.files import write_atomic  # noqa: E402
from rain_core.metrics import bootstrap_ci, temporal_error, temporal_error_per_frame  # noqa: E402,F401
from rain_core.scheduler import LCMStepper, trailing_timesteps  # noqa: E402
from rain_core.stream import RainStream, StreamConfig  # noqa: E402
from rain_core.stream.feed import push_frames  # noqa: E402
from rain_core.synthetic import WORLDS, SyntheticWorld, render_character, render_skeleton  # noqa: E402

SHIPPED = ROOT / "rain_core" / "assets" / "tiny-rain"
RESULTS = ROOT / "bench" / "results" / "quality.json"
DOCS = ROOT / "docs" / "temporal-claim"  # --picture: the temporal-claim study's figures
FPS = 12.0
FAST_PATH = "eager"
"""The stream's tick runs eagerly here: the figures are about quality, and torch.compile would spend CPU-minutes
per window shape first (its numerics agree with the eager tick to float32 rounding)."""
METRICS = ("psnr", "ssim", "ssim_flat", "temporal_error", "temporal_error_static", "flicker", "drift_db")


# ---- metrics (images float32 (N, H, W, 3) in [0, 1]) ------------------------------------------


def psnr(output: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB (the project's one PSNR, rain_core.metrics)."""
    return metrics.psnr(output, truth, per_frame=True)


def _ssim_maps(output: np.ndarray, truth: np.ndarray):
    """Per frame: (the SSIM map averaged over channels, the truth's local variance averaged over channels), both
    (H, W), with SSIM's own 11×11 Gaussian window σ = 1.5 (Wang et al. 2004)."""
    c1, c2 = 0.01**2, 0.03**2

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    for a, b in zip(output.astype(np.float64), truth.astype(np.float64)):
        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
        value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        yield value.mean(axis=-1), var_b.mean(axis=-1)


FLAT_VARIANCE = 1e-5
"""The truth's local variance (in SSIM's window, [0, 1] units) below which a pixel counts as flat: σ ≈ 0.8/255."""


def ssim_scores(output: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, float]:
    """(per-frame SSIM, SSIM over the pixels where the truth is flat in SSIM's window) from one pass of the maps.

    The second is the background and plain cloth: there SSIM's contrast term is c2 / (var(output) + c2), so speckle
    of σ ≈ 0.03 (30 dB PSNR on its own) halves it. NaN when no pixel is flat."""
    per_frame, flat = [], []
    for value, variance in _ssim_maps(output, truth):
        per_frame.append(value.mean())
        flat.append(value[variance < FLAT_VARIANCE])
    flat = np.concatenate(flat)
    return np.array(per_frame), float(flat.mean()) if flat.size else float("nan")


def ssim(output: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004: 11×11 Gaussian window σ = 1.5, on each channel, averaged)."""
    return ssim_scores(output, truth)[0]


def flat_ssim(output: np.ndarray, truth: np.ndarray) -> float:
    """SSIM where the truth is flat (see `ssim_scores`)."""
    return ssim_scores(output, truth)[1]


def static_temporal_error(output: np.ndarray, truth: np.ndarray) -> float:
    """Temporal error on the pixels where the truth does not change between the two frames (background, still
    limbs), in 0–255 units: pure flicker of the output, no motion involved."""
    if len(output) < 2:
        return float("nan")
    still = np.all(np.abs(np.diff(truth.astype(np.float64), axis=0)) < 0.5 / 255, axis=-1)  # (N-1, H, W)
    change = np.abs(np.diff(output.astype(np.float64), axis=0)).mean(axis=-1)
    return float(change[still].mean() * 255) if still.any() else float("nan")


def flicker(output: np.ndarray, truth: np.ndarray) -> float:
    """mean |Δ output| − mean |Δ truth| over consecutive frames, in 0–255 units (can cancel out; see above)."""
    if len(output) < 2:
        return float("nan")
    return float((np.abs(np.diff(output, axis=0)).mean() - np.abs(np.diff(truth, axis=0)).mean()) * 255)


def summary(values) -> dict:
    """{"mean", "ci95": [low, high], "n"} of per-clip values (non-finite values dropped)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    return {"mean": mean, "ci95": list(bootstrap_ci(finite)), "n": int(len(finite))}


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


def clip_label(world: SyntheticWorld, index: int) -> str:
    heldout_id = SyntheticWorld.ids("heldout", 1, start=index)[0]
    motion = world.motion(heldout_id)
    return f"{motion.kind}/{motion.tempo}" if world.version == "v2" else motion.kind


# ---- ways to render ---------------------------------------------------------------------------


def stream_render(models, reference, poses, levels, frames_per_cohort, guidance, seed, size,
                  shared_noise: bool = False) -> np.ndarray:
    config = StreamConfig(levels=levels, frames_per_cohort=frames_per_cohort, steps=levels, guidance=guidance,
                          height=size, width=size, seed=seed, fast_path=FAST_PATH,
                          noise="shared" if shared_noise else "fresh")
    stream = RainStream(models, config)
    stream.set_reference(torch.from_numpy(reference).float())
    outputs = [frames for _, frames in push_frames(stream, torch.from_numpy(poses), flush=True)]
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


def drift(models, world, index, levels, frames_per_cohort, guidance, total, size, seed=0, edge=100) -> tuple[float, float]:
    """Stream `total` frames of held-out clip `index` in chunks; mean PSNR of the first and of the last `edge`
    frames against their ground truth. Nothing but the stream's own state is kept between chunks."""
    edge = min(edge, total // 2)
    config = StreamConfig(levels=levels, frames_per_cohort=frames_per_cohort, steps=levels, guidance=guidance,
                          height=size, width=size, seed=seed, fast_path=FAST_PATH)
    stream = RainStream(models, config)
    reference, _, _ = heldout_clip(world, index, 1, size)
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

    def pose_frames(chunk: int = 64):  # the clip drawn 64 frames at a time: memory stays flat over 10,000
        for start in range(0, total, chunk):
            _, truth, poses = heldout_clip(world, index, min(chunk, total - start), size, start_frame=start)
            waiting.extend(truth)
            yield from torch.from_numpy(poses)

    for _, frames in push_frames(stream, pose_frames(), flush=True):
        score(frames.numpy())
    return float(np.mean(first)), float(np.mean(last))


# ---- the table --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def heldout_clips(count: int, frames: int, size: int, world: str = "v1", first: int = 0) -> tuple:
    """`count` held-out clips from index `first`, rendered once per process (every row of the table scores the same
    ones). The test clips are 0, 1, …; a recipe is chosen on others (`--first-clip`), so the test set stays unseen."""
    synthetic = SyntheticWorld(0, version=world)
    return tuple(heldout_clip(synthetic, first + i, frames, size) for i in range(count))


def render(models, clip, job: dict, seed: int) -> np.ndarray:
    reference, truth, poses = clip
    p, m, guidance, size = job["levels"], job["frames_per_cohort"], job["guidance"], job["size"]
    if job["mode"] == "stream":
        return stream_render(models, reference, poses, p, m, guidance, seed, size, job.get("shared_noise", False))
    if job["mode"] == "offline":
        return offline_render(models, reference, poses, p * m, p, guidance, seed)
    return np.repeat(reference[None].astype(np.float32), len(truth), axis=0)  # copy the reference


def score_row(job: dict) -> dict:
    """One row of the table (runs in a worker process with --jobs > 1): per-clip scores on the held-out clips,
    then the drift streams if asked. The model is loaded here from its folder, so rows can run side by side."""
    from rain_core.loading import load_rain

    torch.set_num_threads(job["threads"])
    started = time.time()
    clips = heldout_clips(job["clips"], job["frames"], job["size"], job["world"], job["first_clip"])
    models = None if job["mode"] == "copy" else load_rain(job["model"]).eval()  # copying needs no network
    per_clip = {name: [] for name in METRICS}
    picture, curve = None, None
    for index, clip in enumerate(() if job.get("drift_only") else clips):
        truth = clip[1]
        out = render(models, clip, job, seed=job["first_clip"] + index)
        per_clip["psnr"].append(float(psnr(out, truth).mean()))
        per_frame_ssim, ssim_where_flat = ssim_scores(out, truth)
        per_clip["ssim"].append(float(per_frame_ssim.mean()))
        per_clip["ssim_flat"].append(ssim_where_flat)
        per_clip["temporal_error"].append(temporal_error(out, truth))
        per_clip["temporal_error_static"].append(static_temporal_error(out, truth))
        per_clip["flicker"].append(flicker(out, truth))
        if index == job["picture_clip"]:
            picture, curve = out, temporal_error_per_frame(out, truth).tolist()
    drift_pairs = []
    if job["drift_frames"] and job["mode"] == "stream":
        world = SyntheticWorld(0, version=job["world"])
        for index in range(job["first_clip"], job["first_clip"] + job["drift_clips"]):
            drift_pairs.append(drift(models, world, index, job["levels"], job["frames_per_cohort"], job["guidance"],
                                     job["drift_frames"], job["size"], seed=index, edge=job["drift_edge"]))
    per_clip["drift_db"] = [last - first for first, last in drift_pairs]
    return {"key": job["key"], "name": job["name"], "model": job["model"], "levels": job["levels"],
            "frames_per_cohort": job["frames_per_cohort"], "guidance": job["guidance"], "mode": job["mode"],
            "per_clip": per_clip, "drift_first_last": drift_pairs, "picture": picture, "curve": curve,
            "seconds": time.time() - started}


def paired(row: dict, other: dict) -> dict:
    """Per-clip differences row − other (same clips, same seeds) with bootstrap intervals."""
    result = {}
    for name in METRICS:
        a, b = np.asarray(row["per_clip"][name], float), np.asarray(other["per_clip"][name], float)
        if len(a) == 0 or len(a) != len(b):
            continue
        entry = summary(a - b)
        base = float(np.nanmean(b))
        if name in ("temporal_error", "temporal_error_static") and base:
            entry["relative"] = entry["mean"] / base
            entry["relative_ci95"] = [x / base for x in entry["ci95"]]
        result[name] = entry
    return result


def write_image(path: Path, image_rgb: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(image_rgb[..., ::-1]), params)
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the image")
    write_atomic(path, encoded.tobytes())


def draw_strip(rows: list[tuple[str, np.ndarray]], every: int, scale: int = 2) -> np.ndarray:
    """Frames 0, every, 2·every, … of each (label, frames) row side by side, a label on the left; uint8 RGB."""
    label_w, gap = 120, 2
    tiles = []
    for label, frames in rows:
        chosen = frames[::every]
        tile = np.concatenate([np.pad((f * 255).clip(0, 255).astype(np.uint8), ((gap, gap), (gap, gap), (0, 0)),
                                      constant_values=255) for f in chosen], axis=1)
        tile = cv2.resize(tile, (tile.shape[1] * scale, tile.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        head = np.full((tile.shape[0], label_w, 3), 255, np.uint8)
        cv2.putText(head, label, (6, tile.shape[0] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([head, tile], axis=1))
    return np.concatenate(tiles, axis=0)


def draw_curves(curves: list[tuple[str, list[float], tuple[int, int, int]]], title: str,
                size: tuple[int, int] = (720, 360)) -> np.ndarray:
    """A line plot of per-frame temporal error drawn with OpenCV (matplotlib is not a dependency); uint8 RGB."""
    width, height = size
    left, right, top, bottom = 60, 20, 40, 40
    image = np.full((height, width, 3), 255, np.uint8)
    top_value = max(max(c) for _, c, _ in curves) * 1.1 or 1.0
    count = max(len(c) for _, c, _ in curves)

    def point(i, value):
        x = left + (width - left - right) * i / max(1, count - 1)
        y = height - bottom - (height - top - bottom) * value / top_value
        return int(round(x)), int(round(y))

    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for k in range(5):
        value = top_value * k / 4
        y = point(0, value)[1]
        cv2.line(image, (left - 4, y), (left, y), (0, 0, 0), 1)
        cv2.putText(image, f"{value:.1f}", (4, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(0, count, max(1, count // 8)):
        x = point(i, 0)[0]
        cv2.putText(image, str(i + 1), (x - 6, height - bottom + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, title, (left, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "frame pair", (width // 2 - 30, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for n, (label, values, colour) in enumerate(curves):
        points = np.array([point(i, v) for i, v in enumerate(values)], np.int32)
        cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
        y = (top + height - bottom) // 2 + 18 * n  # mid-plot: the errors sit high, the truth's motion low
        cv2.putText(image, label, (left + 10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED), help="RAIN model folder (default: the shipped tiny model)")
    parser.add_argument("--baseline", default=None, help="m = 1 model folder trained the same way (optional)")
    parser.add_argument("--compare", default=None,
                        help="another RAIN model folder streamed on the same window, e.g. the previous built-in model "
                        "(paired: model - compare)")
    parser.add_argument("--world", default="v2", choices=WORLDS, help="synthetic world of the held-out clips")
    parser.add_argument("--clips", type=int, default=16, help="held-out character/motion pairs")
    parser.add_argument("--first-clip", type=int, default=0,
                        help="index of the first held-out clip (0: the test clips; e.g. 100 for a validation set "
                        "to choose a training recipe on)")
    parser.add_argument("--frames", type=int, default=32, help="frames per clip")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--frames-per-cohort", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--windows", default="", help="ablation windows of the RAIN model, e.g. 4x2,2x4,4x1")
    parser.add_argument("--baseline-levels", type=int, default=None,
                        help="p of the baseline's stream (default: --levels): each method at its own operating point")
    parser.add_argument("--baseline-windows", default="",
                        help="ablation levels of the baseline (m = 1), e.g. 2,3: rows paired with the baseline's")
    parser.add_argument("--offline", action="store_true", help="add offline denoising of the RAIN model")
    parser.add_argument("--operating-points", action="store_true",
                        help="add the RAIN model at the authors' live-demo guidance 2.5 (the main row uses 3.5)")
    parser.add_argument("--shared-noise", action="store_true",
                        help="add the RAIN (and baseline) stream with one noise for every frame (StreamDiffusion's "
                             "fixed noise): how much of the temporal error is each frame's fresh noise")
    parser.add_argument("--no-copy", action="store_true", help="leave out the copy-the-reference row")
    parser.add_argument("--drift-frames", type=int, default=0, help="length of each drift stream (10000 for the full check)")
    parser.add_argument("--drift-clips", type=int, default=1, help="held-out clips streamed for drift")
    parser.add_argument("--drift-edge", type=int, default=100, help="frames averaged at each end of a drift stream")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row")
    parser.add_argument("--jobs", type=int, default=1, help="rows computed side by side in worker processes")
    parser.add_argument("--json", default=str(RESULTS), help="where to write the results ('' for nowhere)")
    parser.add_argument("--picture", action="store_true", help="draw the strip and the temporal-error plot into --docs")
    parser.add_argument("--picture-clip", type=int, default=None, help="held-out clip of the picture (default: a spin)")
    parser.add_argument("--docs", default=str(DOCS), help="folder of the pictures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    p, m = args.levels, args.frames_per_cohort
    world = SyntheticWorld(0, version=args.world)
    picture_clip = args.picture_clip
    if picture_clip is None:
        labels = [clip_label(world, args.first_clip + i) for i in range(args.clips)]
        picture_clip = next((i for i, label in enumerate(labels) if label.startswith("spin")), 0)
    common = {"clips": args.clips, "frames": args.frames, "size": args.size, "levels": p, "guidance": args.guidance,
              "drift_frames": args.drift_frames, "drift_clips": args.drift_clips, "drift_edge": args.drift_edge,
              "threads": args.threads, "world": args.world, "first_clip": args.first_clip,
              "picture_clip": picture_clip if args.picture else -1}
    jobs = [{**common, "key": "rain", "name": f"RAIN stream (p={p}, m={m})", "model": args.model,
             "frames_per_cohort": m, "mode": "stream"}]
    bp = args.baseline_levels or p
    if args.baseline:
        jobs.append({**common, "key": "baseline", "name": f"baseline stream (p={bp}, m=1, no motion)", "model": args.baseline,
                     "levels": bp, "frames_per_cohort": 1, "mode": "stream"})
    for level in filter(None, args.baseline_windows.split(",")):
        if not args.baseline or not level.strip().isdigit():
            parser.error(f"--baseline-windows: expected levels like 2,3 of a --baseline model; found {level!r}")
        jobs.append({**common, "key": f"baseline_p{int(level)}", "name": f"baseline model, p={int(level)} × m=1",
                     "model": args.baseline, "levels": int(level), "frames_per_cohort": 1, "mode": "stream",
                     "drift_frames": 0})
    if args.compare:
        jobs.append({**common, "key": "compare", "name": f"compared model stream (p={p}, m={m})", "model": args.compare,
                     "frames_per_cohort": m, "mode": "stream"})
    for window in filter(None, args.windows.split(",")):
        try:
            wp, wm = (int(x) for x in window.lower().split("x"))
        except ValueError:
            parser.error(f"--windows: expected p×m pairs like 4x2,2x4; found {window!r}")
        jobs.append({**common, "key": f"rain_{wp}x{wm}", "name": f"RAIN model, window p={wp} × m={wm}", "model": args.model,
                     "levels": wp, "frames_per_cohort": wm, "mode": "stream", "drift_frames": 0})
    if args.operating_points:
        jobs.append({**common, "key": "rain_w2.5", "name": f"RAIN stream (p={p}, m={m}), guidance 2.5", "model": args.model,
                     "frames_per_cohort": m, "mode": "stream", "guidance": 2.5, "drift_frames": 0})
    if args.offline:
        jobs.append({**common, "key": "offline", "name": f"offline, same model ({p} steps, window {p * m})",
                     "model": args.model, "frames_per_cohort": m, "mode": "offline"})
    if args.shared_noise:
        for job in [job for job in jobs if job["key"] in ("rain", "baseline")]:
            jobs.append({**job, "key": job["key"] + "_shared", "name": job["name"] + ", one noise for every frame",
                         "shared_noise": True, "drift_frames": 0})
    if not args.no_copy:
        jobs.append({**common, "key": "copy", "name": "copy the reference", "model": None, "frames_per_cohort": m,
                     "mode": "copy"})
    if args.drift_frames:  # the drift streams run as jobs of their own, side by side with the clip scores
        for job in [job for job in jobs if job["mode"] == "stream" and job["drift_frames"]]:
            jobs.append({**job, "key": job["key"] + "/drift", "drift_only": True})
            job["drift_frames"] = 0
    started = time.time()
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(score_row, jobs))
    else:
        rows = [score_row(job) for job in jobs]
    elapsed = time.time() - started

    drifts = {row["key"].split("/")[0]: row for row in rows if row["key"].endswith("/drift")}
    rows = [row for row in rows if not row["key"].endswith("/drift")]
    for row in rows:
        if row["key"] in drifts:
            row["per_clip"]["drift_db"] = drifts[row["key"]]["per_clip"]["drift_db"]
            row["drift_first_last"] = drifts[row["key"]]["drift_first_last"]
            row["seconds"] += drifts[row["key"]]["seconds"]
    methods = {}
    for row in rows:
        entry = {k: row[k] for k in ("name", "model", "levels", "frames_per_cohort", "guidance", "mode", "seconds")}
        for name in METRICS:
            entry[name] = summary(row["per_clip"][name])
        entry["per_clip"] = row["per_clip"]
        entry["drift_first_last"] = row["drift_first_last"]
        methods[row["key"]] = entry
    by_key = {row["key"]: row for row in rows}
    comparisons = {}
    if "baseline" in by_key:
        comparisons["rain - baseline"] = paired(by_key["rain"], by_key["baseline"])
        if "offline" in by_key:
            comparisons["offline - baseline"] = paired(by_key["offline"], by_key["baseline"])
    if "compare" in by_key:
        comparisons["rain - compare"] = paired(by_key["rain"], by_key["compare"])
    for key in by_key:
        if key.startswith("rain_"):
            comparisons[f"{key} - rain"] = paired(by_key[key], by_key["rain"])
        if key.startswith("baseline_p"):
            comparisons[f"{key} - baseline"] = paired(by_key[key], by_key["baseline"])
    if "baseline_shared" in by_key:
        comparisons["baseline_shared - baseline"] = paired(by_key["baseline_shared"], by_key["baseline"])
        comparisons["rain_shared - baseline_shared"] = paired(by_key["rain_shared"], by_key["baseline_shared"])

    setup = {"world": args.world, "clips": args.clips, "frames": args.frames, "size": args.size, "fps": FPS,
             "guidance": args.guidance, "levels": p, "frames_per_cohort": m, "model": args.model,
             "baseline": args.baseline, "baseline_levels": bp, "compare": args.compare, "drift_frames": args.drift_frames, "drift_clips": args.drift_clips,
             "drift_edge": min(args.drift_edge, args.drift_frames // 2) if args.drift_frames else None,
             "clip_labels": [clip_label(world, args.first_clip + i) for i in range(args.clips)], "bootstrap": "percentile, 10,000 resamples of clips",
             "seconds": elapsed, "threads_per_row": args.threads, "jobs": args.jobs}
    print(f"held-out world {args.world}: {args.clips} clips × {args.frames} frames at {args.size}px, guidance {args.guidance}, "
          f"model {args.model}" + (f", baseline {args.baseline}" if args.baseline else ""))
    print("| method | PSNR dB | SSIM | … where the truth is flat | temporal error | … where the truth is still | flicker "
          "| drift dB |")
    print("|---|---|---|---|---|---|---|---|")

    def cell(stat, digits):
        if not stat["n"]:
            return "–"
        low, high = stat["ci95"]
        return f"{stat['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    for entry in methods.values():
        print(f"| {entry['name']} | {cell(entry['psnr'], 2)} | {cell(entry['ssim'], 3)} | {cell(entry['ssim_flat'], 3)} "
              f"| {cell(entry['temporal_error'], 2)} "
              f"| {cell(entry['temporal_error_static'], 2)} | {cell(entry['flicker'], 2)} | {cell(entry['drift_db'], 2)} |")
    for label, diffs in comparisons.items():
        parts = [f"{name} {cell(stat, 3)}" + (f" ({stat['relative'] * 100:+.1f} %)" if "relative" in stat else "")
                 for name, stat in diffs.items()]
        print(f"paired {label}: " + "; ".join(parts))
    print(f"({elapsed:.0f} s" + (f"; drift streams of {args.drift_frames} frames × {args.drift_clips} clips)" if args.drift_frames else ")"))

    if args.json:
        payload = {"setup": setup, "methods": methods, "paired": comparisons}
        write_atomic(Path(args.json), (json.dumps(payload, indent=1, default=float) + "\n").encode())
        print(f"wrote {args.json}")
    if args.picture:
        docs = Path(args.docs)
        truth = heldout_clips(args.clips, args.frames, args.size, args.world, args.first_clip)[picture_clip][1]
        strip_rows = [("ground truth", truth)] + [(row["key"], row["picture"]) for row in rows
                                                  if row["key"] in ("rain", "baseline") and row["picture"] is not None]
        write_image(docs / "quality_strip.jpg", draw_strip(strip_rows, every=max(1, args.frames // 8)))
        colours = {"rain": (30, 90, 220), "baseline": (220, 60, 30), "copy": (140, 140, 140)}
        names = {"rain": "RAIN", "baseline": "baseline m=1", "copy": "|d truth| (copying the reference)"}
        curves = [(f"{names[row['key']]}: mean {np.mean(row['curve']):.2f}", row["curve"], colours[row["key"]])
                  for row in rows if row["key"] in colours and row["curve"]]
        if curves:
            title = f"temporal error |d output - d truth| (0-255), held-out clip {picture_clip} ({clip_label(world, args.first_clip + picture_clip)})"
            write_image(docs / "temporal_error.png", draw_curves(curves, title))
        print(f"wrote {docs / 'quality_strip.jpg'}, {docs / 'temporal_error.png'}")
    if not all(math.isfinite(entry["psnr"]["mean"]) for entry in methods.values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
