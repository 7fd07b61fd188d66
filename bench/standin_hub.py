"""A local stand-in for the Hugging Face hub holding exactly the published RAIN-v0.1 layout, with random weights.

No GPU and no real weights are needed to run the released model's path (download → load → stream) end to end:
this script writes, on demand and never into git, the files a user's `rain download` fetches, at their real
sizes and key names, saved the way their publishers saved them, and serves them on 127.0.0.1 with
`tests/hub_server.py` (the real huggingface_hub client talks to it through HF_ENDPOINT).

    hub/Pscgylotti/RAIN-v0.1/{reference_unet,motion_unet,pose_guider}.pth    torch.save'd fp32 state dicts, every
        name and shape of tests/fixtures/official-rain-keys.json (3.44 GB, 5.26 GB, 4.35 MB)
    hub/lambdalabs/sd-image-variations-diffusers/image_encoder/{config.json,pytorch_model.bin}   ViT-L/14 with its
        768-d projection (the repo's config), torch.save'd (no model.safetensors: on `main` it has none)
    hub/stabilityai/sd-vae-ft-mse/{config.json,diffusion_pytorch_model.safetensors}   AutoencoderKL with the
        attention names of its 2022 upload (query/key/value/proj_attn; diffusers renames them on load)
    web/<path of rain_core.loading.download.TAESDV_URL>   taesdv.pth (encoder.*, decoder.*), a plain web file

Weights: normal with std 1/sqrt(fan_in) for every tensor of two or more dimensions, biases N(0, 0.1²), norm scales
1 + N(0, 0.1²) (the convention of `bench/random_weights.py`, so activations stay O(1)
through the deep stacks and no path is blind), sinusoidal position tables as the networks compute them. Each tensor
has its own seed (seed, file, index), so a file is the same on every machine whatever order it is written in.
`--tiny` writes the same layout with tiny networks (seconds; the smoke test of `bench/fullsize_cpu.py`), plus
`tiny_rain_config.json` beside the hub: the sizes a loader needs, since the released layout carries none.

    nice -n 10 .venv/bin/python bench/standin_hub.py build --root runs/hub       # ~10 GB, a few minutes
    .venv/bin/python bench/standin_hub.py serve --root runs/hub                    # prints the two variables
    HF_ENDPOINT=... RAIN_TAESDV_URL=... .venv/bin/rain download --models-dir runs/models

A build is complete when `standin.json` exists (written last); an incomplete one is rebuilt file by file.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a plain checkout (no pip install)

import torch  # noqa: E402

from rain_core.loading.download import ITEMS, TAESDV_URL  # noqa: E402
from rain_core.loading.single_file import SD_VAE_CONFIG  # noqa: E402

KEYS = ROOT / "tests" / "fixtures" / "official-rain-keys.json"
MANIFEST = "standin.json"
TINY_CONFIG = "tiny_rain_config.json"
RAIN_REPO = "Pscgylotti/RAIN-v0.1"
CLIP_REPO = "lambdalabs/sd-image-variations-diffusers"
VAE_REPO = "stabilityai/sd-vae-ft-mse"
# what the authors' .pth files are called on the hub -> the name in the keys manifest
RAIN_FILES = {"reference_unet.pth": "reference_unet", "motion_unet.pth": "motion_unet", "pose_guider.pth": "pose_guider"}

# lambdalabs/sd-image-variations-diffusers, image_encoder/config.json on `main` (CLIP ViT-L/14 + 768-d projection)
CLIP_CONFIG = {
    "_name_or_path": "openai/clip-vit-large-patch14",
    "architectures": ["CLIPVisionModelWithProjection"],
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 1024,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": "4.25.0.dev0",
}
# stabilityai/sd-vae-ft-mse, config.json: the SD VAE's shape (`rain_core.loading.single_file`) as its 2022 upload wrote it
VAE_CONFIG = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", **SD_VAE_CONFIG, "sample_size": 256}
# diffusers' AttentionBlock names (before 0.14), which VAE uploads of 2022 carry; new name -> old name
OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def tiny_config():
    """The tiny model of `--tiny`: the released classes and file layout, SD VAE codec (×8), a few channels."""
    from rain_core.models import RainModelConfig

    return RainModelConfig.tiny(block_out_channels=(16, 32), attention_heads=2, codec="vae", codec_factor=8,
                                taesdv_channels=8, clip_image_size=32)


def tiny_clip_config() -> dict:
    clip = tiny_config().clip
    return {**CLIP_CONFIG, "hidden_size": clip.hidden_size, "intermediate_size": clip.intermediate_size,
            "num_hidden_layers": clip.num_hidden_layers, "num_attention_heads": clip.num_attention_heads,
            "image_size": clip.image_size, "patch_size": clip.patch_size, "projection_dim": clip.projection_dim}


def tiny_vae_config() -> dict:
    return {**VAE_CONFIG, **tiny_config().vae, "_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2"}


# ---------------------------------------------------------------------------------------------- weights


def _seed(seed: int, file: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}/{file}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_tensor(name: str, shape, seed: int, norm: bool | None = None) -> torch.Tensor:
    """One tensor by the convention above. `norm`: whether a 1-D `weight` is a norm scale (default: it is; every
    1-D weight of the RAIN files is a GroupNorm/LayerNorm scale)."""
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    if name.endswith(".pos_encoder.pe"):  # AnimateDiff's sinusoidal table (1, length, dim)
        _, length, dim = shape
        position = torch.arange(length, dtype=torch.float32)[:, None]
        rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        table = torch.zeros(1, length, dim)
        table[0, :, 0::2], table[0, :, 1::2] = torch.sin(position * rates), torch.cos(position * rates)
        return table
    value = torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        return value.mul_(1.0 / math.sqrt(math.prod(shape[1:])))
    if name.endswith("weight") and (norm is None or norm):
        return value.mul_(0.1).add_(1.0)
    return value.mul_(0.1)


def rain_state(part: str, seed: int, shapes: dict[str, list[int]]) -> collections.OrderedDict:
    """A RAIN network's state dict in the manifest's order, as `module.state_dict()` returns it (an OrderedDict)."""
    return collections.OrderedDict(
        (name, random_tensor(name, shape, _seed(seed, part, index))) for index, (name, shape) in enumerate(shapes.items())
    )


def module_state(module: torch.nn.Module, file: str, seed: int) -> collections.OrderedDict:
    """Every parameter of `module` (built on the meta device) drawn by the convention; norm scales found by type."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    norm_params = {f"{prefix}.weight".lstrip(".") for prefix, sub in module.named_modules() if isinstance(sub, norms)}
    state = collections.OrderedDict()
    for index, (name, tensor) in enumerate(module.state_dict().items()):
        if tensor.is_floating_point():
            state[name] = random_tensor(name, tensor.shape, _seed(seed, file, index), norm=name in norm_params)
    return state


