"""Tools that measure a RAIN tick, for the benchmarks (bench/gpu_stream.py, bench/gpu/, bench/tick_profile_cpu.py)
and the tests that check what a tick does: every aten op with its input shapes (`trace_ops`), the ops that read a
value back to the host (each a sync on CUDA, with the line of our code that caused it), bytes read and written,
FLOPs (`count_flops`), weight bytes (`parameter_bytes`) and the pose-to-image latency a tick time gives
(`latency_seconds`). Not part of the engine: nothing in rain_core imports it.

Scripts import it as `bench.measure` (the repository root on sys.path); tests load it with
`conftest.bench_module("measure")`.
"""

from __future__ import annotations

import dataclasses
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that read a device value back to the host (a sync on CUDA) or whose output size depends on values
SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "is_nonzero", "equal", "item")

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
    "SYNC_OPS",
    "OpTrace",
    "count_flops",
    "latency_seconds",
    "parameter_bytes",
    "trace_ops",
]
