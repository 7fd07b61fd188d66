"""Loading RAIN checkpoints: manifest coverage, both layouts, conversion, training init, and every bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rain_core.loading import (
    RainLoadError,
    convert_official,
    load_network,
    load_rain,
    read_state_dict,
    save_rain,
)
from rain_core.models import DenoisingUNet, PoseGuider, RainModelConfig, ReferenceUNet
from rain_core.train.init import diffusers_unet_config

MANIFEST = Path(__file__).resolve().parent / "fixtures" / "official-rain-keys.json"  # see fixtures/README.md


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_every_official_tensor_maps_to_a_parameter_with_its_shape():
    manifest = json.loads(MANIFEST.read_text())
    config = RainModelConfig.sd15()
    with torch.device("meta"):  # shapes only: nothing of the 2 × 860 M parameters is allocated
        parts = {
            "reference_unet": ReferenceUNet(config),
            "motion_unet": DenoisingUNet(config),
            "pose_guider": PoseGuider(config.pose_channels, config.pose_guider_channels),
        }
    total = 0
    for part, network in parts.items():
        ours = {name: list(t.shape) for name, t in network.state_dict().items()}
        assert ours == manifest[part], part
        total += len(manifest[part])
    assert total == 1973


def test_official_layout_loads_bit_exact(official_checkpoint, tiny_models):
    _assert_same_weights(load_rain(official_checkpoint), tiny_models)


def test_official_files_without_position_tables_still_load(official_checkpoint, tiny_models):
    state = torch.load(official_checkpoint / "motion_unet.pth", weights_only=True)
    torch.save(
        {k: v for k, v in state.items() if not k.endswith("pos_encoder.pe")}, official_checkpoint / "motion_unet.pth"
    )
    _assert_same_weights(load_rain(official_checkpoint), tiny_models)


def test_conversion_to_safetensors_is_bit_exact(official_checkpoint, tmp_path):
    converted = convert_official(official_checkpoint, tmp_path / "converted")
    for part, official in (
        ("reference_unet", "reference_unet"),
        ("denoising_unet", "motion_unet"),
        ("pose_guider", "pose_guider"),
    ):
        original = torch.load(official_checkpoint / f"{official}.pth", weights_only=True)
        ours = load_file(converted / f"{part}.safetensors")
        assert original.keys() == ours.keys()
        for key in original:
            assert original[key].dtype == ours[key].dtype and torch.equal(original[key], ours[key]), key
    _assert_same_weights(load_rain(converted), load_rain(official_checkpoint))


def test_save_rain_round_trip_is_bit_exact(tiny_models, tmp_path):
    _assert_same_weights(load_rain(save_rain(tiny_models, tmp_path / "ours")), tiny_models)


def test_a_vae_model_loads_from_our_layout_the_official_folder_and_an_explicit_path(tmp_path):
    from conftest import build_tiny_models, tiny_config, write_official_checkpoint

    models = build_tiny_models(tiny_config(codec="vae", codec_factor=8, block_out_channels=(16, 32), attention_heads=2))
    ours = save_rain(models, tmp_path / "ours")
    assert (ours / "vae.safetensors").exists()
    _assert_same_weights(load_rain(ours), models)  # vae.safetensors, rebuilt on the meta device
    official = write_official_checkpoint(models, tmp_path / "official")
    _assert_same_weights(load_rain(official), models)  # the sibling sd-vae-ft-mse folder (save_pretrained)
    moved = official.rename(tmp_path / "elsewhere")
    (tmp_path / "official").mkdir()
    for name in ("reference_unet.pth", "motion_unet.pth", "pose_guider.pth", "rain_config.json"):
        (moved / name).rename(tmp_path / "official" / name)
    with pytest.raises(RainLoadError, match="decodes with the SD VAE but none was given or found"):
        load_rain(tmp_path / "official", image_encoder=moved / "image_encoder")
    explicit = load_rain(tmp_path / "official", vae=moved / "sd-vae-ft-mse", image_encoder=moved / "image_encoder")
    _assert_same_weights(explicit, models)
    with pytest.raises(RainLoadError, match="vae.pt: VAE not found; expected a diffusers AutoencoderKL folder"):
        load_rain(tmp_path / "official", vae=tmp_path / "vae.pt", image_encoder=moved / "image_encoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RainLoadError, match="empty: not a loadable AutoencoderKL folder"):
        load_rain(tmp_path / "official", vae=tmp_path / "empty", image_encoder=moved / "image_encoder")


def test_safetensors_are_preferred_when_both_layouts_exist(official_checkpoint, tiny_models):
    save_rain(tiny_models, official_checkpoint)
    (official_checkpoint / "motion_unet.pth").write_text("not read: the safetensors twin wins")
    _assert_same_weights(load_rain(official_checkpoint), tiny_models)


def test_loading_casts_to_the_requested_dtype(official_checkpoint):
    models = load_rain(official_checkpoint, dtype=torch.bfloat16)
    assert models.dtype == torch.bfloat16 and models.device.type == "cpu"


def test_networks_load_straight_into_their_dtype_with_the_values_of_a_plain_conversion(official_checkpoint,
                                                                                       tiny_models):
    # the files are mapped and converted tensor by tensor (their pages given back as they go): the values are what
    # converting the float32 networks gives, for every floating tensor, and the file's pages are untouched
    for dtype in (torch.bfloat16, torch.float16):
        loaded = load_rain(official_checkpoint, dtype=dtype)
        for name in ("reference_unet", "denoising_unet", "pose_guider", "image_encoder"):
            ours, expected = getattr(loaded, name).state_dict(), getattr(tiny_models, name).state_dict()
            assert ours.keys() == expected.keys(), name
            for key, value in expected.items():
                assert ours[key].dtype == (dtype if value.is_floating_point() else value.dtype), (name, key)
                assert torch.equal(ours[key], value.to(ours[key].dtype)), (name, key)
    _assert_same_weights(load_rain(official_checkpoint), tiny_models)  # float32 again, from the same files


def _mapped_file(address: int) -> str | None:
    """The file whose mapping holds `address` in this process (Linux), else None."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_float32_weights_are_the_mapped_file_not_a_copy(official_checkpoint, tiny_models):
    models = load_rain(official_checkpoint)
    for part, file in (("reference_unet", "reference_unet.pth"), ("denoising_unet", "motion_unet.pth")):
        weight = getattr(models, part).conv_in.weight
        assert _mapped_file(weight.data_ptr()) == str((official_checkpoint / file).resolve()), part
    bf16 = load_rain(official_checkpoint, dtype=torch.bfloat16)  # converted: memory of its own, the file let go
    assert _mapped_file(bf16.denoising_unet.conv_in.weight.data_ptr()) != str(official_checkpoint / "motion_unet.pth")
    # what a user sees: the same values, and each network alone through load_network
    _assert_same_weights(models, tiny_models)
    for part in ("reference_unet", "denoising_unet", "pose_guider"):
        alone = load_network(official_checkpoint, part, dtype=torch.bfloat16)
        assert not alone.training and next(alone.parameters()).dtype == torch.bfloat16
        expected = getattr(tiny_models, part).state_dict()
        for key, value in alone.state_dict().items():
            assert torch.equal(value, expected[key].to(value.dtype)), (part, key)
    with pytest.raises(ValueError, match="part must be one of"):
        load_network(official_checkpoint, "vae")


