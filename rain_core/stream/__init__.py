"""The RAIN streaming engine, one job per module:

config.py  `StreamConfig`, its validation, the stream's errors, the one "auto" precision rule
window.py  the cohorts in flight, the levels they occupy (`Occupancy`), warm-up and flush bookkeeping
noise.py   `SeededNoise` (a cohort's noise is a function of seed, cohort, step) and `TickNoise`, the one assembly;
           `SharedNoise` (one noise for every frame: an ablation)
tick.py    `Tick`: THE tick on fixed buffers, the same code for every occupancy, capturable as a CUDA graph
accel.py   the tick's speed options (`FastPath`), attention backend, tf32, channels_last, the CUDA-graph wrapper
compiled.py          the steady tick compiled on the CPU (`CompiledUNet`, an AOTInductor package on disk per key)
compile_cache.py     that package cache: folder, files, bound, listing, clearing, what dead builders left
background_build.py  the child process that builds a package while a stream runs eagerly (ends with its parent)
timing.py  tick times from CUDA events (lazily) or the host clock
state.py   state_dict / load_state_dict / save / load, bit-exact
engine.py  `RainStream`: reference, push, flush, rollback on error, stats
"""

from ..io.inputs import fit_frames
from .config import (
    DECODERS,
    FAST_PATHS,
    MISSING_POSE_POLICIES,
    NOISE_MODES,
    OUTPUT_DEVICES,
    RESIZE_POLICIES,
    PoseInputError,
    StreamConfig,
    StreamConfigError,
    StreamError,
    StreamStateError,
    resolve_precision,
)
from .engine import RainStream
from .noise import NoiseSource, SeededNoise, SharedNoise, TickNoise
from .state import STATE_FORMAT
from .tick import Tick
from .window import Occupancy, Window

__all__ = [
    "DECODERS",
    "FAST_PATHS",
    "MISSING_POSE_POLICIES",
    "NOISE_MODES",
    "OUTPUT_DEVICES",
    "RESIZE_POLICIES",
    "STATE_FORMAT",
    "NoiseSource",
    "Occupancy",
    "PoseInputError",
    "RainStream",
    "SeededNoise",
    "SharedNoise",
    "StreamConfig",
    "StreamConfigError",
    "StreamError",
    "StreamStateError",
    "Tick",
    "TickNoise",
    "Window",
    "fit_frames",
    "resolve_precision",
]
