"""What one live session may ask of a shared server: the start message's settings over the defaults (StreamConfig's
own), their types, the bounds on frame size, window, steps and waiting frames, and how many sessions a server holds.
Every refusal names the field and the limit (issue 32; figures from bench/live_load.py)."""

from __future__ import annotations

import os

from ..rain_core.stream.config import StreamConfig
from .model_loader import BUILTIN_MODEL

STREAM_FIELDS = ("width", "height", "levels", "frames_per_cohort", "steps", "guidance", "seed", "noise")
# The stream's defaults are StreamConfig's own (width/height 0 = the model's own size, as in RAIN Sampler).
DEFAULTS = {
    "model": BUILTIN_MODEL, "precision": "auto", "device": "auto", "decoder": "auto",
    **{name: getattr(StreamConfig(), name) for name in STREAM_FIELDS},
    "reference": "", "mode": "pose", "face_morph": {}, "capacity": None, "pose_check": True,
}
INT_FIELDS = ("width", "height", "levels", "frames_per_cohort", "steps", "seed")

# What one session may ask for. A server's memory and time per tick grow with the frame area, the window and the steps:
# these bounds keep one client from taking the server down for the others (issue 32; bench/live_load.py).
MAX_SIDE = 1024  # px, width and height (0 = the model's own size)
MAX_AREA_FACTOR = 4  # width × height at most this many times the model's own area
MAX_WINDOW = 32  # levels × frames_per_cohort (the released operating point is 4 × 4 = 16)
MAX_STEPS = 16  # LCM steps per frame (the released operating point is 4)
MAX_CAPACITY = 64  # frames waiting at the door
# Live sessions one server holds at once. Sessions share the server's throughput (one tick at a time), and live
# latency is about (window - 1) / a session's fps out. bench/live_load.py (built-in model at its defaults, 2 CPU cores
# under load ~10): 8-14 fps out in all, so 2 sessions at >= 5 fps each (~3 s latency); 4 get ~1.6 fps each (10 s).
# A GPU server serves more (README "Live from the browser": the estimate): raise it with RAIN_LIVE_MAX_SESSIONS.
DEFAULT_MAX_SESSIONS = 2
MAX_SESSIONS_ENV = "RAIN_LIVE_MAX_SESSIONS"
KEYPOINT_FPS = 30.0  # a keypoint file that names no frame rate plays at this one

def max_sessions() -> int:
    """Live sessions a server holds at once: RAIN_LIVE_MAX_SESSIONS when set (read at each Start), else
    DEFAULT_MAX_SESSIONS."""
    from ..rain_core.live import LiveInputError

    text = os.environ.get(MAX_SESSIONS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_SESSIONS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise LiveInputError(f"the server's {MAX_SESSIONS_ENV}={text!r} is not a whole number of sessions ≥ 1; "
                             "ask its administrator to fix it")
    return value


def limits() -> dict:
    return {"max_sessions": max_sessions(), "max_side": MAX_SIDE, "max_area_factor": MAX_AREA_FACTOR,
            "max_window": MAX_WINDOW, "max_steps": MAX_STEPS, "max_capacity": MAX_CAPACITY}


def read_settings(message: dict) -> dict:
    """The start message's settings over DEFAULTS, with types checked (each error names the field)."""
    from ..rain_core.live import LiveInputError

    settings = dict(DEFAULTS)
    for key, value in message.items():
        if key in DEFAULTS and value is not None and value != "":
            settings[key] = value
    for key in INT_FIELDS:
        try:
            settings[key] = int(settings[key])
        except (TypeError, ValueError) as error:
            raise LiveInputError(f"{key}: expected a whole number, found {settings[key]!r}") from error
    try:
        settings["guidance"] = float(settings["guidance"])
    except (TypeError, ValueError) as error:
        raise LiveInputError(f"guidance: expected a number, found {settings['guidance']!r}") from error
    if not isinstance(settings["face_morph"], dict):
        raise LiveInputError("face_morph: expected an object of face-morph parameters")
    check_bounds(settings)
    return settings


def check_bounds(settings: dict) -> None:
    """Refuse what one live session may not ask of a shared server, naming the field and the limit (the frame area
    against the model's own size is checked once the model is loaded: `check_area`)."""
    from ..rain_core.live import LiveInputError

    for side in ("width", "height"):
        if settings[side] > MAX_SIDE:
            raise LiveInputError(f"{side}: {settings[side]} px is over the live limit of {MAX_SIDE} px a side; "
                                 "use 0 for the model's own size")
    window = settings["levels"] * settings["frames_per_cohort"]
    if window > MAX_WINDOW:
        raise LiveInputError(
            f"levels × frames_per_cohort: a window of {settings['levels']} × {settings['frames_per_cohort']} = {window} "
            f"frames is over the live limit of {MAX_WINDOW}; use fewer levels or frames per cohort")
    if settings["steps"] > MAX_STEPS:
        raise LiveInputError(f"steps: {settings['steps']} is over the live limit of {MAX_STEPS} steps per frame")
    capacity = settings["capacity"]
    if capacity is not None:
        try:
            capacity = int(capacity)
        except (TypeError, ValueError) as error:
            raise LiveInputError(f"capacity: expected a whole number of frames, found {capacity!r}") from error
        if not 1 <= capacity <= MAX_CAPACITY:
            raise LiveInputError(f"capacity: expected 1 to {MAX_CAPACITY} frames waiting, found {capacity}")
        settings["capacity"] = capacity


def check_area(config, models) -> None:
    """The resolved frame size against the model's own area (× MAX_AREA_FACTOR)."""
    from ..rain_core.live import LiveInputError

    own_height, own_width = models.config.own_frame_size()
    limit = MAX_AREA_FACTOR * own_height * own_width
    if config.width * config.height > limit:
        raise LiveInputError(
            f"width × height: {config.width}×{config.height} is over the live limit of {MAX_AREA_FACTOR}× the model's "
            f"own area ({own_width}×{own_height}, so at most {limit:,} px, e.g. {2 * own_width}×{2 * own_height}); "
            "use 0 for the model's own size")