def test_a_legacy_pickle_checkpoint_still_loads(official_checkpoint, tiny_models):
    # torch.save(..., _use_new_zipfile_serialization=False): no zip archive, so nothing to map; read as before
    state = torch.load(official_checkpoint / "pose_guider.pth", weights_only=True)
    torch.save(state, official_checkpoint / "pose_guider.pth", _use_new_zipfile_serialization=False)
    _assert_same_weights(load_rain(official_checkpoint, dtype=torch.float32), tiny_models)
    bf16 = load_rain(official_checkpoint, dtype=torch.bfloat16)
    assert torch.equal(bf16.pose_guider.conv_in.weight, tiny_models.pose_guider.conv_in.weight.bfloat16())


def test_missing_folder_and_missing_file_are_named(official_checkpoint, tmp_path):
    with pytest.raises(RainLoadError, match="checkpoint folder not found"):
        load_rain(tmp_path / "nowhere")
    (official_checkpoint / "pose_guider.pth").unlink()
    with pytest.raises(RainLoadError, match=r"no pose_guider.safetensors or pose_guider.pth"):
        load_rain(official_checkpoint)


def test_sd_unet_in_place_of_motion_unet_is_recognised(official_checkpoint, tiny_models):
    from diffusers import UNet2DConditionModel

    sd_unet = UNet2DConditionModel(**diffusers_unet_config(tiny_models.config))
    torch.save(sd_unet.state_dict(), official_checkpoint / "motion_unet.pth")
    with pytest.raises(RainLoadError, match=r"motion_unet.pth: expected the RAIN denoising UNet.*found an SD-1.5 UNet"):
        load_rain(official_checkpoint)


