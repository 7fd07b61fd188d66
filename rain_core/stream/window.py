"""The window: the cohorts in flight, which levels of the ladder they occupy, warm-up and flush.

Cohorts enter one tick apart and every tick moves each of them one level down the ladder, so the occupied levels
are always one contiguous run: during warm-up the noisiest levels fill first (the run ends at level p − 1), in
the steady state all p levels are occupied, and during flush the run drains from the top. A tick is therefore
described completely by its `Occupancy` (lowest level, number of cohorts, whether a new cohort enters), and the
one `Tick` runs every kind of tick on the slice of its fixed buffers that the occupancy names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Occupancy:
    """The levels a tick works on: `count` cohorts at levels lowest … lowest + count − 1 (level 0 = the cleanest,
    whose cohort leaves at the end of the tick); `entering`: the top one is a new cohort entering at t = 999."""

    lowest: int
    count: int
    entering: bool

    @classmethod
    def steady(cls, levels: int) -> Occupancy:
        return cls(0, levels, True)

    @property
    def leaving(self) -> bool:
        """The cohort at level 0 is clean after this tick and leaves the window."""
        return self.lowest == 0

    def frames(self, m: int) -> slice:
        """The window's frames (in level order, m per level) this tick works on."""
        return slice(self.lowest * m, (self.lowest + self.count) * m)


@dataclass
class Window:
    """The cohorts in flight, oldest first. Tensors are replaced, never modified in place, so a copy of this
    object (with copied lists) is a snapshot the stream can roll back to."""

    latents: torch.Tensor | None = None  # (1, C, n·m, h, w), model dtype
    pose_features: torch.Tensor | None = None  # (1, Cp, n·m, h, w), model dtype
    cohorts: list[int] = dataclasses.field(default_factory=list)  # cohort numbers
    ticks_done: list[int] = dataclasses.field(default_factory=list)  # ticks each cohort has been through
    real_frames: list[int] = dataclasses.field(default_factory=list)  # < m only for a flushed, padded last cohort

    def copy(self) -> Window:
        return Window(self.latents, self.pose_features, list(self.cohorts), list(self.ticks_done), list(self.real_frames))

    def next_level(self, levels: int) -> int:
        """The level the oldest cohort works at in the next tick (a cohort that has done d ticks sits at p − 1 − d);
        `levels` for an empty window."""
        return levels - 1 - self.ticks_done[0] if self.cohorts else levels

    def occupancy(self, levels: int, entering: bool) -> Occupancy:
        """What the next tick works on, with a new cohort entering or (flush) not."""
        lowest = self.next_level(levels) - (1 if entering and not self.cohorts else 0)
        return Occupancy(lowest, len(self.cohorts) + int(entering), entering)

    def after_tick(self, occupancy: Occupancy, cohort: int | None, real_frames: int) -> tuple[Window, int]:
        """The bookkeeping of a tick (tensors excluded): returns the new window and how many real frames left."""
        cohorts, done, real = list(self.cohorts), list(self.ticks_done), list(self.real_frames)
        if occupancy.entering:
            cohorts.append(cohort)
            done.append(0)
            real.append(real_frames)
        done = [d + 1 for d in done]
        leaving = 0
        if occupancy.leaving:
            leaving = real[0]
            del cohorts[0], done[0], real[0]
        return Window(None, None, cohorts, done, real), leaving


def is_consecutive(ticks_done: list[int], levels: int) -> bool:
    """True for the ticks_done of a window a stream can hold: one cohort per tick, strictly decreasing by 1, each
    between 1 and levels − 1 (a cohort is stored only after its first tick and leaves after its last)."""
    return all(1 <= d <= levels - 1 for d in ticks_done) and all(
        a - b == 1 for a, b in zip(ticks_done, ticks_done[1:])
    )


__all__ = ["Occupancy", "Window", "is_consecutive"]
