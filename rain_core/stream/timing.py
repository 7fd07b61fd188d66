"""How long ticks take, without a host-device sync per tick: CUDA events read lazily on CUDA, the host clock
elsewhere. Folded into an exponential mean so nothing grows with the stream."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch


@dataclass
class TickClock:
    """Tick times of one stream: total seconds, the last tick's ms and an exponential mean (None before a tick)."""

    seconds: float = 0.0
    last_ms: float | None = None
    mean_ms: float | None = None
    pending: list = dataclasses.field(default_factory=list)  # CUDA (start, end) events not read yet

    def copy(self) -> TickClock:
        return TickClock(self.seconds, self.last_ms, self.mean_ms, list(self.pending))

    def start(self, device: torch.device):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(device))
            return start
        return time.perf_counter()

    def stop(self, started, device: torch.device) -> None:
        if device.type != "cuda":
            self._count(time.perf_counter() - started)
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(device))
        self.pending = [*self.pending, (started, end)]  # a new list: snapshots keep theirs
        if len(self.pending) > 64:  # bounded: a host far ahead of the GPU waits for the oldest tick
            self.pending[0][1].synchronize()

    def settle(self, wait: bool) -> None:
        """Fold finished ticks' CUDA event times in (all of them, waiting if `wait`)."""
        while self.pending:
            start, end = self.pending[0]
            if not end.query():
                if not wait:
                    return
                end.synchronize()
            self.pending = self.pending[1:]
            self._count(start.elapsed_time(end) / 1000)

    def settled(self) -> TickClock:
        self.settle(wait=True)
        return self

    def _count(self, elapsed: float) -> None:
        self.seconds += elapsed
        self.last_ms = elapsed * 1000
        # An exponential mean keeps the figure current without keeping a history.
        self.mean_ms = self.last_ms if self.mean_ms is None else 0.9 * self.mean_ms + 0.1 * self.last_ms


__all__ = ["TickClock"]