def test_lora_in_place_of_motion_unet_is_recognised(official_checkpoint):
    lora = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32)}
    torch.save(lora, official_checkpoint / "motion_unet.pth")
    with pytest.raises(RainLoadError, match="found a LoRA"):
        load_rain(official_checkpoint)


def test_text_file_in_place_of_a_checkpoint_is_recognised(official_checkpoint):
    (official_checkpoint / "reference_unet.pth").write_text("404: Not Found\n")
    with pytest.raises(RainLoadError, match=r"reference_unet.pth: cannot be read.*a text file"):
        load_rain(official_checkpoint)


def test_truncated_pth_is_reported(official_checkpoint):
    path = official_checkpoint / "pose_guider.pth"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(RainLoadError, match=r"pose_guider.pth: cannot be read.*truncated"):
        load_rain(official_checkpoint)


def test_truncated_safetensors_is_reported(tiny_models, tmp_path):
    folder = save_rain(tiny_models, tmp_path / "ours")
    path = folder / "denoising_unet.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(RainLoadError, match=r"denoising_unet.safetensors: cannot be read"):
        load_rain(folder)


def test_wrong_model_size_lists_mis_shaped_tensors(official_checkpoint):
    config = RainModelConfig.tiny(block_out_channels=(32, 64, 64, 64))
    (official_checkpoint / "rain_config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(RainLoadError, match=r"mis-shaped: .*file \(32, .*vs model \(64, "):
        load_rain(official_checkpoint)


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(1), "hook": Path("x")}, path)
    with pytest.raises(RainLoadError, match="evil.pth"):
        read_state_dict(path, "pose_guider")


def test_dtype_the_device_cannot_run_is_refused(official_checkpoint):
    with pytest.raises(RainLoadError, match=r"cannot run the RAIN networks in torch.float8_e4m3fn"):
        load_rain(official_checkpoint, dtype=torch.float8_e4m3fn)
    with pytest.raises(RainLoadError, match="expected a floating torch dtype"):
        load_rain(official_checkpoint, dtype=torch.int8)


# ---- ComfyUI's model files: single-file VAEs (LDM layout) and CLIP vision files (transformers / open_clip) ------


@pytest.fixture(scope="module")
def vae_rain(tmp_path_factory):
    """A tiny VAE-codec RAIN in the authors' layout whose VAE and image encoder live elsewhere (as in ComfyUI);
    read-only: (models, folder)."""
    import shutil

    from conftest import build_tiny_models, tiny_config, write_official_checkpoint

    models = build_tiny_models(tiny_config(codec="vae", codec_factor=8, block_out_channels=(16, 32), attention_heads=2))
    folder = write_official_checkpoint(models, tmp_path_factory.mktemp("vae_rain") / "official")
    shutil.rmtree(folder / "sd-vae-ft-mse")
    shutil.rmtree(folder / "image_encoder")
    return models, folder


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_a_single_file_vae_in_the_ldm_layout_loads_the_tensors_it_holds(tmp_path, vae_rain, prefix):
    from foreign_layouts import to_ldm_vae, with_text_tower
    from safetensors.torch import save_file

    from rain_core.loading.single_file import vae_file_problem

    models, folder = vae_rain
    original = models.codec.vae.state_dict()
    ldm = to_ldm_vae(original, prefix)
    assert "encoder.down.0.block.0.norm1.weight" in {k[len(prefix):] for k in ldm}  # really the LDM names
    save_file(ldm, str(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"))
    save_file(with_text_tower(models.image_encoder.model.state_dict()), str(tmp_path / "clip_vision_vit_l.safetensors"))
    assert vae_file_problem(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors") is None
    loaded = load_rain(folder, vae=tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors",
                       image_encoder=tmp_path / "clip_vision_vit_l.safetensors")
    _assert_same_weights(loaded, models)  # every network, the VAE and the image encoder included


def test_a_vae_and_image_encoder_handed_over_as_tensors_load_without_a_file(vae_rain):
    from foreign_layouts import to_ldm_vae, to_open_clip

    models, folder = vae_rain
    loaded = load_rain(folder, vae=to_ldm_vae(models.codec.vae.state_dict()),  # as ComfyUI's VAE holds it
                       image_encoder=to_open_clip(models.image_encoder.model.state_dict()))
    _assert_same_weights(loaded, models)


def test_an_open_clip_vision_file_loads_the_tensors_it_holds(tmp_path, tiny_models, official_checkpoint):
    import shutil

    from foreign_layouts import to_open_clip
    from safetensors.torch import save_file

    from rain_core.loading.single_file import clip_file_problem

    shutil.rmtree(official_checkpoint / "image_encoder")
    state = to_open_clip(tiny_models.image_encoder.model.state_dict())
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state
    save_file(state, str(tmp_path / "open_clip_vit.safetensors"))
    assert clip_file_problem(tmp_path / "open_clip_vit.safetensors") is None
    _assert_same_weights(load_rain(official_checkpoint, image_encoder=tmp_path / "open_clip_vit.safetensors"),
                         tiny_models)


def test_a_vae_of_another_size_is_refused_with_what_does_not_match(vae_rain):
    from foreign_layouts import to_ldm_vae

    models, folder = vae_rain
    state = to_ldm_vae(models.codec.vae.state_dict())
    state["decoder.conv_in.weight"] = torch.zeros(16, 4, 3, 3, dtype=torch.float32)[:8]  # 8 channels, not 16
    with pytest.raises(RainLoadError, match=r"does not match an AutoencoderKL.*\n.*mis-shaped: decoder.conv_in"):
        load_rain(folder, vae=state, image_encoder=models.image_encoder.model.state_dict())


def _header_file(path, shapes):
    from safetensors.torch import save_file

    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, str(path))
    return path


@pytest.mark.parametrize("shapes, reason", [
    ({"decoder.conv_in.weight": (512, 16, 3, 3), "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3)},
     "16 latent channels"),  # SD3 / Flux ae.safetensors
    ({"decoder.conv_in.weight": (512, 16, 3, 3, 3), "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3, 3)},
     "video VAE"),
    ({"decoder.conv_in.weight": (64, 4, 3, 3), "decoder.1.weight": (64, 64, 3, 3)}, "neither the LDM nor"),  # TAESD
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "not an image VAE"),
])
def test_the_vae_list_leaves_out_files_rain_cannot_use_from_the_header_alone(tmp_path, shapes, reason):
    from rain_core.loading.single_file import vae_file_problem

    assert reason in vae_file_problem(_header_file(tmp_path / "x.safetensors", shapes))


def test_the_vae_list_names_why_pickles_and_bare_folders_are_left_out(tmp_path):
    from rain_core.loading.single_file import clip_file_problem, vae_file_problem

    (tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt").write_bytes(b"\x80\x02}q\x00.")
    assert "connect ComfyUI's own loader to the vae input" in vae_file_problem(
        tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt")
    (tmp_path / "folder").mkdir()
    assert "without config.json" in clip_file_problem(tmp_path / "folder")
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 16)
    assert "not a readable safetensors file" in vae_file_problem(tmp_path / "broken.safetensors")


@pytest.mark.parametrize("shapes, reason", [
    ({"vision_model.embeddings.patch_embedding.weight": (1152, 3, 14, 14)}, "SigLIP"),
    ({"vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
      "vision_model.embeddings.class_embedding": (1024,)}, "without visual_projection"),
    ({"visual.conv1.weight": (1024, 3, 14, 14)}, "without its projection"),
    ({"embeddings.patch_embeddings.projection.weight": (1024, 3, 14, 14)}, "not a CLIP vision model"),  # DINOv2
])
def test_the_clip_vision_list_leaves_out_towers_rain_cannot_use(tmp_path, shapes, reason):
    from rain_core.loading.single_file import clip_file_problem

    assert reason in clip_file_problem(_header_file(tmp_path / "x.safetensors", shapes))
