"""Live intake (rain_core.live): drop-oldest back-pressure, frame order, capture timestamps, latency accounting,
face-morph changes from the next tick, recording, bad frames — on the built-in tiny model and the real pose video."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import re
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from rain_core import RainStream, StreamConfig, load_rain
from rain_core.io.video import read_video_frames
from rain_core.live import (
    MAX_FRAME_BYTES,
    FrameIntake,
    LiveInputError,
    LiveRecorder,
    LiveSession,
    LiveSettings,
    decode_frame,
    encode_jpeg,
)
from rain_core.pose import FaceMorpher, FaceMorphParams, from_pose_keypoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BUILTIN = ROOT / "rain_core" / "assets" / "tiny-rain"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pose"

# Window of 2 levels × 2 frames: the smallest ladder with cohorts in flight, a few ticks per test.
CONFIG = dict(height=64, width=64, levels=2, frames_per_cohort=2, steps=2, seed=3)


@pytest.fixture(scope="module")
def models():
    return load_rain(BUILTIN)


@pytest.fixture(scope="module")
def reference():
    return np.asarray(Image.open(EXAMPLES / "anyone-1.png").convert("RGB"))


@pytest.fixture(scope="module")
def pose_jpegs():
    frames, _, _ = read_video_frames(EXAMPLES / "anyone-video-1_kps.mp4", 0, 12)
    small = [np.asarray(Image.fromarray(frame).resize((128, 176))) for frame in frames]
    return [encode_jpeg(frame) for frame in small]


# ------------------------------------------------------------------------------------------- the door


def test_intake_keeps_the_newest_frames_and_counts_every_drop():
    intake = FrameIntake(capacity=3)
    pushed_out = [intake.put(f"frame {i}", seq=i, capture_ms=i * 33.3) for i in range(10)]
    assert [frame.seq for frame in pushed_out if frame is not None] == list(range(7))
    taken = intake.take()
    assert [frame.seq for frame in taken] == [7, 8, 9]
    assert [frame.capture_ms for frame in taken] == pytest.approx([233.1, 266.4, 299.7])
    counts = intake.counts()
    assert counts == {"received": 10, "taken": 3, "dropped": 7, "waiting": 0, "capacity": 3}
    assert counts["received"] == counts["taken"] + counts["dropped"] + counts["waiting"]


def test_take_waits_for_a_frame_and_close_wakes_a_waiting_take():
    intake = FrameIntake(capacity=2)
    threading.Timer(0.05, lambda: intake.put(b"x", seq=5)).start()
    assert [frame.seq for frame in intake.take(timeout=5)] == [5]
    threading.Timer(0.05, intake.close).start()
    started = time.monotonic()
    assert intake.take(timeout=5) == []
    assert time.monotonic() - started < 2
    with pytest.raises(LiveInputError, match="closed"):
        intake.put(b"x")


def test_bad_frames_are_refused_at_the_door_with_what_to_do(models, reference):
    session = LiveSession(models, StreamConfig(**CONFIG), reference)
    too_wide = io.BytesIO()
    Image.new("RGB", (2100, 8)).save(too_wide, format="PNG")
    cases = [
        (b"\xff" * (MAX_FRAME_BYTES + 1), "over the 4 MB limit"),
        (too_wide.getvalue(), "2100×8 px is over the 2048 px limit"),
        (b"not an image at all", "not a readable image"),
        (b"", "empty"),
        (np.zeros((8, 8)), r"expected an RGB image \(H, W, 3\)"),
    ]
    for payload, message in cases:
        with pytest.raises(LiveInputError, match=message):
            session.submit(payload)
    assert session.intake.counts()["received"] == 0
    with pytest.raises(LiveInputError, match="mode: expected one of"):
        LiveSettings(mode="webcam").validate()
    with pytest.raises(LiveInputError, match="face_morph.*eye_size"):
        session.set_face_morph({"eye_size": 2.0})
    session.close()


def test_decode_composites_transparency_over_white():
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert (decode_frame(buffer.getvalue()) == 255).all()


# ------------------------------------------------------------------------------------------- the session


def test_session_animates_frames_in_order_with_their_capture_times(models, reference, pose_jpegs):
    session = LiveSession(models, StreamConfig(**CONFIG), reference)
    outputs = []
    for index, data in enumerate(pose_jpegs):
        assert session.submit(data, seq=100 + index, capture_ms=1000.0 + 33.3 * index)
        outputs += session.step()
    stats = session.stats()
    # Each output is the frame of the input it animates: same order, same capture time, nothing lost.
    assert [o.seq for o in outputs] == list(range(100, 100 + len(outputs)))
    assert [o.capture_ms for o in outputs] == pytest.approx([1000.0 + 33.3 * i for i in range(len(outputs))])
    assert stats["pushed"] == len(pose_jpegs) and stats["dropped"] == 0
    assert stats["emitted"] == len(outputs) == stats["pushed"] - stats["in_flight"] > 0
    assert stats["lookahead_frames"] == 3 and stats["latency_ms"]["count"] == len(outputs)
    assert all(o.server_ms >= 0 and o.emitted >= o.received for o in outputs)
    # The session pushes exactly the decoded frames: a plain stream fed them renders the same animation.
    plain = RainStream(models, StreamConfig(**CONFIG))
    plain.set_reference(reference)
    expected = plain.push(np.stack([decode_frame(d) for d in pose_jpegs]))
    assert np.array_equal(np.stack([o.image for o in outputs]),
                          (expected.numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8)[: len(outputs)])
    rest = session.flush()
    assert [o.seq for o in outputs + rest] == list(range(100, 100 + len(pose_jpegs)))
    session.close()
    # A warmed-up session starts afresh: it animates exactly what a cold one does.
    warm = LiveSession(models, StreamConfig(**CONFIG), reference, LiveSettings(warm_up=True))
    assert warm.warm_up_s > 0 and warm.stats()["pushed"] == 0
    warm_outputs = []
    for index, data in enumerate(pose_jpegs):
        warm.submit(data, seq=100 + index)
        warm_outputs += warm.step()
    assert np.array_equal(np.stack([o.image for o in warm_outputs]), np.stack([o.image for o in outputs]))
    warm.close()


def test_a_slow_engine_drops_frames_at_the_door_and_the_backlog_stays_bounded(models, reference, pose_jpegs):
    """A burst far faster than the engine (frames offered at 30 fps for ~1 s, every tick slower than that
    on a CPU): the worker takes only the newest frames; what waits never exceeds the capacity."""
    session = LiveSession(models, StreamConfig(**CONFIG), reference, LiveSettings(capacity=2))
    received, errors, backlog = [], [], []
    session.start(received.extend, errors.append)
    for index in range(30):
        session.submit(pose_jpegs[index % len(pose_jpegs)], seq=index, capture_ms=33.3 * index)
        counts = session.intake.counts()
        backlog.append(counts["waiting"])
        time.sleep(1 / 30)
    deadline = time.monotonic() + 30
    while session.intake.counts()["waiting"] and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    session.stop()
    stats = session.stats()
    assert not errors and max(backlog) <= 2
    assert stats["received"] == 30 == stats["taken"] + stats["dropped"] + stats["waiting"]
    assert stats["pushed"] == stats["taken"] and stats["dropped_share"] == pytest.approx(stats["dropped"] / 30)
    seqs = [o.seq for o in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, none twice
    assert len(seqs) == stats["emitted"] == stats["pushed"] - stats["in_flight"]
    print(f"30 frames at 30 fps: {stats['dropped']} dropped at the door, {stats['emitted']} animated, "
          f"server latency p50 {stats['latency_ms']['p50']} ms, tick {stats['mean_ms_per_tick']} ms")
    session.close()


def test_face_morph_parameters_change_from_the_next_tick(models, reference):
    face_frame = from_pose_keypoint(json.loads((FIXTURES / "people.json").read_text()))[0]
    settings = LiveSettings(mode="face_morph", send_pose=True)
    session = LiveSession(models, StreamConfig(**{**CONFIG, "levels": 1, "steps": 1}), reference, settings)
    wide_eyes = {"eye_height": 5.0, "eye_width": 3.0}
    outputs = []
    for index in range(6):
        session.submit(face_frame, seq=index)
        outputs += session.step()
        if index == 2:  # mid-cohort: frame 3 still belongs to the cohort of frame 2 (m = 2)
            session.set_face_morph(wide_eyes)
    assert [o.seq for o in outputs] == list(range(6))  # one level: every tick emits its own cohort
    fitted = face_frame.letterboxed(64, 64)
    before = FaceMorpher(FaceMorphParams())(fitted, 64, 64)
    after = FaceMorpher(FaceMorphParams(**wide_eyes))(fitted, 64, 64)
    assert not np.array_equal(before, after)
    for output in outputs:
        assert np.array_equal(output.pose, before if output.seq < 4 else after), output.seq
    assert session.stats()["face_morph"]["eye_height"] == 5.0
    session.close()


def test_detect_mode_without_the_detector_says_what_is_missing(models, reference, pose_jpegs, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no models/rain/dwpose here
    session = LiveSession(models, StreamConfig(**CONFIG), reference, LiveSettings(mode="detect"))
    session.submit(pose_jpegs[0])
    with pytest.raises(LiveInputError, match="needs the DWPose detector.*mode 'pose'"):
        session.step()
    stats = session.stats()
    assert stats["pushed"] == 0 and stats["failed"] == 1 == stats["taken"]  # nothing reached the stream
    session.close()


def test_recording_writes_a_browser_playable_h264_mp4(models, reference, pose_jpegs, tmp_path):
    session = LiveSession(models, StreamConfig(**CONFIG), reference)
    path = tmp_path / "live.mp4"
    session.start_recording(path, fps=30)
    with pytest.raises(LiveInputError, match="already recording"):
        session.start_recording(tmp_path / "other.mp4")
    recorded = 0
    for index, data in enumerate(pose_jpegs):
        session.submit(data, seq=index)
        recorded += len(session.step())
    assert not path.exists()  # written beside it, moved into place at the end
    assert session.stop_recording() == path and recorded > 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == recorded
    assert [p.name for p in tmp_path.iterdir()] == ["live.mp4"]  # no partial file left
    session.close()


def test_a_recording_plays_at_the_pace_the_frames_came_in(tmp_path):
    """Most input frames dropped: the frames that were animated keep their arrival times in the video."""
    recorder = LiveRecorder(tmp_path / "paced.mp4", fps=30)
    frame = np.zeros((16, 16, 3), np.uint8)
    for when in (10.0, 10.5, 10.6, 12.0):
        recorder.write(frame, timestamp=when)
    recorder.close()
    with av.open(str(tmp_path / "paced.mp4")) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    assert times == pytest.approx([0.0, 0.5, 0.6, 2.0], abs=0.002)


def test_close_stops_the_worker_frees_the_stream_and_refuses_frames(models, reference, pose_jpegs, tmp_path):
    session = LiveSession(models, StreamConfig(**CONFIG), reference)
    session.start(lambda outputs: None)
    session.submit(pose_jpegs[0])
    session.start_recording(tmp_path / "never.mp4")
    session.close()
    assert not session.running and session.stream is None and not session.recording
    assert list(tmp_path.iterdir()) == []  # the aborted recording left nothing
    with pytest.raises(LiveInputError, match="closed"):
        session.submit(pose_jpegs[1])


# ------------------------------------------------------------------------------------------- the route's pieces
# nodes/live_route.py without ComfyUI: the pack imported as ComfyUI imports it (a package under another name).
# Its errors are the pack's own copy of LiveInputError, a ValueError.

PACK_NAME = "live_test_rain_pack"


@pytest.fixture(scope="module")
def live_route():
    import importlib.util
    import sys

    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    route = sys.modules[f"{PACK_NAME}.nodes.live_route"]
    assert route.REGISTERED is False  # no ComfyUI server here: nothing registered, nothing failed
    return route


def test_route_frame_messages_round_trip_and_malformed_ones_are_named(live_route):
    message = live_route.pack_message({"seq": 7, "t": 12.5}, b"jpeg bytes")
    assert live_route.unpack_message(message) == ({"seq": 7, "t": 12.5}, b"jpeg bytes")
    for bad, expected in [(b"\x00\x00", "4-byte header length"), (b"\x00\x00\x00\x40{}", "does not fit"),
                          (b"\x00\x00\x00\x03abc", "not JSON"), (b"\x00\x00\x00\x02[]", "JSON object")]:
        with pytest.raises(ValueError, match=expected):
            live_route.unpack_message(bad)


def test_route_settings_take_defaults_and_name_a_bad_field(live_route):
    settings = live_route.read_settings({"type": "start", "width": "128", "levels": None, "reference": ""})
    assert settings["width"] == 128 and settings["levels"] == live_route.DEFAULTS["levels"]
    assert settings["model"] == "tiny-rain (built-in)" and settings["noise"] == "fresh"
    assert live_route.read_settings({"noise": "shared"})["noise"] == "shared"  # the panel's noise field
    with pytest.raises(ValueError, match="levels: expected a whole number, found 'four'"):
        live_route.read_settings({"levels": "four"})
    with pytest.raises(ValueError, match="guidance"):
        live_route.read_settings({"guidance": "strong"})


def test_route_reads_the_reference_from_the_input_folder_only(live_route, tmp_path, monkeypatch):
    inputs = tmp_path / "input"
    inputs.mkdir()
    monkeypatch.setenv("RAIN_INPUT_DIR", str(inputs))
    Image.new("RGBA", (8, 6), (0, 0, 0, 0)).save(inputs / "clear.png")
    (tmp_path / "secret.png").write_bytes((inputs / "clear.png").read_bytes())
    assert (live_route._reference_image("clear.png [input]") == 255).all()  # transparency over white
    assert live_route._reference_image("").shape == np.asarray(Image.open(EXAMPLES / "anyone-1.png")).shape[:2] + (3,)
    for name in ("missing.png", "../secret.png"):
        with pytest.raises(ValueError, match="no image .* in ComfyUI's input folder.*Load Image"):
            live_route._reference_image(name)


async def serve_route(live_route):
    """The route's handler on a bare aiohttp server (ComfyUI's server is aiohttp too): (runner, port)."""
    from aiohttp import web

    routes = web.RouteTableDef()
    live_route.register(routes)
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def test_route_streams_over_a_real_websocket_and_frees_the_session_on_close(live_route, pose_jpegs):
    """The route's handler on a bare aiohttp server (ComfyUI's server is aiohttp too): frames in order, counts
    that add up, and no session left once the socket closes."""
    aiohttp = pytest.importorskip("aiohttp")

    async def run():
        runner, port = await serve_route(live_route)
        frames, messages, stats = [], [], None
        try:
            async with aiohttp.ClientSession() as client:
                async with client.ws_connect(f"ws://127.0.0.1:{port}/rain/live") as ws:
                    start = {"type": "start", **CONFIG, "reference": "", "capacity": 16}  # room for all: none dropped
                    await ws.send_str(json.dumps(start))
                    sent = 0
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        message = await ws.receive(timeout=120)
                        if message.type == aiohttp.WSMsgType.BINARY:
                            frames.append(live_route.unpack_message(message.data)[0])
                        else:
                            messages.append(json.loads(message.data))
                            if messages[-1].get("type") == "error":
                                raise AssertionError(messages[-1])
                            if messages[-1].get("state") == "ready":
                                for index, data in enumerate(pose_jpegs):
                                    await ws.send_bytes(live_route.pack_message({"seq": index, "t": 5.0 * index}, data))
                                    sent += 1
                            stats = messages[-1] if messages[-1].get("type") == "stats" else None
                            if stats and stats["pushed"] == sent > 0 and stats["emitted"] == len(frames) > 0:
                                break
                    assert live_route.live_sessions()  # open while the socket is
            for _ in range(100):
                if not live_route.live_sessions():
                    break
                await asyncio.sleep(0.05)
            return frames, stats
        finally:
            await runner.cleanup()

    frames, stats = asyncio.run(run())
    seqs = [header["seq"] for header in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [header["t"] for header in frames] == [5.0 * s for s in seqs]  # capture times echoed
    assert stats["received"] == stats["taken"] == stats["pushed"] == len(pose_jpegs) and stats["dropped"] == 0
    assert seqs == list(range(len(frames))) and stats["emitted"] == len(frames) == stats["pushed"] - stats["in_flight"]
    assert stats["dropped_out"] == 0 and live_route.live_sessions() == []
    gc.collect()
    assert len(live_route._model_cache) == 0  # the last session gone, its networks are not held any more


def test_route_session_takes_the_noise_setting_and_names_a_bad_one(live_route):
    session = live_route._open_session(live_route.read_settings({"noise": "shared", "levels": 2, "frames_per_cohort": 2,
                                                             "steps": 2}))
    try:
        assert session.stream.config.noise == "shared"
    finally:
        session.close()
    with pytest.raises(ValueError, match=r"noise: expected one of \('fresh', 'shared'\), found 'loud'"):
        live_route._open_session(live_route.read_settings({"noise": "loud"}))


def test_camera_footage_in_pose_mode_ends_the_session_with_the_one_pose_check_message(live_route, reference):
    """The live panel sends a photo where pose renders are expected: the same words as `rain animate --poses`, the
    session is freed (status stopped) instead of animating colour noise; pose_check off lets it through."""
    aiohttp = pytest.importorskip("aiohttp")
    photo = encode_jpeg(np.asarray(Image.fromarray(reference).resize((128, 176))))

    async def run():
        runner, port = await serve_route(live_route)
        messages = []
        try:
            async with aiohttp.ClientSession() as client:
                async with client.ws_connect(f"ws://127.0.0.1:{port}/rain/live") as ws:
                    await ws.send_str(json.dumps({"type": "start", **CONFIG}))
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        message = await ws.receive(timeout=120)
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        messages.append(json.loads(message.data))
                        if messages[-1].get("state") == "ready":
                            await ws.send_bytes(live_route.pack_message({"seq": 0, "t": 0.0}, photo))
                        if messages[-1].get("state") == "stopped":
                            break
                    sessions_after = live_route.live_sessions()
        finally:
            await runner.cleanup()
        return messages, sessions_after

    messages, sessions_after = asyncio.run(run())
    errors = [m["message"] for m in messages if m.get("type") == "error"]
    assert len(errors) == 1 and "live frames: these frames do not look like rendered skeletons" in errors[0]
    assert "the live panel's DWPose detection mode" in errors[0] and "--no-pose-check" in errors[0]
    assert messages[-1] == {"type": "status", "state": "stopped", "reason": errors[0]}
    assert sessions_after == []
    session = LiveSession(load_rain(BUILTIN), StreamConfig(**CONFIG), reference, LiveSettings(pose_check=False))
    try:
        session.submit(photo)
        session.step()
        assert session.stats()["pushed"] == 1
    finally:
        session.close()


# ------------------------------------------------------------------------------------------- many sessions


def test_sessions_sharing_networks_take_turns_and_never_see_each_others_reference(models, pose_jpegs):
    """Two sessions on the same loaded networks with different characters, pushed from two threads at once, give
    exactly the frames each gives alone: the UNet's per-pass reference is never the other session's."""
    references = [np.asarray(Image.open(EXAMPLES / name).convert("RGB")) for name in ("anyone-1.png", "anime-portrait.png")]
    config = dict(CONFIG, levels=2, frames_per_cohort=1, steps=2)  # a tick per frame: the most turns

    def run(reference, results, key, barrier=None):
        session = LiveSession(models, StreamConfig(**config), reference, LiveSettings(capacity=len(pose_jpegs)))
        if barrier is not None:
            barrier.wait()
        frames = []
        for index, data in enumerate(pose_jpegs):
            session.submit(data, seq=index)
            frames += [output.image for output in session.step()]
        results[key] = np.stack(frames)
        session.close()

    alone: dict = {}
    for key, reference in enumerate(references):
        run(reference, alone, key)
    assert not np.array_equal(alone[0], alone[1])  # the characters differ, so a mix-up would show
    together: dict = {}
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(reference, together, key, barrier))
               for key, reference in enumerate(references)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for key in (0, 1):
        assert np.array_equal(together[key], alone[key]), key


def test_fair_lock_serves_waiters_in_the_order_they_asked():
    from rain_core.live import FairLock

    lock, order = FairLock(), []
    lock.acquire()
    threads = []
    for index in range(4):
        thread = threading.Thread(target=lambda i=index: (lock.acquire(), order.append(i), lock.release()))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 5
        while len(lock._waiters) < index + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3]


def test_a_missing_detector_message_names_the_files_the_folder_and_how_to_get_them(models, reference, pose_jpegs):
    from rain_core.live import LiveSourceError
    from rain_core.pose import DetectorUnavailable

    def missing():
        raise DetectorUnavailable("DWPose detector needs onnxruntime, which is not installed.")

    session = LiveSession(models, StreamConfig(**CONFIG), reference, LiveSettings(mode="detect"), make_detector=missing)
    session.submit(pose_jpegs[0])
    with pytest.raises(LiveSourceError) as caught:
        session.step()
    message = str(caught.value)
    for part in ("models/rain/dwpose/", "yolox_l.onnx", "dw-ll_ucoco_384.onnx", "rain download --what dwpose",
                 "on first use", "onnxruntime"):
        assert part in message, (part, message)
    session.close()


def test_a_session_takes_pose_frames_from_a_keypoint_file(models, reference):
    from rain_core.pose import read_keypoints

    sequence = read_keypoints(EXAMPLES / "keypoints" / "rain-dance-keypoints.json")
    session = LiveSession(models, StreamConfig(**CONFIG), reference, LiveSettings(send_pose=True))
    outputs = []
    for index, frame in enumerate(sequence.frames[:8]):
        session.submit(frame, seq=index)
        outputs += session.step()
    assert [o.seq for o in outputs] == list(range(len(outputs))) and outputs
    assert all(o.pose.shape == (64, 64, 3) and o.pose.max() > 0 for o in outputs)  # a drawn skeleton
    session.close()


# ------------------------------------------------------------------------------------------- the route's bounds


def test_route_refuses_what_one_session_may_not_ask_naming_the_field_and_the_limit(live_route):
    cases = [({"width": 100_000}, "width: 100000 px is over the live limit of 1024 px a side"),
             ({"height": 1025}, "height: 1025 px is over the live limit of 1024 px"),
             ({"levels": 8, "frames_per_cohort": 8}, "levels × frames_per_cohort: a window of 8 × 8 = 64 frames is "
                                                     "over the live limit of 32"),
             ({"levels": 4, "steps": 64}, "steps: 64 is over the live limit of 16"),
             ({"capacity": 10_000}, "capacity: expected 1 to 64 frames waiting, found 10000")]
    for message, expected in cases:
        with pytest.raises(ValueError, match=re.escape(expected)):
            live_route.read_settings(message)
    assert live_route.read_settings({"width": 1024, "height": 0, "capacity": "8"})["capacity"] == 8
    # the area against the model's own (64×64 for the built-in model): 4× its area is the most
    with pytest.raises(ValueError, match=re.escape("width × height: 256×256 is over the live limit of 4× the model's "
                                                   "own area (64×64, so at most 16,384 px, e.g. 128×128)")):
        live_route._open_session(live_route.read_settings({"width": 256, "height": 256}))


def test_sessions_started_together_share_one_loaded_model(live_route):
    """Starts that arrive at once (several tabs, a reconnecting client) load the model once: every session holds the
    same networks, so they take turns through one lock instead of ticking copies of the model side by side."""
    gc.collect()
    assert len(live_route._model_cache) == 0
    settings = live_route.read_settings({"levels": 2, "frames_per_cohort": 2, "steps": 2})
    sessions, barrier = [], threading.Barrier(3)

    def open_one():
        barrier.wait()
        sessions.append(live_route._open_session(dict(settings)))

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert len(sessions) == 3
        assert len({id(session.model_handle) for session in sessions}) == 1
        assert len({id(session.networks_lock) for session in sessions}) == 1
    finally:
        for session in sessions:
            session.close()


def test_route_session_limit_comes_from_the_environment(live_route, monkeypatch):
    monkeypatch.delenv(live_route.MAX_SESSIONS_ENV, raising=False)
    assert live_route.max_sessions() == 2  # live_admission.DEFAULT_MAX_SESSIONS, the measured capacity
    monkeypatch.setenv(live_route.MAX_SESSIONS_ENV, "7")
    assert live_route.max_sessions() == 7 and live_route.limits()["max_sessions"] == 7
    monkeypatch.setenv(live_route.MAX_SESSIONS_ENV, "lots")
    with pytest.raises(ValueError, match="RAIN_LIVE_MAX_SESSIONS='lots' is not a whole number"):
        live_route.max_sessions()


class RouteClient:
    """One websocket client of the bare route: frames and messages it receives, frames it sends (seqs)."""

    def __init__(self, port: int, tag: int):
        self.url, self.tag = f"ws://127.0.0.1:{port}/rain/live", tag
        self.frames, self.messages, self.sent = [], [], set()

    async def open(self, client):
        import aiohttp

        self.ws = await client.ws_connect(self.url)

        async def read():
            async for message in self.ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    self.frames.append(unpack_header(message.data))
                elif message.type == aiohttp.WSMsgType.TEXT:
                    self.messages.append(json.loads(message.data))

        self.reader = asyncio.ensure_future(read())
        return self

    async def wait(self, predicate, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if predicate(message):
                    return message
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such message in {timeout} s: {self.messages[-5:]}")

    async def start(self, **settings):
        self.messages.clear()
        await self.ws.send_str(json.dumps({"type": "start", **CONFIG, **settings}))
        return await self.wait(lambda m: m.get("state") == "ready" or m.get("type") == "error")

    async def send(self, route, seq, data):
        self.sent.add(seq)
        await self.ws.send_bytes(route.pack_message({"seq": seq, "t": float(seq)}, data))

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


def unpack_header(message: bytes) -> dict:
    import struct

    (length,) = struct.unpack(">I", message[:4])
    return json.loads(message[4:4 + length])


def test_route_serves_concurrent_sessions_each_with_its_own_frames_and_refuses_beyond_the_limit(
        live_route, pose_jpegs, monkeypatch):
    """Two tabs stream at once, each gets back only frames it sent (seq ranges apart); a third Start beyond
    RAIN_LIVE_MAX_SESSIONS=2 is refused with the message and the two keep streaming; once one leaves, a new one fits."""
    aiohttp = pytest.importorskip("aiohttp")
    monkeypatch.setenv(live_route.MAX_SESSIONS_ENV, "2")

    async def run():
        runner, port = await serve_route(live_route)
        try:
            async with aiohttp.ClientSession() as client:
                first, second, third = [await RouteClient(port, tag).open(client) for tag in (1, 2, 3)]
                assert (await first.start(reference="", capacity=32)).get("state") == "ready"  # none dropped
                assert (await second.start(reference="", seed=9, capacity=32)).get("state") == "ready"
                refused = await third.start(reference="")
                assert refused["type"] == "error", refused
                assert refused["message"] == ("the server holds 2 live sessions (its limit); try again later or raise "
                                              "RAIN_LIVE_MAX_SESSIONS")
                for index in range(24):  # interleaved, seq ranges apart: 1000.. and 2000..
                    for tagged in (first, second):
                        await tagged.send(live_route, tagged.tag * 1000 + index, pose_jpegs[index % len(pose_jpegs)])
                    await asyncio.sleep(0.02)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not (len(first.frames) >= 8 and len(second.frames) >= 8):
                    await asyncio.sleep(0.05)
                status = await (await client.get(f"http://127.0.0.1:{port}/rain/live/status")).json()
                assert len(status["sessions"]) == 2 and status["limits"]["max_sessions"] == 2
                await first.close()
                for _ in range(100):
                    if len(live_route.live_sessions()) == 1:
                        break
                    await asyncio.sleep(0.05)
                assert (await third.start(reference="")).get("state") == "ready"  # room again
                await second.close()
                await third.close()
                return first, second
        finally:
            await runner.cleanup()

    first, second = asyncio.run(run())
    for tagged in (first, second):
        seqs = [header["seq"] for header in tagged.frames]
        assert len(seqs) >= 8 and set(seqs) <= tagged.sent, (tagged.tag, seqs)  # isolated: only its own frames
        assert seqs == sorted(seqs)


def test_route_streams_a_keypoint_file_read_by_the_one_reader(live_route):
    """The panel's keypoint source: the JSON goes up once, the server paces its frames; a malformed file is named."""
    aiohttp = pytest.importorskip("aiohttp")
    data = json.loads((EXAMPLES / "keypoints" / "rain-dance-keypoints.json").read_text())

    async def run():
        runner, port = await serve_route(live_route)
        try:
            async with aiohttp.ClientSession() as client:
                tab = await RouteClient(port, 1).open(client)
                await tab.ws.send_str(json.dumps({"type": "keypoints", "name": "early.json", "data": data}))
                early = await tab.wait(lambda m: m.get("type") == "error")
                assert "press Start first" in early["message"]
                assert (await tab.start(reference="")).get("state") == "ready"
                await tab.ws.send_str(json.dumps({"type": "keypoints", "name": "bad.json", "data": {"frames": 3}}))
                bad = await tab.wait(lambda m: m.get("type") == "error" and "bad.json" in m["message"])
                assert "'frames' must be a list" in bad["message"]
                await tab.ws.send_str(json.dumps({"type": "keypoints", "name": "dance.json", "data": data}))
                playing = await tab.wait(lambda m: m.get("state") == "keypoints")
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and len(tab.frames) < 6:
                    await asyncio.sleep(0.05)
                await tab.close()
                return playing, tab.frames
        finally:
            await runner.cleanup()

    playing, frames = asyncio.run(run())
    assert playing["name"] == "dance.json" and playing["frames"] == len(data["frames"]) and playing["fps"] == data["fps"]
    seqs = [header["seq"] for header in frames]
    assert len(seqs) >= 6 and seqs == sorted(seqs) and all(header["t"] is None for header in frames)
