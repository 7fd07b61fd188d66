"""Compare our RAIN networks with the authors' implementation on the same weights and inputs.

Step 1 (outside this repo, in a venv running MatrixTeam-AI/RAIN): build their classes at a tiny size with every
parameter random, save reference_unet.pth / motion_unet.pth / pose_guider.pth / taesdv.pth, the inputs and their
outputs into RUN/ (ckpt/, inputs.pt, outputs.pt, sizes.json). Step 2 (this script): load RUN/ckpt with
`load_rain`, feed the same inputs, print the relative error of each output. No code of theirs is here.

    .venv/bin/python bench/compare_authors.py RUN_FOLDER   (written by the authors-side script, outside the repo)

RUN_FOLDER holds: ckpt/{reference_unet,motion_unet,pose_guider,taesdv}.pth (their state dicts, every parameter
random); sizes.json {"channels": UNet block_out_channels, "cross_dim", "pose_channels"}; inputs.pt {"w" (1,),
"pose" (1, 3, F, 8h, 8w), "ref_latent" (1, 4, h, w), "clip" (1, 1, cross_dim), "sample" (1, 4, F, h, w),
"timesteps" (1, F), "taesdv_latents" (1, T, 4, h, w)}; outputs.pt {"w_embedding", "pose_features",
"reference.<our attn1 name>" (their writer bank per transformer block), "v" (their UNet3D with the bank in fp32),
"v_pipeline_fp16_bank" (their default fp16 bank), "taesdv_images" (two decode_slice calls, clamped to [0, 1]),
"taesdv_memory.<i>"}. The authors' side builds their UNet2DConditionModel / UNet3DConditionModel (configs/unet.json
with the rain_morpher unet_additional_kwargs) / PoseGuider / TAESDV(checkpoint_path=None) in their own venv
(shared/tools/authors-code/README.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rain_core.loading import load_rain
from rain_core.models import RainModelConfig, guidance_embedding
from rain_core.models.config import ClipConfig, MotionConfig


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.double() - theirs.double()).norm() / theirs.double().norm().clamp_min(1e-30)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder written by the authors-side script")
    args = parser.parse_args()
    sizes = json.loads((args.run / "sizes.json").read_text())
    inputs = torch.load(args.run / "inputs.pt", weights_only=True)
    theirs = torch.load(args.run / "outputs.pt", weights_only=True)
    channels = tuple(sizes["channels"])
    config = RainModelConfig(
        block_out_channels=channels,
        cross_attention_dim=sizes["cross_dim"],
        motion=MotionConfig(),
        pose_guider_channels=tuple(sizes["pose_channels"]),
        clip=ClipConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=sizes["cross_dim"],
        ),
        vae={
            "block_out_channels": [32] * 4,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "layers_per_block": 1,
            "latent_channels": 4,
        },
    )
    ckpt = args.run / "ckpt"
    if not (ckpt / "image_encoder").exists():  # not compared: the loader just needs them present
        from diffusers import AutoencoderKL

        from rain_core.models.image_encoder import build_clip

        build_clip(config.clip).save_pretrained(ckpt / "image_encoder")
        AutoencoderKL(**config.vae).save_pretrained(ckpt / "sd-vae-ft-mse")
    models = load_rain(ckpt, config=config)
    rows = []
    with torch.no_grad():
        w = guidance_embedding(inputs["w"], 512)
        rows.append(("w-embedding", relative_error(w, theirs["w_embedding"])))
        features = models.pose_guider(inputs["pose"])
        rows.append(("pose guider", relative_error(features, theirs["pose_features"])))
        cache = models.reference_unet(inputs["ref_latent"], inputs["clip"])
        token_errors = [
            relative_error(cache.tokens[k[len("reference.") :]], v)
            for k, v in theirs.items()
            if k.startswith("reference.")
        ]
        rows.append((f"reference pass ({len(token_errors)} token sets, max)", max(token_errors)))
        for use_cache in (True, False):
            reference = models.reference_unet(inputs["ref_latent"], inputs["clip"])
            v = models.denoising_unet(
                inputs["sample"],
                inputs["timesteps"],
                inputs["clip"],
                features,
                w,
                reference,
                use_reference_kv_cache=use_cache,
            )
            label = "cached K/V" if use_cache else "recomputed K/V"
            rows.append(
                (f"denoising UNet, {v.shape[2]} frames at t=[249,499,749,999], {label}", relative_error(v, theirs["v"]))
            )
        rows.append(
            ("  (vs their pipeline's fp16-rounded reference bank)", relative_error(v, theirs["v_pipeline_fp16_bank"]))
        )
        latents = inputs["taesdv_latents"][0]
        first, memory = models.fast_decoder.decode(latents[:4], None)
        second, memory = models.fast_decoder.decode(latents[4:], memory)
        rows.append(
            (
                "TAESDV, 2 slices with carried memory",
                relative_error(torch.cat([first, second]), theirs["taesdv_images"]),
            )
        )
        rows.append(
            (
                "TAESDV memory (10 MemBlock inputs, max)",
                max(relative_error(m, theirs[f"taesdv_memory.{i}"]) for i, m in enumerate(memory)),
            )
        )
    for name, error in rows:
        print(f"{name:70s} rel. error {error:.2e}")


if __name__ == "__main__":
    main()
