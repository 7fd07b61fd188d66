"""Where a stream's randomness comes from, and the one place that lays it out for a tick.

A cohort's noise is a pure function of (seed, cohort number, step number), never of how the frames were pushed:
that is what makes a stream chunk-invariant and resumable bit for bit (rain-method.md §2).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import torch


class NoiseSource(Protocol):
    """Where the stream's randomness comes from. Returns float tensors of exactly `shape` (any device).

    `initial(cohort, shape)`: the starting latents of cohort number `cohort` (its m frames at t = 999).
    `step(cohort, step, shape)`: the fresh noise of that cohort's LCM step number `step` (0 = first step);
    not asked for a step that ends below t = 0 (its noise would be multiplied by 0).
    """

    def initial(self, cohort: int, shape: tuple[int, ...]) -> torch.Tensor: ...

    def step(self, cohort: int, step: int, shape: tuple[int, ...]) -> torch.Tensor: ...


class SeededNoise:
    """Counter-based N(0, I): each (seed, cohort, step) seeds its own CPU generator, so the noise a
    cohort gets does not depend on chunking, on what else is in flight, or on the device."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def _draw(self, cohort: int, step: int, shape) -> torch.Tensor:
        key = hashlib.blake2b(f"rain-noise/{self.seed}/{cohort}/{step}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(key, "little") & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def initial(self, cohort: int, shape) -> torch.Tensor:
        return self._draw(cohort, -1, shape)

    def step(self, cohort: int, step: int, shape) -> torch.Tensor:
        return self._draw(cohort, step, shape)


class SharedNoise(SeededNoise):
    """The same noise for every frame: each frame's initial latents and its noise at LCM step k are those of frame 0
    of cohort 0 (StreamDiffusion's fixed-noise trick). Not the method: an ablation that shows how much of a
    stream's frame-to-frame change comes from each frame's fresh noise rather than from the poses."""

    def initial(self, cohort: int, shape) -> torch.Tensor:
        return self._one_frame(-1, shape)

    def step(self, cohort: int, step: int, shape) -> torch.Tensor:
        return self._one_frame(step, shape)

    def _one_frame(self, step: int, shape) -> torch.Tensor:
        single = (*shape[:2], 1, *shape[3:])  # (1, C, m, h, w) -> one frame, repeated over the m frames
        return self._draw(0, step, single).expand(shape).clone()


class TickNoise:
    """The noise of one tick, laid out the way `Tick` reads it: the entering cohort's initial latents
    (1, C, m, h, w) and the step noise of every UNet call, (calls, 1, C, K, h, w) with K = levels·m, where the
    frames of level l are [l·m, (l+1)·m) — the window's slots, oldest (cleanest) level first.

    A cohort at level l has been through levels − 1 − l ticks, so UNet call j of this tick is its LCM step number
    (levels − 1 − l)·calls + j. Where that step ends below t = 0 (the cohort leaves the ladder) the noise would be
    multiplied by 0: it is not drawn and stays 0, as do the slots outside the window. Everything is float32 on the
    CPU and freshly allocated per tick (a copy to the device may still be reading the last one), so assembling it
    reads no device value.
    """

    def __init__(self, ladder_rows: list[list[int]], step_length: int, m: int, latent_shape):
        self.calls, self.levels = len(ladder_rows), len(ladder_rows[0])
        self.m = m
        self.cohort_shape = (1, latent_shape[0], m, *latent_shape[1:])
        self.window_shape = (self.calls, 1, latent_shape[0], self.levels * m, *latent_shape[1:])
        # needed[j][l]: does call j of a cohort at level l take fresh noise (plain ints: no tensor is read)
        self.needed = [[t - step_length >= 0 for t in row] for row in ladder_rows]

    def draw(
        self, noise: NoiseSource, cohorts: list[int], lowest_level: int, entering: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(initial, steps) of a tick whose window holds `cohorts` (oldest first, the entering one last if
        `entering`) at levels lowest_level, lowest_level + 1, …; initial is None when no cohort enters."""
        m, shape = self.m, self.cohort_shape
        initial = noise.initial(cohorts[-1], shape).to("cpu", torch.float32) if entering else None
        steps = torch.zeros(self.window_shape)
        for index, cohort in enumerate(cohorts):
            level = lowest_level + index
            done = self.levels - 1 - level  # ticks this cohort has been through
            for call in range(self.calls):
                if self.needed[call][level]:
                    steps[call, :, :, level * m : (level + 1) * m] = noise.step(cohort, done * self.calls + call, shape)
        return initial, steps


__all__ = ["NoiseSource", "SeededNoise", "SharedNoise", "TickNoise"]
