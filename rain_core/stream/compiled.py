"""The compiled steady tick on the CPU: torch.compile with a persistent package on disk and a clean fallback.

Half the ops of a tick are elementwise (adds, norms, GEGLU, layout copies). Inductor's C++ backend fuses them; with
`freezing` the weights become constants and convolutions/linears use pre-packed oneDNN/MKL weights. It needs a C++
compiler and takes a minute or more the first time. The steady UNet call is compiled ahead of time (`torch.export` +
AOTInductor) into one package on disk (`<cache>/aoti/<key>.pt2`, `rain_core.stream.compile_cache`), keyed by
everything the compiled code depends on (weights, shapes, threads, torch, CPU, rain's model code); a later start
loads it in under a second. torch.compile's own caches cannot do that with freezing (inductor bypasses its FX-graph
cache for pre-packed weights and AOTAutograd's cache for any frozen graph: ~60 s at every start). Without a
compiler, or when compiling fails, the tick runs eagerly after one log line. `RAIN_NO_COMPILE=1` behaves as if no
compiler were present (what the fallback test uses). Measured in docs/cpu-speed.md.

Only the steady-state tick (full window) is compiled: warm-up and flush have other shapes, run a handful of times
per stream, and would each cost a compile. The reference's K/V are inputs of the package, not constants, so a new
reference image reuses it. fast_path "auto" never waits for a compile: in a long-lived host a
`rain_core.stream.background_build.BackgroundBuild` child builds the package while the stream runs eagerly.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..cpu import cpu_flags, log, note_wait_policy, warn_once
from ..io.files import temporary_beside
from .compile_cache import cache_dir, evict_packages, mark_used

if TYPE_CHECKING:
    from .background_build import BackgroundBuild

NO_COMPILE_ENV = "RAIN_NO_COMPILE"
AUTO_MAX_BYTES = 256 * 2**20  # "auto" looks for a cached package only for UNets up to this size (hashing is read)

_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (fingerprint, digest)
_MODEL_CODE: bytes | None = None
_LOADED: dict[str, Callable] = {}  # package path -> loaded runner (one per process: a new reference reuses it)


def compiler_problem() -> str | None:
    """Why torch.compile cannot build CPU code here (None: it can): `RAIN_NO_COMPILE`, or no C++ compiler."""
    if os.environ.get(NO_COMPILE_ENV, "0") not in ("", "0"):
        return f"{NO_COMPILE_ENV}={os.environ[NO_COMPILE_ENV]}"
    try:
        # import time: inductor loads only when a compiled tick is asked for (an unusual torch may lack it)
        import torch._inductor.config as inductor_config

        names = inductor_config.cpp.cxx
        names = tuple(names) if isinstance(names, (list, tuple)) else (names,)
    except Exception as error:  # an unusual torch build
        return f"torch inductor is unavailable ({error})"
    candidates = [name for name in (os.environ.get("CXX"), *names, "g++", "c++", "clang++") if name]
    if not any(shutil.which(name) for name in candidates):
        return f"no C++ compiler found (looked for {', '.join(dict.fromkeys(candidates))}); install g++ or clang++"
    return None


def auto_fast_path(device) -> str:
    """What StreamConfig.fast_path "auto" means off CUDA when the stream starts: "eager".

    A stream does not wait for a compile: the first compile for a model, size and thread count takes a minute or
    more on an idle 2-core machine (minutes on a busy one), so a first `rain demo` or live panel would start late.
    When its tick is built, a stream with "auto" loads the compiled tick if this CPU holds its package (about a
    second) and `stats["fast_path"]` says "compile"; otherwise it starts eagerly, and in a long-lived host
    (`rain_core.cpu.allow_background_compile`) a `BackgroundBuild` child compiles the package meanwhile and the
    stream switches to it when it is on disk (`Tick.compile_steady_unet(cached_only=True, background=True)`). The
    passive OpenMP wait, the gain that holds under load, applies to the eager tick too."""
    if torch.device(device).type == "cpu":
        note_wait_policy()
    return "eager"


# ---------------------------------------------------------------------- the steady call and its key


class SteadyPackage:
    """What the ahead-of-time route needs besides the tick's eager call: the denoising UNet, the tick's constant
    inputs (CLIP tokens, w-embedding) and the reference K/V per reference layer (None: no reference). The
    exported function is `unet(sample, timesteps, clip, features, guidance, ReferenceCache(kv))`, exactly what
    `Tick._unet_eager` calls with the reference K/V cache on."""

    FORMAT = "rain-aoti/1"

    def __init__(self, unet, clip_tokens, guidance, reference_kv: dict | None):
        self.unet, self.clip_tokens, self.guidance = unet, clip_tokens, guidance
        self.names = list(reference_kv) if reference_kv is not None else None
        self.reference = [t for name in self.names for t in reference_kv[name]] if self.names is not None else []

    def extra_inputs(self) -> tuple:
        return (self.clip_tokens, *(() if self.guidance is None else (self.guidance,)), *self.reference)

    def module(self):
        # import time: `import rain_core.stream` does not load the networks (diffusers, seconds); a package has them
        from ..models.reference import ReferenceCache

        names, has_guidance = self.names, self.guidance is not None

        class SteadyCall(torch.nn.Module):
            def __init__(self, unet):
                super().__init__()
                self.unet = unet

            def forward(self, sample, timesteps, features, clip_tokens, *rest):
                guidance, rest = (rest[0], rest[1:]) if has_guidance else (None, rest)
                cache = None
                if names is not None:
                    cache = ReferenceCache({}, {name: (rest[2 * i], rest[2 * i + 1]) for i, name in enumerate(names)})
                return self.unet(sample, timesteps, clip_tokens, features, guidance, cache, use_reference_kv_cache=True)

        return SteadyCall(self.unet).eval()

    def key(self, sample, timesteps, features) -> str:
        """Hash of everything the compiled code depends on: format, torch/diffusers/Python versions, the CPU (its
        flags: the code is built for this CPU), threads (inductor's kernels fix their thread count), rain's model
        code, the UNet's weights, and the shapes and dtypes of every input."""
        import diffusers  # import time: as in `module`

        digest = hashlib.sha256()

        def add(*items):
            for item in items:
                digest.update(repr(item).encode())
                digest.update(b"\0")

        add(self.FORMAT, torch.__version__, diffusers.__version__, sys.version_info[:2], platform.machine(),
            torch.backends.cpu.get_cpu_capability(), sorted(cpu_flags()), torch.get_num_threads(), self.names)
        digest.update(_model_code_digest())
        digest.update(_weights_digest(self.unet))
        for tensor in (sample, timesteps, features, *self.extra_inputs()):
            add(tensor.dtype, tuple(tensor.shape), tensor.device.type)
        return digest.hexdigest()[:32]


def _model_code_digest() -> bytes:
    """Hash of rain's model code (rain_core/models/*.py), read once per process: the code this process runs."""
    global _MODEL_CODE
    if _MODEL_CODE is None:
        digest = hashlib.sha256()
        for source in sorted((Path(__file__).resolve().parents[1] / "models").glob("*.py")):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
        _MODEL_CODE = digest.digest()
    return _MODEL_CODE


def _weights_digest(module) -> bytes:
    """sha256 of a module's state (names, dtypes, shapes, bytes), remembered while no tensor of it changes (same
    storage, same version counter), so a new reference or stream does not hash the weights again."""
    state = module.state_dict()
    fingerprint = tuple((name, t.data_ptr(), _version(t), tuple(t.shape)) for name, t in state.items())
    known = _WEIGHTS.get(module)
    if known is not None and known[0] == fingerprint:
        return known[1]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(repr((name, tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    _WEIGHTS[module] = (fingerprint, digest.digest())
    return digest.digest()


def _version(tensor) -> int | None:
    """The tensor's in-place version counter; None for inference tensors, which keep none (ComfyUI runs nodes, and
    so loads models, under torch.inference_mode; such weights cannot change in place outside it)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def state_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


# ---------------------------------------------------------------------- the tick's compiled UNet call


class CompiledUNet:
    """The tick's UNet call, compiled for the steady-state window and eager for every other shape.

    `eager(sample, timesteps, features)` is the tick's eager UNet call; `steady()` says whether the tick now runs
    the steady-state occupancy. With a `SteadyPackage` the first steady call loads the AOTInductor package of this
    call from the cache, or exports and compiles it there first (`source`: "cache" or "compiled"); without one (or
    with a torch.compile `mode`) it goes through torch.compile with freezing (`source` "torch.compile"). When
    compiling, loading or running the compiled code fails, one line is logged and every later call runs `eager`
    (the call that failed is repeated eagerly: the UNet call writes nothing before it returns)."""

    def __init__(self, eager: Callable, steady: Callable[[], bool], mode: str | None = None,
                 package: SteadyPackage | None = None, compile_missing: bool = True, background: bool = False):
        self.eager, self.steady, self.mode, self.package = eager, steady, mode, package
        self.compile_missing = compile_missing  # False: only load a package already on disk (fast_path "auto")
        self.background = background  # with compile_missing False: a missing package is built by a child process
        self.problem = compiler_problem()
        self.compiled_calls = 0
        self.source: str | None = None
        self.build_seconds: float | None = None
        self._compiled = None
        self._pending: BackgroundBuild | None = None
        self._next_look = 0.0
        if self.problem is not None:
            warn_once(f"RAIN: running the tick eagerly: torch.compile is unavailable ({self.problem})")

    @property
    def active(self) -> bool:
        return self.problem is None

    def _build(self, sample, timesteps, features) -> Callable:
        if self.package is None or self.mode not in (None, "default"):
            return self._build_jit()
        package = self.package
        path = package_path(package, sample, timesteps, features)
        runner = _LOADED.get(str(path))
        if runner is None and path.exists():
            try:
                runner = _load_package(path)
                mark_used(path)  # the last to be evicted when the cache is over its bound
                self.source = "cache"
            except Exception as error:  # a damaged or foreign file: build it again
                log.warning("RAIN: could not load the compiled tick %s (%s); compiling it again", path, error)
                path.unlink(missing_ok=True)
        if runner is None and not path.exists():
            if not self.compile_missing and self.background:
                # a cycle: the builder's child compiles with this module's `compile_package`
                from .background_build import BackgroundBuild

                self._pending = BackgroundBuild.start(package, (sample, timesteps, features), path)
                return None  # eager until the child has written the package (`__call__` looks now and then)
            if not self.compile_missing:
                raise FileNotFoundError(f"no usable compiled tick at {path}")
            warn_once(f"RAIN: compiling the tick for this CPU (once per model, size and thread count; a minute or "
                      f"more on a small CPU, then loaded from {path.parent} in a second; {NO_COMPILE_ENV}=1 runs "
                      f"it eagerly)")
            compile_package(package, (sample, timesteps, features, *package.extra_inputs()), path)
            runner = _load_package(path)
            self.source = "compiled"
        elif runner is not None and self.source is None:
            self.source = "cache"
        _LOADED[str(path)] = runner
        extra = package.extra_inputs()
        return lambda sample, timesteps, features: runner(sample, timesteps, features, *extra)

    def _build_jit(self) -> Callable:
        import torch._inductor.config as inductor_config  # import time: inductor loads only when asked for

        where = cache_dir()
        warn_once(f"RAIN: compiling the tick for this CPU with torch.compile (minutes the first time on a small CPU, "
                  f"cached in {where}; {NO_COMPILE_ENV}=1 runs it eagerly)")
        options = {} if self.mode in (None, "default") else {"mode": self.mode}
        compiled = torch.compile(self.eager, dynamic=False, fullgraph=False, **options)
        self.source = "torch.compile"

        def call(sample, timesteps, features):
            # freezing: weights become constants, so convolutions and linears use pre-packed oneDNN/MKL weights
            # (inference only; set per call so other torch.compile users in the process are not affected)
            with inductor_config.patch(freezing=True):
                return compiled(sample, timesteps, features)

        return call

    @property
    def ready(self) -> bool:
        """True once steady calls run the compiled code (False while a background build is still running)."""
        return self.problem is None and self._compiled is not None

    def _look_for_background_build(self, sample, timesteps, features) -> None:
        """While a child builds the package: at most once a second, see whether it is done; load it when it is."""
        now = time.perf_counter()
        if now < self._next_look:
            return
        self._next_look = now + 1.0
        pending = self._pending
        if not pending.finished():
            return
        self._pending = None
        if pending.process is not None:
            pending.lock.unlink(missing_ok=True)  # the child removes it too; this covers a child that ended early
        if not pending.path.exists():
            self.problem = f"the background compile failed ({pending.failure()})"
            warn_once(f"RAIN: running the tick eagerly: {self.problem}")
            return
        started = time.perf_counter()
        self._compiled = self._build(sample, timesteps, features)
        self.source = "background"
        self.build_seconds = time.perf_counter() - started
        log.info("RAIN: the compiled tick is ready (%s); steady ticks use it from now on", pending.path.name)

    def __call__(self, sample, timesteps, features):
        if self.problem is None and self.steady():
            try:
                if self._pending is not None:
                    self._look_for_background_build(sample, timesteps, features)
                    if self._compiled is None:
                        return self.eager(sample, timesteps, features)
                if self._compiled is None:
                    started = time.perf_counter()
                    self._compiled = self._build(sample, timesteps, features)
                    if self._compiled is None:  # a background build started
                        return self.eager(sample, timesteps, features)
                    out = self._compiled(sample, timesteps, features)
                    self.build_seconds = time.perf_counter() - started
                else:
                    out = self._compiled(sample, timesteps, features)
                self.compiled_calls += 1
                return out
            except Exception as error:  # compiler missing or broken, unsupported op: the eager tick still works
                self.problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
                self._compiled = None
                warn_once(f"RAIN: torch.compile failed, running the tick eagerly from now on ({self.problem})")
        return self.eager(sample, timesteps, features)


# ---------------------------------------------------------------------- a package: where, compile, load


def package_path(package: SteadyPackage, sample, timesteps, features) -> Path:
    """Where the package of this steady call lives (whether or not it exists yet)."""
    return cache_dir() / "aoti" / f"{package.key(sample, timesteps, features)}.pt2"


def compile_package(package: SteadyPackage, inputs: tuple, path: Path) -> None:
    """Export the steady UNet call and compile it with AOTInductor (freezing: pre-packed weights) into `path`,
    written under a temporary name and renamed, so a reader never sees half a package; then keep the cache within
    its bound (what it evicts, this process forgets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        exported = torch.export.export(package.module(), inputs, strict=False)
        handle, temporary = temporary_beside(path, suffix=".pt2")
        os.close(handle)
        try:
            torch._inductor.aoti_compile_and_package(exported, package_path=temporary,
                                                     inductor_configs={"freezing": True})
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    for gone in evict_packages(keep=path):
        _LOADED.pop(str(gone), None)


def _load_package(path: Path) -> Callable:
    import torch._inductor  # import time: inductor loads only when a compiled tick is asked for

    return torch._inductor.aoti_load_package(str(path))


__all__ = [
    "AUTO_MAX_BYTES",
    "NO_COMPILE_ENV",
    "CompiledUNet",
    "SteadyPackage",
    "auto_fast_path",
    "compile_package",
    "compiler_problem",
    "package_path",
    "state_bytes",
]
