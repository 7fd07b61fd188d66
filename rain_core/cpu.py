"""What the process decides about the CPU before torch loads, or as a host: the OpenMP wait policy, what this CPU
offers (bf16), and whether a background compile of the CPU tick may start here.

**How idle OpenMP threads wait.** A tick of the tiny model is ~5,000 small ops, each a parallel region ending in a
barrier. libgomp's default lets a waiting thread spin for ~300,000 iterations; on a machine where other work holds
the cores, the thread it waits for is not running, so every barrier burns a time slice: two threads ran a tick 8–10×
slower than one (measured with `docs/cpu-speed/cpu_profile.py` and `bench/cpu_live.py`, see docs/cpu-speed.md).
`OMP_WAIT_POLICY=PASSIVE` makes waiting threads sleep; libgomp's `GOMP_SPINCOUNT=10000` lets them spin ~0.1 ms
first, enough for the next op of a tick on an idle machine, too short to hurt a busy one. OpenMP reads both once,
when torch is imported, so `prefer_passive_wait()` runs from `rain_core/__init__.py` before anything imports torch
(the `rain` command, scripts); inside a host that imported torch first (ComfyUI) it is too late and nothing changes.
A user's own `OMP_WAIT_POLICY` always wins; `RAIN_CPU_TUNING=0` leaves the environment alone.

**Memory.** `resident_memory(pid)` reads a process's resident memory now and at its peak (Linux `/proc`): the
CLI's `--json`, the benches and the tests measure memory with it.

**Background compile.** Only a long-lived host (the ComfyUI server, `rain live`) says `allow_background_compile()`;
the compiled tick itself lives in `rain_core.stream.compiled`, its builder in `rain_core.stream.background_build`.

This module imports torch only inside functions: it runs from `rain_core/__init__.py`, before torch is imported.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("rain.cpu")  # every CPU-speed message (this module, stream.compiled, its cache and builder)

# "1": any process may build the compiled tick in the background (fast_path "auto"); "0": none may; unset: only
# long-lived hosts that call `allow_background_compile()` (the ComfyUI server, `rain live`)
BACKGROUND_ENV = "RAIN_BACKGROUND_COMPILE"
TUNING_ENV = "RAIN_CPU_TUNING"
SPIN_COUNT = "10000"  # ~0.1 ms; see docs/cpu-speed.md for the wait-policy measurements

_WAIT_POLICY_TOO_LATE = False  # torch was loaded before rain_core with no policy set (e.g. inside ComfyUI)
_HOST_ALLOWS_BACKGROUND = False


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


def note_wait_policy() -> None:
    """Log once where several threads run with OpenMP's spinning default because torch loaded before rain_core
    (a host such as ComfyUI): the fix is the environment variable, set before the host starts."""
    import torch  # import time: this module runs before torch loads (see the module docstring)

    if _WAIT_POLICY_TOO_LATE and torch.get_num_threads() > 1 and "OMP_WAIT_POLICY" not in os.environ:
        warn_once(
            "RAIN: torch was loaded before rain_core, so OpenMP threads spin while they wait; on a busy CPU that "
            "made ticks several times slower. Start the host with OMP_WAIT_POLICY=PASSIVE (or use one thread)."
        )


# ---------------------------------------------------------------------- what this CPU offers


def cpu_summary() -> dict:
    """What this CPU and process offer: SIMD level, native bf16 (AVX512-BF16 / AMX), threads, OpenMP wait policy."""
    import torch  # import time: this module runs before torch loads (see the module docstring)

    capability = torch.backends.cpu.get_cpu_capability()
    flags = cpu_flags()
    return {
        "capability": capability,
        "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "amx": "amx_tile" in flags,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default: spin, then sleep)"),
    }


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# ---------------------------------------------------------------------- background compile: who may


def resident_memory(pid: int | str = "self") -> dict[str, int] | None:
    """{"rss": bytes resident now, "peak": bytes at the peak (VmHWM)} of a process, from /proc/PID/status; None
    where that file does not exist (not Linux, or the process has ended)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "peak": int(fields["VmHWM"].split()[0]) * 1024}
    except (OSError, KeyError, ValueError):
        return None


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


# ---------------------------------------------------------------------- one log line per message

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Log `message` as a warning once per process (the CPU-speed modules share this set)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


__all__ = [
    "BACKGROUND_ENV",
    "SPIN_COUNT",
    "TUNING_ENV",
    "allow_background_compile",
    "background_compile_allowed",
    "cpu_flags",
    "cpu_summary",
    "note_wait_policy",
    "prefer_passive_wait",
    "warn_once",
]
