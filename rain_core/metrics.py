"""Image quality metrics shared by the CLI, the benches and the tests (one PSNR for the whole project)."""

from __future__ import annotations

import numpy as np

MAX_PSNR_DB = 100.0  # identical images: the MSE is floored at 1e-10 so the score stays finite


def psnr(output, truth, per_frame: bool = False):
    """PSNR in dB of images with values in [0, 1] (float arrays of equal shape).

    With `per_frame=False` the whole array is one signal and a float comes back; with `per_frame=True` the first
    axis indexes frames and an array of one score per frame comes back.
    """
    a = np.asarray(output, dtype=np.float64)
    b = np.asarray(truth, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: output has shape {a.shape} but truth has {b.shape}; compare images of one size")
    squared = (a - b) ** 2
    if per_frame:
        mse = squared.reshape(len(a), -1).mean(axis=1)
        return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))
    return float(10.0 * np.log10(1.0 / max(float(squared.mean()), 1e-10)))


# ---- time: how an output changes from frame to frame against how its ground truth does (issue 16) --------


def temporal_error_per_frame(output, truth) -> np.ndarray:
    """mean |Δ output − Δ truth| for each pair of consecutive frames (N − 1 values), in 0–255 units, of frames
    (N, H, W, C) in [0, 1]. Zero when the output changes exactly as the truth does (even if every frame is off by
    the same amount); flicker, wrong motion and frozen detail all raise it. Unlike flicker (mean |Δ output| − mean
    |Δ truth|) it cannot cancel out. A frozen output scores mean |Δ truth|: read it next to PSNR."""
    a = np.asarray(output, dtype=np.float64)
    b = np.asarray(truth, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"temporal error: output has shape {a.shape} but truth has {b.shape}; compare clips of one size")
    delta = np.diff(a, axis=0) - np.diff(b, axis=0)
    return np.abs(delta).reshape(len(delta), -1).mean(axis=1) * 255.0


def temporal_error(output, truth) -> float:
    """Mean of `temporal_error_per_frame` over a clip (nan for a single frame)."""
    return float(temporal_error_per_frame(output, truth).mean()) if len(output) > 1 else float("nan")


def bootstrap_ci(values, resamples: int = 10_000, seed: int = 0, level: float = 0.95,
                 statistic=np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (default the mean) of `values` (e.g. per-clip scores, or
    per-clip paired differences of two methods on the same clips); non-finite values are dropped, (nan, nan) if
    none is left."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if len(array) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    estimates = statistic(array[rng.integers(0, len(array), size=(resamples, len(array)))], axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    return float(np.percentile(estimates, tail)), float(np.percentile(estimates, 100.0 - tail))
