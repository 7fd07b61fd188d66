"""CPU speed for the RAIN tick: the OpenMP wait policy, torch.compile with a persistent cache and a clean fallback,
and what the CPU offers (bf16).

Two things decide the built-in model's speed on a small CPU (measured with `docs/cpu-speed/cpu_profile.py` and
`bench/cpu_live.py`, see NOTES.md):

- **How idle OpenMP threads wait.** A tick of the tiny model is ~5,000 small ops, each a parallel region ending in
  a barrier. libgomp's default lets a waiting thread spin for ~300,000 iterations; on a machine where other work
  holds the cores, the thread it waits for is not running, so every barrier burns a time slice: two threads ran a
  tick 8–10× slower than one. `OMP_WAIT_POLICY=PASSIVE` makes waiting threads sleep; libgomp's
  `GOMP_SPINCOUNT=10000` lets them spin ~0.1 ms first, enough for the next op of a tick on an idle machine, too
  short to hurt a busy one. OpenMP reads both once, when torch is imported, so `prefer_passive_wait()` runs from `rain_core/__init__.py` before anything imports torch
  (the `rain` command, scripts); inside a host that imported torch first (ComfyUI) it is too late and nothing
  changes. A user's own `OMP_WAIT_POLICY` always wins; `RAIN_CPU_TUNING=0` leaves the environment alone.
- **Fusion.** Half the ops are elementwise (adds, norms, GEGLU, layout copies). Inductor's C++ backend fuses them;
  with `freezing` the weights become constants and convolutions/linears use pre-packed oneDNN/MKL weights. It needs
  a C++ compiler and takes a minute or more the first time. The steady UNet call is compiled ahead of time
  (`torch.export` + AOTInductor) into one package on disk (`<cache>/aoti/<key>.pt2`, cache = `~/.cache/rain/
  inductor` or `TORCHINDUCTOR_CACHE_DIR`), keyed by everything the compiled code depends on (weights, shapes,
  threads, torch, CPU, rain's model code); a later start loads it in under a second. torch.compile's own caches
  cannot do that with freezing (inductor bypasses its FX-graph cache for pre-packed weights and AOTAutograd's cache
  for any frozen graph: ~60 s at every start). Without a compiler, or when compiling fails, the tick runs eagerly
  after one log line. `RAIN_NO_COMPILE=1` behaves as if no compiler were present (what the fallback test uses).

Only the steady-state tick (full window) is compiled: warm-up and flush have other shapes, run a handful of times
per stream, and would each cost a compile. The reference's K/V are inputs of the package, not constants, so a new
reference image reuses it.

This module imports torch only inside functions: `prefer_passive_wait` must run before torch is imported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("rain.cpu")

NO_COMPILE_ENV = "RAIN_NO_COMPILE"
# "1": any process may build the compiled tick in the background (fast_path "auto"); "0": none may; unset: only
# long-lived hosts that call `allow_background_compile()` (the ComfyUI server, `rain live`)
BACKGROUND_ENV = "RAIN_BACKGROUND_COMPILE"
TUNING_ENV = "RAIN_CPU_TUNING"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
CACHE_MAX_ENV = "RAIN_CACHE_MAX_MB"  # the compiled-tick packages kept on disk, oldest evicted beyond it
CACHE_MAX_MB = 2000


# ---------------------------------------------------------------------- OpenMP threads


def prefer_passive_wait(environ=None) -> str | None:
    """Set OMP_WAIT_POLICY=PASSIVE (and libgomp's GOMP_SPINCOUNT=10000 unless set) unless the user chose a policy,
    `RAIN_CPU_TUNING=0`, or torch is already imported (then OpenMP has read its settings and a change would do
    nothing). Returns the policy now in the environment."""
    global _WAIT_POLICY_TOO_LATE
    environ = os.environ if environ is None else environ
    if environ.get(TUNING_ENV, "1") == "0":
        return environ.get("OMP_WAIT_POLICY")
    if "torch" in sys.modules:
        _WAIT_POLICY_TOO_LATE = _WAIT_POLICY_TOO_LATE or "OMP_WAIT_POLICY" not in environ
        return environ.get("OMP_WAIT_POLICY")
    if "OMP_WAIT_POLICY" not in environ:
        # libgomp only: a short spin before sleeping (PASSIVE alone is 0) catches the next op's barrier without a wake-up;
        # an explicit GOMP_SPINCOUNT overrides PASSIVE's, and other OpenMP runtimes ignore it
        environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    return environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


SPIN_COUNT = "10000"  # ~0.1 ms; see NOTES.md (CPU speed) for the wait-policy measurements


_WAIT_POLICY_TOO_LATE = False  # torch was loaded before rain_core with no policy set (e.g. inside ComfyUI)


def note_wait_policy() -> None:
    """Log once where several threads run with OpenMP's spinning default because torch loaded before rain_core
    (a host such as ComfyUI): the fix is the environment variable, set before the host starts."""
    import torch

    if _WAIT_POLICY_TOO_LATE and torch.get_num_threads() > 1 and "OMP_WAIT_POLICY" not in os.environ:
        _warn_once(
            "RAIN: torch was loaded before rain_core, so OpenMP threads spin while they wait; on a busy CPU that "
            "made ticks several times slower. Start the host with OMP_WAIT_POLICY=PASSIVE (or use one thread)."
        )


def cpu_summary() -> dict:
    """What this CPU and process offer: SIMD level, native bf16 (AVX512-BF16 / AMX), threads, OpenMP wait policy."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    return {
        "capability": capability,
        "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "amx": "amx_tile" in flags,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default: spin, then sleep)"),
    }


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# ---------------------------------------------------------------------- torch.compile


