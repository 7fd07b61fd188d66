"""What the GPU benchmark runs on: full-size (or --tiny) RAIN networks with random weights, the stream config,
a reference pass, and tick states and noise to start timed ticks from."""

from __future__ import annotations

import copy
import time

import torch

from rain_core.models import RainModelConfig, RainModels
from rain_core.models.config import ClipConfig
from rain_core.stream import StreamConfig, Tick

from ..random_weights import randomize_parameters
from .run import Run, synchronize

SD_VAE = {  # sd-vae-ft-mse's AutoencoderKL config (random weights here; only its shape matters)
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
# CLIP runs once per reference, never in a tick: a small random tower with the real 768-d projection will do
SMALL_CLIP = ClipConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
)


def model_config(args) -> RainModelConfig:
    if args.tiny:
        return RainModelConfig.tiny(
            block_out_channels=(16, 32),
            attention_heads=4,
            norm_num_groups=8,
            cross_attention_dim=32,
            cond_proj_dim=32,
            taesdv_channels=8,
        )
    config = RainModelConfig.sd15()
    config.vae = dict(SD_VAE)
    config.clip = SMALL_CLIP
    config.validate()
    return config


def stream_config(args) -> StreamConfig:
    size = 16 if args.tiny else args.size
    return StreamConfig(
        levels=args.levels,
        frames_per_cohort=args.frames_per_cohort,
        steps=args.steps,
        guidance=3.5,
        height=size,
        width=size,
        decoder="taesdv",
    )


def build_master(run: Run, args, device: torch.device):
    """The fp32 networks with random weights on the device, and a reference (random image through CLIP, VAE
    encoder and reference UNet, as `RainStream.set_reference` does)."""
    config = model_config(args)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.device(device):
        models = RainModels.build(config)
    randomize_parameters(models, args.seed).eval()
    synchronize(device)
    counts = {
        name: sum(p.numel() for p in getattr(models, name).parameters())
        for name in ("reference_unet", "denoising_unet", "pose_guider", "fast_decoder", "codec")
    }
    run.results["build"] = {
        "config": "tiny" if args.tiny else "sd15",
        "parameters_millions": {k: round(v / 1e6, 2) for k, v in counts.items()},
        "build_seconds": round(time.perf_counter() - start, 2),
        "stream": stream_config(args).to_dict(),
    }
    print(f"  parameters (M): {run.results['build']['parameters_millions']}")
    return models


def make_reference(models, stream_cfg: StreamConfig, seed: int):
    """(clip_tokens, ReferenceCache) of a random reference image, through the models' own encoders."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, stream_cfg.height, stream_cfg.width, 3, generator=generator)
    with torch.no_grad():
        clip_tokens = models.image_encoder.encode(image.to(models.device, models.dtype))
        latent = models.codec.encode(image.permute(0, 3, 1, 2).to(models.device, models.dtype))
        cache = models.reference_unet(latent, clip_tokens)
    return clip_tokens, cache, image[0]


def random_poses(stream_cfg: StreamConfig, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, stream_cfg.height, stream_cfg.width, 3, generator=generator)


def warm_tick_state(tick: Tick, seed: int) -> None:
    """Fill the window with a plausible mid-stream state (random latents/features, zero decoder memory)."""
    generator = torch.Generator().manual_seed(seed)
    tick.load_state(
        torch.randn(tick.latents.shape, generator=generator).to(tick.device, tick.dtype),
        (0.5 * torch.randn(tick.pose_features.shape, generator=generator)).to(tick.device, tick.dtype),
        None,
    )


def given_noise(tick: Tick, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(tick.initial_noise.shape, generator=generator),
        torch.randn(tick.step_noise.shape, generator=generator),
    )


def half_copy(master, dtype):
    models = copy.deepcopy(master).to(dtype)
    return models
