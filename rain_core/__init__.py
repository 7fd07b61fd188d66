"""RAIN engine: real-time animation of an endless pose stream from one reference image.

The public API is `load_rain`, `RainStream` and `StreamConfig`. They are imported lazily so that
`import rain_core` stays cheap (ComfyUI imports every pack at start-up).
"""

__version__ = "0.1.0"

__all__ = ["load_rain", "RainStream", "StreamConfig", "__version__"]


def __getattr__(name):
    if name == "load_rain":
        from .loading import load_rain

        return load_rain
    if name in ("RainStream", "StreamConfig"):
        from . import stream

        return getattr(stream, name)
    raise AttributeError(f"module 'rain_core' has no attribute {name!r}")
