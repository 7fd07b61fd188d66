"""The authors' denoising UNet3D on the same card, for a ratio. Runs `authors_unet.py` in a subprocess: their
code may need another diffusers on its path (--authors-pythonpath) and never imports ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rain_core.scheduler import ladder
from rain_core.stream import StreamConfig

from .run import Run

AUTHORS_UNET = Path(__file__).with_name("authors_unet.py")


def section_authors(run: Run, args, stream_cfg: StreamConfig, device, ours_unet_ms: dict) -> None:
    """The authors' UNet3D on the same card (subprocess: their code may need another diffusers on its path)."""
    latent = stream_cfg.height // 8 if not args.tiny else stream_cfg.height // 2
    overrides = (
        {}
        if not args.tiny
        else {
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "cross_attention_dim": 32,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "in_channels": 4,
            "out_channels": 4,
        }
    )
    extra = {  # configs/rain_morpher.yaml unet_additional_kwargs, written out (no omegaconf needed)
        "use_inflated_groupnorm": True,
        "unet_use_cross_frame_attention": False,
        "unet_use_temporal_attention": False,
        "use_motion_module": True,
        "motion_module_resolutions": [1, 2, 4, 8],
        "motion_module_mid_block": True,
        "motion_module_decoder_only": False,
        "motion_module_type": "Vanilla",
        "motion_module_kwargs": {
            "num_attention_heads": 8,
            "num_transformer_block": 1,
            "attention_block_types": ["Temporal_Self", "Temporal_Self"],
            "temporal_position_encoding": True,
            "temporal_position_encoding_max_len": 32,
            "temporal_attention_dim_div": 1,
        },
        "cond_proj_dim": 512,
    }
    payload = {
        "path": str(Path(args.authors).resolve()),
        "device": str(device),
        "dtype": "float16" if device.type == "cuda" else "float32",
        "unet_overrides": overrides,
        "unet_additional_kwargs": extra,
        "frames": stream_cfg.window,
        "latent": latent,
        "ladder": ladder(stream_cfg.levels, stream_cfg.steps)[0].tolist(),
        "warmup": args.warmup,
        "ticks": max(3, min(args.ticks, 10)),
    }
    env = dict(os.environ)
    if args.authors_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.authors_pythonpath, env.get("PYTHONPATH", "")])
    timeout = max(10.0, run.left() - 5.0)
    done = subprocess.run(
        [args.authors_python or sys.executable, str(AUTHORS_UNET), json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"authors' UNet run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"theirs": theirs, "dtype": payload["dtype"], "frames": payload["frames"]}
    for key, ms in ours_unet_ms.items():
        result[f"ratio_theirs_over_{key}"] = theirs["unet_ms"] / ms
    run.results["authors"] = result
    print(f"  authors' UNet3D {payload['dtype']}: {theirs['unet_ms']:.1f} ms per call; ratios {result}")
