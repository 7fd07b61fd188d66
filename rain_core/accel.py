"""Speed options of the one tick (`rain_core.stream.tick.Tick`) and the tools to measure it: which speed-ups a
tick uses (`FastPath`), attention kernels, tf32, memory layout, the CUDA-graph wrapper, and counters for
aten ops, host reads, FLOPs, bytes and latency.

Everything here is correct on the CPU: options that only pay on CUDA (graphs, flash attention, tf32) turn
into no-ops there, so the same code path is tested on CPU and timed on a GPU (`bench/gpu_stream.py`).
The fused LCM step lives with the other LCM maths in `rain_core.scheduler`.
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
        """CUDA: the "auto" precision (`rain_core.stream.config.resolve_precision`: fp16), tf32, channels_last,
        fused step, CUDA graph. CPU (and anything else): the models' dtype, nothing that changes numerics beyond the
        fused step's rounding."""
        from .stream.config import resolve_precision

        device = torch.device(device)
        if device.type == "cuda":
            return cls(
                dtype=resolve_precision("auto", device),
                tf32=True,
                channels_last=True,
                fused_step=True,
                cuda_graph=True,
            )
        return cls()

    def replace(self, **changes) -> FastPath:
        return dataclasses.replace(self, **changes)


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
    "OpTrace",
    "attention_backend",
    "count_flops",
    "latency_seconds",
    "parameter_bytes",
    "tf32_matmuls",
    "to_channels_last",
    "trace_ops",
]
