"""Training: synthetic characters, datasets, the three RAIN stages and the `rain train` entry point.

Imports are lazy so that `rain_core.train.synthetic` stays usable without torch-heavy modules loaded.
"""

__all__ = ["train_main"]


def __getattr__(name):
    if name == "train_main":
        from .cli import train_main

        return train_main
    raise AttributeError(f"module 'rain_core.train' has no attribute {name!r}")
