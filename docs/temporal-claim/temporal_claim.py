"""Issue 16's evidence in one picture: the two arms' stage-2 loss, and where each trained pair lands in
(PSNR, temporal error) on the same held-out clips.

Reads only the study's committed results in `docs/temporal-claim/results/` (the loss curves of
`stage2_loss_equal_characters.json` and the `quality_*.json` of each trained pair, written by `bench/quality.py`),
draws `docs/temporal-claim/temporal_claim.png` with OpenCV (matplotlib is not a dependency) and prints the table
behind it: per pair, both arms' PSNR and temporal error and the paired difference RAIN − baseline; then, from the
full table (`quality.json`), the two arms compared at the same operating point (both at 2 levels) and at different
ones, paired per clip from the per-clip values in that file.

    .venv/bin/python docs/temporal-claim/temporal_claim.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent  # docs/temporal-claim
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.quality import paired  # noqa: E402  (the bench's own per-clip pairing and bootstrap)

# rows of the full table (quality.json) paired across operating points: (label, RAIN row, baseline row)
OPERATING_POINTS = (
    ("both at 2 levels: RAIN 2x8 - baseline p=2", "rain_2x8", "baseline_p2"),
    ("two operating points: RAIN 2x8 - baseline p=4", "rain_2x8", "baseline"),
)
# (label, result file, the label it was trained from): the equal-characters pairs on the 16 test clips, in
# training order; a line joins each pair to the one it continued
PAIRS = (
    ("2,200", "quality_step2200_equal_characters.json", None),
    ("3,000", "quality_step3000_equal_characters.json", "2,200"),
    ("3,400", "quality_step3400_equal_characters.json", "3,000"),
    ("4,600", "quality_step4600_equal_characters.json", "3,400"),
    ("+ro400", "quality_rollout400_equal_characters.json", "4,600"),
    ("+ro800", "quality_rollout800_equal_characters.json", "+ro400"),
    ("+mix400", "quality_rollmix_50_equal_characters.json", "4,600"),
    ("+mix800", "quality_rollmix_50b_equal_characters.json", "+mix400"),
    ("+mix1200", "quality_rollmix_50c_equal_characters.json", "+mix800"),
)
RAIN_COLOUR, BASELINE_COLOUR = (200, 80, 0), (0, 110, 230)  # BGR: blue, orange
FONT = cv2.FONT_HERSHEY_SIMPLEX


def read_pair(path: Path) -> dict:
    data = json.loads(path.read_text())
    methods, paired = data["methods"], data["paired"]["rain - baseline"]
    return {
        "rain": (methods["rain"]["psnr"]["mean"], methods["rain"]["temporal_error"]["mean"]),
        "baseline": (methods["baseline"]["psnr"]["mean"], methods["baseline"]["temporal_error"]["mean"]),
        "psnr": (paired["psnr"]["mean"], paired["psnr"]["ci95"]),
        "te": (paired["temporal_error"]["relative"], paired["temporal_error"]["relative_ci95"]),
    }


def operating_points(path: Path) -> list[tuple[str, dict]]:
    """Per entry of OPERATING_POINTS, the per-clip paired difference of two rows of the full table (same clips,
    same seeds) with its bootstrap interval, as bench/quality.py pairs its own rows."""
    methods = json.loads(path.read_text())["methods"]
    return [(label, paired(methods[rain], methods[baseline])) for label, rain, baseline in OPERATING_POINTS]


def loss_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Per arm, (step, mean loss per 100 steps) from step 100 to 4,600."""
    data = json.loads(path.read_text())
    curves = {}
    for arm in ("RAIN", "baseline"):
        rows = {**data["per_100_steps"][arm], **data["continued_to_4600"]["per_100_steps"][arm]}
        curves[arm] = sorted((int(step), value) for step, value in rows.items())
    return curves


