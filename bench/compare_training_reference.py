"""The reference side of bench/compare_training.py: Moore-AnimateAnyone's own training step, run in its environment.

Runs with the reference code's Python (diffusers 0.24, see bench/compare_training.py) and imports its modules from
the checkout given on the command line; no code of theirs is copied here. Their `train_stage_{1,2}.py` is
executed as a module (with "cuda" read as "cpu", and stand-ins for the imports a training step does not use:
mlflow, accelerate, torchvision, datasets, pipelines); the step itself is their loop body, cut out of their `main()`
between two of its own comments and executed with:

- fixed inputs instead of the VAE (a stand-in whose `encode` returns the given latents) and the data loader;
- the noise, offset noise, timesteps and dropout coin of the run file instead of `torch.randn_like`,
  `torch.randn`, `torch.randint` and `random.random`;
- the reference bank kept in float32 (their `ReferenceAttentionControl.update` casts it to float16 by default,
  which matches their fp16 training; this comparison runs at fp32).

    python bench/compare_training_reference.py build MAA_CHECKOUT RUN_DIR
    python bench/compare_training_reference.py step MAA_CHECKOUT RUN_DIR

`build` writes tiny random networks in the official layout (RUN_DIR/ckpt-s1 without motion modules, ckpt-s2
with); `step` reads RUN_DIR/rows.json + inputs.safetensors and writes RUN_DIR/reference.safetensors (+ .json).
"""

from __future__ import annotations

import json
import sys
import textwrap
import types
from pathlib import Path

import torch

SIZES = {
    # two channels or more per GroupNorm group (32 groups) and at least 2×2 positions on the deepest level: one
    # channel alone per group at 1×1 makes the norms degenerate and the gradients roundoff-dominated
    "block_out_channels": [64, 64, 128, 128],
    "cross_attention_dim": 32,
    "attention_heads": 8,
    "pose_guider_channels": [16, 32, 96, 256],
    "latent": 16,  # 16×16 latents of a 128 px image
    "clip": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8, "projection_dim": 32},
}
MOTION = {
    "use_inflated_groupnorm": True, "unet_use_cross_frame_attention": False, "unet_use_temporal_attention": False,
    "use_motion_module": True, "motion_module_resolutions": [1, 2, 4, 8], "motion_module_mid_block": True,
    "motion_module_decoder_only": False, "motion_module_type": "Vanilla",
    "motion_module_kwargs": {"num_attention_heads": 8, "num_transformer_block": 1,
                             "attention_block_types": ["Temporal_Self", "Temporal_Self"],
                             "temporal_position_encoding": True, "temporal_position_encoding_max_len": 32,
                             "temporal_attention_dim_div": 1},
}


