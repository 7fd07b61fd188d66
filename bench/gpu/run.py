"""Bookkeeping of a GPU benchmark run: the time budget per section (SIGALRM), the JSON written after every section,
and device helpers (CUDA-event clock, memory counters) that never read a device value inside a timed region."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import signal
import time
import traceback
from pathlib import Path

import torch

from rain_core.cpu import resident_memory

GIB = 1024**3


class SectionTimeout(Exception):
    pass


class Run:
    """Results, time budget and the JSON file, updated after every section."""

    def __init__(self, args):
        self.args = args
        self.started = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "gpu_stream.json"
        self.results: dict = {"sections": {}, "errors": [], "rows": []}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.results, indent=1, default=_jsonable))
        os.replace(temporary, self.path)

    def section(self, name: str, work, needs_s: float = 5.0, limit_s: float | None = None) -> bool:
        """Run work() if `needs_s` seconds of budget are left; stop it after `limit_s` (or what is left);
        record status, seconds and any error; save the JSON either way. True when it finished."""
        record = {"status": "skipped", "seconds": 0.0}
        self.results["sections"][name] = record
        left = self.left()
        if left < needs_s:
            record["reason"] = f"{left:.0f} s of budget left, needs {needs_s:.0f} s"
            print(f"[{name}] skipped: {record['reason']}", flush=True)
            self.save()
            return False
        limit = max(1.0, min(left - 2.0, limit_s if limit_s is not None else left - 2.0))
        print(f"[{name}] (budget {limit:.0f} s, {left:.0f} s left)", flush=True)
        start = time.perf_counter()
        alarm = _arm_alarm(limit)
        try:
            work()
            record["status"] = "ok"
        except Exception as error:  # noqa: BLE001 - a failed section must not stop the others
            record["status"] = "timeout" if isinstance(error, SectionTimeout) else "error"
            record["error"] = f"{type(error).__name__}: {error}"
            self.results["errors"].append({"section": name, "error": record["error"], "trace": traceback.format_exc()})
            print(f"[{name}] {record['status']}: {record['error']}", flush=True)
            traceback.print_exc()
        finally:
            _disarm_alarm(alarm)
            record["seconds"] = round(time.perf_counter() - start, 2)
            self.save()
        return record["status"] == "ok"


def _raise_timeout(signum, frame):
    raise SectionTimeout("section ran past its time budget")


def _arm_alarm(seconds: float):
    if not hasattr(signal, "setitimer"):
        return None
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return previous


def _disarm_alarm(previous) -> None:
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
        if previous is not None:
            signal.signal(signal.SIGALRM, previous)


def _jsonable(value):
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


class Clock:
    """Marks on the device timeline (CUDA events) or the host clock (CPU); read only after `finish()`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def finish(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _resident(field: str) -> int:
    """This process's resident memory, "rss" (now) or "peak" (VmHWM), in bytes; 0 where /proc has none."""
    memory = resident_memory()
    return memory[field] if memory else 0


def allocated(device: torch.device) -> int:
    """Bytes allocated on the device; on the CPU the process's resident memory (weights, buffers and the rest)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else _resident("rss")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak resident memory (VmHWM) to what it holds now
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak(device: torch.device) -> int:
    """Peak bytes allocated on the device since `reset_peak`; on the CPU the process's peak resident memory."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _resident("peak")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.double(), reference.double()
    return ((ours - reference).norm() / reference.norm().clamp_min(1e-30)).item()
