"""`RainStream`: the endless RAIN stream over one set of networks — reference, push, flush, rollback, stats.

A stream holds up to `levels` cohorts of `frames_per_cohort` latent frames, each cohort at its own noise level
(rain-method.md §2). Every time a cohort's worth of pose frames has arrived, one *tick* runs: the new cohort enters
as pure noise at t = 999, the whole window goes through the denoising UNet `steps // levels` times with one LCM
step each, and the oldest cohort, now clean, is decoded and leaves. Warm-up (the noisiest levels fill first) and
flush (no new cohorts, the rest keeps stepping) follow the authors' offline `Pose2VideoPipelineLCM`, so pushing a
whole clip and flushing renders what their pipeline renders for the same weights and noise. Every tick runs the
one `Tick` (`tick.py`); this module decides which levels it works on and keeps the stream's state.

Chunk invariance comes from two choices: a tick is triggered only by complete cohorts, and the noise of a cohort
is a pure function of (seed, cohort number, step number), never of how the frames were pushed. Nothing kept
between ticks grows with the number of frames streamed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..io.inputs import InputError, as_frames, fit_frames
from ..scheduler import LCMStepper, ladder
from .accel import FastPath
from .compiled import auto_fast_path
from .config import PoseInputError, StreamConfig, StreamStateError
from .noise import NoiseSource, SeededNoise, SharedNoise, TickNoise
from .state import StreamStateMixin
from .tick import Tick
from .timing import TickClock
from .window import Window


class RainStream(StreamStateMixin):
    """An endless RAIN stream over one set of networks.

    >>> stream = RainStream(models, StreamConfig(height=512, width=512))
    >>> stream.set_reference(reference)          # (H, W, 3) or (1, H, W, 3), float in [0, 1]
    >>> frames = stream.push(poses)              # (N, H, W, 3) pose renders -> (n, H, W, 3) finished frames
    >>> frames = stream.flush()                  # end of input: the frames still in flight

    Every call validates its input before touching the stream: on any error the stream is exactly
    as it was before the call.
    """

    def __init__(self, models, config: StreamConfig | None = None, noise: NoiseSource | None = None, fast=None):
        """models: `RainModels`; noise: where the randomness comes from (default `SeededNoise(config.seed)`);
        fast: the tick's speed options (`rain_core.stream.accel.FastPath`); default: the models' dtype and layout, the
        caller's tf32 settings, the fused LCM step, and the CUDA graph as `config.fast_path` says. Its `dtype`
        and `channels_last` are not applied to the networks here: convert them first."""
        config = (config or StreamConfig()).for_models(models)  # a size of 0 is the model's own
        config.validate(models)
        self.models = models
        self._custom_noise = noise
        self._fast = fast
        self._configure(config)
        self._reference: dict[str, Any] | None = None
        self._clear_stream()

    # ------------------------------------------------------------------ configuration
    def _configure(self, config: StreamConfig) -> None:
        self.config = dataclasses.replace(config)
        if self._custom_noise is not None:
            self.noise = self._custom_noise
        else:
            self.noise = (SharedNoise if config.noise == "shared" else SeededNoise)(config.seed)
        steps = LCMStepper(config.steps)
        decoder = config.decoder
        if decoder == "auto":
            decoder = "taesdv" if self.models.fast_decoder is not None else "vae"
        self._decoder = decoder
        downscale = self.models.codec.downscale
        self._latent_shape = (self.models.config.latent_channels, config.height // downscale, config.width // downscale)
        rows = ladder(config.levels, config.steps).tolist()  # plain ints: deciding which cohorts need noise reads no tensor
        self._tick_noise = TickNoise(rows, steps.step_length, config.frames_per_cohort, self._latent_shape)
        fast = config.fast_path
        if fast == "auto":
            fast = "graph" if self.models.device.type == "cuda" else auto_fast_path(self.models.device)
        self._fast_path = fast
        self._drop_tick()

    def _drop_tick(self) -> None:
        """Forget the tick (built again on the next tick): the reference or the config changed."""
        self._tick_object: Tick | None = None
        self._tick_holds = None  # the (latents, pose_features, memory) objects the tick's buffers equal

    def _clear_stream(self) -> None:
        self._window = Window()
        self._pending = self._empty_poses()  # poses of the cohort being filled, (k < m, H, W, 3) float32 CPU
        self._last_pose = None  # (H, W, 3) float32 CPU: what "hold" repeats
        self._decoder_memory = None
        self._next_cohort = 0
        self._frames_in = 0
        self._frames_out = 0
        self._ticks = 0
        self._finished = False
        self._clock = TickClock()
        self._graph_ticks = 0
        self._outputs_ready = None  # CUDA event after the last non-blocking copy of frames to the host
        self._tick_holds = None

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
        image = self._frames(image, "reference image", allow_missing=False)[0]
        if image.shape[0] != 1:
            raise PoseInputError(f"reference image: expected one image, found a batch of {image.shape[0]}")
        model_size = self._fit(image, "reference image")
        device, dtype = self.models.device, self.models.dtype
        with torch.no_grad(), self.models.reference_networks():
            clip_tokens = self.models.image_encoder.encode(image.to(device, dtype))
            latent = self.models.codec.encode(model_size.permute(0, 3, 1, 2).to(device, dtype))
            # Contiguous layouts everywhere: CPU kernels pick algorithms (and rounding) by memory layout, and a
            # resumed stream (tensors read back contiguous) must compute exactly what the live one did.
            self._install_reference(clip_tokens.contiguous(), latent.contiguous())

    def _install_reference(self, clip_tokens: torch.Tensor, latent: torch.Tensor) -> None:
        with torch.no_grad(), self.models.reference_networks():  # the reference part may be released after
            cache = self.models.reference_unet(latent, clip_tokens)
        self._reference = {"clip_tokens": clip_tokens, "latent": latent, "cache": cache}
        self._drop_tick()

    def push(self, poses) -> torch.Tensor:
        """Feed pose frames ((N, H, W, 3) float in [0, 1], or a list of (H, W, 3) frames / None for "no pose").

        Returns the frames that finished, (n, height, width, 3) float32 on the CPU; n is a multiple of
        frames_per_cohort and is 0 during warm-up.
        """
        if self._finished:
            raise StreamStateError("push: this stream was flushed; call reset() to start a new one")
        if self._reference is None:
            raise StreamStateError("push: no reference yet; call set_reference(image) first")
        frames, missing = self._frames(poses, "poses", True, (self.config.height, self.config.width))
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
        graph_ticks counts the ticks replayed from a CUDA graph since this object was made."""
        clock = self._clock.settled()
        return {
            "frames_in": self._frames_in,
            "frames_out": self._frames_out,
            "ticks": self._ticks,
            "frames_in_flight": sum(self._window.real_frames) + self._pending.shape[0],
            # A frame leaves when the pose frames up to window - 1 after its own have arrived (+ compute).
            "latency_frames": self.config.window - 1,
            "window": self.config.window,
            "unet_calls_per_tick": self.config.calls_per_tick,
            "ms_per_tick": clock.last_ms,
            "mean_ms_per_tick": clock.mean_ms,
            "fps": self._frames_out / clock.seconds if clock.seconds > 0 else None,
            "decoder": self._decoder,
            "fast_path": self._current_fast_path(),
            "graph_ticks": self._graph_ticks,
        }

    # ------------------------------------------------------------------ input preparation
    @staticmethod
    def _frames(value, name: str, allow_missing: bool, blank_size=None):
        try:
            return as_frames(value, name, allow_missing, blank_size)
        except InputError as error:
            raise PoseInputError(str(error)) from None

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
        return fit_frames(frames, height, width, self.config.resize)

    # ------------------------------------------------------------------ transactions
    # Everything a push or flush may change; tensors are never modified in place, so keeping references is a
    # snapshot (the window and the clock are copied).
    _TRANSACTION_FIELDS = ("_pending", "_last_pose", "_decoder_memory", "_next_cohort", "_frames_in", "_frames_out",
                           "_ticks", "_finished", "_graph_ticks")

    def _transaction(self, work, *args) -> torch.Tensor:
        """Run `work`; on any exception put every piece of stream state back as it was."""
        window, clock = self._window.copy(), self._clock.copy()
        snapshot = {name: getattr(self, name) for name in self._TRANSACTION_FIELDS}
        try:
            return work(*args)
        except BaseException:
            self._window, self._clock = window, clock
            for name, value in snapshot.items():
                setattr(self, name, value)
            self._tick_holds = None  # a failed tick may have left the tick's buffers half-written
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
                outputs.append(self._run_tick(poses, m))
        return self._concat(outputs)

    def _flush(self) -> torch.Tensor:
        outputs = []
        if self._pending.shape[0]:
            real = self._pending.shape[0]
            padding = self._pending[-1:].expand(self.config.frames_per_cohort - real, -1, -1, -1)
            poses, self._pending = torch.cat([self._pending, padding]), self._empty_poses()
            outputs.append(self._run_tick(poses, real))
        while self._window.cohorts:
            outputs.append(self._run_tick(None, 0))
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

    def _current_fast_path(self) -> str:
        """`_fast_path`, or "compile" once a compiled tick built in the background has taken over ("auto" on a CPU)."""
        unet = getattr(self._tick_object, "_unet", None)
        if self._fast_path == "eager" and getattr(unet, "background", False) and unet.ready:
            return "compile"
        return self._fast_path

    # ------------------------------------------------------------------ the tick
    def _tick(self) -> Tick:
        """The one tick on this stream's reference, built on first use. Numerics as the models are: their dtype,
        the caller's tf32 settings, no layout change; the fused LCM step."""
        if self._tick_object is None:
            reference = self._reference
            fast = self._fast or FastPath(tf32=None, fused_step=True)
            fast = fast.replace(cuda_graph=self._fast_path == "graph")
            self._tick_object = Tick(
                self.models, self.config, reference["clip_tokens"], reference["cache"], fast, decoder=self._decoder
            )
            if fast.compile:  # one compiled graph per window occupancy (warm-up and flush shapes too), cached
                self._tick_object.compile_unet(fast.compile)
            elif self._fast_path == "compile":
                self._tick_object.compile_steady_unet()
            elif self._fast_path == "eager" and self.config.fast_path == "auto" and self.models.device.type == "cpu":
                unet = self._tick_object.compile_steady_unet(cached_only=True, background=True)
                if unet is not None and not unet.background:
                    self._fast_path = "compile"  # this CPU holds the compiled tick already: it loads in about a second
            self._tick_holds = None
        return self._tick_object

    def _run_tick(self, poses: torch.Tensor | None, real_frames: int) -> torch.Tensor:
        """One tick: a new cohort enters (unless `poses` is None: flush), every cohort takes its LCM steps, the
        oldest leaves when it is clean.

        Nothing in here reads a device value back to the host: which levels are occupied is plain Python, noise is
        drawn on the CPU and sent ahead, and frames are copied back without waiting (`_concat` waits once)."""
        device, m = self.models.device, self.config.frames_per_cohort
        entering = poses is not None
        window = self._window
        occupancy = window.occupancy(self.config.levels, entering)
        cohort = self._next_cohort if entering else None
        cohorts = [*window.cohorts, cohort] if entering else list(window.cohorts)
        self._clock.settle(wait=False)
        started = self._clock.start(device)
        initial, step_noise = self._tick_noise.draw(self.noise, cohorts, occupancy.lowest, entering)
        tick = self._tick()
        holds = (window.latents, window.pose_features, self._decoder_memory)
        if self._tick_holds is None or any(a is not b for a, b in zip(holds, self._tick_holds)):
            lowest = window.next_level(self.config.levels) if window.cohorts else 0
            tick.load_state(window.latents, window.pose_features, self._decoder_memory, lowest_level=lowest)
        self._tick_holds = None  # until this tick has run to the end
        tick.set_inputs(
            _host_to(poses, device) if entering else None,
            _host_to(initial, device) if entering else None,
            _host_to(step_noise, device),
        )
        steady = occupancy == tick.steady
        if steady and tick.fast.cuda_graph and device.type == "cuda" and not tick.captured:
            tick.capture()  # once, on real inputs; every later steady-state tick replays it
        tick.run(occupancy)
        self._graph_ticks += int(steady and tick.captured)

        after, leaving = window.after_tick(occupancy, cohort, real_frames)
        if entering:
            self._next_cohort += 1
        frames = self._empty_poses().to(self._output_device)
        if occupancy.leaving:
            frames = self._output(tick.frames[:leaving])
            self._frames_out += leaving
            if self._decoder == "taesdv":
                self._decoder_memory = [tensor.clone() for tensor in tick.memory]
        if after.cohorts:  # the stream's state stays immutable tensors (snapshots, rollback, state_dict)
            lowest = after.next_level(self.config.levels)
            kept = slice(lowest * m, (lowest + len(after.cohorts)) * m)
            after.latents = tick.latents[:, :, kept].clone()
            after.pose_features = tick.pose_features[:, :, kept].clone()
        self._window = after
        self._tick_holds = (after.latents, after.pose_features, self._decoder_memory)
        self._ticks += 1
        self._clock.stop(started, device)
        return frames

    def _output(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (a view of the tick's buffer) to hand out, copied to the output device."""
        if self.config.output_device == "device":
            return frames.clone()
        if frames.device.type == "cuda":  # into pinned memory without waiting; `_concat` waits once per call
            host = torch.empty(frames.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            self._outputs_ready = torch.cuda.Event()
            self._outputs_ready.record(torch.cuda.current_stream(frames.device))
            return host
        return frames.to("cpu", torch.float32).clone()


def _host_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; a CPU tensor goes to CUDA through pinned memory, without blocking the host."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


__all__ = ["RainStream"]