def _stub(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so submodules can hang under it

    def anything(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {"__init__": lambda self, *a, **k: None})

    module.__getattr__ = anything
    return module


def _import_their_training_module(checkout: Path, stage: int) -> dict:
    sys.path.insert(0, str(checkout))
    import diffusers  # noqa: F401  (imported before the stand-ins, so it sees no accelerate)
    import src.models  # noqa: F401  (their real package, not a stand-in)
    import transformers  # noqa: F401

    for name in ("mlflow", "accelerate", "accelerate.utils", "torchvision", "torchvision.transforms",
                 "src.dataset", "src.dataset.dance_image", "src.dataset.dance_video", "src.dwpose",
                 "src.pipelines", "src.pipelines.pipeline_pose2img", "src.pipelines.pipeline_pose2vid",
                 "src.utils", "src.utils.util"):
        sys.modules.setdefault(name, _stub(name))
    logging_stub = _stub("accelerate.logging")
    logging_stub.get_logger = lambda name, log_level=None: __import__("logging").getLogger(name)
    sys.modules["accelerate.logging"] = logging_stub

    path = checkout / f"train_stage_{stage}.py"
    source = path.read_text().replace('"cuda"', '"cpu"')
    namespace = {"__name__": f"reference_train_stage_{stage}", "__file__": str(path)}
    exec(compile(source, str(path), "exec"), namespace)
    namespace["__source__"] = source
    return namespace


def _cut(source: str, start: str, end: str, include_end: bool = False) -> str:
    """The lines of `source` from the one containing `start` to the one containing `end`, dedented."""
    lines = source.splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    last = next(i for i in range(first + 1, len(lines)) if end in lines[i])
    return textwrap.dedent("\n".join(lines[first : last + (1 if include_end else 0)])) + "\n"


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (zero-initialised layers would hide whole paths): weights ~ N(0, 1/fan_in),
    norm scales ~ 1 + N(0, 0.1²), biases ~ N(0, 0.1²)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() > 1:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def _their_networks(namespace: dict, motion: bool):
    unet_2d, unet_3d = namespace["UNet2DConditionModel"], namespace["UNet3DConditionModel"]
    common = dict(
        sample_size=SIZES["latent"], block_out_channels=SIZES["block_out_channels"], layers_per_block=1,
        cross_attention_dim=SIZES["cross_attention_dim"], attention_head_dim=SIZES["attention_heads"],
        norm_num_groups=32,
    )
    reference_unet = unet_2d(
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, **common,
    )
    extra = MOTION if motion else {"use_motion_module": False, "unet_use_temporal_attention": False}
    denoising_unet = unet_3d(
        down_block_types=["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"], mid_block_type="UNetMidBlock3DCrossAttn",
        up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3, **common, **extra,
    )
    pose_guider = namespace["PoseGuider"](conditioning_embedding_channels=SIZES["block_out_channels"][0],
                                          block_out_channels=tuple(SIZES["pose_guider_channels"]))
    return reference_unet, denoising_unet, pose_guider


def build(checkout: Path, run: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    namespace = _import_their_training_module(checkout, 2)
    reference_unet, denoising_unet, pose_guider = _their_networks(namespace, motion=True)
    for seed, module in enumerate((reference_unet, denoising_unet, pose_guider)):
        _randomize(module, seed)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**SIZES["clip"]))
    _randomize(clip, 3)
    # the released reference_unet.pth carries no output head (the reference pass only feeds the bank)
    reference_state = {k: v for k, v in reference_unet.state_dict().items() if not k.startswith(("conv_norm_out", "conv_out"))}
    for stage, folder in ((1, run / "ckpt-s1"), (2, run / "ckpt-s2")):
        folder.mkdir(parents=True, exist_ok=True)
        state = denoising_unet.state_dict()
        if stage == 1:
            state = {k: v for k, v in state.items() if "motion_modules" not in k}
        torch.save(reference_state, folder / "reference_unet.pth")
        torch.save(state, folder / "motion_unet.pth")
        torch.save(pose_guider.state_dict(), folder / "pose_guider.pth")
        clip.save_pretrained(folder / "image_encoder")
    (run / "sizes.json").write_text(json.dumps({**SIZES, "motion": MOTION}, indent=1))


class _TorchWithFixedDraws:
    """`torch` as their loop body sees it: the random draws return the run file's tensors, the rest is torch."""

    def __init__(self, noise, offset, timesteps):
        self._noise, self._offset, self._timesteps = noise, offset, timesteps

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, like, **kwargs):
        assert like.shape == self._noise.shape, (like.shape, self._noise.shape)
        return self._noise.clone()

    def randn(self, shape, **kwargs):
        assert tuple(shape) == tuple(self._offset.shape), (shape, self._offset.shape)
        return self._offset.clone()

    def randint(self, low, high, shape, **kwargs):
        assert (low, high, tuple(shape)) == (0, 1000, tuple(self._timesteps.shape))
        return self._timesteps.clone()


class _VaeStandIn:
    """`vae.encode(x).latent_dist.sample()` returns the next of the given raw latents (frames first, then the
    reference image, the order of their loop body)."""

    dtype, device = torch.float32, torch.device("cpu")

    def __init__(self, *latents):
        self._queue = list(latents)

    def requires_grad_(self, flag):
        return self

    def encode(self, images):
        sample = self._queue.pop(0)
        assert sample.shape[0] == images.shape[0]
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(sample=lambda: sample.clone()))


