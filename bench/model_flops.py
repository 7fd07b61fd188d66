"""Parameter counts and FLOPs of the full-size RAIN networks per 16-frame window at 512×512.

Runs on meta tensors (no weights allocated, no arithmetic done): torch.utils.flop_counter counts matmuls and
convolutions (2 FLOPs per multiply-add). Prints figures, asserts nothing.

    .venv/bin/python bench/model_flops.py [--frames 16] [--size 512]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from rain_core.models import DenoisingUNet, PoseGuider, RainModelConfig, ReferenceUNet, guidance_embedding


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    config = RainModelConfig.sd15()
    frames, h = args.frames, args.size // 8
    with torch.device("meta"):
        reference_unet, denoising_unet = ReferenceUNet(config), DenoisingUNet(config)
        pose_guider = PoseGuider(config.pose_channels, config.pose_guider_channels)
        motion_free = DenoisingUNet(RainModelConfig(motion=None))
        ref_latent = torch.randn(1, 4, h, h)
        clip = torch.randn(1, 1, 768)
        sample = torch.randn(1, 4, frames, h, h)
        timesteps = torch.tensor([249, 499, 749, 999]).repeat_interleave(frames // 4)[None]
        poses = torch.rand(1, 3, frames, args.size, args.size)
        w = guidance_embedding(3.5).to("meta")

        motion_params = sum(p.numel() for n, p in denoising_unet.named_parameters() if "motion_modules." in n)
        print(
            f"parameters: reference UNet {count(reference_unet) / 1e6:.1f} M, denoising UNet "
            f"{count(denoising_unet) / 1e6:.1f} M (motion modules {motion_params / 1e6:.1f} M), "
            f"pose guider {count(pose_guider) / 1e6:.2f} M"
        )

        cache = {}
        f_ref = flops(lambda: cache.setdefault("ref", reference_unet(ref_latent, clip)))
        f_kv = flops(lambda: denoising_unet.reference_kv(cache["ref"]))
        f_pose = flops(lambda: pose_guider(poses))
        features = pose_guider(poses)
        f_unet = flops(lambda: denoising_unet(sample, timesteps, clip, features, w, cache["ref"]))
        f_plain = flops(lambda: motion_free(sample, timesteps, clip, features, w, None))
        f_nocache = flops(
            lambda: denoising_unet(sample, timesteps, clip, features, w, cache["ref"], use_reference_kv_cache=False)
        )
    T = 1e12
    print(f"at {args.size}x{args.size} ({h}x{h} latent), window of {frames} frames:")
    print(f"  reference UNet pass (once per reference):        {f_ref / T:8.3f} TFLOP")
    print(f"  reference K/V projections (once per reference):  {f_kv / T:8.3f} TFLOP")
    print(f"  pose guider, {frames} frames:                         {f_pose / T:8.3f} TFLOP")
    print(
        f"  denoising UNet per window (cached K/V):          {f_unet / T:8.3f} TFLOP  ({f_unet / frames / T:.3f} per frame)"
    )
    print(f"  denoising UNet per window (K/V recomputed):      {f_nocache / T:8.3f} TFLOP")
    print(
        f"  same UNet without motion modules or reference:   {f_plain / T:8.3f} TFLOP  ({f_plain / frames / T:.3f} per frame)"
    )


if __name__ == "__main__":
    main()
