"""CPU speed for the RAIN tick: the OpenMP wait policy, torch.compile with a persistent cache and a clean fallback,
and what the CPU offers (bf16).

Two things decide the built-in model's speed on a small CPU (measured with `bench/cpu_profile.py` and
`bench/cpu_live.py`, see NOTES.md):

- **How idle OpenMP threads wait.** A tick of the tiny model is ~5,000 small ops, each a parallel region ending in
  a barrier. libgomp's default lets a waiting thread spin for ~300,000 iterations; on a machine where other work
  holds the cores, the thread it waits for is not running, so every barrier burns a time slice: two threads ran a
  tick 8–10× slower than one. `OMP_WAIT_POLICY=PASSIVE` makes waiting threads sleep. OpenMP reads it once, when
  torch is imported, so `prefer_passive_wait()` runs from `rain_core/__init__.py` before anything imports torch
  (the `rain` command, scripts); inside a host that imported torch first (ComfyUI) it is too late and nothing
  changes. A user's own `OMP_WAIT_POLICY` always wins; `RAIN_CPU_TUNING=0` leaves the environment alone.
- **Fusion.** Half the ops are elementwise (adds, norms, GEGLU, layout copies). `torch.compile` (inductor's C++
  backend, with `freezing`: weights become constants and convolutions/linears use pre-packed oneDNN/MKL weights)
  fuses them. It needs a C++ compiler and takes minutes the first time, so the compiled code goes to a persistent
  cache (`~/.cache/rain/inductor`, or `TORCHINDUCTOR_CACHE_DIR`) and a second start takes seconds to a minute;
  without a compiler, or when compiling fails, the tick runs eagerly after one log line. `RAIN_NO_COMPILE=1`
  behaves as if no compiler were present (what the fallback test uses).

Only the steady-state tick (full window) is compiled: warm-up and flush have other shapes, run a handful of times
per stream, and would each cost a compile.

This module imports torch only inside functions: `prefer_passive_wait` must run before torch is imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("rain.cpu")

NO_COMPILE_ENV = "RAIN_NO_COMPILE"
TUNING_ENV = "RAIN_CPU_TUNING"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


# ---------------------------------------------------------------------- OpenMP threads


def prefer_passive_wait(environ=None) -> str | None:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user chose a policy, `RAIN_CPU_TUNING=0`, or torch is already imported
    (then OpenMP has read its settings and a change would do nothing). Returns the policy now in the environment."""
    global _WAIT_POLICY_TOO_LATE
    environ = os.environ if environ is None else environ
    if environ.get(TUNING_ENV, "1") == "0":
        return environ.get("OMP_WAIT_POLICY")
    if "torch" in sys.modules:
        _WAIT_POLICY_TOO_LATE = _WAIT_POLICY_TOO_LATE or "OMP_WAIT_POLICY" not in environ
        return environ.get("OMP_WAIT_POLICY")
    return environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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


def auto_fast_path(device) -> str:
    """What StreamConfig.fast_path "auto" means off CUDA: "eager".

    "compile" is opt-in, not the default: it is 1.33× faster per tick at 2 threads on an idle 2-core machine, but
    its first frame comes after ~60 s there (~5 min on a busy one) and again at every process start (freezing
    keeps inductor from caching the graph), so `rain demo`, a short `rain animate` or a live panel that must start
    promptly would be slower end to end (bench/results/cpu_live.json). The passive OpenMP wait, the gain that
    holds under load, applies to the eager tick too."""
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


class CompiledUNet:
    """The tick's UNet call, compiled for the steady-state window and eager for every other shape.

    `eager(sample, timesteps, features)` is the tick's eager UNet call; `steady()` says whether the tick now runs
    the steady-state occupancy. The first steady call compiles (inductor, static shapes, freezing). When compiling
    or running the compiled code fails, one line is logged and every later call runs `eager` (the call that failed
    is repeated eagerly: the UNet call writes nothing before it returns)."""

    def __init__(self, eager: Callable, steady: Callable[[], bool], mode: str | None = None):
        self.eager, self.steady, self.mode = eager, steady, mode
        self.problem = compiler_problem()
        self.compiled_calls = 0
        self._compiled = None
        if self.problem is not None:
            _warn_once(f"RAIN: running the tick eagerly: torch.compile is unavailable ({self.problem})")

    @property
    def active(self) -> bool:
        return self.problem is None

    def _build(self):
        import torch

        where = cache_dir()
        _warn_once(f"RAIN: compiling the tick for this CPU with torch.compile (once; minutes the first time on a "
                   f"small CPU, then cached in {where}; {NO_COMPILE_ENV}=1 runs it eagerly)")
        options = {} if self.mode in (None, "default") else {"mode": self.mode}
        return torch.compile(self.eager, dynamic=False, fullgraph=False, **options)

    def __call__(self, sample, timesteps, features):
        if self.problem is None and self.steady():
            try:
                import torch._inductor.config as inductor_config

                if self._compiled is None:
                    self._compiled = self._build()
                # freezing: weights become constants, so convolutions and linears use pre-packed oneDNN/MKL weights
                # (inference only; set per call so other torch.compile users in the process are not affected)
                with inductor_config.patch(freezing=True):
                    out = self._compiled(sample, timesteps, features)
                self.compiled_calls += 1
                return out
            except Exception as error:  # compiler missing or broken, unsupported op: the eager tick still works
                self.problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
                _warn_once(f"RAIN: torch.compile failed, running the tick eagerly from now on ({self.problem})")
        return self.eager(sample, timesteps, features)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


__all__ = [
    "CACHE_ENV",
    "CompiledUNet",
    "NO_COMPILE_ENV",
    "TUNING_ENV",
    "auto_fast_path",
    "cache_dir",
    "compiler_problem",
    "cpu_summary",
    "note_wait_policy",
    "prefer_passive_wait",
]