def step(checkout: Path, run: Path) -> None:
    from omegaconf import OmegaConf
    from safetensors.torch import load_file, save_file
    from transformers import CLIPVisionModelWithProjection

    rows = json.loads((run / "rows.json").read_text())
    inputs = load_file(run / "inputs.safetensors")
    outputs, report = {}, {}
    namespaces = {}
    for index, row in enumerate(rows):
        stage = row["stage"]
        if stage not in namespaces:
            namespaces[stage] = _import_their_training_module(checkout, stage)
        namespace = namespaces[stage]
        source = namespace["__source__"]
        control = namespace["ReferenceAttentionControl"]
        control.update.__defaults__ = (torch.float32,)  # fp32 bank (theirs: float16 by default)
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(f"row{index}.")}

        cfg = OmegaConf.load(checkout / "configs" / "train" / f"stage{stage}.yaml")
        cfg.snr_gamma, cfg.uncond_ratio, cfg.noise_offset = row["snr_gamma"], row["uncond_ratio"], row["noise_offset"]
        folder = run / f"ckpt-s{stage}"
        reference_unet, denoising_unet, pose_guider = _their_networks(namespace, motion=stage == 2)
        reference_unet.load_state_dict(torch.load(folder / "reference_unet.pth", weights_only=True), strict=False)
        denoising_unet.load_state_dict(torch.load(folder / "motion_unet.pth", weights_only=True))
        pose_guider.load_state_dict(torch.load(folder / "pose_guider.pth", weights_only=True))
        image_enc = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder")
        vae = _VaeStandIn(x["raw_latents"], x["raw_ref_latents"])
        local = dict(namespace, cfg=cfg, vae=vae, image_enc=image_enc, reference_unet=reference_unet,
                     denoising_unet=denoising_unet, pose_guider=pose_guider, weight_dtype=torch.float32)
        exec(_cut(source, "sched_kwargs = OmegaConf.to_container", "train_noise_scheduler = DDIMScheduler(",
                  include_end=True), local)
        exec(_cut(source, "# Freeze", "reference_control_writer = ReferenceAttentionControl("), local)
        exec(_cut(source, "reference_control_writer = ReferenceAttentionControl(",
                  "if cfg.solver.enable_xformers_memory_efficient_attention"), local)
        if stage == 1:
            batch = {"img": x["images"], "tgt_pose": x["poses"][:, 0], "ref_img": x["reference"],
                     "clip_images": x["clip_pixels"]}
        else:
            batch = {"pixel_values_vid": x["images"], "pixel_values_pose": x["poses"],
                     "pixel_values_ref_img": x["reference"], "clip_ref_img": x["clip_pixels"]}
        coin = 0.0 if row["drop"] else 1.0
        local.update(batch=batch, torch=_TorchWithFixedDraws(x["noise"], x["offset"], x["timesteps"]),
                     random=types.SimpleNamespace(random=lambda coin=coin: coin))
        exec(_cut(source, "# Convert videos to latent space", "# Gather the losses across all processes"), local)
        loss = local["loss"]
        loss.backward()
        local["reference_control_reader"].clear()
        local["reference_control_writer"].clear()
        outputs[f"row{index}.loss"] = loss.detach().reshape(1)
        for name in ("latents", "noise", "timesteps", "ref_image_latents"):
            outputs[f"row{index}.{name}"] = local[name].detach().contiguous()
        trainable, no_grad = [], []
        for part, module in (("reference_unet", reference_unet), ("denoising_unet", denoising_unet),
                             ("pose_guider", pose_guider), ("image_encoder", image_enc)):
            for name, param in module.named_parameters():
                if not param.requires_grad:
                    continue
                trainable.append(f"{part}.{name}")
                if param.grad is None:
                    no_grad.append(f"{part}.{name}")
                else:
                    outputs[f"row{index}.grad.{part}.{name}"] = param.grad.detach().contiguous()
        report[index] = {"uncond_fwd": bool(local["uncond_fwd"]), "trainable": trainable, "no_grad": no_grad}
    save_file(outputs, run / "reference.safetensors")
    (run / "reference.json").write_text(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("build", "step"):  # --help included: the usage is the docstring
        print(__doc__)
        raise SystemExit(0 if sys.argv[1:] in (["-h"], ["--help"]) else 2)
    command, checkout, run = sys.argv[1], Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
    {"build": build, "step": step}[command](checkout, run)
