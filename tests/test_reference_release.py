"""The reference part (reference UNet + image encoder) freed once a reference is encoded, as the authors' demo
unloads it, and loaded again from the files for the next reference or a restored state: frames unchanged."""

from __future__ import annotations

import torch
from conftest import build_tiny_models

from rain_core.loading import load_rain
from rain_core.stream import RainStream, StreamConfig

SIZE = 32  # the tiny model's own size (space_to_depth ×2, 4 levels)
REFERENCES = [torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(seed)) for seed in (5, 6)]
POSES = torch.rand(24, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(7))


def _stream(models) -> RainStream:
    return RainStream(models, StreamConfig(height=SIZE, width=SIZE, decoder="vae", fast_path="eager"))


def test_a_released_reference_part_changes_no_frame_and_loads_again_when_needed(official_checkpoint, tmp_path):
    kept = load_rain(official_checkpoint)
    released = load_rain(official_checkpoint, release_reference=True)
    assert released.reference_unet is not None and not released.reference_released  # nothing freed before use

    expected, ours = _stream(kept), _stream(released)
    expected.set_reference(REFERENCES[0])
    ours.set_reference(REFERENCES[0])
    assert released.reference_unet is None and released.image_encoder is None and released.reference_released
    assert kept.reference_unet is not None and not kept.reference_released
    assert torch.equal(ours.push(POSES[:12]), expected.push(POSES[:12]))

    # a new reference mid-stream loads the part again (in the models' dtype), uses it, frees it
    expected.set_reference(REFERENCES[1])
    ours.set_reference(REFERENCES[1])
    assert released.reference_released
    assert torch.equal(ours.push(POSES[12:20]), expected.push(POSES[12:20]))

    # a restored state re-runs the reference UNet: loaded again for it
    ours.save(tmp_path / "state.safetensors")
    resumed = _stream(released)
    resumed.load(tmp_path / "state.safetensors")
    assert released.reference_released
    assert torch.equal(torch.cat([resumed.push(POSES[20:]), resumed.flush()]),
                       torch.cat([expected.push(POSES[20:]), expected.flush()]))


def test_the_part_loads_again_in_the_precision_the_models_have_now(official_checkpoint):
    released = load_rain(official_checkpoint, release_reference=True)
    _stream(released).set_reference(REFERENCES[0])
    released.to(torch.bfloat16)  # e.g. a host changing the precision after loading
    with released.reference_networks():
        assert next(released.reference_unet.parameters()).dtype == torch.bfloat16
        assert next(released.image_encoder.parameters()).dtype == torch.bfloat16
    assert released.reference_released


def test_networks_without_files_are_never_freed():
    models = build_tiny_models()  # built in memory: nothing to load them again from
    assert models.release_reference_after_use() is False
    stream = RainStream(models, StreamConfig(height=SIZE, width=SIZE, decoder="vae"))
    stream.set_reference(REFERENCES[0])
    assert models.reference_unet is not None and models.image_encoder is not None
