"""THE push loop: pose frames from any iterable go into a stream a chunk at a time and the finished frames come out
as they leave it. The CLI, RAIN Sampler, the live session, `rain batch` and the benches all feed streams through
`push_frames`, so chunking, the last partial chunk and the flush are written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch


def _batch(frames: list):
    """One push's worth of frames as the stream takes them: a stacked tensor/array, or a list when a frame is None
    (no pose)."""
    if any(frame is None for frame in frames):
        return frames
    if all(isinstance(frame, torch.Tensor) for frame in frames):
        return torch.stack(frames)
    return np.stack([np.asarray(frame) for frame in frames])


def push_frames(stream, frames: Iterable, flush: bool = False,
                chunk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Push `frames` ((H, W, 3) frames, None for "no pose", or the rows of an (N, H, W, 3) batch) `chunk` at a time
    (default: the stream's frames_per_cohort, one tick's worth) and yield (pose frames taken so far, the frames
    that left the stream on that push, (n, H, W, 3)), including empty batches during warm-up, so a caller can show
    progress or stop between pushes. With `flush` the frames still in flight follow as a last item (when any pose
    frame was taken). Every push is a transaction of the stream: stopping between items leaves it consistent."""
    size = chunk or stream.config.frames_per_cohort
    batch: list = []
    taken = 0
    for frame in frames:
        batch.append(frame)
        taken += 1
        if len(batch) == size:
            yield taken, stream.push(_batch(batch))
            batch = []
    if batch:
        yield taken, stream.push(_batch(batch))
    if flush and taken:
        yield taken, stream.flush()