def compiler_problem() -> str | None:
    """Why torch.compile cannot build CPU code here (None: it can): `RAIN_NO_COMPILE`, or no C++ compiler."""
    if os.environ.get(NO_COMPILE_ENV, "0") not in ("", "0"):
        return f"{NO_COMPILE_ENV}={os.environ[NO_COMPILE_ENV]}"
    try:
        import torch._inductor.config as inductor_config

        names = inductor_config.cpp.cxx
        names = tuple(names) if isinstance(names, (list, tuple)) else (names,)
    except Exception as error:  # an unusual torch build
        return f"torch inductor is unavailable ({error})"
    candidates = [name for name in (os.environ.get("CXX"), *names, "g++", "c++", "clang++") if name]
    if not any(shutil.which(name) for name in candidates):
        return f"no C++ compiler found (looked for {', '.join(dict.fromkeys(candidates))}); install g++ or clang++"
    return None


_HOST_ALLOWS_BACKGROUND = False


def allow_background_compile(allowed: bool = True) -> None:
    """Say that this process is a long-lived host (the ComfyUI server, `rain live`, a script that streams for
    minutes): fast_path "auto" may then build the compiled tick in a background child while streams run eagerly.
    The child ends with this process. Short commands and library calls do not build by default: the child would
    either outlive them or be killed before it finishes (a first compile takes one to many minutes).
    `RAIN_BACKGROUND_COMPILE=1` / `0` in the environment overrides this either way."""
    global _HOST_ALLOWS_BACKGROUND
    _HOST_ALLOWS_BACKGROUND = bool(allowed)


def background_compile_allowed() -> bool:
    """Whether fast_path "auto" may start a background build here: `RAIN_BACKGROUND_COMPILE` when set ("0" no,
    anything else yes), else whether the process called `allow_background_compile()`."""
    value = os.environ.get(BACKGROUND_ENV, "").strip()
    if value:
        return value != "0"
    return _HOST_ALLOWS_BACKGROUND


