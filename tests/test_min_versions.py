"""What CI's minimum-versions tier runs (with every dependency at its declared lower bound): the engine and the
node pack import, the built-in model loads and streams real inputs, the nodes register the way ComfyUI loads them.
It runs in the default tier too."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rain_core import RainStream, StreamConfig, load_rain
from rain_core.loading.layout import builtin_model_dir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_builtin_model_streams_a_real_pose_video_with_a_real_reference():
    import cv2

    models = load_rain(builtin_model_dir())
    stream = RainStream(models, StreamConfig(height=64, width=64, seed=0))
    stream.set_reference(torch.from_numpy(np.array(Image.open(EXAMPLES / "anyone-1.png").convert("RGB"))) / 255.0)
    capture = cv2.VideoCapture(str(EXAMPLES / "anyone-video-1_kps.mp4"))
    poses = []
    while len(poses) < 20 and (frame := capture.read()[1]) is not None:
        poses.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    assert len(poses) == 20
    frames = torch.cat([stream.push(torch.from_numpy(np.stack(poses)) / 255.0), stream.flush()])
    assert frames.shape == (20, 64, 64, 3)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    assert frames.std(dim=0).mean() > 0.01  # the character moves with the dancer


def test_node_pack_registers_when_loaded_the_way_comfyui_loads_it():
    name = "min_versions_rain_pack"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert {"LoadRainModel", "RainSampler"} <= set(module.NODE_CLASS_MAPPINGS)
        assert set(module.NODE_CLASS_MAPPINGS) == set(module.NODE_DISPLAY_NAME_MAPPINGS)
        for node_class in module.NODE_CLASS_MAPPINGS.values():
            assert "required" in node_class.INPUT_TYPES()
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
