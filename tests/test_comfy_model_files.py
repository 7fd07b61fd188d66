"""Load RAIN Model with the model files ComfyUI users already have: single-file VAEs (LDM layout) and CLIP vision
files in models/vae and models/clip_vision, and the VAE / CLIP_VISION of ComfyUI's core loaders connected to its
inputs. Tiny random weights written in the foreign layouts (tests/foreign_layouts.py); nodes/host.py standalone."""

from __future__ import annotations

import shutil

import pytest
import torch
from foreign_layouts import to_ldm_vae, to_open_clip, with_text_tower
from safetensors.torch import save_file
from test_nodes import all_inputs, load_pack, standalone_host

MODEL = "rain-ldm-test"


@pytest.fixture(scope="module")
def tiny_vae_rain():
    from conftest import build_tiny_models, tiny_config

    return build_tiny_models(tiny_config(codec="vae", codec_factor=8, block_out_channels=(16, 32), attention_heads=2))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_vae_rain):
    """models/ as a ComfyUI user has it: the RAIN networks in models/rain/<name>, the VAE and CLIP vision as single
    files beside other files of those folders that RAIN cannot use."""
    from conftest import write_official_checkpoint

    models = tmp_path_factory.mktemp("comfy_files") / "models"
    folder = write_official_checkpoint(tiny_vae_rain, models / "rain" / MODEL)
    shutil.rmtree(folder / "sd-vae-ft-mse")
    shutil.rmtree(folder / "image_encoder")
    (models / "vae").mkdir()
    (models / "clip_vision").mkdir()
    save_file(to_ldm_vae(tiny_vae_rain.codec.vae.state_dict()), str(models / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors"))
    save_file({"decoder.conv_in.weight": torch.zeros(8, 16, 3, 3), "encoder.down.0.block.0.conv1.weight":
               torch.zeros(8, 8, 3, 3)}, str(models / "vae" / "ae.safetensors"))  # a Flux VAE's 16 latent channels
    (models / "vae" / "vae-ft-mse-840000-ema-pruned.ckpt").write_bytes(b"\x80\x02}q\x00.")  # a pickle: not offered
    tiny_vae_rain.codec.vae.save_pretrained(models / "vae" / "sd-vae-ft-mse")
    clip = tiny_vae_rain.image_encoder.model.state_dict()
    save_file(with_text_tower(clip), str(models / "clip_vision" / "clip_vision_vit_l.safetensors"))
    save_file(to_open_clip(clip), str(models / "clip_vision" / "open_clip_vit.safetensors"))
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2)},
              str(models / "clip_vision" / "sigclip_vision_patch14_384.safetensors"))  # SigLIP: no class token
    return models


@pytest.fixture
def host(monkeypatch, models_dir):
    load_pack()
    yield from standalone_host(monkeypatch, models_dir)


def assert_weights(module, original):
    state = module.state_dict()
    assert state.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(state[name], tensor), name


def test_the_vae_and_image_encoder_lists_offer_only_what_loads(host):
    inputs = all_inputs(load_pack().NODE_CLASS_MAPPINGS["LoadRainModel"])
    assert inputs["vae_name"][0] == ["auto", "sd-vae-ft-mse", "vae-ft-mse-840000-ema-pruned.safetensors"]
    assert inputs["image_encoder"][0] == ["auto", "clip_vision_vit_l.safetensors", "open_clip_vit.safetensors"]
    assert inputs["vae"][0] == "VAE" and inputs["clip_vision"][0] == "CLIP_VISION"  # core Load VAE / CLIP Vision


@pytest.mark.parametrize("encoder", ["clip_vision_vit_l.safetensors", "open_clip_vit.safetensors"])
def test_single_files_of_models_vae_and_clip_vision_load_the_tensors_they_hold(host, tiny_vae_rain, encoder):
    loader = load_pack().NODE_CLASS_MAPPINGS["LoadRainModel"]()
    handle = loader.load(MODEL, "vae-ft-mse-840000-ema-pruned.safetensors", encoder, "vae", "fp32", "cpu", True)[0]
    assert_weights(handle.models.codec.vae, tiny_vae_rain.codec.vae.state_dict())
    assert_weights(handle.models.image_encoder.model, tiny_vae_rain.image_encoder.model.state_dict())


class ComfyModel:
    """Stands in for comfy.sd.VAE / comfy.clip_vision.ClipVisionModel: what host.py reads of them is get_sd()."""

    def __init__(self, state):
        self.state = state

    def get_sd(self):
        return self.state


def test_comfyuis_own_vae_and_clip_vision_connected_are_taken_over(host, tiny_vae_rain):
    loader = load_pack().NODE_CLASS_MAPPINGS["LoadRainModel"]()
    vae = ComfyModel(to_ldm_vae(tiny_vae_rain.codec.vae.state_dict()))  # ComfyUI holds SD VAEs in the LDM layout
    clip = ComfyModel(tiny_vae_rain.image_encoder.model.state_dict())
    # the combos say auto, and nothing named auto exists next to the model: the connected models are what loads
    handle = loader.load(MODEL, "auto", "auto", "vae", "fp32", "cpu", True, vae=vae, clip_vision=clip)[0]
    assert_weights(handle.models.codec.vae, tiny_vae_rain.codec.vae.state_dict())
    assert_weights(handle.models.image_encoder.model, tiny_vae_rain.image_encoder.model.state_dict())


def test_a_connected_model_of_the_wrong_kind_is_named(host):  # RainLoadError, a ValueError
    loader = load_pack().NODE_CLASS_MAPPINGS["LoadRainModel"]()
    taesd = ComfyModel({"taesd_decoder.1.weight": torch.zeros(64, 4, 3, 3)})
    with pytest.raises(ValueError, match="vae input: the connected model is not an image VAE"):
        loader.load(MODEL, "auto", "auto", "vae", "fp32", "cpu", True, vae=taesd)
    siglip = ComfyModel({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2)})
    with pytest.raises(ValueError, match="clip_vision input: the connected model is a vision tower without a class"):
        loader.load(MODEL, "auto", "auto", "vae", "fp32", "cpu", True, clip_vision=siglip)
