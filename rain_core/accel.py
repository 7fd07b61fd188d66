"""Fast-path helpers for the RAIN tick: attention kernels, memory layout, precision, a fused LCM step, a
static-shape steady-state tick and its CUDA-graph capture, and counters for FLOPs, bytes and host syncs.

Everything here is correct on the CPU: options that only pay on CUDA (graphs, flash attention, tf32) turn
into no-ops there, so the same code path is tested on CPU and timed on a GPU (`bench/gpu_stream.py`).

The steady state of a stream is the part worth capturing: once the window is full every tick has the same
shapes (p·m frames, the same ladder position per cohort), so `StaticTick` keeps the window in fixed buffers
and runs pose guider → UNet → LCM step → decode → shift with no host round trip. Warm-up and flush keep
running eagerly in `RainStream`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .scheduler import LCMStepper, alphas_cumprod, ladder

ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
# aten ops that read a device value back to the host (a sync on CUDA) or whose output size depends on values
SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "is_nonzero", "equal", "item")


# ---------------------------------------------------------------------- choices


@dataclass
class FastPath:
    """Which speed-ups a tick uses. `for_device` picks the fastest safe set for a device.

    dtype: model precision (None: keep the models' dtype). attention: SDPA backend ("auto" lets PyTorch choose).
    tf32: tensor-core float32 matmuls/convs on CUDA (None: leave torch's global flags as the caller set them).
    channels_last: NHWC convolutions.
    reference_kv_cache: project the reference tokens once (else every call). fused_step: one fused per-frame
    LCM update with precomputed coefficients (else `LCMStepper.step`, which checks its timesteps on the host).
    compile: None or a torch.compile mode for the UNet ("default", "max-autotune-no-cudagraphs", ...).
    cuda_graph: capture the whole steady-state tick once and replay it.
    """

    dtype: torch.dtype | None = None
    attention: str = "auto"
    tf32: bool | None = False
    channels_last: bool = False
    reference_kv_cache: bool = True
    fused_step: bool = True
    compile: str | None = None
    cuda_graph: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"FastPath.attention: expected one of {ATTENTION_BACKENDS}, found {self.attention!r}")

    @classmethod
    def for_device(cls, device: torch.device | str) -> FastPath:
        """CUDA: bf16 (fp16 where bf16 is missing), tf32, channels_last, fused step, CUDA graph.
        CPU (and anything else): the models' dtype, nothing that changes numerics beyond the fused step's rounding."""
        device = torch.device(device)
        if device.type == "cuda":
            return cls(
                dtype=preferred_half_dtype(device),
                tf32=True,
                channels_last=True,
                fused_step=True,
                cuda_graph=True,
            )
        return cls()

    def replace(self, **changes) -> FastPath:
        return dataclasses.replace(self, **changes)


def preferred_half_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPUs that have it (no overflow risk in the UNet), else fp16; float32 off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def attention_backend(name: str = "auto"):
    """Restrict scaled_dot_product_attention to one backend inside the block ("auto": PyTorch chooses)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend: expected one of {ATTENTION_BACKENDS}, found {name!r}")
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    with sdpa_kernel([backend]):
        yield


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """Allow (or forbid) tf32 tensor-core maths for float32 matmuls and cuDNN convs inside the block."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Store every 4-D weight NHWC, so convolutions (and what follows them) run channels-last. Same numbers."""
    return module.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------------- the fused LCM step


class FusedLCMStep:
    """The per-frame LCM step for fixed timesteps as one multiply-add per element.

    With ᾱ, ᾱ' the alphas of t and of the next timestep (1 past the end), and c_skip, c_out the boundary
    scalings of t (see `LCMStepper`):
        z' = sqrt(ᾱ')·(c_out·(sqrt(ᾱ)·z − sqrt(1−ᾱ)·v) + c_skip·z) + sqrt(1−ᾱ')·ε = A·z + B·v + C·ε.
    A, B, C are computed once in float64 from the stepper's float32 schedule, one per (call, frame); the
    update runs in float32 like `LCMStepper.step` and needs no host check of the timesteps.
    """

    def __init__(self, stepper: LCMStepper, timesteps: torch.Tensor, device=None):
        """timesteps: (calls, F) int, the timesteps of every frame for each UNet call of a tick."""
        if timesteps.dim() != 2:
            raise ValueError(f"FusedLCMStep: expected timesteps (calls, frames), found {tuple(timesteps.shape)}")
        alphas = alphas_cumprod("cpu").to(torch.float64)  # the schedule's values, wherever the stepper lives
        t = timesteps.to("cpu", torch.int64)
        if bool(((t < 0) | (t >= alphas.shape[0])).any()):  # checked once here, never inside a tick
            raise ValueError(f"FusedLCMStep: timesteps outside 0…{alphas.shape[0] - 1}: {t.tolist()}")
        previous = stepper.next_timesteps(t)
        alpha = alphas[t]
        alpha_next = torch.where(previous < 0, torch.ones_like(alpha), alphas[previous.clamp(min=0)])
        c_skip, c_out = (c.to(torch.float64) for c in stepper.boundary_scalings(t))
        device = device if device is not None else stepper.alphas_cumprod.device
        shape = (*t.shape[:1], 1, 1, t.shape[1], 1, 1)  # (calls, B=1, C=1, F, 1, 1) broadcasts over (B, C, F, h, w)
        self.sample_scale = (
            (alpha_next.sqrt() * (c_out * alpha.sqrt() + c_skip)).reshape(shape).to(device, torch.float32)
        )
        self.v_scale = (-alpha_next.sqrt() * c_out * (1 - alpha).sqrt()).reshape(shape).to(device, torch.float32)
        self.noise_scale = (1 - alpha_next).sqrt().reshape(shape).to(device, torch.float32)
        self.timesteps = t

    def __call__(self, call: int, sample: torch.Tensor, v: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Next sample (float32) for UNet call number `call` of the tick; `noise` may be None only where every
        frame finishes (its scale is 0)."""
        out = self.sample_scale[call] * sample.float() + self.v_scale[call] * v.float()
        if noise is not None:
            out = out + self.noise_scale[call] * noise
        return out


# ---------------------------------------------------------------------- CUDA graphs


class CudaGraphed:
    """Run `fn()` (no arguments; it reads and writes fixed tensors) as a captured CUDA graph.

    On CUDA the first call (or `capture()`) warms `fn` up on a side stream, captures it and from then on
    replays it. Anywhere else, or with enabled=False, `fn()` simply runs. `before_capture` / `after_warmup`
    let the owner save and restore state that the warm-up runs would otherwise advance.
    """

    def __init__(
        self,
        fn: Callable[[], object],
        device: torch.device | str,
        enabled: bool = True,
        warmup: int = 2,
        pool=None,
        around_warmup: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        self.fn = fn
        self.device = torch.device(device)
        self.enabled = enabled and self.device.type == "cuda"
        self.warmup = warmup
        self.pool = pool
        self.around_warmup = around_warmup
        self.graph = None
        self.output = None

    def capture(self) -> None:
        if not self.enabled or self.graph is not None:
            return
        context = self.around_warmup() if self.around_warmup is not None else contextlib.nullcontext()
        with context:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.output = self.fn()
        self.graph = graph

    def __call__(self):
        if not self.enabled:
            return self.fn()
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.output


# ---------------------------------------------------------------------- the steady-state tick


class StaticTick:
    """The steady-state tick of a stream with every tensor in a fixed buffer (capturable as one CUDA graph).

    Buffers (model dtype unless noted), with K = levels·m frames, m = frames_per_cohort:
      latents (1, C, K−m, h, w), pose_features (1, Cp, K−m, h, w): the cohorts in flight after the last tick,
      memory: TAESDV's MemBlock inputs of the last decoded frame (zeros = stream start), inputs `poses`
      (1, 3, m, H, W) and, with noise="given", `initial_noise` (1, C, m, h, w) and `step_noise`
      (calls, 1, C, K, h, w) float32; output `frames` (m, H, W, 3) float32 in [0, 1].

    One tick (`run()`): the new cohort's poses go through the pose guider, fresh noise enters at t = 999,
    the UNet runs `steps // levels` times with one LCM step each, the oldest cohort is decoded into
    `frames`, and the window shifts by one cohort — exactly `RainStream`'s tick on a full window.
    noise="device" draws the noise with torch.randn on the device inside the tick (benchmarks).
    """

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
        if config.levels < 2:
            raise ValueError("StaticTick: needs levels >= 2 (a window that keeps cohorts between ticks)")
        if decoder not in ("taesdv", "vae"):
            raise ValueError(f"StaticTick: decoder must be 'taesdv' or 'vae', found {decoder!r}")
        if decoder == "taesdv" and models.fast_decoder is None:
            raise ValueError("StaticTick: decoder 'taesdv' asked for, but these networks have no TAESDV")
        if noise not in ("given", "device"):
            raise ValueError(f"StaticTick: noise must be 'given' or 'device', found {noise!r}")
        self.models, self.config = models, config
        self.fast = fast or FastPath()
        self.decoder, self.noise_mode = decoder, noise
        device, dtype = models.device, models.dtype
        self.device, self.dtype = device, dtype
        m, window, calls = config.frames_per_cohort, config.window, config.calls_per_tick
        self.m, self.window, self.calls = m, window, calls
        downscale = models.codec.downscale
        channels, h, w = models.config.latent_channels, config.height // downscale, config.width // downscale
        self.latent_shape = (channels, h, w)

        self.clip_tokens = clip_tokens.to(device, dtype)
        self.reference = reference.to(device, dtype) if reference is not None else None
        if self.reference is not None and self.fast.reference_kv_cache:
            with torch.no_grad():  # now, not on first use: a compiled or captured tick must not change the cache
                models.denoising_unet.reference_kv(self.reference)
        self.guidance = models.guidance_embedding(float(config.guidance))
        # steady state: cohort k (oldest first) sits at level k; row j of the ladder is call j of the tick
        steady = ladder(config.levels, config.steps).repeat_interleave(m, dim=1)  # (calls, K)
        self.timesteps = steady[:, None, :].to(device)  # (calls, 1, K): one (B, F) tensor per call
        self.stepper = LCMStepper(config.steps, device)
        self.fused_step = FusedLCMStep(self.stepper, steady, device)

        self.latents = torch.zeros(1, channels, window - m, h, w, device=device, dtype=dtype)
        self.pose_features = torch.zeros(1, models.config.pose_channels, window - m, h, w, device=device, dtype=dtype)
        self.poses = torch.zeros(1, 3, m, config.height, config.width, device=device, dtype=dtype)
        self.initial_noise = torch.zeros(1, channels, m, h, w, device=device)
        self.step_noise = torch.zeros(calls, 1, channels, window, h, w, device=device)
        self.frames = torch.zeros(m, config.height, config.width, 3, device=device)
        self.memory = self._zero_memory() if decoder == "taesdv" else []

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

    def load_state(self, latents: torch.Tensor, pose_features: torch.Tensor, memory=None) -> None:
        """Copy a full window after a tick (what `RainStream.state_dict()` holds in steady state) into the buffers:
        latents (1, C, K−m, h, w), pose_features (1, Cp, K−m, h, w), memory: the TAESDV memory list or None."""
        for name, buffer, value in (
            ("latents", self.latents, latents),
            ("pose_features", self.pose_features, pose_features),
        ):
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(
                    f"StaticTick.load_state: {name} expected shape {tuple(buffer.shape)} (a full window less one "
                    f"cohort), found {tuple(value.shape)}"
                )
            buffer.copy_(value)
        if self.decoder == "taesdv":
            if memory is None:
                for buffer in self.memory:
                    buffer.zero_()
            else:
                if len(memory) != len(self.memory):
                    raise ValueError(
                        f"StaticTick.load_state: memory expected {len(self.memory)} tensors, found {len(memory)}"
                    )
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

    def set_inputs(self, poses: torch.Tensor, initial_noise=None, step_noise=None) -> None:
        """poses: (m, H, W, 3) in [0, 1] (the API layout) or (1, 3, m, H, W); noise as the buffers (noise="given")."""
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
        """Pose features of the entering cohort, appended to the carried ones; the new cohort's noise."""
        new = self.models.pose_guider(self.poses)
        self._features = torch.cat([self.pose_features, new], dim=2)
        if self.noise_mode == "device":
            self.initial_noise.normal_()
            self.step_noise.normal_()
        self._z = torch.cat([self.latents, self.initial_noise.to(self.dtype)], dim=2)

    def stage_unet(self, call: int = 0) -> None:
        self._v = self._unet(self._z, self.timesteps[call], self._features)

    def stage_step(self, call: int = 0) -> None:
        noise = self.step_noise[call]
        if self.fast.fused_step:
            stepped = self.fused_step(call, self._z, self._v, noise)
        else:
            stepped, _ = self.stepper.step(self._v, self.timesteps[call], self._z, noise)
        self._z = stepped.to(self.dtype)

    def stage_decode(self) -> None:
        """Decode the oldest cohort (now clean) into `frames` and shift the window by one cohort."""
        clean = self._z[0, :, : self.m].transpose(0, 1)  # (m, C, h, w)
        if self.decoder == "taesdv":
            images, memory = self.models.fast_decoder.decode(clean, self.memory)
            for buffer, value in zip(self.memory, memory):
                buffer.copy_(value)
        else:
            images = self.models.codec.decode(clean)
        self.frames.copy_(images.clamp(0, 1).permute(0, 2, 3, 1))
        self.latents.copy_(self._z[:, :, self.m :])
        self.pose_features.copy_(self._features[:, :, self.m :])

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
        stack.enter_context(attention_backend(self.fast.attention))
        if self.device.type == "cuda" and self.fast.tf32 is not None:
            stack.enter_context(tf32_matmuls(self.fast.tf32))
        return stack

    def compile_unet(self, mode: str | None = None, backend: str = "inductor") -> None:
        """torch.compile the UNet call (static shapes: dynamic=False). The first run compiles."""
        options = {} if mode in (None, "default") else {"mode": mode}
        self._unet = torch.compile(self._unet_eager, backend=backend, dynamic=False, fullgraph=False, **options)
        self._graph = self._stage_graphs = None

    def capture(self, split: bool = False) -> None:
        """Capture the whole tick as one CUDA graph (and, with split=True, each stage as its own graph too,
        sharing one memory pool, for per-stage timing). No-op off CUDA. State is left as it was."""
        if self.device.type != "cuda":
            return
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
        """True once the whole tick is a CUDA graph (`capture()` on CUDA); `run()` then replays it."""
        return self._graph is not None

    def run(self) -> torch.Tensor:
        """One steady-state tick; returns `frames` (the same buffer every time: copy what you keep)."""
        if self._graph is not None:
            self._graph()
            return self.frames
        with self._context():
            return self._body()

    def run_stage(self, name: str) -> None:
        """Run one stage (graph replay when split graphs were captured); stages must run in STAGES order."""
        if self._stage_graphs is not None:
            self._stage_graphs[name]()
            return
        with self._context():
            self.stage_functions()[name]()


# ---------------------------------------------------------------------- counting


@dataclass
class OpTrace:
    """What a traced function did at the aten level."""

    ops: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)  # (op name, input shapes)
    syncs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (op name, where in our code)
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def signature(self) -> list[tuple[str, tuple]]:
        return self.ops


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _our_frame(prefixes: tuple[str, ...]) -> str:
    """The innermost stack frame in our code (rain_core, bench), as 'file:line (function)'."""
    for frame in reversed(traceback.extract_stack()):
        if frame.name in ("__torch_dispatch__", "_our_frame"):
            continue
        if any(prefix in frame.filename for prefix in prefixes):
            return (
                f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} ({frame.name})"
            )
    return "?"


class _TraceMode(TorchDispatchMode):
    def __init__(self, trace: OpTrace, prefixes: tuple[str, ...]):
        super().__init__()
        self.trace, self.prefixes = trace, prefixes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.__name__.split(".")[0]
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        self.trace.ops.append((name, tuple(tuple(t.shape) for t in inputs)))
        if name in SYNC_OPS:
            self.trace.syncs.append((name, _our_frame(self.prefixes)))
        if not func.is_view:  # a view moves no data
            self.trace.bytes_read += sum(_nbytes(t) for t in inputs)
            self.trace.bytes_written += sum(_nbytes(t) for t in _tensors(out))
        return out


def trace_ops(
    fn: Callable[[], object], prefixes: tuple[str, ...] = ("/rain_core/", "/bench/")
) -> tuple[object, OpTrace]:
    """Run fn() recording every aten op (name, input shapes), the ops that read values back to the host
    (each one a host-device sync on CUDA, with the line of our code that caused it) and the bytes every
    non-view op reads and writes (an upper bound on memory traffic without fusion)."""
    trace = OpTrace()
    with _TraceMode(trace, prefixes):
        result = fn()
    return result, trace


def count_flops(fn: Callable[[], object]) -> tuple[object, int]:
    """Run fn() under torch.utils.flop_counter (matmuls, convolutions, attention; 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, counter.get_total_flops()


def parameter_bytes(*modules: torch.nn.Module | None) -> int:
    """Bytes of the parameters (and buffers) of the given modules: what a tick must read at least once."""
    total = 0
    for module in modules:
        if module is not None:
            total += sum(_nbytes(p) for p in module.parameters()) + sum(_nbytes(b) for b in module.buffers())
    return total


def latency_seconds(levels: int, frames_per_cohort: int, input_fps: float, tick_seconds: float) -> dict[str, float]:
    """Pose-to-image latency of a stream fed at `input_fps`, if a tick keeps up (tick ≤ m / fps).

    A frame's cohort completes when its last pose arrives, and the cohort leaves at the tick that the
    cohort p − 1 later triggers: the first frame of a cohort waits (p·m − 1) frame intervals, the last
    (p − 1)·m, then the tick's compute. Returns first/last/mean in seconds (inf if the tick can't keep up)."""
    period = 1.0 / input_fps
    if tick_seconds > frames_per_cohort * period:
        return {"first": math.inf, "last": math.inf, "mean": math.inf, "keeps_up": False}
    first = (levels * frames_per_cohort - 1) * period + tick_seconds
    last = (levels - 1) * frames_per_cohort * period + tick_seconds
    return {"first": first, "last": last, "mean": (first + last) / 2, "keeps_up": True}


__all__ = [
    "ATTENTION_BACKENDS",
    "CudaGraphed",
    "FastPath",
    "FusedLCMStep",
    "OpTrace",
    "StaticTick",
    "attention_backend",
    "count_flops",
    "latency_seconds",
    "parameter_bytes",
    "preferred_half_dtype",
    "tf32_matmuls",
    "to_channels_last",
    "trace_ops",
]
