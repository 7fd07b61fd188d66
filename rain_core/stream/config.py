"""How a stream runs (`StreamConfig`), its validation, the stream's errors, and the one rule for "auto" precision."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..scheduler import ScheduleError, check_steps

DECODERS = ("auto", "taesdv", "vae")
MISSING_POSE_POLICIES = ("hold", "empty")
RESIZE_POLICIES = ("letterbox", "stretch", "strict")
FAST_PATHS = ("auto", "graph", "compile", "eager")
NOISE_MODES = ("fresh", "shared")
OUTPUT_DEVICES = ("cpu", "device")


class StreamError(ValueError):
    """Any input, config or call order the stream cannot accept; the stream is left as it was."""


class StreamConfigError(StreamError):
    """A `StreamConfig` that cannot work with these networks."""


class PoseInputError(StreamError):
    """Pose frames or a reference image of the wrong kind."""


class StreamStateError(StreamError):
    """A call in the wrong order (push after flush, push before a reference) or a bad saved state."""


@dataclass
class StreamConfig:
    """How a stream runs. The released operating point is the default (4 levels × 4 frames, 4 steps, at the
    model's own size). These defaults are the only ones: the nodes, the CLI and the live route read them from here.

    levels: cohorts in flight (p), also the number of ticks a frame spends in the window.
    frames_per_cohort: frames that share a noise level (m); the window is levels × frames_per_cohort.
    steps: LCM steps per frame; a multiple of levels (steps // levels UNet calls per tick).
    guidance: the LCM w fed to the guidance embedding (2.5 live demo … 3.5 offline example).
    height, width: frame size in pixels; 0 (the default) means the model's own size
        (`RainModelConfig.own_frame_size`: 512² for RAIN-v0.1, 64² for the built-in model), resolved by
        `for_models` when a stream is made.
    decoder: "taesdv" (fast, temporal memory carried tick to tick), "vae" (the full codec), "auto" (TAESDV if loaded).
    missing_pose: for a frame without a pose (None, or an all-black canvas): "hold" the last pose or keep "empty".
    resize: pose frames and references of another size are "letterbox"ed (no distortion), "stretch"ed, or refused
        ("strict"); `rain_core.io.inputs.fit_frames` does the resizing.
    fast_path: every tick runs through the one `rain_core.stream.tick.Tick` (fixed buffers, fused LCM step,
        nothing read back to the host). "graph": a steady-state tick (full window, a new cohort entering) is
        captured once as a CUDA graph and replayed (CUDA only; elsewhere it runs eagerly); "eager": the same
        code, never captured; "compile": the steady-state UNet call compiled by torch.compile (inductor, cached on
        disk; eager after one log line where no C++ compiler exists: `rain_core.stream.compiled`); "auto" (default):
        "graph" on CUDA; on the CPU the compiled tick when its package is in the cache (loaded in about a second),
        else "eager". In a long-lived host (`rain_core.allow_background_compile()`: the ComfyUI server,
        `rain live`; or `RAIN_BACKGROUND_COMPILE=1`) a lower-priority child process compiles the package
        meanwhile and the stream switches to it when it is ready (a minute or more; `stats["fast_path"]` then
        says "compile"); the child ends with its parent (`rain_core.stream.background_build`). A short script or
        command starts no child: "compile" waits for the package instead. Warm-up and flush ticks (partial
        windows) run the same code eagerly.
    output_device: where returned frames live: "cpu" (default) or "device" (the models' device, no copy back).
    noise: "fresh" (default, the method): every frame draws its own noise; "shared": every frame gets the same
        noise (StreamDiffusion's fixed noise), which keeps still parts of the picture still: on the built-in model
        it cut the temporal error by ~74 % at equal PSNR (`bench/quality.py --shared-noise`). Not in the paper.
    """

    levels: int = 4
    frames_per_cohort: int = 4
    steps: int = 4
    guidance: float = 3.5
    height: int = 0
    width: int = 0
    seed: int = 0
    decoder: str = "auto"
    missing_pose: str = "hold"
    resize: str = "letterbox"
    fast_path: str = "auto"
    output_device: str = "cpu"
    noise: str = "fresh"

    @property
    def window(self) -> int:
        return self.levels * self.frames_per_cohort

    @property
    def calls_per_tick(self) -> int:
        return self.steps // self.levels

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def for_models(self, models) -> StreamConfig:
        """A copy with a height or width of 0 replaced by the model's own size (the one resolver)."""
        own_height, own_width = models.config.own_frame_size()
        return dataclasses.replace(self, height=self.height or own_height, width=self.width or own_width)

    @classmethod
    def from_dict(cls, data: dict) -> StreamConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if data.get("fast_path") in ("off", "static"):  # names of the eager tick in states saved before rain-stream/1.1
            data = {**data, "fast_path": "eager"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StreamConfigError(f"StreamConfig: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def validate(self, models=None) -> None:
        """Raise `StreamConfigError` naming the field unless this config can run (on `models`, when given)."""

        def fail(message):
            raise StreamConfigError(f"StreamConfig.{message}")

        for name in ("levels", "frames_per_cohort", "steps", "height", "width", "seed"):
            value = getattr(self, name)
            zero_allowed = name in ("seed", "height", "width")  # a size of 0 means the model's own size
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero_allowed else 1):
                meaning = " (0 = the model's own size)" if name in ("height", "width") else ""
                fail(
                    f"{name}: expected a {'non-negative' if zero_allowed else 'positive'} whole number{meaning}, "
                    f"found {value!r}"
                )
        try:
            check_steps(self.levels, self.steps)
        except ScheduleError as error:
            fail(str(error))
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance):
            fail(f"guidance: expected a finite number, found {self.guidance!r}")
        for name, allowed in (
            ("decoder", DECODERS),
            ("missing_pose", MISSING_POSE_POLICIES),
            ("resize", RESIZE_POLICIES),
            ("fast_path", FAST_PATHS),
            ("output_device", OUTPUT_DEVICES),
            ("noise", NOISE_MODES),
        ):
            if getattr(self, name) not in allowed:
                fail(f"{name}: expected one of {allowed}, found {getattr(self, name)!r}")
        if models is None:
            return
        if not (self.height and self.width):
            self.for_models(models).validate(models)  # check the size the stream will really use
            return
        model_config = models.config
        motion = model_config.motion
        if motion is not None and self.window > motion.max_frames:
            fail(
                f"levels × frames_per_cohort: the window of {self.levels} × {self.frames_per_cohort} = {self.window} frames "
                f"is longer than the motion modules' position encoding ({motion.max_frames} frames); "
                f"use fewer levels or frames per cohort"
            )
        # The latent must survive every down-sampling of the UNet without rounding.
        multiple = models.codec.downscale * 2 ** (len(model_config.block_out_channels) - 1)
        if self.height % multiple or self.width % multiple:
            fail(
                f"height/width: expected multiples of {multiple} for these networks, found {self.height}×{self.width}; "
                f"use e.g. {round(self.height / multiple) * multiple}×{round(self.width / multiple) * multiple}"
            )
        if self.decoder == "taesdv" and models.fast_decoder is None:
            fail('decoder: "taesdv" was asked for but these networks have no TAESDV loaded; use "vae" or "auto"')


def resolve_precision(precision: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """The one rule for the networks' precision, used by the loader, the CLI, the nodes and the fast path.

    "auto" (or None): float16 on CUDA — the precision the authors run RAIN in, and on the full-size networks about
    8x closer to float32 than bfloat16 (a 32-frame stream: 60.5 dB PSNR of the frames against float32 vs 41.3 dB,
    every value finite; `bench/results/fullsize_cpu.json`, `precision_errors`) — and float32 everywhere else
    (exact). Otherwise the named precision: "fp32"/"float32", "fp16"/"float16", "bf16"/"bfloat16", or a torch dtype;
    bf16 is a choice, never a default (on a CPU with native bf16 instructions it runs the full-size model 1.8x
    faster than float32 at that 41 dB).
    """
    if isinstance(precision, torch.dtype):
        return precision
    device = torch.device(device)
    if precision in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    names = {
        "fp32": torch.float32, "float32": torch.float32,
        "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    }  # fmt: skip
    if precision not in names:
        raise ValueError(f"precision: expected 'auto' or one of {sorted(names)}, found {precision!r}")
    return names[precision]
