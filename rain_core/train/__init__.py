"""Training: datasets (real folders and the synthetic world of `rain_core.synthetic`), the three RAIN stages and
the `rain train` entry point. `train_main` is imported lazily: accelerate is an optional extra."""

__all__ = ["train_main"]


def __getattr__(name):
    if name == "train_main":
        from .cli import train_main  # optional extra [train]: accelerate

        return train_main
    raise AttributeError(f"module 'rain_core.train' has no attribute {name!r}")
