"""The half-precision table: how far bf16 and fp16 move each RAIN network, and a whole stream, from fp32.

On the weights of one downloaded model folder (the stand-in hub's random full-size weights in
`bench/fullsize_cpu.py`), at one frame size, per network:

  image_encoder     CLIP image embedding of the reference (raw: the token)
  reference_unet    the reference pass and the K/V cache built from it (the whole chain in the precision)
  denoising_unet    one UNet call on a steady window (4 cohorts at t = 249/499/749/999, the same fp32 inputs
                    rounded to the precision; raw: v; frames: the t = 249 cohort's x0 estimate decoded by the fp32
                    TAESDV)
  pose_guider       pose features of 4 pose frames
  vae_decode        the SD VAE decoding 4 latents (the denoising UNet's fp32 x0 estimate)
  taesdv_decode     TAESDV decoding the same 4 latents from a zero memory
  stream            `RainStream` end to end (load_rain in the precision, reference, `frames` pose frames, flush)

Each entry: `relative_error` (‖half − fp32‖ / ‖fp32‖ of the raw output), `max_abs`, and for decoded frames
(values in [0, 1]) `frames_max_abs` and `frames_psnr_db` (frames_psnr_min_db for the stream: its worst frame).

Precisions. "bf16": the CPU's own bfloat16 kernels (oneDNN on AVX-512 BF16 here). "fp16": this CPU has no fast
float16 kernels (no AVX512-FP16/AMX-FP16: one 320-channel 3×3 convolution measured in the `kernels` entry takes
about 100× its bf16 time), so float16 is *emulated* as a GPU runs it: weights and every module's output stored in
float16 (between modules every op runs on float16 tensors), convolutions, linears and norms computed in float32
from the float16 values (a GPU accumulates fp16 products in fp32 too). "bf16_emulated" runs the same emulation in
bfloat16: its distance to real "bf16" says how well the emulation stands for real kernels. The pose guider (cheap)
also runs real float16 kernels ("fp16_kernels").

    nice -n 10 .venv/bin/python bench/precision_errors.py runs/fullsize/models/rain/RAIN-v0.1 --size 256 --out T.json
(`bench/fullsize_cpu.py` runs it after its rows and keeps the table in bench/results/fullsize_cpu.json.)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "examples" / "anyone-1.png"
POSES = ROOT / "examples" / "anyone-video-1_kps.mp4"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "bf16_emulated": torch.bfloat16,
          "fp16_kernels": torch.float16}


# ---------------------------------------------------------------------------------------------- emulation


@contextlib.contextmanager
def emulated(module: nn.Module, dtype: torch.dtype):
    """Run `module` (already converted to `dtype`) the way a GPU runs half precision: every module with its own
    weights computes in float32 from its `dtype` weights and inputs and stores its output in `dtype`."""
    hooks = []

    def before(layer, args):
        layer._emulated_weights = {name: p for name, p in layer._parameters.items() if p is not None}
        for name, weight in layer._emulated_weights.items():
            layer._parameters[name] = nn.Parameter(weight.detach().float(), requires_grad=False)
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def after(layer, args, output):
        layer._parameters.update(layer._emulated_weights)
        del layer._emulated_weights
        return _cast(output, dtype)

    for layer in module.modules():
        if any(p is not None for p in layer._parameters.values()):
            hooks += [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]
    try:
        yield module
    finally:
        for hook in hooks:
            hook.remove()


def _cast(value, dtype):
    if torch.is_tensor(value):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return type(value)(_cast(v, dtype) for v in value) if not hasattr(value, "_fields") else type(value)(
            *(_cast(v, dtype) for v in value))
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    return value


def variant(module: nn.Module, name: str):
    """(a copy of `module` in the precision `name`, the context to run it in)."""
    dtype = DTYPES[name]
    copy = _copy_to(module, dtype)
    context = emulated(copy, dtype) if name in ("fp16", "bf16_emulated") else contextlib.nullcontext(copy)
    return copy, context


def _copy_to(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `module` in `dtype`, each tensor converted as it is copied (never a second fp32 copy)."""
    import copy

    memo = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        converted = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach().clone()
        memo[id(tensor)] = nn.Parameter(converted, requires_grad=False) if isinstance(tensor, nn.Parameter) else converted
    return copy.deepcopy(module, memo)


# ---------------------------------------------------------------------------------------------- comparisons


def compare(reference: torch.Tensor, value: torch.Tensor, frames: bool = False) -> dict:
    reference, value = reference.detach().double(), value.detach().double()
    difference = value - reference
    entry = {"relative_error": float(difference.norm() / reference.norm().clamp_min(1e-30)),
             "max_abs": float(difference.abs().max()), "finite": bool(torch.isfinite(value).all())}
    if frames:
        mse = float((difference**2).mean())
        entry["frames_max_abs"] = entry["max_abs"]
        entry["frames_psnr_db"] = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    return entry


