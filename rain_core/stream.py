"""The RAIN stream: stepped-noise cohorts walking down the ladder, forever, in constant memory.

A stream holds up to `levels` cohorts of `frames_per_cohort` latent frames, each cohort at its own
noise level (rain-method.md §2). Every time a cohort's worth of pose frames has arrived, one *tick*
runs: the new cohort enters as pure noise at t = 999, the whole window goes through the denoising
UNet `steps // levels` times with one LCM step each, and the oldest cohort, now clean, is decoded
and leaves. Warm-up (the noisiest levels fill first) and flush (no new cohorts, the rest keeps
stepping) follow the authors' offline `Pose2VideoPipelineLCM`, so pushing a whole clip and flushing
renders exactly what their pipeline renders for the same weights and noise.

Chunk invariance comes from two choices: a tick is triggered only by complete cohorts, and the noise
of a cohort is a pure function of (seed, cohort number, step number), never of how the frames were
pushed. Nothing kept between ticks grows with the number of frames streamed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .scheduler import LCMStepper, ScheduleError, check_steps, ladder

DECODERS = ("auto", "taesdv", "vae")
MISSING_POSE_POLICIES = ("hold", "empty")
RESIZE_POLICIES = ("letterbox", "strict")
FAST_PATHS = ("auto", "graph", "static", "off")
OUTPUT_DEVICES = ("cpu", "device")
STATE_FORMAT = "rain-stream/1"


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
    """How a stream runs. The released operating point is the default (512², 4 levels × 4 frames, 4 steps).

    levels: cohorts in flight (p), also the number of ticks a frame spends in the window.
    frames_per_cohort: frames that share a noise level (m); the window is levels × frames_per_cohort.
    steps: LCM steps per frame; a multiple of levels (steps // levels UNet calls per tick).
    guidance: the LCM w fed to the guidance embedding (2.5 live demo … 3.5 offline example).
    decoder: "taesdv" (fast, temporal memory carried tick to tick), "vae" (the full codec), "auto" (TAESDV if loaded).
    missing_pose: for a frame without a pose (None, or an all-black canvas): "hold" the last pose or keep "empty".
    resize: pose frames and references of another size are "letterbox"ed (no distortion) or refused ("strict").
    fast_path: how a steady-state tick (full window, a new cohort entering) runs. "static": through
        `rain_core.accel.StaticTick` (fixed buffers, fused LCM step, nothing read back to the host); "graph": the
        same, replayed as one CUDA graph on CUDA; "off": the general eager tick; "auto" (default): "graph" on CUDA,
        "off" elsewhere. Warm-up and flush ticks are always eager. The paths agree to float32 rounding (≈1e-6).
    output_device: where returned frames live: "cpu" (default) or "device" (the models' device, no copy back).
    """

    levels: int = 4
    frames_per_cohort: int = 4
    steps: int = 4
    guidance: float = 3.5
    height: int = 512
    width: int = 512
    seed: int = 0
    decoder: str = "auto"
    missing_pose: str = "hold"
    resize: str = "letterbox"
    fast_path: str = "auto"
    output_device: str = "cpu"

    @property
    def window(self) -> int:
        return self.levels * self.frames_per_cohort

    @property
    def calls_per_tick(self) -> int:
        return self.steps // self.levels

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StreamConfig:
        known = {f.name for f in dataclasses.fields(cls)}
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
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "seed" else 1):
                fail(
                    f"{name}: expected a {'non-negative' if name == 'seed' else 'positive'} whole number, found {value!r}"
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
        ):
            if getattr(self, name) not in allowed:
                fail(f"{name}: expected one of {allowed}, found {getattr(self, name)!r}")
        if models is None:
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


class NoiseSource(Protocol):
    """Where the stream's randomness comes from. Returns float tensors of exactly `shape` (any device).

    `initial(cohort, shape)`: the starting latents of cohort number `cohort` (its m frames at t = 999).
    `step(cohort, step, shape)`: the fresh noise of that cohort's LCM step number `step` (0 = first step);
    not asked for a step that ends below t = 0 (its noise would be multiplied by 0).
    """

    def initial(self, cohort: int, shape: tuple[int, ...]) -> torch.Tensor: ...

    def step(self, cohort: int, step: int, shape: tuple[int, ...]) -> torch.Tensor: ...


class SeededNoise:
    """Counter-based N(0, I): each (seed, cohort, step) seeds its own CPU generator, so the noise a
    cohort gets does not depend on chunking, on what else is in flight, or on the device."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def _draw(self, cohort: int, step: int, shape) -> torch.Tensor:
        key = hashlib.blake2b(f"rain-noise/{self.seed}/{cohort}/{step}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(key, "little") & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def initial(self, cohort: int, shape) -> torch.Tensor:
        return self._draw(cohort, -1, shape)

    def step(self, cohort: int, step: int, shape) -> torch.Tensor:
        return self._draw(cohort, step, shape)


@dataclass
class _Window:
    """The cohorts in flight, oldest first. Tensors are replaced, never modified in place, so a copy of
    this object (with copied lists) is a snapshot the stream can roll back to."""

    latents: torch.Tensor | None = None  # (1, C, n·m, h, w), model dtype
    pose_features: torch.Tensor | None = None  # (1, Cp, n·m, h, w), model dtype
    cohorts: list[int] = dataclasses.field(default_factory=list)  # cohort numbers
    ticks_done: list[int] = dataclasses.field(default_factory=list)  # ticks each cohort has been through
    real_frames: list[int] = dataclasses.field(default_factory=list)  # < m only for a flushed, padded last cohort

    def copy(self) -> _Window:
        return _Window(
            self.latents, self.pose_features, list(self.cohorts), list(self.ticks_done), list(self.real_frames)
        )


class RainStream:
    """An endless RAIN stream over one set of networks.

    >>> stream = RainStream(models, StreamConfig(height=512, width=512))
    >>> stream.set_reference(reference)          # (H, W, 3) or (1, H, W, 3), float in [0, 1]
    >>> frames = stream.push(poses)              # (N, H, W, 3) pose renders -> (n, H, W, 3) finished frames
    >>> frames = stream.flush()                  # end of input: the frames still in flight

    Every call validates its input before touching the stream: on any error the stream is exactly
    as it was before the call.
    """

    def __init__(self, models, config: StreamConfig | None = None, noise: NoiseSource | None = None):
        config = config or StreamConfig()
        config.validate(models)
        self.models = models
        self._custom_noise = noise
        self._configure(config)
        self._reference: dict[str, Any] | None = None
        self._clear_stream()

    # ------------------------------------------------------------------ configuration
    def _configure(self, config: StreamConfig) -> None:
        self.config = dataclasses.replace(config)
        self.noise = self._custom_noise if self._custom_noise is not None else SeededNoise(config.seed)
        self._ladder = ladder(config.levels, config.steps)
        self._ladder_rows = self._ladder.tolist()  # plain ints: deciding which cohorts need noise reads no tensor
        self._stepper = LCMStepper(config.steps, self.models.device)
        decoder = config.decoder
        if decoder == "auto":
            decoder = "taesdv" if self.models.fast_decoder is not None else "vae"
        self._decoder = decoder
        model_config = self.models.config
        self._guidance_embedding = self.models.guidance_embedding(float(config.guidance))  # None without cond_proj
        downscale = self.models.codec.downscale
        self._latent_shape = (model_config.latent_channels, config.height // downscale, config.width // downscale)
        self._device_timesteps: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}  # (call, levels) -> (1, F)
        fast = config.fast_path
        if fast == "auto":
            fast = "graph" if self.models.device.type == "cuda" else "off"
        # The static tick keeps cohorts between ticks, so it needs at least two levels.
        self._fast_path = fast if config.levels >= 2 else "off"
        self._drop_static_tick()

    def _drop_static_tick(self) -> None:
        """Forget the static tick (built again on the next steady-state tick): reference or config changed."""
        self._static_tick = None
        self._static_holds = None  # the (latents, pose_features, memory) objects the static tick's buffers equal

    def _clear_stream(self) -> None:
        self._window = _Window()
        self._pending = self._empty_poses()  # poses of the cohort being filled, (k < m, H, W, 3) float32 CPU
        self._last_pose = None  # (H, W, 3) float32 CPU: what "hold" repeats
        self._decoder_memory = None
        self._next_cohort = 0
        self._frames_in = 0
        self._frames_out = 0
        self._ticks = 0
        self._finished = False
        self._seconds = 0.0
        self._last_tick_ms = None
        self._mean_tick_ms = None
        self._pending_timings = []  # CUDA (start, end) events of ticks whose time is not read yet
        self._static_ticks = 0
        self._outputs_ready = None  # CUDA event after the last non-blocking copy of frames to the host

    def _empty_poses(self) -> torch.Tensor:
        return torch.zeros(0, self.config.height, self.config.width, 3)

    # ------------------------------------------------------------------ public API
    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    @property
    def finished(self) -> bool:
        """True after `flush()`: the stream takes no more poses until `reset()`."""
        return self._finished

    def set_reference(self, image) -> None:
        """Use `image` ((H, W, 3) or (1, H, W, 3), float in [0, 1]) as the character from now on.

        Runs CLIP and the reference UNet once and caches the reference K/V; can be called mid-stream
        (cohorts already in flight continue with the new reference).
        """
        image = _as_frames(image, "reference image", allow_missing=False)[0]
        if image.shape[0] != 1:
            raise PoseInputError(f"reference image: expected one image, found a batch of {image.shape[0]}")
        model_size = self._fit(image, "reference image")
        device, dtype = self.models.device, self.models.dtype
        with torch.no_grad():
            clip_tokens = self.models.image_encoder.encode(image.to(device, dtype))
            latent = self.models.codec.encode(model_size.permute(0, 3, 1, 2).to(device, dtype))
        # Contiguous layouts everywhere: CPU kernels pick algorithms (and rounding) by memory layout, and a
        # resumed stream (tensors read back contiguous) must compute exactly what the live one did.
        self._install_reference(clip_tokens.contiguous(), latent.contiguous())

    def _install_reference(self, clip_tokens: torch.Tensor, latent: torch.Tensor) -> None:
        with torch.no_grad():
            cache = self.models.reference_unet(latent, clip_tokens)
        self._reference = {"clip_tokens": clip_tokens, "latent": latent, "cache": cache}
        self._drop_static_tick()

    def push(self, poses) -> torch.Tensor:
        """Feed pose frames ((N, H, W, 3) float in [0, 1], or a list of (H, W, 3) frames / None for "no pose").

        Returns the frames that finished, (n, height, width, 3) float32 on the CPU; n is a multiple of
        frames_per_cohort and is 0 during warm-up.
        """
        if self._finished:
            raise StreamStateError("push: this stream was flushed; call reset() to start a new one")
        if self._reference is None:
            raise StreamStateError("push: no reference yet; call set_reference(image) first")
        frames, missing = _as_frames(poses, "poses", True, (self.config.height, self.config.width))
        if frames.shape[0] == 0:
            raise PoseInputError("poses: expected at least one pose frame, found an empty batch")
        frames = self._fit(frames, "poses")
        return self._transaction(self._push_frames, frames, missing)

    def flush(self) -> torch.Tensor:
        """End of input: step everything in flight to the end and return the remaining frames.

        A partial cohort is completed by repeating its last pose; only its real frames are returned.
        """
        if self._finished:
            raise StreamStateError("flush: this stream was already flushed; call reset() to start a new one")
        if self._reference is None and (self._window.cohorts or self._pending.shape[0]):
            raise StreamStateError("flush: no reference; call set_reference(image) first")
        return self._transaction(self._flush)

    def reset(self, keep_reference: bool = True) -> None:
        """Forget everything in flight and start again from cohort 0 (same seed: same noise)."""
        self._clear_stream()
        if not keep_reference:
            self._reference = None

    @property
    def stats(self) -> dict:
        """Counters and timings; latency in frames is how many pose frames arrive before a frame leaves.

        On CUDA a tick's time is read from CUDA events (device time), here, lazily, not by a sync per tick.
        static_ticks counts the ticks that ran through the static tick since this object was made."""
        self._settle_timings(wait=True)
        seconds = self._seconds
        return {
            "frames_in": self._frames_in,
            "frames_out": self._frames_out,
            "ticks": self._ticks,
            "frames_in_flight": sum(self._window.real_frames) + self._pending.shape[0],
            # A frame leaves when the pose frames up to window - 1 after its own have arrived (+ compute).
            "latency_frames": self.config.window - 1,
            "window": self.config.window,
            "unet_calls_per_tick": self.config.calls_per_tick,
            "ms_per_tick": self._last_tick_ms,
            "mean_ms_per_tick": self._mean_tick_ms,
            "fps": self._frames_out / seconds if seconds > 0 else None,
            "decoder": self._decoder,
            "fast_path": self._fast_path,
            "static_ticks": self._static_ticks,
        }

    # ------------------------------------------------------------------ input preparation
    def _fit(self, frames: torch.Tensor, name: str) -> torch.Tensor:
        """Bring (N, H, W, 3) frames to the model size: as they are, letterboxed, or refused."""
        height, width = self.config.height, self.config.width
        if tuple(frames.shape[1:3]) == (height, width):
            return frames
        if self.config.resize == "strict":
            raise PoseInputError(
                f"{name}: expected {height}×{width} frames (resize='strict'), found {frames.shape[1]}×{frames.shape[2]}; "
                f"resize them or use resize='letterbox'"
            )
        return letterbox(frames, height, width)

    # ------------------------------------------------------------------ transactions
    # Everything a push or flush may change; tensors are never modified in place, so keeping references is a
    # snapshot (the window and the timing list are containers and are copied).
    _TRANSACTION_FIELDS = ("_pending", "_last_pose", "_decoder_memory", "_next_cohort", "_frames_in", "_frames_out",
                           "_ticks", "_finished", "_seconds", "_last_tick_ms", "_mean_tick_ms", "_static_ticks")

    def _transaction(self, work, *args) -> torch.Tensor:
        """Run `work`; on any exception put every piece of stream state back as it was."""
        window, timings = self._window.copy(), list(self._pending_timings)
        snapshot = {name: getattr(self, name) for name in self._TRANSACTION_FIELDS}
        try:
            return work(*args)
        except BaseException:
            self._window, self._pending_timings = window, timings
            for name, value in snapshot.items():
                setattr(self, name, value)
            self._static_holds = None  # a failed tick may have left the static tick's buffers half-written
            raise

    def _push_frames(self, frames: torch.Tensor, missing: list[bool]) -> torch.Tensor:
        m = self.config.frames_per_cohort
        outputs = []
        for index in range(frames.shape[0]):
            pose = frames[index]
            is_missing = missing[index] or not bool(pose.any())
            if is_missing and self.config.missing_pose == "hold":
                pose = self._last_pose if self._last_pose is not None else torch.zeros_like(pose)
            elif not is_missing:
                self._last_pose = pose
            self._pending = torch.cat([self._pending, pose[None]])
            self._frames_in += 1
            if self._pending.shape[0] == m:
                poses, self._pending = self._pending, self._empty_poses()
                outputs.append(self._tick(poses, m))
        return self._concat(outputs)

    def _flush(self) -> torch.Tensor:
        outputs = []
        if self._pending.shape[0]:
            real = self._pending.shape[0]
            padding = self._pending[-1:].expand(self.config.frames_per_cohort - real, -1, -1, -1)
            poses, self._pending = torch.cat([self._pending, padding]), self._empty_poses()
            outputs.append(self._tick(poses, real))
        while self._window.cohorts:
            outputs.append(self._tick(None, 0))
        self._finished = True
        return self._concat(outputs)

    def _concat(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The frames of one call, ready to read: waits (once per call, not per tick) for copies still in flight."""
        if self._outputs_ready is not None:
            self._outputs_ready.synchronize()
            self._outputs_ready = None
        outputs = [frames for frames in outputs if frames.shape[0]]
        if not outputs:
            return self._empty_poses().to(self._output_device)
        return torch.cat(outputs)

    @property
    def _output_device(self) -> torch.device:
        return self.models.device if self.config.output_device == "device" else torch.device("cpu")

    # ------------------------------------------------------------------ the tick
    @torch.no_grad()
    def _tick(self, poses: torch.Tensor | None, real_frames: int) -> torch.Tensor:
        """One tick: a new cohort enters (unless flushing), every cohort takes its LCM steps, the oldest leaves.

        Nothing in here reads a device value back to the host: timesteps come from the CPU ladder, noise is
        drawn on the CPU and sent ahead, and frames are copied back without waiting (`_concat` waits once)."""
        device = self.models.device
        self._settle_timings(wait=False)
        started = self._clock(device)
        window = self._window.copy()
        levels = self.config.levels
        steady = poses is not None and window.ticks_done == list(range(levels - 1, 0, -1))
        if steady and self._fast_path != "off":
            frames = self._static_step(window, poses, real_frames)
        else:
            frames = self._eager_step(window, poses, real_frames)
        self._ticks += 1
        self._stop_clock(started, device)
        return frames

    def _eager_step(self, window: _Window, poses: torch.Tensor | None, real_frames: int) -> torch.Tensor:
        """The general tick (any window occupancy: warm-up, steady state, flush) on `window`, a copy of the state."""
        models, config = self.models, self.config
        device, dtype = models.device, models.dtype
        m, calls = config.frames_per_cohort, config.calls_per_tick
        if poses is not None:
            cohort = self._next_cohort
            self._next_cohort += 1
            shape = (1, *self._latent_shape[:1], m, *self._latent_shape[1:])
            latents = _host_to(self.noise.initial(cohort, shape), device).to(dtype).contiguous()
            # Only the entering cohort's poses go through the pose guider; the others' features are carried.
            pose_video = _host_to(poses, device).permute(3, 0, 1, 2)[None].to(dtype)  # (1, 3, m, H, W)
            features = models.pose_guider(pose_video).contiguous()
            window.latents = latents if window.latents is None else torch.cat([window.latents, latents], dim=2)
            window.pose_features = (
                features if window.pose_features is None else torch.cat([window.pose_features, features], dim=2)
            )
            window.cohorts.append(cohort)
            window.ticks_done.append(0)
            window.real_frames.append(real_frames)
        reference = self._reference
        for call in range(calls):
            timesteps = self._timesteps(call, window.ticks_done)
            v = models.denoising_unet(
                window.latents,
                timesteps,
                reference["clip_tokens"],
                window.pose_features,
                self._guidance_embedding,
                reference["cache"],
            )
            noise = self._step_noise(window.cohorts, window.ticks_done, call)
            noise = None if noise is None else _host_to(noise, device)
            # The ladder was checked when it was built; checking again would read the device timesteps back.
            stepped, _ = self._stepper.step(v, timesteps, window.latents, noise, check=False)
            window.latents = stepped.to(dtype).contiguous()
        window.ticks_done = [done + 1 for done in window.ticks_done]
        frames = self._empty_poses().to(self._output_device)
        if window.ticks_done[0] == config.levels:
            clean = window.latents[:, :, :m].contiguous()
            real = window.real_frames[0]
            window.latents = window.latents[:, :, m:].contiguous() if len(window.cohorts) > 1 else None
            window.pose_features = window.pose_features[:, :, m:].contiguous() if len(window.cohorts) > 1 else None
            del window.cohorts[0], window.ticks_done[0], window.real_frames[0]
            frames = self._decode(clean[0].transpose(0, 1).contiguous())[:real]  # (m, C, h, w) -> (real, H, W, 3)
            frames = self._output(frames, owned=True)
            self._frames_out += real
        self._window = window
        return frames

    def _static_step(self, window: _Window, poses: torch.Tensor, real_frames: int) -> torch.Tensor:
        """A steady-state tick through `StaticTick`: same result as `_eager_step` to float32 rounding, with fixed
        buffers and shapes (capturable as a CUDA graph) and no host check."""
        config, device = self.config, self.models.device
        m, calls = config.frames_per_cohort, config.calls_per_tick
        tick = self._static_tick
        if tick is None:
            from .accel import FastPath, StaticTick

            # Numerics as in the eager tick: the models' dtype, the caller's tf32 settings, no layout change.
            fast = FastPath(tf32=None, fused_step=True, cuda_graph=self._fast_path == "graph")
            reference = self._reference
            tick = StaticTick(
                self.models, config, reference["clip_tokens"], reference["cache"], fast, decoder=self._decoder
            )
            self._static_tick, self._static_holds = tick, None
        cohort = self._next_cohort
        self._next_cohort += 1
        shape = (1, self._latent_shape[0], m, *self._latent_shape[1:])
        initial = self.noise.initial(cohort, shape)
        cohorts, done = [*window.cohorts, cohort], [*window.ticks_done, 0]
        window_shape = (1, self._latent_shape[0], len(cohorts) * m, *self._latent_shape[1:])
        step_noise = torch.stack(
            [_or_zeros(self._step_noise(cohorts, done, call), window_shape) for call in range(calls)]
        )  # (calls, 1, C, K, h, w)
        holds = (window.latents, window.pose_features, self._decoder_memory)
        if self._static_holds is None or any(a is not b for a, b in zip(holds, self._static_holds)):
            tick.load_state(window.latents, window.pose_features, self._decoder_memory)
        self._static_holds = None  # until this tick has run to the end
        tick.set_inputs(_host_to(poses, device), _host_to(initial, device), _host_to(step_noise, device))
        if tick.fast.cuda_graph and device.type == "cuda" and not tick.captured:
            tick.capture()  # once, on real inputs; every later tick replays it
        tick.run()
        # The stream's state stays immutable tensors (snapshots, rollback, state_dict); the copies stay on the device.
        window.latents, window.pose_features = tick.latents.clone(), tick.pose_features.clone()
        if self._decoder == "taesdv":
            self._decoder_memory = [tensor.clone() for tensor in tick.memory]
        window.cohorts = cohorts[1:]
        window.ticks_done = [d + 1 for d in done[1:]]
        real = window.real_frames[0]
        window.real_frames = [*window.real_frames[1:], real_frames]
        frames = self._output(tick.frames[:real], owned=False)
        self._frames_out += real
        self._window = window
        self._static_holds = (window.latents, window.pose_features, self._decoder_memory)
        self._static_ticks += 1
        return frames

    def _timesteps(self, call: int, ticks_done: list[int]) -> torch.Tensor:
        """(1, F) timesteps of UNet call `call` for cohorts that have done `ticks_done` ticks, kept on the device."""
        # Cohort k has been through ticks_done[k] ticks, so it sits at level p - 1 - ticks_done[k].
        levels = tuple(self.config.levels - 1 - done for done in ticks_done)
        key = (call, levels)
        if key not in self._device_timesteps:
            per_frame = self._ladder[call, list(levels)].repeat_interleave(self.config.frames_per_cohort)[None]
            self._device_timesteps[key] = per_frame.to(self.models.device)
        return self._device_timesteps[key]

    def _step_noise(self, cohorts: list[int], ticks_done: list[int], call: int) -> torch.Tensor | None:
        """Float32 CPU noise of UNet call `call` for the window's cohorts; None when every cohort leaves the ladder."""
        config = self.config
        m, calls = config.frames_per_cohort, config.calls_per_tick
        shape = (1, self._latent_shape[0], m, *self._latent_shape[1:])
        pieces, needed = [], False
        for cohort, done in zip(cohorts, ticks_done):
            step = done * calls + call
            timestep = self._ladder_rows[call][config.levels - 1 - done]
            if timestep - self._stepper.step_length < 0:  # leaves the ladder (ᾱ = 1): its noise is multiplied by 0
                pieces.append(torch.zeros(shape, dtype=torch.float32))
            else:
                pieces.append(self.noise.step(cohort, step, shape).to("cpu", torch.float32))
                needed = True
        return torch.cat(pieces, dim=2) if needed else None

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) clean latents -> (n, H, W, 3) float32 images in [0, 1], on the models' device."""
        if self._decoder == "taesdv":
            images, memory = self.models.fast_decoder.decode(latents, self._decoder_memory)
            self._decoder_memory = _to_device(memory, latents.device, latents.dtype)  # contiguous, like a resumed one
        else:
            images = self.models.codec.decode(latents)
        return images.clamp(0, 1).permute(0, 2, 3, 1).to(torch.float32)

    def _output(self, frames: torch.Tensor, owned: bool) -> torch.Tensor:
        """Frames to hand out, on the output device; `owned`: `frames` is not a buffer that will be reused."""
        if self.config.output_device == "device":
            return frames if owned else frames.clone()
        if frames.device.type == "cuda":  # into pinned memory without waiting; `_concat` waits once per call
            host = torch.empty(frames.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            self._outputs_ready = torch.cuda.Event()
            self._outputs_ready.record(torch.cuda.current_stream(frames.device))
            return host
        frames = frames.to("cpu", torch.float32)
        return frames if owned else frames.clone()

    # ------------------------------------------------------------------ timing
    def _clock(self, device: torch.device):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(device))
            return start
        return time.perf_counter()

    def _stop_clock(self, started, device: torch.device) -> None:
        if device.type != "cuda":
            self._count_tick_seconds(time.perf_counter() - started)
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(device))
        self._pending_timings = [*self._pending_timings, (started, end)]  # a new list: snapshots keep theirs
        if len(self._pending_timings) > 64:  # bounded: a host far ahead of the GPU waits for the oldest tick
            self._pending_timings[0][1].synchronize()

    def _settle_timings(self, wait: bool) -> None:
        """Fold finished ticks' CUDA event times into the stats (all of them, waiting if `wait`)."""
        while self._pending_timings:
            start, end = self._pending_timings[0]
            if not end.query():
                if not wait:
                    return
                end.synchronize()
            self._pending_timings = self._pending_timings[1:]
            self._count_tick_seconds(start.elapsed_time(end) / 1000)

    def _count_tick_seconds(self, elapsed: float) -> None:
        self._seconds += elapsed
        self._last_tick_ms = elapsed * 1000
        # An exponential mean keeps the figure current without keeping a history.
        self._mean_tick_ms = (
            self._last_tick_ms if self._mean_tick_ms is None else 0.9 * self._mean_tick_ms + 0.1 * self._last_tick_ms
        )

    # ------------------------------------------------------------------ saving and resuming
    def state_dict(self) -> dict:
        """Everything needed to resume bit-exactly: {"meta": JSON-able dict, "tensors": {name: tensor}}."""
        self._settle_timings(wait=True)
        tensors: dict[str, torch.Tensor] = {"pending_poses": self._pending}
        window = self._window
        if window.latents is not None:
            tensors["window_latents"] = window.latents
            tensors["window_pose_features"] = window.pose_features
        if self._last_pose is not None:
            tensors["last_pose"] = self._last_pose
        if self._reference is not None:
            tensors["reference_clip_tokens"] = self._reference["clip_tokens"]
            tensors["reference_latent"] = self._reference["latent"]
        memory_layout = _flatten_memory(self._decoder_memory, tensors)
        noise_state = self.noise.state_dict() if hasattr(self.noise, "state_dict") else None
        meta = {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "model_config": _jsonable(self.models.config.to_dict()),
            "cohorts": list(window.cohorts),
            "ticks_done": list(window.ticks_done),
            "real_frames": list(window.real_frames),
            "decoder_memory": memory_layout,
            "next_cohort": self._next_cohort,
            "frames_in": self._frames_in,
            "frames_out": self._frames_out,
            "ticks": self._ticks,
            "finished": self._finished,
            "seconds": self._seconds,
            "last_tick_ms": self._last_tick_ms,
            "mean_tick_ms": self._mean_tick_ms,
            "noise": noise_state,
        }
        return {"meta": meta, "tensors": {name: t.detach().clone() for name, t in tensors.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()` output (same networks). Checked completely before anything changes."""
        meta, tensors = _check_state(state)
        try:
            config = StreamConfig.from_dict(meta["config"])
            config.validate(self.models)
        except StreamConfigError as error:
            raise StreamStateError(f"stream state: its config does not fit these networks: {error}") from None
        if meta["model_config"] != _jsonable(self.models.config.to_dict()):
            raise StreamStateError(
                "stream state: it was saved with networks of another shape (model_config differs); "
                "load the same RAIN weights the stream was saved with"
            )
        downscale = self.models.codec.downscale
        latent_shape = (self.models.config.latent_channels, config.height // downscale, config.width // downscale)
        n = len(meta["cohorts"])
        m = config.frames_per_cohort
        expected = {"pending_poses": (None, config.height, config.width, 3)}
        if n:
            expected["window_latents"] = (1, latent_shape[0], n * m, *latent_shape[1:])
            expected["window_pose_features"] = (1, self.models.config.pose_channels, n * m, *latent_shape[1:])
        for name, shape in expected.items():
            found = tensors.get(name)
            if (
                found is None
                or found.dim() != len(shape)
                or any(e is not None and e != f for e, f in zip(shape, found.shape))
            ):
                raise StreamStateError(
                    f"stream state: tensor {name!r} expected shape {shape}, found {None if found is None else tuple(found.shape)}"
                )
        if not (len(meta["ticks_done"]) == len(meta["real_frames"]) == n <= config.levels):
            raise StreamStateError("stream state: cohort lists disagree in length or exceed the levels")
        memory = _unflatten_memory(meta["decoder_memory"], tensors)
        # Nothing can fail below except the reference UNet run, which is kept local until it succeeds.
        reference = None
        if "reference_latent" in tensors:
            device, dtype = self.models.device, self.models.dtype
            clip_tokens = tensors["reference_clip_tokens"].to(device, dtype)
            latent = tensors["reference_latent"].to(device, dtype)
            with torch.no_grad():
                reference = {
                    "clip_tokens": clip_tokens,
                    "latent": latent,
                    "cache": self.models.reference_unet(latent, clip_tokens),
                }
        self._configure(config)
        if (
            self._custom_noise is not None
            and hasattr(self._custom_noise, "load_state_dict")
            and meta["noise"] is not None
        ):
            self._custom_noise.load_state_dict(meta["noise"])
        device, dtype = self.models.device, self.models.dtype
        self._reference = reference
        self._window = _Window(
            tensors["window_latents"].to(device, dtype) if n else None,
            tensors["window_pose_features"].to(device, dtype) if n else None,
            list(meta["cohorts"]),
            list(meta["ticks_done"]),
            list(meta["real_frames"]),
        )
        self._pending = tensors["pending_poses"].to("cpu", torch.float32)
        self._last_pose = tensors["last_pose"].to("cpu", torch.float32) if "last_pose" in tensors else None
        self._decoder_memory = _to_device(memory, device, dtype)
        self._next_cohort = int(meta["next_cohort"])
        self._frames_in = int(meta["frames_in"])
        self._frames_out = int(meta["frames_out"])
        self._ticks = int(meta["ticks"])
        self._finished = bool(meta["finished"])
        self._seconds = float(meta["seconds"])
        self._last_tick_ms = meta["last_tick_ms"]
        self._mean_tick_ms = meta["mean_tick_ms"]
        self._pending_timings = []
        self._outputs_ready = None

    def save(self, path: str | os.PathLike) -> None:
        """Write the stream state to one .safetensors file (tensors + JSON metadata), atomically."""
        from safetensors.torch import save_file

        state = self.state_dict()
        path = Path(path)
        tensors = {name: t.contiguous().cpu() for name, t in state["tensors"].items()}
        metadata = {"rain_stream": json.dumps(_jsonable(state["meta"]))}
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata=metadata)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def load(self, path: str | os.PathLike) -> None:
        """Resume from a file written by `save(path)`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise StreamStateError(f"stream state file {path}: not found")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                # Fresh allocations: a tensor viewing the file buffer may be unaligned, and CPU kernels (MKL) can
                # round differently on unaligned data, which would break bit-exact resumption.
                tensors = {name: handle.get_tensor(name).clone() for name in handle.keys()}
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise StreamStateError(f"stream state file {path}: not a readable safetensors file ({error})") from None
        if "rain_stream" not in metadata:
            raise StreamStateError(
                f"stream state file {path}: no 'rain_stream' metadata; was it written by RainStream.save?"
            )
        self.load_state_dict({"meta": json.loads(metadata["rain_stream"]), "tensors": tensors})


# ---------------------------------------------------------------------- helpers


def letterbox(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale (N, H, W, 3) frames to fit inside height × width without distortion and centre them on black."""
    source_height, source_width = frames.shape[1:3]
    scale = min(height / source_height, width / source_width)
    new_height = max(1, min(height, round(source_height * scale)))
    new_width = max(1, min(width, round(source_width * scale)))
    resized = F.interpolate(
        frames.permute(0, 3, 1, 2), size=(new_height, new_width), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)
    top, left = (height - new_height) // 2, (width - new_width) // 2
    canvas = torch.zeros(frames.shape[0], 3, height, width, dtype=frames.dtype)
    canvas[:, :, top : top + new_height, left : left + new_width] = resized
    return canvas.permute(0, 2, 3, 1).contiguous()


def _as_frames(
    value, name: str, allow_missing: bool, blank_size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, list[bool]]:
    """Validate and convert images to float32 CPU (N, H, W, 3) in [0, 1]; `None` items (no pose) become zeros
    (of `blank_size` when every item is None)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
        present = [item for item in items if item is not None]
        if not present:
            if items and allow_missing and blank_size is not None:  # no pose at all in this chunk
                return torch.zeros(len(items), *blank_size, 3), [True] * len(items)
            return torch.zeros(0, 0, 0, 3), []
        if not allow_missing and len(present) != len(items):
            raise PoseInputError(f"{name}: expected an image, found None")
        converted = [_as_frames(item, f"{name}[{i}]", False)[0] for i, item in enumerate(items) if item is not None]
        shapes = {tuple(frame.shape[1:]) for frame in converted}
        if len(shapes) > 1 or any(frame.shape[0] != 1 for frame in converted):
            raise PoseInputError(f"{name}: expected frames of one size, found sizes {sorted(shapes)}")
        blank = torch.zeros_like(converted[0][0])
        frames, iterator = [], iter(converted)
        for item in items:
            frames.append(blank if item is None else next(iterator)[0])
        return torch.stack(frames), [item is None for item in items]
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            value = value.astype(np.float32) / 255.0
        elif not np.issubdtype(value.dtype, np.floating):
            raise PoseInputError(f"{name}: expected float images in [0, 1] (or uint8), found dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise PoseInputError(f"{name}: expected a tensor or array of shape (N, H, W, 3), found {type(value).__name__}")
    if value.dtype == torch.uint8:
        value = value.float() / 255.0
    elif not value.is_floating_point():
        raise PoseInputError(f"{name}: expected float images in [0, 1] (or uint8), found dtype {value.dtype}")
    if value.dim() == 3:
        value = value[None]
    if value.dim() != 4:
        raise PoseInputError(f"{name}: expected shape (N, H, W, 3) or (H, W, 3), found {tuple(value.shape)}")
    if value.shape[-1] != 3:
        hint = ""
        if value.shape[1] == 3:
            hint = "; it looks channel-first: use images.permute(0, 2, 3, 1)"
        elif value.shape[-1] == 4:
            hint = "; drop the alpha channel: images[..., :3]"
        elif value.shape[-1] == 1:
            hint = "; repeat the grey channel: images.expand(-1, -1, -1, 3)"
        raise PoseInputError(
            f"{name}: expected 3 colour channels last (N, H, W, 3), found shape {tuple(value.shape)}{hint}"
        )
    value = value.detach().to("cpu", torch.float32)
    if value.shape[0] == 0:
        return value, []
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).flatten(1).any(1).nonzero()[0])
        raise PoseInputError(
            f"{name}: found NaN or Inf values (first in frame {bad}); expected finite values in [0, 1]"
        )
    low, high = value.min().item(), value.max().item()
    if low < 0 or high > 1:
        hint = "; divide 0–255 images by 255" if high > 1 else ""
        raise PoseInputError(f"{name}: expected values in [0, 1], found {low:.3g}…{high:.3g}{hint}")
    return value, [False] * value.shape[0]


def _host_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; a CPU tensor goes to CUDA through pinned memory, without blocking the host."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _or_zeros(tensor: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float32) if tensor is None else tensor


def _flatten_memory(memory, tensors: dict) -> Any:
    """Store the decoder memory's tensors under decoder_memory.* and return its JSON-able layout."""
    if memory is None:
        return None
    if isinstance(memory, torch.Tensor):
        name = f"decoder_memory.{len([k for k in tensors if k.startswith('decoder_memory.')])}"
        tensors[name] = memory
        return {"tensor": name}
    if isinstance(memory, (list, tuple)):
        return {"list": [_flatten_memory(item, tensors) for item in memory]}
    if isinstance(memory, dict):
        return {"dict": {str(key): _flatten_memory(item, tensors) for key, item in memory.items()}}
    raise StreamStateError(f"decoder memory of type {type(memory).__name__} cannot be saved")


def _unflatten_memory(layout, tensors: dict):
    if layout is None:
        return None
    if not isinstance(layout, dict) or len(layout) != 1:
        raise StreamStateError(f"stream state: malformed decoder memory layout {layout!r}")
    ((kind, content),) = layout.items()
    if kind == "tensor":
        if content not in tensors:
            raise StreamStateError(f"stream state: decoder memory tensor {content!r} is missing")
        return tensors[content]
    if kind == "list":
        return [_unflatten_memory(item, tensors) for item in content]
    if kind == "dict":
        return {key: _unflatten_memory(item, tensors) for key, item in content.items()}
    raise StreamStateError(f"stream state: unknown decoder memory entry {kind!r}")


def _to_device(memory, device, dtype):
    if memory is None:
        return None
    if isinstance(memory, torch.Tensor):
        return memory.to(device, dtype).contiguous()
    if isinstance(memory, (list, tuple)):
        return [_to_device(item, device, dtype) for item in memory]
    return {key: _to_device(item, device, dtype) for key, item in memory.items()}


def _jsonable(value):
    """What JSON round-trips to: tuples become lists (so saved and live configs compare equal)."""
    return json.loads(json.dumps(value))


def _check_state(state) -> tuple[dict, dict]:
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("meta"), dict)
        or not isinstance(state.get("tensors"), dict)
    ):
        raise StreamStateError(
            "stream state: expected the dict returned by RainStream.state_dict() ({'meta', 'tensors'})"
        )
    meta, tensors = state["meta"], state["tensors"]
    if meta.get("format") != STATE_FORMAT:
        raise StreamStateError(f"stream state: expected format {STATE_FORMAT!r}, found {meta.get('format')!r}")
    required = (
        "config",
        "model_config",
        "cohorts",
        "ticks_done",
        "real_frames",
        "next_cohort",
        "frames_in",
        "frames_out",
    )
    missing = [key for key in required if key not in meta]
    if missing:
        raise StreamStateError(f"stream state: missing entries {missing}")
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise StreamStateError("stream state: every entry of 'tensors' must be a torch.Tensor")
    return meta, tensors


__all__ = [
    "NoiseSource",
    "PoseInputError",
    "RainStream",
    "SeededNoise",
    "StreamConfig",
    "StreamConfigError",
    "StreamError",
    "StreamStateError",
    "letterbox",
]
