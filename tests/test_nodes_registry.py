"""nodes.registry: streams and queues kept between runs, refused under changed settings."""

import importlib

import pytest
from test_nodes import PACK_NAME, load_pack

load_pack()  # nodes/ is a package inside the pack (relative imports), as ComfyUI loads it
_module = importlib.import_module(f"{PACK_NAME}.nodes.registry")
StreamRegistry = _module.StreamRegistry
StreamSettingsChanged = _module.StreamSettingsChanged


def test_second_open_returns_the_same_stream():
    registry = StreamRegistry()
    first, created = registry.open_stream("a", {"steps": 4}, create=object)
    again, created_again = registry.open_stream("a", {"steps": 4}, create=object)
    assert created and not created_again and again.stream is first.stream


def test_changed_settings_are_refused_naming_the_change_and_leave_the_stream():
    registry = StreamRegistry()
    entry, _ = registry.open_stream("a", {"steps": 4, "seed": 1}, create=object)
    with pytest.raises(StreamSettingsChanged, match=r"steps: 4 -> 2.*reset.*stream_id"):
        registry.open_stream("a", {"steps": 2, "seed": 1}, create=object)
    assert registry.stream("a") is entry


def test_close_then_open_creates_a_new_stream():
    registry = StreamRegistry()
    entry, _ = registry.open_stream("a", {}, create=object)
    assert registry.close_stream("a")
    fresh, created = registry.open_stream("a", {"steps": 8}, create=object)
    assert created and fresh.stream is not entry.stream


def test_failed_create_registers_nothing():
    registry = StreamRegistry()

    def broken():
        raise ValueError("bad reference")

    with pytest.raises(ValueError, match="bad reference"):
        registry.open_stream("a", {}, create=broken)
    assert registry.stream_ids() == []


def test_frame_queue_is_kept_and_reconfigured():
    registry = StreamRegistry()
    queue = registry.frame_queue("q", capacity=8, fps=16.0, when_full="error")
    same = registry.frame_queue("q", capacity=16, fps=8.0, when_full="drop oldest")
    assert same is queue and queue.capacity == 16 and queue.fps == 8.0 and queue.when_full == "drop oldest"


def test_empty_stream_id_is_refused():
    with pytest.raises(ValueError, match="stream_id"):
        StreamRegistry().open_stream(" ", {}, create=object)
