"""Load RAIN Model's "RAIN-v0.1 (download from Hugging Face)" in a real ComfyUI, against the stand-in hub.

Opt-in (markers comfyui and slow; COMFYUI_DIR / COMFY_PYTHON as for tests/comfy_host.py):

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python .venv/bin/pytest -m "comfyui and slow" \
        tests/test_comfyui_download.py

The hub is `bench/standin_hub.py`'s, served from this process on 127.0.0.1; the server gets HF_ENDPOINT and
RAIN_TAESDV_URL pointing at it and its own base directory, so the download lands in a models/ folder of its own.
By default the hub is built tiny in a temporary folder (the released file layout with tiny networks; the sizes
they need, rain_config.json, are placed in models/rain/RAIN-v0.1 first, since the layout carries none). With
RAIN_STANDIN_HUB=<a full-size build's root> (`bench/standin_hub.py build --root ...`) the real sizes go through:
10 GB downloaded and loaded by the server (fp32 on the CPU: ~12 GB of memory), frames at 256 px.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from comfy_host import HOST_MARKS, PACK_FOLDER, ROOT, Server
from test_comfyui_host import saved_images

pytestmark = [*HOST_MARKS, pytest.mark.slow]

FULL_HUB = os.environ.get("RAIN_STANDIN_HUB")
DOWNLOAD_MODEL = "RAIN-v0.1 (download from Hugging Face)"


def _standin_hub():
    spec = importlib.util.spec_from_file_location("standin_hub", ROOT / "bench" / "standin_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prompt(size: int, frames: int, precision: str = "auto") -> dict:
    return {
        "1": {"class_type": "LoadRainModel", "inputs": {"model": DOWNLOAD_MODEL, "vae_name": "auto", "image_encoder": "auto",
                                                        "decoder": "auto", "precision": precision, "device": "auto",
                                                        "keep_loaded": True}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "anyone-1.png"}},
        "3": {"class_type": "RainPoseStream", "inputs": {
            "mode": "body", "video_path": "anyone-video-1_kps.mp4", "start_frame": 0, "frames_per_run": frames,
            "loop": False, "smoothing": 0.0, "align_to_reference": False, "face_length": 0.75, "eye_height": 3.0,
            "eye_width": 1.6, "mouth_height": 1.2, "mouth_width": 0.67, "jaw_width": 0.9}},
        "4": {"class_type": "RainSampler", "inputs": {
            "rain_model": ["1", 0], "reference": ["2", 0], "poses": ["3", 0], "width": size, "height": size,
            "levels": 2, "frames_per_cohort": 2, "steps": 2, "guidance": 3.5, "seed": 3, "stream_id": "download",
            "reset": True, "flush": True}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "download"}},
    }


def test_the_download_choice_fetches_the_release_into_comfyuis_models_and_streams_from_it(tmp_path):
    hub_module = _standin_hub()
    root = Path(FULL_HUB) if FULL_HUB else hub_module.build(tmp_path / "hub", tiny=True, log=lambda *_: None)
    size, frames = (256, 8) if FULL_HUB else (32, 8)
    with hub_module.serve(root) as hub:
        workdir = tmp_path / "comfy"
        workdir.mkdir()
        server = Server(workdir, base_directory=True, env={**hub_module.environment(hub), "HF_HUB_OFFLINE": "0",
                                                           "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
        models = workdir / "models"
        if not FULL_HUB:  # tiny networks: their sizes beside the files the download brings
            (models / "rain" / "RAIN-v0.1").mkdir(parents=True)
            shutil.copy(root / hub_module.TINY_CONFIG, models / "rain" / "RAIN-v0.1" / "rain_config.json")
        server.start()
        try:
            choices = server.get("/object_info/LoadRainModel")["LoadRainModel"]["input"]["required"]["model"][0]
            assert DOWNLOAD_MODEL in choices
            entry = server.run(_prompt(size, frames), timeout=3600)
            images = saved_images(server, entry)
            assert images is not None and images.shape == (frames, size, size, 3), None if images is None else images.shape
            # the files of the release, byte for byte the hub's sizes, in the README layout of ComfyUI's models/
            expected = json.loads((root / hub_module.MANIFEST).read_text())["files"]
            on_disk = {str(p.relative_to(models)): p.stat().st_size for p in models.rglob("*") if p.is_file()}
            layout = {
                "Pscgylotti/RAIN-v0.1/reference_unet.pth": "rain/RAIN-v0.1/reference_unet.pth",
                "Pscgylotti/RAIN-v0.1/motion_unet.pth": "rain/RAIN-v0.1/motion_unet.pth",
                "Pscgylotti/RAIN-v0.1/pose_guider.pth": "rain/RAIN-v0.1/pose_guider.pth",
                "lambdalabs/sd-image-variations-diffusers/image_encoder/config.json":
                    "clip_vision/sd-image-variations/config.json",
                "lambdalabs/sd-image-variations-diffusers/image_encoder/pytorch_model.bin":
                    "clip_vision/sd-image-variations/pytorch_model.bin",
                "stabilityai/sd-vae-ft-mse/config.json": "vae/sd-vae-ft-mse/config.json",
                "stabilityai/sd-vae-ft-mse/diffusion_pytorch_model.safetensors":
                    "vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
                hub_module.taesdv_web_path(): "vae_approx/taesdv.pth",
            }
            assert set(layout) == set(expected)
            for source, target in layout.items():
                assert on_disk.get(target) == expected[source], target
            assert not [name for name in on_disk if name.endswith(".incomplete")]
            # loading again (another precision: the node runs again) finds everything in place: the hub hears nothing
            hub.requests.clear()
            again = saved_images(server, server.run(_prompt(size, frames, "fp32"), timeout=3600))
            assert again is not None and again.shape == images.shape and hub.requests == []
            log = server.log_path.read_text()  # no traceback through the pack (ComfyUI's own audio nodes may fail)
            assert not [line for line in log.splitlines() if 'File "' in line and PACK_FOLDER in line], log[-4000:]
        finally:
            server.stop()
