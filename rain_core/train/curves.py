"""The loss curve: appended to a CSV as training goes, drawn to a PNG with OpenCV (no matplotlib).

Not accelerate's trackers: they log to TensorBoard, W&B and the like (each another package to install) and would not
remove this file: the CSV is what a resumed run trims back to its checkpoint, and the PNG is what a CPU user looks at.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np

COLUMNS = ("step", "loss", "lr", "seconds")


class LossLog:
    """`loss.csv` (one row per logged step) and `loss.png` in `folder`; a resumed run keeps the rows
    before its starting step and continues the file."""

    def __init__(self, folder: str | Path, start_step: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path, self.png_path = self.folder / "loss.csv", self.folder / "loss.png"
        rows = read_loss_csv(self.csv_path) if self.csv_path.exists() else []
        self.rows = [row for row in rows if row["step"] <= start_step]  # steps done before the checkpoint
        self._rewrite()

    def _rewrite(self) -> None:
        with open(self.csv_path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for row in self.rows:
                writer.writerow([row[c] for c in COLUMNS])

    def append(self, step: int, loss: float, lr: float, seconds: float) -> None:
        row = {"step": int(step), "loss": float(loss), "lr": float(lr), "seconds": round(float(seconds), 2)}
        self.rows.append(row)
        with open(self.csv_path, "a", newline="") as handle:
            csv.writer(handle).writerow([row[c] for c in COLUMNS])

    def draw(self, title: str = "") -> None:
        draw_loss_curve([r["step"] for r in self.rows], [r["loss"] for r in self.rows], self.png_path, title)


def read_loss_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{"step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"]), "seconds": float(r["seconds"])}
                for r in csv.DictReader(handle)]


def draw_loss_curve(steps, losses, path: str | Path, title: str = "", size=(720, 420)) -> None:
    """Raw losses in light grey and their running mean in blue, log-scaled loss axis."""
    width, height = size
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 30, 40
    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    cv2.putText(image, title or "loss", (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    points = [(s, v) for s, v in zip(steps, losses) if v > 0 and math.isfinite(v)]
    if len(points) >= 2:
        xs = np.array([p[0] for p in points], np.float64)
        ys = np.log10(np.array([p[1] for p in points], np.float64))
        window = max(1, len(ys) // 20)
        smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
        x_min, x_max = xs.min(), max(xs.max(), xs.min() + 1)
        y_min, y_max = ys.min(), max(ys.max(), ys.min() + 1e-3)

        def to_pixels(x, y):
            px = left + (x - x_min) / (x_max - x_min) * (width - left - right)
            py = height - bottom - (y - y_min) / (y_max - y_min) * (height - top - bottom)
            return np.stack([px, py], axis=1).round().astype(np.int32)

        cv2.polylines(image, [to_pixels(xs, ys)], False, (200, 200, 200), 1, cv2.LINE_AA)
        cv2.polylines(image, [to_pixels(xs[window - 1 :], smooth)], False, (200, 80, 0), 2, cv2.LINE_AA)
        for fraction in (0.0, 0.5, 1.0):
            value = 10 ** (y_min + fraction * (y_max - y_min))
            y = int(height - bottom - fraction * (height - top - bottom))
            cv2.putText(image, f"{value:.3g}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for fraction in (0.0, 0.5, 1.0):
            step = x_min + fraction * (x_max - x_min)
            x = int(left + fraction * (width - left - right))
            cv2.putText(image, f"{int(step)}", (x - 10, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    cv2.imwrite(str(tmp), image)
    tmp.replace(path)
