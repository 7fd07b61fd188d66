"""Draws docs/icon.png, the pack's icon on the Comfy Registry (pyproject [tool.comfy] Icon): a dancing skeleton
drawn by the pack's own pose renderer (the colours RAIN's pose frames have) in falling rain. Run from the
repository root: python docs/make_icon.py"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rain_core.pose import parse_keypoints, render_pose

SIZE = 400  # the Registry shows icons square; 400 px at most

# OpenPose body-18 points (x, y in 0..1): a dancer, one arm up, one knee raised
BODY = [(0.50, 0.21), (0.50, 0.33), (0.39, 0.33), (0.31, 0.22), (0.27, 0.11), (0.61, 0.33), (0.70, 0.42),
        (0.78, 0.51), (0.44, 0.58), (0.37, 0.71), (0.43, 0.86), (0.56, 0.58), (0.63, 0.75), (0.60, 0.92),
        (0.48, 0.19), (0.52, 0.19), (0.46, 0.20), (0.54, 0.20)]


def main() -> None:
    small = SIZE * 2 // 5  # drawn small and scaled up: limbs as bold as on a 160-px pose frame
    frame = {"people": [{"pose_keypoints_2d": [v for x, y in BODY for v in (x, y, 1.0)]}],
             "canvas_width": small, "canvas_height": small}
    pose = render_pose(parse_keypoints([frame]).frames[0], small, small)  # uint8 (H, W, 3), black background
    pose = np.asarray(Image.fromarray(pose).resize((SIZE, SIZE), Image.LANCZOS))
    rng = np.random.default_rng(30)
    icon = Image.new("RGB", (SIZE, SIZE), (14, 22, 48))
    draw = ImageDraw.Draw(icon)
    for _ in range(90):  # rain: short slanted streaks
        x, y, length = rng.uniform(-40, SIZE), rng.uniform(-20, SIZE), rng.uniform(14, 34)
        shade = int(rng.uniform(70, 150))
        draw.line([(x, y), (x + 0.35 * length, y + length)], fill=(shade, shade + 30, 255), width=2)
    figure = Image.fromarray(pose)
    icon.paste(figure, mask=Image.fromarray((pose.max(axis=2) > 24).astype(np.uint8) * 255))
    mask = Image.new("L", (SIZE, SIZE), 0)  # rounded corners
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, SIZE - 1, SIZE - 1], radius=64, fill=255)
    out = Image.new("RGBA", (SIZE, SIZE))
    out.paste(icon, mask=mask)
    out.save(Path(__file__).with_name("icon.png"), optimize=True)


if __name__ == "__main__":
    main()