def auto_fast_path(device) -> str:
    """What StreamConfig.fast_path "auto" means off CUDA when the stream starts: "eager".

    A stream does not wait for a compile: the first compile for a model, size and thread count takes a minute or
    more on an idle 2-core machine (minutes on a busy one), so a first `rain demo` or live panel would start late.
    When its tick is built, a stream with "auto" loads the compiled tick if this CPU holds its package (about a
    second) and `stats["fast_path"]` says "compile"; otherwise it starts eagerly, and in a long-lived host
    (`allow_background_compile`) a `BackgroundBuild` child compiles the package meanwhile and the stream switches
    to it when it is on disk (`Tick.compile_steady_unet(cached_only=True, background=True)`). The passive OpenMP
    wait, the gain that holds under load, applies to the eager tick too."""
    import torch

    if torch.device(device).type == "cpu":
        note_wait_policy()
    return "eager"


def cache_dir() -> Path:
    """Where inductor keeps compiled code: TORCHINDUCTOR_CACHE_DIR if the user set it, else ~/.cache/rain/inductor
    (XDG_CACHE_HOME respected), put into the environment before the first compile."""
    chosen = os.environ.get(CACHE_ENV)
    try:  # importing inductor fills the variable with its own default (/tmp/torchinductor_USER): not a choice
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        inductor_default = os.path.abspath(default_cache_dir())
    except Exception:
        inductor_default = None
    if chosen and os.path.abspath(chosen) != inductor_default:
        return Path(chosen)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "rain" / "inductor"
    os.environ[CACHE_ENV] = str(path)
    return path


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
        import torch

        from .models.reference import ReferenceCache

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
        import diffusers
        import torch

        digest = hashlib.sha256()

        def add(*items):
            for item in items:
                digest.update(repr(item).encode())
                digest.update(b"\0")

        add(self.FORMAT, torch.__version__, diffusers.__version__, sys.version_info[:2], platform.machine(),
            torch.backends.cpu.get_cpu_capability(), sorted(_cpu_flags()), torch.get_num_threads(), self.names)
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
        for source in sorted((Path(__file__).resolve().parent / "models").glob("*.py")):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
        _MODEL_CODE = digest.digest()
    return _MODEL_CODE


def _weights_digest(module) -> bytes:
    """sha256 of a module's state (names, dtypes, shapes, bytes), remembered while no tensor of it changes (same
    storage, same version counter), so a new reference or stream does not hash the weights again."""
    import torch

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