def _old_attention_names(state: dict) -> collections.OrderedDict:
    renamed = collections.OrderedDict()
    for name, tensor in state.items():
        if ".attentions." in name:
            for new, old in OLD_ATTENTION_NAMES.items():
                name = name.replace(f".{new}.", f".{old}.")
        renamed[name] = tensor
    return renamed


# ---------------------------------------------------------------------------------------------- layout


def taesdv_web_path() -> str:
    return urlparse(TAESDV_URL).path


def hub_files(root: Path) -> dict[tuple[str, str], Path]:
    """(repo id, path in repo) -> file on disk, for LocalHub."""
    hub = root / "hub"
    files = {}
    for _, remotes in ITEMS.values():
        for remote in remotes:
            if remote.repo_id is None or remote.repo_id == "yzd-v/DWPose":
                continue
            for name in (remote.path_in_repo, *remote.alternatives):
                path = hub / remote.repo_id / name
                if path.is_file():
                    files[(remote.repo_id, name)] = path
    return files


def web_files(root: Path) -> dict[str, Path]:
    path = root / "web" / taesdv_web_path().lstrip("/")
    return {taesdv_web_path(): path} if path.is_file() else {}


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def _attach_metadata(state: collections.OrderedDict, module: torch.nn.Module | None) -> collections.OrderedDict:
    """`module.state_dict()` carries `_metadata` (per-module versions); torch.save pickles it with the dict."""
    if module is not None:
        state._metadata = module.state_dict()._metadata  # noqa: SLF001 - what a real state_dict pickles
    return state


