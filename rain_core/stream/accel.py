"""Speed options of the one tick (`rain_core.stream.tick.Tick`): which speed-ups a tick uses (`FastPath`),
attention kernels, tf32, memory layout, and the CUDA-graph wrapper.

Everything here is correct on the CPU: options that only pay on CUDA (graphs, flash attention, tf32) turn
into no-ops there, so the same code path is tested on CPU and timed on a GPU (`bench/gpu_stream.py`).
The fused LCM step lives with the other LCM maths in `rain_core.scheduler`; the tools that measure a tick
(aten ops, host reads, FLOPs, bytes, latency) live in `bench/measure.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import resolve_precision

ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


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
    from torch.nn.attention import SDPBackend, sdpa_kernel  # import time: only when a backend is forced

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


__all__ = [
    "ATTENTION_BACKENDS",
    "CudaGraphed",
    "FastPath",
    "attention_backend",
    "tf32_matmuls",
    "to_channels_last",
]
