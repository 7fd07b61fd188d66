"""Loading RAIN checkpoints: manifest coverage, both layouts, conversion, training init, and every bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rain_core.loading import (
    RainLoadError,
    _diffusers_unet_config,
    convert_official,
    init_for_training,
    load_network,
    load_rain,
    read_state_dict,
    save_rain,
)
from rain_core.models import DenoisingUNet, PoseGuider, RainModelConfig, ReferenceUNet

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

    sd_unet = UNet2DConditionModel(**_diffusers_unet_config(tiny_models.config))
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


def _tiny_sd_unet_folder(config, folder: Path):
    from diffusers import UNet2DConditionModel

    from rain_core.models.testing import randomize_parameters

    unet = randomize_parameters(UNet2DConditionModel(**_diffusers_unet_config(config)), seed=5)
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
