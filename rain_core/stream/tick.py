"""THE tick: one UNet pass over the window (`steps // levels` calls, one fused LCM step each), the entering cohort's
pose features and noise in, the oldest cohort decoded and out. Every tick of a stream — warm-up, steady state,
flush — runs this code; only the `Occupancy` (which levels are in flight) changes.

Every tensor lives in a fixed buffer, the timesteps and LCM coefficients are precomputed on the device and
nothing is read back to the host, so a steady-state tick can be captured once as a CUDA graph and replayed
(`capture()`); on the CPU the same code runs eagerly. Benchmarks time the same object stage by stage.

Buffers (model dtype unless noted), K = levels·m frames, m = frames_per_cohort, slot l = frames [l·m, (l+1)·m):
  latents (1, C, K − m, h, w), pose_features (1, Cp, K − m, h, w): the cohorts in flight between ticks, each in the
      slot of the level it works at in the next tick (the entering cohort works at level p − 1 and is not stored);
  memory: TAESDV's MemBlock inputs of the last decoded frame (zeros = stream start);
  inputs poses (1, 3, m, H, W), initial_noise (1, C, m, h, w) and step_noise (calls, 1, C, K, h, w), float32,
      laid out by `rain_core.stream.noise.TickNoise` (noise="device" draws them with torch.randn: benchmarks);
  output frames (m, H, W, 3) float32 in [0, 1] (written when the cohort at level 0 leaves).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..cpu import background_compile_allowed
from ..scheduler import FusedLCMStep, LCMStepper, ladder
from .accel import CudaGraphed, FastPath, attention_backend, tf32_matmuls
from .compiled import AUTO_MAX_BYTES, CompiledUNet, SteadyPackage, compiler_problem, package_path, state_bytes
from .window import Occupancy


class Tick:
    """The one tick of a RAIN stream, on fixed buffers (see the module docstring)."""

    STAGES = ("guider", "unet", "step", "decode")

    def __init__(
        self,
        models,
        config,
        clip_tokens: torch.Tensor,
        reference,
        fast: FastPath | None = None,
        decoder: str = "taesdv",
        noise: str = "given",
    ):
        if decoder not in ("taesdv", "vae"):
            raise ValueError(f"Tick: decoder must be 'taesdv' or 'vae', found {decoder!r}")
        if decoder == "taesdv" and models.fast_decoder is None:
            raise ValueError("Tick: decoder 'taesdv' asked for, but these networks have no TAESDV")
        if noise not in ("given", "device"):
            raise ValueError(f"Tick: noise must be 'given' or 'device', found {noise!r}")
        self.models, self.config = models, config
        self.fast = fast or FastPath()
        self.decoder, self.noise_mode = decoder, noise
        device, dtype = models.device, models.dtype
        self.device, self.dtype = device, dtype
        m, window, calls = config.frames_per_cohort, config.window, config.calls_per_tick
        self.m, self.levels, self.window, self.calls = m, config.levels, window, calls
        downscale = models.codec.downscale
        channels, h, w = models.config.latent_channels, config.height // downscale, config.width // downscale
        self.latent_shape = (channels, h, w)

        self.clip_tokens = clip_tokens.to(device, dtype)
        self.reference = reference.to(device, dtype) if reference is not None else None
        if self.reference is not None and self.fast.reference_kv_cache:
            with torch.no_grad():  # now, not on first use: a compiled or captured tick must not change the cache
                models.denoising_unet.reference_kv(self.reference)
        self.guidance = models.guidance_embedding(float(config.guidance))
        # slot k of the window sits at level k; row j of the ladder is call j of the tick
        by_level = ladder(config.levels, config.steps).repeat_interleave(m, dim=1)  # (calls, K)
        self.timesteps = by_level[:, None, :].to(device)  # (calls, 1, K): one (B, F) tensor per call
        self.stepper = LCMStepper(config.steps, device)
        self.fused_step = FusedLCMStep(self.stepper, by_level, device)

        self.latents = torch.zeros(1, channels, window - m, h, w, device=device, dtype=dtype)
        self.pose_features = torch.zeros(1, models.config.pose_channels, window - m, h, w, device=device, dtype=dtype)
        self.poses = torch.zeros(1, 3, m, config.height, config.width, device=device, dtype=dtype)
        self.initial_noise = torch.zeros(1, channels, m, h, w, device=device)
        self.step_noise = torch.zeros(calls, 1, channels, window, h, w, device=device)
        self.frames = torch.zeros(m, config.height, config.width, 3, device=device)
        self.memory = self._zero_memory() if decoder == "taesdv" else []

        self.steady = Occupancy.steady(config.levels)
        self.occupancy = self.steady  # what the stages work on
        self._unet = self._unet_eager
        self._graph = None
        self._stage_graphs = None
        # intermediate results between stages (kept so stages can run, and be timed, one at a time)
        self._features = self._z = self._v = None

    # -------------------------------------------------------------- state in and out
    def _zero_memory(self) -> list[torch.Tensor]:
        with torch.no_grad():
            probe = torch.zeros(1, *self.latent_shape, device=self.device, dtype=self.dtype)
            _, memory = self.models.fast_decoder.decode(probe, None)
        return [torch.zeros_like(tensor) for tensor in memory]

    def load_state(self, latents, pose_features, memory=None, lowest_level: int = 0) -> None:
        """Copy the cohorts in flight into the buffers: latents (1, C, n·m, h, w) and pose_features
        (1, Cp, n·m, h, w) of n cohorts (None: none) whose oldest works at `lowest_level` in the next tick;
        memory: the TAESDV memory list (None: stream start)."""
        for name, buffer, value in (
            ("latents", self.latents, latents),
            ("pose_features", self.pose_features, pose_features),
        ):
            if value is None:
                continue
            start = lowest_level * self.m
            if value.dim() != 5 or tuple(value.shape[:2]) != tuple(buffer.shape[:2]) or value.shape[3:] != buffer.shape[3:] or start + value.shape[2] > buffer.shape[2]:
                raise ValueError(
                    f"Tick.load_state: {name} expected shape {tuple(buffer.shape[:2])} + (frames ≤ "
                    f"{buffer.shape[2] - start},) + {tuple(buffer.shape[3:])} from level {lowest_level}, "
                    f"found {tuple(value.shape)}"
                )
            buffer[:, :, start : start + value.shape[2]].copy_(value)
        if self.decoder == "taesdv":
            if memory is None:
                for buffer in self.memory:
                    buffer.zero_()
            else:
                if len(memory) != len(self.memory):
                    raise ValueError(f"Tick.load_state: memory expected {len(self.memory)} tensors, found {len(memory)}")
                for buffer, value in zip(self.memory, memory):
                    buffer.copy_(value)

    def state(self) -> dict[str, object]:
        """Copies of the buffers that persist between ticks."""
        return {
            "latents": self.latents.clone(),
            "pose_features": self.pose_features.clone(),
            "memory": [tensor.clone() for tensor in self.memory],
        }

    @contextlib.contextmanager
    def preserved_state(self):
        """Run the block (e.g. graph warm-up) and put the persistent buffers back as they were."""
        saved = self.state()
        try:
            yield
        finally:
            self.load_state(saved["latents"], saved["pose_features"], saved["memory"] if self.memory else None)

    def set_inputs(self, poses=None, initial_noise=None, step_noise=None) -> None:
        """poses: (m, H, W, 3) in [0, 1] (the API layout) or (1, 3, m, H, W); noise as the buffers (noise="given")."""
        if poses is not None:
            if poses.dim() == 4:
                poses = poses.permute(3, 0, 1, 2)[None]
            self.poses.copy_(poses, non_blocking=True)
        if initial_noise is not None:
            self.initial_noise.copy_(initial_noise, non_blocking=True)
        if step_noise is not None:
            self.step_noise.copy_(step_noise.reshape(self.step_noise.shape), non_blocking=True)

    # -------------------------------------------------------------- stages
    def _unet_eager(self, sample: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.models.denoising_unet(
            sample,
            timesteps,
            self.clip_tokens,
            features,
            self.guidance,
            self.reference,
            use_reference_kv_cache=self.fast.reference_kv_cache,
        )

    def stage_guider(self) -> None:
        """The window's pose features and latents: the carried ones, plus the entering cohort's."""
        occupancy, m = self.occupancy, self.m
        window = occupancy.frames(m)
        if not occupancy.entering:  # flush: a copy, since the shift at the end writes into the same buffers
            self._features = self.pose_features[:, :, window].clone()
            self._z = self.latents[:, :, window].clone()
            return
        carried = slice(window.start, window.stop - m)
        new = self.models.pose_guider(self.poses)
        self._features = torch.cat([self.pose_features[:, :, carried], new], dim=2)
        if self.noise_mode == "device":
            self.initial_noise.normal_()
            self.step_noise.normal_()
        self._z = torch.cat([self.latents[:, :, carried], self.initial_noise.to(self.dtype)], dim=2)

    def stage_unet(self, call: int = 0) -> None:
        window = self.occupancy.frames(self.m)
        self._v = self._unet(self._z, self.timesteps[call][:, window], self._features)

    def stage_step(self, call: int = 0) -> None:
        window = self.occupancy.frames(self.m)
        noise = self.step_noise[call][:, :, window]
        if self.fast.fused_step:
            stepped = self.fused_step(call, self._z, self._v, noise, window)
        else:
            stepped, _ = self.stepper.step(self._v, self.timesteps[call][:, window], self._z, noise)
        self._z = stepped.to(self.dtype)

    def stage_decode(self) -> None:
        """Decode the cohort at level 0 (now clean) into `frames`, and move every other cohort one slot down."""
        occupancy, m = self.occupancy, self.m
        keep = m if occupancy.leaving else 0  # frames of the window that stay
        if occupancy.leaving:
            clean = self._z[0, :, :m].transpose(0, 1)  # (m, C, h, w)
            if self.decoder == "taesdv":
                images, memory = self.models.fast_decoder.decode(clean, self.memory)
                for buffer, value in zip(self.memory, memory):
                    buffer.copy_(value)
            else:
                images = self.models.codec.decode(clean)
            self.frames.copy_(images.clamp(0, 1).permute(0, 2, 3, 1))
        start = max(occupancy.lowest - 1, 0) * m
        stop = start + occupancy.count * m - keep
        self.latents[:, :, start:stop].copy_(self._z[:, :, keep:])
        self.pose_features[:, :, start:stop].copy_(self._features[:, :, keep:])

    def _body(self) -> torch.Tensor:
        self.stage_guider()
        for call in range(self.calls):
            self.stage_unet(call)
            self.stage_step(call)
        self.stage_decode()
        return self.frames

    def stage_functions(self) -> dict[str, Callable[[], None]]:
        """The tick split into its stages, for timing each. Run in STAGES order they equal one tick when there
        is one UNet call per tick; with more calls each stage repeats per call (same cost, other order)."""
        calls = range(self.calls)
        return {
            "guider": self.stage_guider,
            "unet": lambda: [self.stage_unet(c) for c in calls][-1],
            "step": lambda: [self.stage_step(c) for c in calls][-1],
            "decode": self.stage_decode,
        }

    # -------------------------------------------------------------- options and running
    def _context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if self.fast.attention != "auto":  # "auto" changes nothing: skip the context (a tick's only host overhead)
            stack.enter_context(attention_backend(self.fast.attention))
        if self.device.type == "cuda" and self.fast.tf32 is not None:
            stack.enter_context(tf32_matmuls(self.fast.tf32))
        return stack

    def compile_unet(self, mode: str | None = None, backend: str = "inductor") -> None:
        """torch.compile the UNet call (static shapes per occupancy: dynamic=False). The first run compiles."""
        options = {} if mode in (None, "default") else {"mode": mode}
        self._unet = torch.compile(self._unet_eager, backend=backend, dynamic=False, fullgraph=False, **options)
        self._graph = self._stage_graphs = None

    def compile_steady_unet(self, mode: str | None = None, cached_only: bool = False, background: bool = False):
        """The steady-state UNet call compiled, every other occupancy eager (`rain_core.stream.compiled.CompiledUNet`:
        persistent cache, eager fallback after one log line when there is no compiler or compiling fails). The
        call is compiled ahead of time into a package on disk (loaded in a second at the next start) on the CPU
        when the reference K/V cache is on (the package takes the K/V as inputs); otherwise, or with a `mode`,
        through torch.compile. `cached_only`: only if this call's package is already on disk (else nothing changes and
        None is returned); it is then never compiled here. `background` (with `cached_only`): a missing package is
        built by a low-priority child process while the steady calls run eagerly, and used once it is on disk (the
        returned `CompiledUNet` has `background` set; `RAIN_BACKGROUND_COMPILE=0` turns this off)."""
        if cached_only and (
            mode is not None
            or compiler_problem() is not None
            or state_bytes(self.models.denoising_unet) > AUTO_MAX_BYTES  # a full-size UNet: no live CPU use, no hashing
        ):
            return None
        package = None
        if self.device.type == "cpu" and (self.reference is None or self.fast.reference_kv_cache):
            with torch.no_grad():
                kv = self.models.denoising_unet.reference_kv(self.reference) if self.reference is not None else None
            package = SteadyPackage(self.models.denoising_unet, self.clip_tokens, self.guidance, kv)
        if cached_only:  # only here is the key worth computing before the first steady call
            if package is None:
                return None
            missing = not package_path(package, *self._steady_inputs()).exists()
            background = background and missing and background_compile_allowed()
            if missing and not background:
                return None
        else:
            background = False
        self._unet = CompiledUNet(self._unet_eager, lambda: self.occupancy == self.steady, mode, package,
                                  compile_missing=not cached_only, background=background)
        self._graph = self._stage_graphs = None
        return self._unet

    def _steady_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tensors shaped like the steady-state UNet call's (sample, timesteps, features), for its package key."""
        channels, h, w = self.latent_shape
        sample = torch.empty(1, channels, self.window, h, w, device=self.device, dtype=self.dtype)
        features = torch.empty(1, self.pose_features.shape[1], self.window, h, w, device=self.device, dtype=self.dtype)
        return sample, self.timesteps[0][:, self.steady.frames(self.m)], features

    def capture(self, split: bool = False) -> None:
        """Capture the steady-state tick as one CUDA graph (and, with split=True, each stage as its own graph
        too, sharing one memory pool, for per-stage timing). No-op off CUDA. State is left as it was."""
        if self.device.type != "cuda":
            return
        self.occupancy = self.steady
        with self._context():
            self._graph = CudaGraphed(self._body, self.device, around_warmup=self.preserved_state)
            self._graph.capture()
            if split:
                pool = torch.cuda.graph_pool_handle()
                self._stage_graphs = {
                    name: CudaGraphed(fn, self.device, pool=pool, around_warmup=self.preserved_state)
                    for name, fn in self.stage_functions().items()
                }
                with self.preserved_state():
                    for graph in self._stage_graphs.values():
                        graph.capture()
                        graph.graph.replay()  # real values for the next stage's warm-up (capture computes nothing)

    @property
    def captured(self) -> bool:
        """True once the steady-state tick is a CUDA graph (`capture()` on CUDA); `run()` then replays it."""
        return self._graph is not None

    def run(self, occupancy: Occupancy | None = None) -> torch.Tensor:
        """One tick on `occupancy` (default: the steady state); returns `frames` (the same buffer every time: copy
        what you keep; written only when the tick's occupancy is `leaving`)."""
        self.occupancy = occupancy or self.steady
        if self._graph is not None and self.occupancy == self.steady:
            self._graph()
            return self.frames
        with self._context():
            return self._body()

    def run_stage(self, name: str) -> None:
        """Run one stage of a steady-state tick (graph replay when split graphs were captured); stages must run
        in STAGES order."""
        self.occupancy = self.steady
        if self._stage_graphs is not None:
            self._stage_graphs[name]()
            return
        with self._context():
            self.stage_functions()[name]()


__all__ = ["Tick"]
