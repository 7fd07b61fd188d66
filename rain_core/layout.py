"""Where model files live: the built-in tiny model and the models/ layout the README documents.

One place for these paths, used by the CLI, the nodes and `rain_core.download`.
"""

from __future__ import annotations

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