def _flat(value) -> torch.Tensor:
    """The tensors of a raw output (a tensor, or a dict of (key, value) pairs / tokens) as one flat vector."""
    if torch.is_tensor(value):
        return value.float().reshape(-1)
    if isinstance(value, dict):
        return torch.cat([_flat(value[k]) for k in sorted(value)])
    return torch.cat([_flat(v) for v in value])


def kernels(channels: int = 320) -> dict:
    """ms of one `channels`-channel 3×3 convolution (1 × 16 × 16) and a 1024 × channels × 4·channels matmul per
    dtype, here (320: the full-size top level)."""
    x, w = torch.randn(1, channels, 16, 16), torch.randn(channels, channels, 3, 3) / (9 * channels) ** 0.5
    a, b = torch.randn(1024, channels), torch.randn(channels, 4 * channels)
    timings = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        xs, ws, as_, bs = (t.to(dtype) for t in (x, w, a, b))
        calls = (("conv3x3_ms", lambda x=xs, w=ws: nn.functional.conv2d(x, w, padding=1)),
                 ("matmul_ms", lambda a=as_, b=bs: a @ b))
        for op, call in calls:
            call()
            started = time.perf_counter()
            call()
            timings.setdefault(name, {})[op] = round((time.perf_counter() - started) * 1000, 1)
    return timings


# ---------------------------------------------------------------------------------------------- the table


def _inputs(size: int, frames: int):
    from rain_core.io.inputs import fit_frames, pose_source_frames, read_image

    reference = fit_frames(read_image(REFERENCE), size, size)[0]
    poses = []
    for frame in pose_source_frames(POSES, size, size):
        poses.append(frame)
        if len(poses) == frames:
            break
    return reference, fit_frames(torch.stack(poses), size, size)