def build(root: str | os.PathLike, tiny: bool = False, seed: int = 0, log=print) -> Path:
    """Write the stand-in hub under `root` (skipping files a complete earlier build of the same kind wrote)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from rain_core.models import RainModelConfig
    from rain_core.models.pose_guider import PoseGuider
    from rain_core.models.taesdv import TAESDV
    from rain_core.models.unet import DenoisingUNet, ReferenceUNet

    root = Path(root)
    manifest_path = root / MANIFEST
    kind = {"tiny": tiny, "seed": seed}
    if manifest_path.is_file():
        if {k: v for k, v in json.loads(manifest_path.read_text()).items() if k in kind} == kind:
            log(f"standin hub: {root} is complete ({'tiny' if tiny else 'full size'}, seed {seed})")
            return root
        manifest_path.unlink()
        for path in [*(root / "hub").rglob("*"), *(root / "web").rglob("*")]:
            if path.is_file():
                path.unlink()  # another kind of build: nothing of it may stay
    config = tiny_config() if tiny else RainModelConfig.sd15()
    with torch.device("meta"):
        networks = {"reference_unet": ReferenceUNet(config), "motion_unet": DenoisingUNet(config),
                    "pose_guider": PoseGuider(config.pose_channels, config.pose_guider_channels)}
    shapes = json.loads(KEYS.read_text())
    started = time.perf_counter()
    for file, part in RAIN_FILES.items():
        path = root / "hub" / RAIN_REPO / file
        if path.is_file():
            continue
        t0 = time.perf_counter()
        network = networks[part]
        if tiny:
            part_shapes = {name: list(t.shape) for name, t in network.state_dict().items()}
        else:
            part_shapes = shapes[part]
            ours = {name: list(t.shape) for name, t in network.state_dict().items()}
            if ours != part_shapes:  # the manifest is the authority; our classes must match it
                raise SystemExit(f"standin hub: our {part} differs from {KEYS.name}; fix the model first")
        state = _attach_metadata(rain_state(part, seed, part_shapes), network)
        _atomic(path, lambda p, s=state: torch.save(s, p))
        del state
        log(f"  {RAIN_REPO}/{file}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")

    clip_config = tiny_clip_config() if tiny else dict(CLIP_CONFIG)
    clip_dir = root / "hub" / CLIP_REPO / "image_encoder"
    if not (clip_dir / "pytorch_model.bin").is_file():
        t0 = time.perf_counter()
        _atomic(clip_dir / "config.json", lambda p: p.write_text(json.dumps(clip_config, indent=2) + "\n"))
        with torch.device("meta"):
            clip = CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(clip_config))
        state = module_state(clip, "image_encoder", seed)
        # transformers < 4.31 saved position_ids as a persistent buffer: the 2022 file has it; loaders ignore it
        positions = (clip_config["image_size"] // clip_config["patch_size"]) ** 2 + 1
        state["vision_model.embeddings.position_ids"] = torch.arange(positions)[None]
        _atomic(clip_dir / "pytorch_model.bin", lambda p: torch.save(state, p))
        log(f"  {CLIP_REPO}/image_encoder/pytorch_model.bin: {(clip_dir / 'pytorch_model.bin').stat().st_size / 1e9:.2f}"
            f" GB in {time.perf_counter() - t0:.0f} s")
        del state, clip

    vae_dir = root / "hub" / VAE_REPO
    if not (vae_dir / "diffusion_pytorch_model.safetensors").is_file():
        vae_config = tiny_vae_config() if tiny else dict(VAE_CONFIG)
        _atomic(vae_dir / "config.json", lambda p: p.write_text(json.dumps(vae_config, indent=2) + "\n"))
        with torch.device("meta"):
            vae = AutoencoderKL.from_config({k: v for k, v in vae_config.items() if not k.startswith("_")})
        state = _old_attention_names(module_state(vae, "vae", seed))
        _atomic(vae_dir / "diffusion_pytorch_model.safetensors",
                lambda p: save_file({k: v.contiguous() for k, v in state.items()}, str(p), metadata={"format": "pt"}))
        del state, vae

    taesdv_path = root / "web" / taesdv_web_path().lstrip("/")
    if not taesdv_path.is_file():
        with torch.device("meta"):
            decoder = TAESDV(config.latent_channels, config.taesdv_channels, int(math.log2(config.codec_factor)))
        state = _attach_metadata(module_state(decoder, "taesdv", seed), decoder)
        _atomic(taesdv_path, lambda p: torch.save(state, p))

    if tiny:
        (root / TINY_CONFIG).write_text(json.dumps(config.to_dict(), indent=1))
    sizes = {f"{repo}/{name}": path.stat().st_size for (repo, name), path in sorted(hub_files(root).items())}
    sizes.update({url: path.stat().st_size for url, path in web_files(root).items()})
    _atomic(manifest_path, lambda p: p.write_text(json.dumps({**kind, "files": sizes}, indent=1)))
    log(f"standin hub: {root} built in {time.perf_counter() - started:.0f} s "
        f"({sum(sizes.values()) / 1e9:.2f} GB in {len(sizes)} files)")
    return root


# ---------------------------------------------------------------------------------------------- serving


def _hub_server_module():
    spec = importlib.util.spec_from_file_location("rain_hub_server", ROOT / "tests" / "hub_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve(root: str | os.PathLike):
    """A started LocalHub serving the build under `root` (use as a context manager: `with serve(root) as hub`).
    `environment(hub)` gives the variables that point `rain download` at it."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise SystemExit(f"standin hub: {root} has no complete build; run `build` first")
    return _hub_server_module().LocalHub(hub_files(root), plain=web_files(root))


def environment(hub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "RAIN_TAESDV_URL": hub.url + taesdv_web_path()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the stand-in hub's files")
    b.add_argument("--root", required=True)
    b.add_argument("--tiny", action="store_true", help="tiny networks in the same layout (seconds)")
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("serve", help="serve a built hub on 127.0.0.1 until Ctrl-C")
    s.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.root, args.tiny, args.seed)
        return 0
    with serve(args.root) as hub:
        for name, value in environment(hub).items():
            print(f"export {name}={value}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
