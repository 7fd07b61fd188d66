"""CPU time of one tiny-model denoising UNet call with the reference K/V cache and without it (K/V of the
reference tokens projected again on every call), side by side. Prints figures, asserts nothing.

    .venv/bin/python bench/reference_cache_cpu.py [--frames 16] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from rain_core.models import RainModelConfig, RainModels
from rain_core.models.testing import randomize_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (space_to_depth x2 codec)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    models = randomize_parameters(RainModels.build(RainModelConfig.tiny(), with_image_encoder=False)).eval()
    c, h = models.config, args.size // 2
    sample = torch.randn(1, c.latent_channels, args.frames, h, h)
    timesteps = torch.tensor([249, 499, 749, 999]).repeat_interleave(args.frames // 4)[None]
    clip = torch.randn(1, 1, c.cross_attention_dim)
    with torch.no_grad():
        reference = models.reference_unet(torch.randn(1, c.latent_channels, h, h), clip)
        features = models.pose_guider(torch.rand(1, 3, args.frames, args.size, args.size))
        w = models.guidance_embedding(3.5)
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for cached in (True, False):
                start = time.perf_counter()
                models.denoising_unet(sample, timesteps, clip, features, w, reference, use_reference_kv_cache=cached)
                times[cached].append(time.perf_counter() - start)
    print(
        f"tiny RAIN, {args.frames} frames at {args.size}x{args.size} px, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats}:"
    )
    for cached, label in ((True, "with reference K/V cache"), (False, "K/V recomputed per call")):
        print(f"  {label:28s} {sorted(times[cached])[len(times[cached]) // 2] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
