"""Loading RAIN checkpoints: the authors' released files, our safetensors layout, and initialisation for training.

Layouts of a checkpoint folder
- official (Hugging Face Pscgylotti/RAIN-v0.1): `reference_unet.pth`, `motion_unet.pth`, `pose_guider.pth`,
  optionally `taesdv.pth`; the VAE (`sd-vae-ft-mse`, a diffusers folder) and the CLIP `image_encoder` folder
  are passed separately (or found as sibling folders with those names).
- ours: `rain_config.json` + one `.safetensors` per part: reference_unet, denoising_unet, pose_guider,
  image_encoder, and vae / taesdv when the model has them. Preferred when both layouts are present.
Our parameter names equal the authors', so no renaming happens; every file is checked against the network it
fills (missing, unexpected and mis-shaped tensors) before anything is loaded.

Modules: `files` (reading and checking checkpoint files), `networks` (load_rain, load_network), `saving` (save_rain,
convert_official), `layout` (the one table of a model's files), `download`, `single_file` (ComfyUI's single-file
VAE and CLIP vision).
"""

import importlib

# import time: `from rain_core.loading.layout import ...` (the CLI's flags, `rain --help`) must not load torch and
# diffusers, so the public names below are imported from their module when first used.
_EXPORTS = {
    "CONFIG_NAME": "files",
    "DOWNLOAD_HINT": "files",
    "FORMAT": "files",
    "PART_DESCRIPTIONS": "files",
    "PART_FILES": "files",
    "RECOMPUTABLE_SUFFIXES": "files",
    "RainLoadError": "files",
    "assign_tensors": "files",
    "check_device_dtype": "files",
    "check_state_dict": "files",
    "describe_contents": "files",
    "read_state_dict": "files",
    "read_tensors": "files",
    "folder_frame_size": "networks",
    "load_codec": "networks",
    "load_image_encoder": "networks",
    "load_network": "networks",
    "load_rain": "networks",
    "load_taesdv": "networks",
    "meta_networks": "networks",
    "read_config_file": "networks",
    "convert_official": "saving",
    "save_rain": "saving",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
