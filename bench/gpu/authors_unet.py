"""Times the authors' denoising UNet3D (random weights) with their reference attention, as their pipeline calls it.

Run by `bench/gpu/authors.py` in a subprocess, with the authors' checkout (never committed here) and, if their code
needs it, an older diffusers on PYTHONPATH. Imports nothing of ours. One argument: a JSON payload
{path, device, dtype, unet_overrides, unet_additional_kwargs, frames, latent, ladder, warmup, ticks}.
Prints one JSON line: {"unet_ms": median ms per UNet call, "ticks": calls timed, "peak_gib": CUDA peak or null}.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch


def load_authors_code(path: str):
    sys.path.insert(0, path)
    # their UNet needs none of these; hiding them keeps an old diffusers from importing today's transformers
    for name in ("transformers", "peft", "accelerate"):
        sys.modules[name] = None
    from src.models.mutual_self_attention import ReferenceAttentionControl
    from src.models.unet_2d_condition import UNet2DConditionModel
    from src.models.unet_3d import UNet3DConditionModel

    return UNet2DConditionModel, UNet3DConditionModel, ReferenceAttentionControl


def randomize(module: torch.nn.Module) -> None:
    """Every parameter random, zero-initialised ones too (no blind path)."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn_like(parameter)
            if parameter.dim() > 1:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            elif name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)


def main(payload: dict) -> dict:
    unet_2d, unet_3d, reference_control = load_authors_code(payload["path"])
    device, dtype = torch.device(payload["device"]), getattr(torch, payload["dtype"])
    with open(payload["path"] + "/configs/unet.json") as handle:
        base = json.load(handle)
    base.update(payload["unet_overrides"])
    base.pop("_class_name", None)
    base.pop("_diffusers_version", None)
    extra = payload["unet_additional_kwargs"]
    levels = len(base["block_out_channels"])
    video = dict(
        base,
        down_block_types=["CrossAttnDownBlock3D"] * (levels - 1) + ["DownBlock3D"],
        up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (levels - 1),
        mid_block_type="UNetMidBlock3DCrossAttn",
    )
    torch.manual_seed(0)
    reference_unet = unet_2d.from_config(base).to(device, dtype).eval()
    denoising_unet = unet_3d.from_config(video, **extra).to(device, dtype).eval()
    for module in (reference_unet, denoising_unet):
        randomize(module)
    writer = reference_control(reference_unet, mode="write", batch_size=1, fusion_blocks="full")
    reader = reference_control(denoising_unet, mode="read", batch_size=1, fusion_blocks="full")
    frames, h = payload["frames"], payload["latent"]
    channels = base["in_channels"]
    clip = torch.randn(1, 1, base["cross_attention_dim"], device=device, dtype=dtype)
    sample = torch.randn(1, channels, frames, h, h, device=device, dtype=dtype)
    pose = torch.randn(1, base["block_out_channels"][0], frames, h, h, device=device, dtype=dtype)
    ladder = torch.tensor(payload["ladder"], device=device).repeat_interleave(frames // len(payload["ladder"]))[None]
    w = torch.randn(1, extra["cond_proj_dim"], device=device, dtype=dtype)
    cuda = device.type == "cuda"
    with torch.no_grad():
        reference_latent = torch.randn(1, channels, h, h, device=device, dtype=dtype)
        reference_unet(reference_latent, torch.zeros(1, device=device), encoder_hidden_states=clip, return_dict=False)
        reader.update(writer, dtype=dtype)

        def call():
            return denoising_unet(
                sample, ladder, encoder_hidden_states=clip, pose_cond_fea=pose, timestep_cond=w, return_dict=False
            )[0]

        for _ in range(payload["warmup"]):
            call()
        times = []
        for _ in range(payload["ticks"]):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                started = time.perf_counter()
                call()
                times.append((time.perf_counter() - started) * 1000)
    return {
        "unet_ms": statistics.median(times),
        "ticks": len(times),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):  # the usage is the docstring
        print(__doc__)
        raise SystemExit(0 if sys.argv[1:] in (["-h"], ["--help"]) else 2)
    print(json.dumps(main(json.loads(sys.argv[1]))))
