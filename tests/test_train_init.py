"""Training from SD-1.5 + AnimateDiff weights, the AnimateAnyone way: `rain_core.train.init` and `rain train
--init-sd-unet ... --init-motion-modules ...` on tiny networks saved in the foreign layouts."""

import json
from pathlib import Path

import pytest
import torch

from rain_core.loading import RainLoadError, load_rain
from rain_core.train.init import diffusers_unet_config, init_for_training


def _tiny_sd_unet_folder(config, folder: Path):
    from conftest import randomize_parameters
    from diffusers import UNet2DConditionModel

    unet = randomize_parameters(UNet2DConditionModel(**diffusers_unet_config(config)), seed=5)
    unet.save_pretrained(folder / "unet")
    return unet


def test_training_init_copies_sd_unet_and_animatediff_motion_modules(tiny_models, tmp_path):
    config = tiny_models.config
    sd_unet = _tiny_sd_unet_folder(config, tmp_path / "sd")
    motion = {k: v for k, v in tiny_models.denoising_unet.state_dict().items() if "motion_modules." in k}
    motion = {k: v for k, v in motion.items() if not k.startswith("mid_block.")}  # like AnimateDiff v1: no mid block
    torch.save({"state_dict": {f"module.{k}": v for k, v in motion.items()}}, tmp_path / "mm.ckpt")

    models = init_for_training(tmp_path / "sd", tmp_path / "mm.ckpt", config=config)
    sd = sd_unet.state_dict()
    for name, value in models.reference_unet.state_dict().items():
        assert torch.equal(value, sd[name]), name
    denoising = models.denoising_unet.state_dict()
    for name in sd:
        assert torch.equal(denoising[name], sd[name]), name
    for name in motion:
        assert torch.equal(denoising[name], motion[name]), name
    mid_proj_out = models.denoising_unet.mid_block.motion_modules[0].temporal_transformer.proj_out.weight
    assert torch.all(mid_proj_out == 0)  # absent from the file: stays the identity
    assert torch.all(models.denoising_unet.time_embedding.cond_proj.weight == 0)


def test_training_init_refuses_a_unet_file_as_motion_modules(tiny_models, tmp_path):
    sd_unet = _tiny_sd_unet_folder(tiny_models.config, tmp_path / "sd")
    torch.save(sd_unet.state_dict(), tmp_path / "mm.ckpt")
    with pytest.raises(RainLoadError, match="expected AnimateDiff motion-module weights"):
        init_for_training(tmp_path / "sd", tmp_path / "mm.ckpt", config=tiny_models.config)


def test_rain_train_starts_from_sd_unet_and_animatediff_weights(tiny_models, tmp_path):
    """The command line reaches the initialisation: with lr 0 the trained model still holds the copied weights."""
    from rain_core.cli import main

    sd_unet = _tiny_sd_unet_folder(tiny_models.config, tmp_path / "sd")
    motion = {k: v for k, v in tiny_models.denoising_unet.state_dict().items() if "motion_modules." in k}
    torch.save(motion, tmp_path / "mm.pth")
    (tmp_path / "size.json").write_text(json.dumps(tiny_models.config.to_dict()))
    code = main(["train", "--stage", "1", "--output", str(tmp_path / "run"), "--model", str(tmp_path / "size.json"),
                 "--init-sd-unet", str(tmp_path / "sd"), "--init-motion-modules", str(tmp_path / "mm.pth"),
                 "--steps", "1", "--batch-size", "1", "--height", "32", "--width", "32", "--lr", "0",
                 "--weight-decay", "0", "--cpu", "--threads", "1"])
    assert code == 0
    trained = load_rain(tmp_path / "run" / "final")
    sd = sd_unet.state_dict()
    for name, value in trained.reference_unet.state_dict().items():
        assert torch.equal(value, sd[name]), name
    for name, value in motion.items():
        assert torch.equal(trained.denoising_unet.state_dict()[name], value), name