class Panel:
    """A plot area inside `image` mapping data coordinates to pixels."""

    def __init__(self, image, box, x_range, y_range, title, x_label, y_label):
        self.left, self.top, self.right, self.bottom = box
        self.x_range, self.y_range = x_range, y_range
        cv2.rectangle(image, (self.left, self.top), (self.right, self.bottom), (0, 0, 0), 1)
        cv2.putText(image, title, (self.left, self.top - 10), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, x_label, ((self.left + self.right) // 2 - 40, self.bottom + 34), FONT, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
        cv2.putText(image, y_label, (self.right - 8 * len(y_label) - 8, self.top + 16), FONT, 0.42, (90, 90, 90), 1,
                    cv2.LINE_AA)
        for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
            x_value = x_range[0] + fraction * (x_range[1] - x_range[0])
            y_value = y_range[0] + fraction * (y_range[1] - y_range[0])
            x, y = self.to_pixels(x_value, y_range[0])[0], self.to_pixels(x_range[0], y_value)[1]
            cv2.putText(image, _tick(x_value), (x - 14, self.bottom + 16), FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(image, _tick(y_value), (self.left - 48, y + 4), FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)

    def to_pixels(self, x: float, y: float) -> tuple[int, int]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        px = self.left + (x - x0) / (x1 - x0) * (self.right - self.left)
        py = self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top)
        return int(round(px)), int(round(py))


def _tick(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def draw(pairs: list[tuple[str, dict, str | None]], curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    image = np.full((470, 1120, 3), 255, np.uint8)
    # left: stage-2 loss per 100 steps
    losses = [v for rows in curves.values() for _, v in rows]
    loss = Panel(image, (80, 40, 500, 380), (0, 4600), (min(losses) * 0.95, max(losses) * 1.02),
                 "stage-2 loss, mean per 100 steps (lr 2e-4; annealed 3,800-4,600)", "training step", "v-MSE")
    for arm, colour in (("RAIN", RAIN_COLOUR), ("baseline", BASELINE_COLOUR)):
        points = np.array([loss.to_pixels(s, v) for s, v in curves[arm]], np.int32)
        cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
        cv2.putText(image, arm, (points[-1][0] - 70, points[-1][1] - 10), FONT, 0.45, colour, 1, cv2.LINE_AA)
    # right: each pair's arms in (PSNR, temporal error), joined to the pair each continued; down-right is better
    xs = [p[arm][0] for _, p, _ in pairs for arm in ("rain", "baseline")]
    ys = [p[arm][1] for _, p, _ in pairs for arm in ("rain", "baseline")]
    trade = Panel(image, (620, 40, 1090, 380), (min(xs) - 0.3, max(xs) + 0.3), (min(ys) - 0.4, max(ys) + 0.4),
                  "held-out test clips: each trained pair (down and right is better)", "PSNR dB", "temporal error")
    by_label = {label: p for label, p, _ in pairs}
    continued = {parent for _, _, parent in pairs}
    taken: list[tuple[int, int]] = []
    for arm, colour in (("rain", RAIN_COLOUR), ("baseline", BASELINE_COLOUR)):
        for label, p, parent in pairs:
            x, y = trade.to_pixels(*p[arm])
            if parent in by_label:
                cv2.line(image, trade.to_pixels(*by_label[parent][arm]), (x, y), colour, 1, cv2.LINE_AA)
            cv2.circle(image, (x, y), 4, colour, -1, cv2.LINE_AA)
            if arm == "rain" and (label not in continued or not label.startswith("+")):  # fine-tunings dense: only their ends labelled
                # below the point, else right, above or left: the first place no label holds
                places = [(x - 12, y + 18), (x + 8, y + 4), (x - 12, y - 9), (x - 62, y + 4)]
                at = next((c for c in places if not any(abs(c[0] - a) < 55 and abs(c[1] - b) < 13 for a, b in taken)),
                          places[0])
                taken.append(at)
                cv2.putText(image, label, at, FONT, 0.36, colour, 1, cv2.LINE_AA)
    cv2.putText(image, "RAIN p=4 m=4", (620, 440), FONT, 0.45, RAIN_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(image, "baseline p=4 m=1, no motion", (760, 440), FONT, 0.45, BASELINE_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(image, "labels: stage-2 steps; then from 4,600, steps on the stream's own predictions (ro: every step, mix: half)",
                (620, 460), FONT, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    cv2.imwrite(str(tmp), image)
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    parser.add_argument("--out", default=str(HERE / "temporal_claim.png"))
    parser.add_argument("--pair", action="append", default=[], metavar="LABEL=FILE[=PARENT]",
                        help="another pair's quality JSON (in the results folder) to add after the built-in list, "
                        "optionally joined to the pair it continued")
    args = parser.parse_args(argv)
    results = Path(args.results)
    entries = list(PAIRS) + [(*item.split("=", 2), None)[:3] for item in args.pair]
    pairs = [(label, read_pair(results / name), parent) for label, name, parent in entries]
    print(f"{'pair':>8} | {'RAIN dB':>7} {'TE':>5} | {'base dB':>7} {'TE':>5} | paired PSNR dB       | paired TE")
    for label, p, _ in pairs:
        (dp, (lo, hi)), (dt, (tlo, thi)) = p["psnr"], p["te"]
        print(f"{label:>8} | {p['rain'][0]:7.2f} {p['rain'][1]:5.2f} | {p['baseline'][0]:7.2f} {p['baseline'][1]:5.2f} | "
              f"{dp:+.2f} [{lo:+.2f}, {hi:+.2f}]  | {100 * dt:+.1f} % [{100 * tlo:+.1f}, {100 * thi:+.1f}]")
    print("full table (quality.json), paired per clip:")
    for label, diff in operating_points(results / "quality.json"):
        (lo, hi), (tlo, thi) = diff["psnr"]["ci95"], diff["temporal_error"]["relative_ci95"]
        print(f"  {label}: PSNR {diff['psnr']['mean']:+.2f} dB [{lo:+.2f}, {hi:+.2f}], SSIM {diff['ssim']['mean']:+.3f}, "
              f"temporal error {100 * diff['temporal_error']['relative']:+.1f} % [{100 * tlo:+.1f}, {100 * thi:+.1f}]")
    draw(pairs, loss_curves(results / "stage2_loss_equal_characters.json"), Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
