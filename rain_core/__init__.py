"""RAIN engine: real-time animation of an endless pose stream from one reference image.

The public API is `load_rain`, `RainStream` and `StreamConfig`. They are imported lazily so that
`import rain_core` stays cheap (ComfyUI imports every pack at start-up).
"""

__version__ = "0.1.0"

from .cpu import allow_background_compile
from .cpu import prefer_passive_wait as _prefer_passive_wait

# Before anything imports torch: idle OpenMP threads sleep instead of spinning (2 threads were 8–10× slower than 1
# on a busy machine without it); the user's OMP_WAIT_POLICY wins, RAIN_CPU_TUNING=0 skips it. See cpu.py.
_prefer_passive_wait()

__all__ = ["load_rain", "RainStream", "StreamConfig", "allow_background_compile", "__version__"]


def __getattr__(name):
    if name == "load_rain":
        from .loading import load_rain  # import time: `import rain_core` stays light

        return load_rain
    if name in ("RainStream", "StreamConfig"):
        from . import stream  # import time: as above

        return getattr(stream, name)
    raise AttributeError(f"module 'rain_core' has no attribute {name!r}")
