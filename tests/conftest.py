"""Shared fixtures: a tiny RAIN with every parameter random, and writers of checkpoint folders.

`tiny_models` is session-scoped and read-only by convention: tests that change weights build their own with
`build_tiny_models()`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from rain_core.models import RainModelConfig, RainModels

TINY_SEED = 1234

# Tiny networks gain nothing from intra-op threads, and on a 2-core machine shared with other work the thread
# pool oversubscribes badly (one stream test module took 162 s with 2 threads, 14 s with 1).
torch.set_num_threads(1)
# fast_path "auto" compiles the CPU tick (minutes per new shape on a busy machine); the suite runs it eagerly
# (tests/test_cpu_speed.py compiles on purpose, in the slow tier). Subprocesses (CLI tests) inherit it.
os.environ.setdefault("RAIN_NO_COMPILE", "1")
# and no background compile either, where a test lets the compiler in (it would outlive the test)
os.environ.setdefault("RAIN_BACKGROUND_COMPILE", "0")


def tiny_config(**overrides) -> RainModelConfig:
    """The test size: 32-px frames, space_to_depth ×2 (12×16×16 latent), 4 UNet levels, motion modules."""
    return RainModelConfig.tiny(**overrides)


def build_tiny_models(config: RainModelConfig | None = None, seed: int = TINY_SEED) -> RainModels:
    """A tiny RAIN with all parameters randomised (no blind path), in eval mode, float32 on CPU."""
    torch.manual_seed(seed)
    models = RainModels.build(config or tiny_config())
    randomize_parameters(models, seed)
    return models.eval()


def write_official_checkpoint(models: RainModels, folder: Path) -> Path:
    """Write `models` the way the authors released RAIN: reference_unet.pth, motion_unet.pth, pose_guider.pth
    (plain state dicts, torch.save), taesdv.pth when there is a fast decoder, the `image_encoder` (and
    `sd-vae-ft-mse` for a VAE model) folders, plus rain_config.json so a
    non-SD-1.5 size can be rebuilt. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(models.reference_unet.state_dict(), folder / "reference_unet.pth")
    torch.save(models.denoising_unet.state_dict(), folder / "motion_unet.pth")
    torch.save(models.pose_guider.state_dict(), folder / "pose_guider.pth")
    if models.fast_decoder is not None:
        torch.save(models.fast_decoder.state_dict(), folder / "taesdv.pth")
    # the official sibling folders: transformers / diffusers save_pretrained layouts
    models.image_encoder.model.save_pretrained(folder / "image_encoder")
    if hasattr(models.codec, "vae"):
        models.codec.vae.save_pretrained(folder / "sd-vae-ft-mse")
    (folder / "rain_config.json").write_text(json.dumps(models.config.to_dict(), indent=1))
    return folder


def bench_module(name: str, folder: str = "bench"):
    """A script of the repository as a module: bench/NAME.py, or FOLDER/NAME.py (a study's tools live beside its
    page under docs/); neither folder is a package, their scripts are run by path. The module is registered in
    sys.modules as bench_NAME (dataclasses look their module up there while it runs)."""
    key = f"bench_{name}"
    spec = importlib.util.spec_from_file_location(key, Path(__file__).parents[1] / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


randomize_parameters = bench_module("random_weights").randomize_parameters  # the benches' own helper


@pytest.fixture(scope="session")
def tiny_models() -> RainModels:
    return build_tiny_models()


@pytest.fixture
def official_checkpoint(tmp_path, tiny_models) -> Path:
    """A folder holding `tiny_models` in the authors' .pth layout (+ rain_config.json)."""
    return write_official_checkpoint(tiny_models, tmp_path / "official")
