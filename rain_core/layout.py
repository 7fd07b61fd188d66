"""Where model files live: the built-in tiny model and the models/ layout the README documents.

One place for these paths, used by the CLI, the nodes and `rain_core.download`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BUILTIN_NAMES = ("tiny", "builtin", "built-in")  # what a user may type instead of a folder


def builtin_model_dir() -> Path:
    """The built-in tiny-rain model shipped with the package (64 px, safetensors)."""
    return Path(__file__).resolve().parent / "assets" / "tiny-rain"


def is_builtin_name(name) -> bool:
    return isinstance(name, str) and name.strip().lower() in BUILTIN_NAMES


def resolve_model_folder(name) -> Path:
    """A model argument as a folder: None or 'tiny'/'builtin' mean the built-in model; anything else is a path.

    An existing folder of that name in the working directory wins over the built-in name.
    """
    if name is None or (is_builtin_name(name) and not Path(name).exists()):
        return builtin_model_dir()
    return Path(name)


def readme_layout_parts(model_folder: str | os.PathLike) -> dict[str, Path]:
    """The VAE, image encoder and TAESDV of the README layout around a model folder, where they exist and the
    folder does not hold its own: models/rain/RAIN-v0.1 → models/vae/sd-vae-ft-mse,
    models/clip_vision/sd-image-variations, models/vae_approx/taesdv.pth. Keys: vae, image_encoder, taesdv."""
    folder = Path(model_folder)
    root = folder.parent.parent  # models/ (folder is models/rain/<name>)
    own = {
        "vae": [folder / "vae.safetensors", folder / "sd-vae-ft-mse", folder.parent / "sd-vae-ft-mse"],
        "image_encoder": [folder / "image_encoder.safetensors", folder / "image_encoder",
                          folder.parent / "image_encoder"],
        "taesdv": [folder / "taesdv.safetensors", folder / "taesdv.pth"],
    }
    layout = {"vae": root / "vae" / "sd-vae-ft-mse", "image_encoder": root / "clip_vision" / "sd-image-variations",
              "taesdv": root / "vae_approx" / "taesdv.pth"}
    return {part: path for part, path in layout.items()
            if path.exists() and not any(candidate.exists() for candidate in own[part])}


def model_size(model_folder: str | os.PathLike, config=None) -> tuple[int, int]:
    """The (height, width) a model was trained at: `resolution` in its rain_config.json when recorded (the
    built-in model records 64×64), else 512×512 for an SD-VAE model (the released RAIN-v0.1) and 64×64 for a
    pixel-codec model (the tiny family)."""
    codec = getattr(config, "codec", None)
    path = Path(model_folder) / "rain_config.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}  # load_rain reports a bad config with its own message
        resolution = data.get("resolution") if isinstance(data, dict) else None
        if isinstance(resolution, (list, tuple)) and len(resolution) == 2:
            return int(resolution[0]), int(resolution[1])
        if codec is None and isinstance(data, dict):
            codec = (data.get("config") if isinstance(data.get("config"), dict) else data).get("codec")
    return (64, 64) if codec == "space_to_depth" else (512, 512)
