"""nodes.frame_pacing: pacing, capacity policies and stats, with a controllable clock."""

import importlib

import pytest
import torch
from test_nodes import PACK_NAME, load_pack

load_pack()  # nodes/ is a package inside the pack (relative imports), as ComfyUI loads it
_module = importlib.import_module(f"{PACK_NAME}.nodes.frame_pacing")
FrameQueue = _module.FrameQueue
FrameQueueFullError = _module.FrameQueueFullError


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def numbered(start, count, size=8):
    """Frames whose pixels carry their index, so order and identity can be checked after the queue."""
    return torch.stack([torch.full((size, size, 3), (start + i) / 1000.0) for i in range(count)])


def ids(frames):
    return [round(float(f[0, 0, 0]) * 1000) for f in frames] if frames is not None else []


def test_pace_releases_first_frame_at_once_then_one_per_period():
    clock = Clock()
    queue = FrameQueue(capacity=100, fps=10.0, clock=clock)
    queue.push(numbered(0, 20))
    assert ids(queue.pop_due()) == [0]
    clock.now += 0.25  # 2.5 periods later: frames 1 and 2 are due
    assert ids(queue.pop_due()) == [1, 2]
    clock.now += 0.04  # 0.29 s: frame 3 is due at 0.30 s
    assert queue.pop_due() is None
    clock.now += 0.02
    assert ids(queue.pop_due()) == [3]


def test_frames_keep_their_order_across_pushes_and_releases():
    clock = Clock()
    queue = FrameQueue(capacity=100, fps=1000.0, clock=clock)
    released = []
    for start in range(0, 40, 8):
        queue.push(numbered(start, 8))
        clock.now += 0.003
        released += ids(queue.pop_due())
    released += ids(queue.pop_all())
    assert released == list(range(40))


def test_error_policy_refuses_push_and_keeps_queued_frames():
    queue = FrameQueue(capacity=10, fps=1.0, when_full="error", clock=Clock())
    queue.push(numbered(0, 8))
    with pytest.raises(FrameQueueFullError, match="holds 8 of 10 frames.*4 more"):
        queue.push(numbered(8, 4))
    assert len(queue) == 8
    assert ids(queue.pop_all()) == list(range(8))


def test_drop_oldest_policy_keeps_newest_and_counts_drops():
    queue = FrameQueue(capacity=5, fps=1.0, when_full="drop oldest", clock=Clock())
    queue.push(numbered(0, 4))
    queue.push(numbered(4, 4))
    assert queue.stats().dropped == 3
    assert ids(queue.pop_all()) == [3, 4, 5, 6, 7]


def test_release_now_policy_hands_on_the_excess_without_dropping():
    clock = Clock()
    queue = FrameQueue(capacity=4, fps=1.0, when_full="release now", clock=clock)
    queue.push(numbered(0, 10))
    assert ids(queue.pop_excess()) == [0, 1, 2, 3, 4, 5]
    assert len(queue) == 4 and queue.stats().dropped == 0
    queue.push(numbered(10, 3))
    # Paced release: frame 6 is due (first of the pace) and the 3 beyond capacity go at once.
    assert ids(queue.pop_due()) == [6, 7, 8]


def test_no_burst_after_the_producer_stalls():
    clock = Clock()
    queue = FrameQueue(capacity=100, fps=10.0, clock=clock)
    queue.push(numbered(0, 1))
    assert ids(queue.pop_due()) == [0]
    clock.now += 5.0
    assert queue.pop_due() is None  # producer stalled: an underrun
    queue.push(numbered(1, 10))
    assert ids(queue.pop_due()) == [1]  # the pace restarts; 5 s of "owed" frames are not dumped at once
    assert queue.stats().underruns == 1


def test_latency_and_rates_are_measured():
    clock = Clock()
    queue = FrameQueue(capacity=100, fps=4.0, clock=clock)
    for _ in range(8):
        queue.push(numbered(0, 2))
        clock.now += 0.5
        queue.pop_due()
    stats = queue.stats()
    assert stats.input_fps == pytest.approx(4.0)
    assert stats.output_fps == pytest.approx(4.0, rel=0.3)
    assert stats.latency_ms > 0
    assert stats.pushed == 16 and stats.released_total + stats.queued == 16


def test_size_change_is_refused_with_a_fix():
    queue = FrameQueue(capacity=10, clock=Clock())
    queue.push(numbered(0, 2, size=8))
    with pytest.raises(ValueError, match="16x16.*8x8.*Flush"):
        queue.push(numbered(2, 2, size=16))


@pytest.mark.parametrize("kwargs, match", [({"capacity": 0}, "capacity"), ({"fps": 0.0}, "fps"),
                                           ({"when_full": "ignore"}, "when_full")])
def test_bad_settings_name_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrameQueue(**kwargs)
