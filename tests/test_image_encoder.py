"""The CLIP preprocessing must equal the authors' pipeline (transformers' PIL CLIPImageProcessor defaults at 224:
resize the shortest side bicubic, centre crop, CLIP mean/std) on transformers 4.x and 5.x alike. The expected values
are computed here by hand with PIL, so the test fails if either transformers line changes the numerics."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rain_core.models import RainModelConfig
from rain_core.models.image_encoder import ClipImageEncoder, build_clip

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def by_hand(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (3, size, size) the way the PIL CLIP processor computes it."""
    height, width = pixels.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.BICUBIC), dtype=np.float64)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top:top + size, left:left + size]
    return ((crop / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


@pytest.fixture(scope="module", params=[32, 224], ids=["tiny-32", "released-224"])
def encoder(request):
    """A tiny CLIP at the built-in model's 32 px and one at the released encoder's 224 px input size."""
    config = dataclasses.replace(RainModelConfig.tiny().clip, image_size=request.param, patch_size=16 if request.param == 224 else 8)
    return ClipImageEncoder(build_clip(config))


@pytest.mark.parametrize("name", ["anyone-1.png", "anime-portrait.png"])
def test_clip_preprocessing_equals_pil_by_hand_on_real_references(encoder, name):
    pixels = np.array(Image.open(EXAMPLES / name).convert("RGB"))
    size = encoder.model.config.image_size
    values = encoder.preprocess(torch.from_numpy(pixels).float().div(255).unsqueeze(0))
    assert values.shape == (1, 3, size, size)
    np.testing.assert_allclose(values[0].numpy(), by_hand(pixels, size), atol=2e-6)


def test_clip_preprocessing_of_a_landscape_image(encoder):
    pixels = (np.random.default_rng(0).random((37, 91, 3)) * 255).astype(np.uint8)
    size = encoder.model.config.image_size
    values = encoder.preprocess(torch.from_numpy(pixels).float().div(255).unsqueeze(0))
    np.testing.assert_allclose(values[0].numpy(), by_hand(pixels, size), atol=2e-6)