AUTO_MAX_BYTES = 256 * 2**20  # "auto" looks for a cached package only for UNets up to this size (hashing is read)
_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (fingerprint, digest)
_MODEL_CODE: bytes | None = None
_LOADED: dict[str, Callable] = {}  # package path -> loaded runner (one per process: a new reference reuses it)


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
            _warn_once(f"RAIN: running the tick eagerly: torch.compile is unavailable ({self.problem})")

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
                _touch(path)  # recently used: the last to be evicted when the cache is over its bound
                self.source = "cache"
            except Exception as error:  # a damaged or foreign file: build it again
                log.warning("RAIN: could not load the compiled tick %s (%s); compiling it again", path, error)
                path.unlink(missing_ok=True)
        if runner is None and not path.exists():
            if not self.compile_missing and self.background:
                self._pending = BackgroundBuild.start(package, (sample, timesteps, features), path)
                return None  # eager until the child has written the package (`__call__` looks now and then)
            if not self.compile_missing:
                raise FileNotFoundError(f"no usable compiled tick at {path}")
            _warn_once(f"RAIN: compiling the tick for this CPU (once per model, size and thread count; a minute or "
                       f"more on a small CPU, then loaded from {path.parent} in a second; {NO_COMPILE_ENV}=1 runs "
                       f"it eagerly)")
            _compile_package(package, (sample, timesteps, features, *package.extra_inputs()), path)
            runner = _load_package(path)
            self.source = "compiled"
        elif runner is not None and self.source is None:
            self.source = "cache"
        _LOADED[str(path)] = runner
        extra = package.extra_inputs()
        return lambda sample, timesteps, features: runner(sample, timesteps, features, *extra)

    def _build_jit(self) -> Callable:
        import torch
        import torch._inductor.config as inductor_config

        where = cache_dir()
        _warn_once(f"RAIN: compiling the tick for this CPU with torch.compile (minutes the first time on a small CPU, "
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
            _warn_once(f"RAIN: running the tick eagerly: {self.problem}")
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
                _warn_once(f"RAIN: torch.compile failed, running the tick eagerly from now on ({self.problem})")
        return self.eager(sample, timesteps, features)


def package_path(package: SteadyPackage, sample, timesteps, features) -> Path:
    """Where the package of this steady call lives (whether or not it exists yet)."""
    return cache_dir() / "aoti" / f"{package.key(sample, timesteps, features)}.pt2"


def _compile_package(package: SteadyPackage, inputs: tuple, path: Path) -> None:
    """Export the steady UNet call and compile it with AOTInductor (freezing: pre-packed weights) into `path`,
    written under a temporary name and renamed, so a reader never sees half a package."""
    import torch

    from .fileio import temporary_beside

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
    evict_packages(keep=path)


# ---------------------------------------------------------------------- the package cache: bound, listing, clearing


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def cache_limit_bytes() -> int:
    """`RAIN_CACHE_MAX_MB` (default 2000) in bytes; 0 or less: no bound."""
    text = os.environ.get(CACHE_MAX_ENV, "").strip()
    try:
        megabytes = float(text) if text else CACHE_MAX_MB
    except ValueError:
        _warn_once(f"RAIN: {CACHE_MAX_ENV}={text!r} is not a number of megabytes; using {CACHE_MAX_MB}")
        megabytes = CACHE_MAX_MB
    return int(megabytes * 1e6)


def cached_packages(folder: Path | None = None) -> list[dict]:
    """The compiled-tick packages on disk, oldest use first: path, bytes, last use (mtime), and whether a build of
    that key runs now."""
    folder = Path(folder) if folder is not None else cache_dir() / "aoti"
    packages = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if entry.name.endswith(".pt2") and not entry.name.startswith(".") and entry.is_file():
            stat = entry.stat()
            packages.append({"path": Path(entry.path), "bytes": stat.st_size, "used": stat.st_mtime})
    return sorted(packages, key=lambda p: p["used"])


def evict_packages(keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Remove the least recently used packages until the cache holds at most `limit` bytes (`cache_limit_bytes`);
    `keep` (the package just written or loaded) stays. Returns what went."""
    limit = cache_limit_bytes() if limit is None else limit
    if limit <= 0:
        return []
    packages = cached_packages(keep.parent if keep is not None else None)
    total = sum(p["bytes"] for p in packages)
    removed = []
    for package in packages:
        if total <= limit:
            break
        if keep is not None and package["path"] == Path(keep):
            continue
        _remove_package(package["path"])
        total -= package["bytes"]
        removed.append(package["path"])
    if removed:
        log.info("RAIN: the compiled-tick cache was over %d MB; removed the %d least recently used packages",
                 limit // 10**6, len(removed))
    return removed


def _remove_package(path: Path) -> None:
    for leftover in (path, path.with_suffix(".log"), path.with_suffix(".failed")):
        leftover.unlink(missing_ok=True)
    _LOADED.pop(str(path), None)


def clear_cache(folder: Path | None = None) -> dict:
    """Remove every package, log and failure marker, and what killed builders left; a build that runs now keeps
    its files. Returns {"removed": count, "bytes": freed, "kept": [builds still running]}."""
    folder = Path(folder) if folder is not None else cache_dir() / "aoti"
    removed, freed, kept = 0, 0, []
    recover_stale_builds(folder)
    running = {marker.stem for marker in folder.glob("*.building")} if folder.is_dir() else set()
    for entry in (list(os.scandir(folder)) if folder.is_dir() else []):
        key = entry.name.split(".", 1)[0]
        if entry.name == "jobs" or key in running:
            if key in running and entry.name.endswith(".building"):
                kept.append(key)
            continue
        if entry.is_file() and entry.name.endswith((".pt2", ".log", ".failed")):
            freed += entry.stat().st_size
            os.unlink(entry.path)
            removed += 1
    return {"removed": removed, "bytes": freed, "kept": kept}


def recover_stale_builds(folder: Path | None = None) -> list[str]:
    """Remove what builders that no longer run left behind: `<key>.building` markers whose pid is gone (or older
    than `BackgroundBuild.STALE_SECONDS`), their job folders, and half-written packages. Returns the keys."""
    from .fileio import remove_stale_temporaries

    folder = Path(folder) if folder is not None else cache_dir() / "aoti"
    recovered = []
    for marker in (folder.glob("*.building") if folder.is_dir() else []):
        build = BackgroundBuild(marker.with_suffix(".pt2"))
        if not build._someone_else_builds():
            build.clean_up()
            recovered.append(marker.stem)
    jobs = folder / "jobs"
    for job in (jobs.iterdir() if jobs.is_dir() else []):
        if not (folder / f"{job.name}.building").exists():
            shutil.rmtree(job, ignore_errors=True)  # a builder that died before or after its marker
    for key in {leftover.name.split(".")[1] for leftover in folder.glob(".*.pt2.*")} if folder.is_dir() else ():
        remove_stale_temporaries(folder / f"{key}.pt2")  # a package half-written by a killed compile
    return recovered


class BackgroundBuild:
    """A low-priority child process that exports and compiles one steady package into the cache, so that a stream
    with fast_path "auto" in a long-lived host starts at once on the eager tick and switches to the compiled one
    when it is ready (and every later start loads it in a second). The child gets the UNet and the call's inputs
    through a job folder (safetensors + JSON, beside the package), rebuilds the same UNet and checks that its
    package key is the one asked for before compiling. One build per package: other streams, in this process or
    another, watch the same file (`<key>.building` holds the builder's pid). Its output goes to `<key>.log`.

    The child ends with its parent: on Linux the kernel sends it SIGTERM when the parent dies
    (`prctl(PR_SET_PDEATHSIG)`), it watches its parent's pid once a second as well (other systems, and a parent
    thread that ends: the death signal follows the thread that started the child), and the parent terminates its
    builders when it exits. A stopped builder removes its job folder, marker and half-written package; one killed
    outright leaves them, and `recover_stale_builds` (run at every start) removes them once its pid is gone."""

    STALE_SECONDS = 30 * 60
    _mine: dict[str, BackgroundBuild] = {}

    def __init__(self, path: Path, process=None):
        self.path, self.process = path, process

    @property
    def lock(self) -> Path:
        return self.path.with_suffix(".building")

    @property
    def log_path(self) -> Path:
        return self.path.with_suffix(".log")

    @property
    def failed(self) -> Path:
        """Written by a child whose compile failed; delete it to try again."""
        return self.path.with_suffix(".failed")

    @property
    def job(self) -> Path:
        return self.path.parent / "jobs" / self.path.stem

    @classmethod
    def start(cls, package: SteadyPackage, inputs: tuple, path: Path) -> BackgroundBuild:
        known = cls._mine.get(str(path))
        if known is not None and not known.finished():
            return known
        build = cls(path)
        recover_stale_builds(path.parent)
        if build._someone_else_builds() or build.failed.exists():  # a build that failed is not retried each start
            return build
        import subprocess
        import threading

        path.parent.mkdir(parents=True, exist_ok=True)
        build.lock.write_text(str(os.getpid()))  # ours while the job is written (a cleaner must not take it)
        _write_job(package, inputs, path, build.job)
        root = str(Path(__file__).resolve().parents[1])
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        # the kernel's parent-death signal follows the *thread* that forks: only the main thread lives as long as
        # the process, so from any other thread (ComfyUI runs nodes in a worker thread) the child relies on its
        # parent-pid watch alone
        death_signal = int(threading.current_thread() is threading.main_thread())
        script = "import sys; from rain_core.cpu_fast import build_job; build_job(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))"
        with open(build.log_path, "w") as output:
            build.process = subprocess.Popen([sys.executable, "-c", script, str(build.job), str(os.getpid()),
                                              str(death_signal)], env=environ, cwd=root, stdin=subprocess.DEVNULL,
                                             stdout=output, stderr=subprocess.STDOUT)
        build.lock.write_text(str(build.process.pid))
        cls._mine[str(path)] = build
        _stop_builders_at_exit()
        _warn_once(f"RAIN: building a compiled tick for this CPU in the background (low priority, a minute or more; "
                   f"it ends with this process); the stream runs eagerly until it is ready, later starts load it in "
                   f"a second ({BACKGROUND_ENV}=0 turns this off)")
        return build

    def _someone_else_builds(self) -> bool:
        try:
            age = time.time() - self.lock.stat().st_mtime
            pid = int(self.lock.read_text().strip() or 0)
        except (OSError, ValueError):
            return False
        if age > self.STALE_SECONDS:
            return False
        if os.name == "posix" and pid:
            from .fileio import pid_running

            return pid_running(pid)
        return True

    def clean_up(self) -> None:
        """Remove the marker, the job folder and half-written packages of this key (its builder is gone)."""
        from .fileio import remove_stale_temporaries

        self.lock.unlink(missing_ok=True)
        shutil.rmtree(self.job, ignore_errors=True)
        remove_stale_temporaries(self.path)

    def finished(self) -> bool:
        if self.process is not None:
            return self.process.poll() is not None
        return self.path.exists() or self.failed.exists() or not self._someone_else_builds()

    def stop(self) -> None:
        """Ask our child to end (it cleans up after itself)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def failure(self) -> str:
        """The last line of the child's output (why it failed), or its exit code."""
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        code = None if self.process is None else self.process.returncode
        return (lines[-1][:300] if lines else f"exit code {code}") + f"; see {self.log_path}, delete {self.failed} to retry"


_AT_EXIT = False


def _stop_builders_at_exit() -> None:
    """Once per process: at exit, terminate the builders this process started (the death signal and the pid watch
    cover a parent that is killed; this covers a normal exit at once, not a second later)."""
    global _AT_EXIT
    if _AT_EXIT:
        return
    import atexit

    atexit.register(lambda: [build.stop() for build in list(BackgroundBuild._mine.values())])
    _AT_EXIT = True


class BuilderStopped(BaseException):
    """SIGTERM (the parent ended, or someone stopped the builder): clean up, write no failure marker."""


def _end_with_parent(parent: int, death_signal: bool) -> None:
    """In the builder: SIGTERM raises BuilderStopped; the kernel sends it when the parent dies (Linux,
    PR_SET_PDEATHSIG) and a watcher thread sends it when the parent pid changes (every system)."""
    import signal
    import threading

    def stopped(signum, frame):
        raise BuilderStopped(f"signal {signum}")

    signal.signal(signal.SIGTERM, stopped)
    if death_signal and sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher below still ends the builder
    if os.getppid() != parent:  # the parent died before the death signal was armed
        raise BuilderStopped("the parent process is gone")

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rain-parent-watch", daemon=True).start()


def _write_job(package: SteadyPackage, inputs: tuple, path: Path, job: Path) -> None:
    """What the child needs to rebuild the steady call exactly: UNet config, weights, inputs, reference K/V."""
    import json

    import torch
    from safetensors.torch import save_file

    job.mkdir(parents=True, exist_ok=True)
    sample, timesteps, features = inputs
    state = package.unet.state_dict()
    tensors = {f"unet.{name}": t.detach().to("cpu").contiguous().clone() for name, t in state.items()}
    named = {"sample": sample, "timesteps": timesteps, "features": features, "clip_tokens": package.clip_tokens}
    if package.guidance is not None:
        named["guidance"] = package.guidance
    for i, tensor in enumerate(package.reference):
        named[f"reference.{i}"] = tensor
    tensors.update({name: t.detach().contiguous().clone() for name, t in named.items()})
    save_file(tensors, str(job / "job.safetensors"))
    dtype = next(iter(state.values())).dtype
    spec = {"path": str(path), "threads": torch.get_num_threads(), "names": package.names,
            "config": package.unet.config.to_dict(), "dtype": str(dtype).removeprefix("torch.")}
    (job / "job.json").write_text(json.dumps(spec))


def read_job(folder: Path) -> tuple[SteadyPackage, tuple, Path]:
    """The steady call a job folder describes, rebuilt: (package, (sample, timesteps, features), package path)."""
    import json

    import torch
    from safetensors.torch import load_file

    from .models import RainModelConfig
    from .models.unet import DenoisingUNet

    spec = json.loads((folder / "job.json").read_text())
    tensors = load_file(str(folder / "job.safetensors"))
    unet = DenoisingUNet(RainModelConfig.from_dict(spec["config"]))
    if spec["dtype"] != "float32":
        unet.to(getattr(torch, spec["dtype"]))
    unet.load_state_dict({name[5:]: t for name, t in tensors.items() if name.startswith("unet.")})
    unet.eval().requires_grad_(False)
    names = spec["names"]
    kv = None if names is None else {
        name: (tensors[f"reference.{2 * i}"], tensors[f"reference.{2 * i + 1}"]) for i, name in enumerate(names)
    }
    package = SteadyPackage(unet, tensors["clip_tokens"], tensors.get("guidance"), kv)
    return package, (tensors["sample"], tensors["timesteps"], tensors["features"]), Path(spec["path"])


def build_job(folder: str, parent: int | None = None, death_signal: int = 1) -> None:
    """The background child (`BackgroundBuild`): rebuild the steady call from its job folder, check the key, compile
    the package. Runs at lower priority (nice 5) and ends with its parent (`parent`: its pid); removes the job
    folder and the marker whatever happens, and writes `<key>.failed` only when the compile itself failed."""
    import json

    folder = Path(folder)
    spec = json.loads((folder / "job.json").read_text())
    build = BackgroundBuild(Path(spec["path"]))
    path = build.path
    try:
        if parent is not None:
            _end_with_parent(parent, bool(death_signal))
        if hasattr(os, "nice"):
            os.nice(5)  # below the stream, not so far that a stream running flat out starves it
        import torch

        torch.set_num_threads(spec["threads"])  # inductor fixes the thread count in the code it writes
        package, inputs, _ = read_job(folder)
        key = package.key(*inputs)
        if key != path.stem:
            raise RuntimeError(f"the rebuilt call has key {key}, not {path.stem} (rain's code changed meanwhile?)")
        started = time.perf_counter()
        _compile_package(package, (*inputs, *package.extra_inputs()), path)
        print(f"compiled {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
    except (BuilderStopped, KeyboardInterrupt) as stop:
        print(f"stopped ({stop}); nothing kept", flush=True)
        raise SystemExit(143) from None
    except BaseException as error:
        build.failed.write_text(f"{type(error).__name__}: {error}\n")
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        build.lock.unlink(missing_ok=True)


def _load_package(path: Path) -> Callable:
    import torch._inductor

    return torch._inductor.aoti_load_package(str(path))


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


__all__ = [
    "BACKGROUND_ENV",
    "BackgroundBuild",
    "CACHE_ENV",
    "CACHE_MAX_ENV",
    "allow_background_compile",
    "cache_limit_bytes",
    "cached_packages",
    "clear_cache",
    "evict_packages",
    "recover_stale_builds",
    "CompiledUNet",
    "NO_COMPILE_ENV",
    "TUNING_ENV",
    "auto_fast_path",
    "background_compile_allowed",
    "cache_dir",
    "compiler_problem",
    "cpu_summary",
    "note_wait_policy",
    "package_path",
    "state_bytes",
    "prefer_passive_wait",
    "SteadyPackage",
]