def _free():
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(folder, size: int = 256, frames: int = 32, variants=("bf16", "fp16", "bf16_emulated"),
            stream_variants=("bf16", "fp16"), log=print, save=None, seed: int = 0,
            sections=("networks", "stream"), previous: dict | None = None) -> dict:
    """The table for the model in `folder` (the README layout around it gives VAE, image encoder, TAESDV).
    The whole stream runs in `stream_variants` only (the emulation is checked against real bf16 kernels network
    by network; a stream costs ~11 ticks each). `sections`: "networks" and/or "stream"; what is not measured is taken
    from `previous` (an earlier table of the same size)."""
    from rain_core.loading import load_codec, load_image_encoder, load_network, load_taesdv, read_config_file
    from rain_core.loading.layout import readme_layout_parts
    from rain_core.models import RainModelConfig
    from rain_core.models.bundle import guidance_embedding
    from rain_core.scheduler import alphas_cumprod, ladder

    folder = Path(folder)
    parts = readme_layout_parts(folder)
    config = read_config_file(folder)[0] if (folder / "rain_config.json").is_file() else RainModelConfig.sd15()
    torch.manual_seed(seed)
    table = {"size": size, "frames": frames, "variants": list(variants), "stream_variants": list(stream_variants),
             "kernels": kernels(config.block_out_channels[0]), "threads": torch.get_num_threads(), "networks": {},
             "seconds": {}}
    log(f"precision table at {size}×{size}: kernels (ms) {table['kernels']}")
    reference_image, poses = _inputs(size, max(frames, 16))
    if "networks" not in sections:
        if previous is None or previous.get("size") != size:
            raise ValueError("precision table: networks not measured and no earlier table of this size to keep")
        table["networks"] = {k: v for k, v in previous["networks"].items() if k != "stream"}
        table["seconds"] = {k: v for k, v in previous.get("seconds", {}).items() if k != "stream"}
        table["variants"] = previous.get("variants", table["variants"])

    def record(name, entry, started):
        table["networks"][name] = entry
        table["seconds"][name] = round(time.perf_counter() - started, 1)
        shown = {v: {k: (f"{x:.3g}" if isinstance(x, float) else x) for k, x in e.items()} if isinstance(e, dict) else e
                 for v, e in entry.items()}
        log(f"  {name}: {shown} ({table['seconds'][name]} s)")
        if save is not None:
            save(table)

    def run_variants(name, module, call, frames_of=None):
        """fp32 output of call(module), then each variant's, compared; `frames_of` turns an output into frames."""
        started = time.perf_counter()
        with torch.no_grad():
            truth = call(module, torch.float32)
            entry = {}
            for variant_name in variants:
                copy, context = variant(module, variant_name)
                try:
                    with context:
                        output = call(copy, DTYPES[variant_name])
                except (RuntimeError, NotImplementedError) as error:  # a kernel this CPU lacks in that dtype
                    entry[variant_name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
                    continue
                finally:
                    del copy
                    _free()
                entry[variant_name] = compare(_flat(truth), _flat(output))
                if frames_of is not None:
                    entry[variant_name].update({k: v for k, v in compare(frames_of(truth), frames_of(output),
                                                                         frames=True).items() if k.startswith("frames")})
        record(name, entry, started)
        return truth

    if "networks" in sections:
        # --- the reference's inputs, in fp32 (the image encoder and the VAE encoder run once per reference)
        encoder = load_image_encoder(folder, config, {}, parts.get("image_encoder")).eval()
        image = reference_image[None]

        def encode(module, dtype):
            return module.encode(image.to(dtype)).float()

        clip_tokens = run_variants("image_encoder", encoder, encode)
        del encoder
        _free()
        codec = load_codec(folder, config, {}, parts.get("vae")).eval()
        with torch.no_grad():
            latent = codec.encode(image.permute(0, 3, 1, 2))

        # --- reference UNet and its K/V cache (the whole chain in each precision)
        reference_unet = load_network(folder, "reference_unet", config=config)
        tokens = {}

        def reference_pass(module, dtype):
            cache = module(latent.to(dtype), clip_tokens.to(dtype))
            return {name: value.float() for name, value in cache.tokens.items()}

        started = time.perf_counter()
        with torch.no_grad():
            tokens["fp32"] = reference_pass(reference_unet, torch.float32)
            for variant_name in variants:
                copy, context = variant(reference_unet, variant_name)
                with context:
                    tokens[variant_name] = reference_pass(copy, DTYPES[variant_name])
                del copy
                _free()
        table["seconds"]["reference_pass"] = round(time.perf_counter() - started, 1)
        del reference_unet
        _free()
        # --- pose guider (real fp16 kernels too: it is small); its fp32 features feed the UNet below
        pose_guider = load_network(folder, "pose_guider", config=config)
        window = poses[:16].permute(3, 0, 1, 2)[None]  # (1, 3, 16, H, W)

        def guide(module, dtype):
            return module(window[:, :, :4].to(dtype)).float()

        run_variants("pose_guider", pose_guider, guide)
        with torch.no_grad():
            features = pose_guider(window)
            entry = table["networks"]["pose_guider"]
            copy = _copy_to(pose_guider, torch.float16)
            try:
                entry["fp16_kernels"] = compare(guide(pose_guider, torch.float32), guide(copy, torch.float16))
            except (RuntimeError, NotImplementedError) as error:
                entry["fp16_kernels"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
        del pose_guider, copy

        # --- reference K/V cache and the denoising UNet (one call on a steady window: the reference latent noised to
        # each level's t), one copy of the UNet per precision for both
        decoder = load_taesdv(folder, config, parts.get("taesdv")).eval()
        m = 4
        timesteps = ladder(4, 4)[0].repeat_interleave(m)[None]  # (1, 16): 249 ×4, 499 ×4, 749 ×4, 999 ×4
        alpha = alphas_cumprod()[timesteps][0]  # (16,)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, latent.shape[1], 16, *latent.shape[-2:]), generator=generator)
        level = (alpha.sqrt()[None, None, :, None, None], (1 - alpha).sqrt()[None, None, :, None, None])
        sample = level[0] * latent[:, :, None] + level[1] * noise
        guidance = guidance_embedding(3.5, config.cond_proj_dim) if config.cond_proj_dim else None

        def clean(v):  # x0 estimate of the t = 249 cohort from v-prediction, (4, C, h, w)
            return (level[0][:, :, :m] * sample[:, :, :m] - level[1][:, :, :m] * v.float()[:, :, :m])[0].transpose(0, 1)

        def frames_of(v):  # ... decoded by the fp32 TAESDV
            with torch.no_grad():
                images, _ = decoder.decode(clean(v), None)
            return images.clamp(0, 1)

        def kv_of(module, token_set, dtype):
            from rain_core.models.reference import ReferenceCache

            kv = module.reference_kv(ReferenceCache({name: value.to(dtype) for name, value in token_set.items()}))
            return {name: (key.float(), value.float()) for name, (key, value) in kv.items()}

        def unet_call(module, dtype, kv):
            from rain_core.models.reference import ReferenceCache

            cache = ReferenceCache({}, {name: (a.to(dtype), b.to(dtype)) for name, (a, b) in kv.items()})
            return module(sample.to(dtype), timesteps, clip_tokens.to(dtype), features.to(dtype),
                          None if guidance is None else guidance.to(dtype), cache).float()

        def flat_kv(kv):
            return _flat({name: torch.stack(pair) for name, pair in kv.items()})

        denoising_unet = load_network(folder, "denoising_unet", config=config)
        started = time.perf_counter()
        kv_entry, unet_entry = {}, {}
        with torch.no_grad():
            kv_truth = kv_of(denoising_unet, tokens["fp32"], torch.float32)
            v = unet_call(denoising_unet, torch.float32, kv_truth)
            for variant_name in variants:
                copy, context = variant(denoising_unet, variant_name)
                with context:
                    kv = kv_of(copy, tokens[variant_name], DTYPES[variant_name])  # the chain in this precision
                    output = unet_call(copy, DTYPES[variant_name], kv_truth)  # the UNet alone: fp32 inputs, rounded
                del copy
                _free()
                kv_entry[variant_name] = compare(flat_kv(kv_truth), flat_kv(kv))
                unet_entry[variant_name] = compare(v.reshape(-1), output.reshape(-1))
                unet_entry[variant_name].update({k: value for k, value in compare(frames_of(v), frames_of(output),
                                                                                      frames=True).items()
                                                 if k.startswith("frames")})
        record("reference_unet", kv_entry, started)
        record("denoising_unet", unet_entry, started)
        x0 = clean(v)
        del denoising_unet, kv_truth, tokens
        _free()

        # --- decoders, on the fp32 x0 estimate of 4 frames
        def vae_decode(module, dtype):
            return module.decode(x0.to(dtype)).float()

        run_variants("vae_decode", codec, vae_decode, frames_of=lambda out: out)

        def taesdv_decode(module, dtype):
            images, _ = module.decode(x0.to(dtype), None)
            return images.float().clamp(0, 1)

        run_variants("taesdv_decode", decoder, taesdv_decode, frames_of=lambda out: out)
        codec = decoder = None  # noqa: F841 - free both before the streams load their own
        _free()

    # --- the whole stream, each precision loaded from the files as a user would
    table["networks"]["stream"] = stream_errors(folder, parts, reference_image, poses[:frames], size, stream_variants,
                                                log, table["seconds"])
    if save is not None:
        save(table)
    return table


def run_stream(folder, parts, reference_image, poses, size, dtype, emulate: bool) -> torch.Tensor:
    from rain_core.loading import load_rain
    from rain_core.stream import RainStream, StreamConfig

    models = load_rain(folder, **parts, dtype=dtype)
    context = emulated(models, dtype) if emulate else contextlib.nullcontext()
    try:
        with context:
            stream = RainStream(models, StreamConfig(height=size, width=size, fast_path="eager"))
            stream.set_reference(reference_image)
            outputs = [stream.push(poses[i:i + 4]) for i in range(0, poses.shape[0], 4)]
            outputs.append(stream.flush())
        return torch.cat(outputs)
    finally:
        del models
        _free()


def stream_errors(folder, parts, reference_image, poses, size, variants, log, seconds) -> dict:
    started = time.perf_counter()
    truth = run_stream(folder, parts, reference_image, poses, size, torch.float32, False)
    entry = {"frames_compared": int(truth.shape[0])}
    for variant_name in variants:
        output = run_stream(folder, parts, reference_image, poses, size, DTYPES[variant_name],
                            variant_name in ("fp16", "bf16_emulated"))
        result = compare(truth.reshape(-1), output.reshape(-1))
        per_frame = ((output.double() - truth.double()) ** 2).reshape(truth.shape[0], -1).mean(1)
        psnr = [10 * math.log10(1 / float(e)) if float(e) > 0 else math.inf for e in per_frame]
        result.update({"frames_max_abs": result["max_abs"], "frames_psnr_db": float(np.mean(psnr)),
                       "frames_psnr_min_db": float(np.min(psnr)),
                       "frames_psnr_first_last_db": [round(psnr[0], 2), round(psnr[-1], 2)]})
        entry[variant_name] = result
        log(f"  stream {variant_name}: relative {result['relative_error']:.3g}, max {result['max_abs']:.3g}, "
            f"PSNR {result['frames_psnr_db']:.1f} dB (worst frame {result['frames_psnr_min_db']:.1f})")
    seconds["stream"] = round(time.perf_counter() - started, 1)
    return entry


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a RAIN model folder of the README layout (e.g. models/rain/RAIN-v0.1)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=32, help="pose frames of the whole-stream comparison")
    parser.add_argument("--out", default=None, help="write the table here as JSON")
    args = parser.parse_args(argv)
    table = measure(args.folder, size=args.size, frames=args.frames)
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
