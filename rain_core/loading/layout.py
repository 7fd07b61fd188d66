"""Where model files live: the built-in tiny model, the one table of a model's files, and the models/ layout the
README documents. Used by the loader, the CLI, the nodes and `rain_core.loading.download`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BUILTIN_NAMES = ("tiny", "builtin", "built-in")  # what a user may type instead of a folder


def builtin_model_dir() -> Path:
    """The built-in tiny-rain model shipped with the package (64 px, safetensors)."""
    return Path(__file__).resolve().parents[1] / "assets" / "tiny-rain"


def is_builtin_name(name) -> bool:
    return isinstance(name, str) and name.strip().lower() in BUILTIN_NAMES


def resolve_model_folder(name) -> Path:
    """A model argument as a folder: None or 'tiny'/'builtin' mean the built-in model; anything else is a path.

    An existing folder of that name in the working directory wins over the built-in name.
    """
    if name is None or (is_builtin_name(name) and not Path(name).exists()):
        return builtin_model_dir()
    return Path(name)


@dataclass(frozen=True)
class PartFiles:
    """Where one part of a model may be, in the order the loader looks: names inside the model folder (ours first,
    then the authors'), names in the folder that holds the model folder, and its place in the README layout under
    models/."""

    inside: tuple[str, ...]
    beside: tuple[str, ...] = ()
    layout: str | None = None


# The one table of a model's files.
MODEL_FILES = {
    "reference_unet": PartFiles(("reference_unet.safetensors", "reference_unet.pth")),
    "denoising_unet": PartFiles(("denoising_unet.safetensors", "motion_unet.pth")),
    "pose_guider": PartFiles(("pose_guider.safetensors", "pose_guider.pth")),
    "vae": PartFiles(("vae.safetensors", "sd-vae-ft-mse"), ("sd-vae-ft-mse",), "vae/sd-vae-ft-mse"),
    "image_encoder": PartFiles(("image_encoder.safetensors", "image_encoder"), ("image_encoder",),
                               "clip_vision/sd-image-variations"),
    "taesdv": PartFiles(("taesdv.safetensors", "taesdv.pth"), (), "vae_approx/taesdv.pth"),
}
NETWORK_PARTS = ("reference_unet", "denoising_unet", "pose_guider")  # the three files of a RAIN checkpoint
RELEASE_FOLDER = "rain/RAIN-v0.1"  # where the released checkpoint goes under models/
DWPOSE_FOLDER = "rain/dwpose"


def own_candidates(model_folder: str | os.PathLike, part: str) -> list[Path]:
    """Where a model folder's own copy of `part` may be: inside it, then beside it (in the table's order)."""
    folder = Path(model_folder)
    files = MODEL_FILES[part]
    return [folder / name for name in files.inside] + [folder.parent / name for name in files.beside]


def layout_paths(models_dir: str | os.PathLike) -> dict[str, Path]:
    """Where each downloadable item lives in the README layout under `models_dir`."""
    root = Path(models_dir)
    return {"rain": root / RELEASE_FOLDER, "dwpose": root / DWPOSE_FOLDER,
            **{part: root / MODEL_FILES[part].layout for part in ("taesdv", "vae", "image_encoder")}}


def readme_layout_parts(model_folder: str | os.PathLike) -> dict[str, Path]:
    """The VAE, image encoder and TAESDV of the README layout around a model folder, where they exist and the
    folder does not hold its own: models/rain/RAIN-v0.1 → models/vae/sd-vae-ft-mse,
    models/clip_vision/sd-image-variations, models/vae_approx/taesdv.pth. Keys: vae, image_encoder, taesdv."""
    root = Path(model_folder).parent.parent  # models/ (the folder is models/rain/<name>)
    found = {}
    for part in ("vae", "image_encoder", "taesdv"):
        path = root / MODEL_FILES[part].layout
        if path.exists() and not any(candidate.exists() for candidate in own_candidates(model_folder, part)):
            found[part] = path
    return found
