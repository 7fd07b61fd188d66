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
