"""Real-host tier: the live route /rain/live on a real ComfyUI, fed the real pose video at 30 fps over a websocket.

Opt-in like tests/test_comfyui_host.py (COMFYUI_DIR and COMFY_PYTHON; skipped with the reason otherwise):

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python .venv/bin/pytest tests/test_live_route.py -m comfyui -s

The built-in tiny model runs at 64 px with a 2-level × 2-frame window so that a CPU gets through several ticks
in a few seconds. Frames must come back in order, the counts must add up the way the dropping policy says,
latency is reported, and a socket closed mid-stream frees its stream (registry empty, memory back to baseline).
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
import urllib.request

import numpy as np
import pytest
from comfy_host import DATA, LIVE_REFERENCE, REASON, live_server
from PIL import Image

REFERENCE = LIVE_REFERENCE

pytestmark = [pytest.mark.comfyui] + ([pytest.mark.skip(reason=REASON)] if REASON else [])

aiohttp = pytest.importorskip("aiohttp", reason="the websocket client of this tier needs aiohttp (pip install aiohttp)")

FPS = 30.0
SETTINGS = {"type": "start", "model": "tiny-rain (built-in)", "width": 64, "height": 64, "levels": 2,
            "frames_per_cohort": 2, "steps": 2, "seed": 5, "reference": REFERENCE, "mode": "pose"}


MAX_SESSIONS = 2  # the server's RAIN_LIVE_MAX_SESSIONS in this module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the server process inherits it
        patch.setenv("RAIN_LIVE_MAX_SESSIONS", str(MAX_SESSIONS))
        yield from live_server(tmp_path_factory, "comfy-live")


@pytest.fixture(scope="module")
def pose_jpegs():
    from rain_core.io.video import read_video_frames
    from rain_core.live import encode_jpeg

    frames, _, _ = read_video_frames(DATA / "anyone-video-1_kps.mp4", 0, 64)
    return [encode_jpeg(np.asarray(Image.fromarray(f).resize((256, 352)))) for f in frames]


def frame_message(seq: int, capture_ms: float, jpeg: bytes) -> bytes:
    header = json.dumps({"seq": seq, "t": capture_ms}).encode()
    return struct.pack(">I", len(header)) + header + jpeg


def parse_frame(message: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack(">I", message[:4])
    return json.loads(message[4:4 + length]), message[4 + length:]


def now_ms() -> float:
    return time.perf_counter() * 1000.0


class Client:
    """A websocket client like the panel: frames out at a steady pace, everything that comes back recorded."""

    def __init__(self, server):
        self.url = server.base.replace("http://", "ws://") + "/rain/live"
        self.frames: list[tuple[dict, bytes, float]] = []  # (header, jpeg, arrival ms)
        self.messages: list[dict] = []

    async def __aenter__(self):
        self.session = aiohttp.ClientSession()
        self.socket = await self.session.ws_connect(self.url, max_msg_size=0)
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc):
        await self.socket.close()
        await self.session.close()
        self.reader.cancel()

    async def _read(self):
        async for message in self.socket:
            if message.type == aiohttp.WSMsgType.BINARY:
                header, jpeg = parse_frame(message.data)
                self.frames.append((header, jpeg, now_ms()))
            elif message.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))

    async def wait_for(self, predicate, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if predicate(message):
                    return message
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no such message in {timeout} s; got {[m.get('type') for m in self.messages]} "
                           f"{[m for m in self.messages if m.get('type') == 'error']}")

    async def start(self, **overrides) -> dict:
        await self.socket.send_str(json.dumps({**SETTINGS, **overrides}))
        return await self.wait_for(lambda m: m.get("state") in ("ready",) or m.get("type") == "error", 300)

    async def feed(self, jpegs, fps: float = FPS, count: int | None = None, first_seq: int = 0) -> int:
        """Send frames at `fps` (paced on the clock, like a camera); returns how many were sent."""
        count = len(jpegs) if count is None else count
        started = time.perf_counter()
        for index in range(count):
            delay = started + index / fps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.socket.send_bytes(frame_message(first_seq + index, now_ms(), jpegs[index % len(jpegs)]))
        return count

    def latest_stats(self) -> dict | None:
        return next((m for m in reversed(self.messages) if m.get("type") == "stats"), None)

    async def settle(self, sent: int, timeout: float = 120.0) -> dict:
        """Wait until every sent frame is accounted for and the worker has nothing left to take."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.latest_stats()
            if (stats and stats["received"] == sent and stats["waiting"] == 0 and stats["pushed"] == stats["taken"]
                    and stats["emitted"] == len(self.frames)):
                await asyncio.sleep(0.6)  # one more stats message, to be sure nothing moved
                again = self.latest_stats()
                if again["emitted"] == stats["emitted"] == len(self.frames):
                    return again
            await asyncio.sleep(0.05)
        raise TimeoutError(f"stream did not settle: {self.latest_stats()}, {len(self.frames)} frames back")


def status(server) -> dict:
    return server.get("/rain/live/status")


def server_rss_mb(server) -> float:
    psutil = pytest.importorskip("psutil")
    return psutil.Process(server.process.pid).memory_info().rss / 2**20


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_pose_video_at_30_fps_comes_back_in_order_and_the_counts_follow_the_dropping_policy(server, pose_jpegs):
    async def run():
        async with Client(server) as client:
            ready = await client.start()
            assert ready.get("state") == "ready", ready
            assert ready["lookahead_frames"] == 3 and (ready["width"], ready["height"]) == (64, 64)
            sent = await client.feed(pose_jpegs)
            return client, await client.settle(sent), sent

    client, stats, sent = asyncio.run(run())
    seqs = [header["seq"] for header, _, _ in client.frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs, seqs  # in order, none twice
    # The dropping policy: every frame is taken, dropped at the door, or still waiting (none, once settled);
    # every taken frame is pushed; every pushed frame comes back except those still in the window.
    assert stats["received"] == sent == stats["taken"] + stats["dropped"] + stats["waiting"]
    assert stats["emitted"] == len(seqs) == stats["pushed"] - stats["in_flight"]
    assert 0 <= stats["in_flight"] <= stats["lookahead_frames"]  # a frame waits for at most window - 1 others
    assert set(seqs) <= set(range(sent))
    # Latency: the server's share is reported, and the client measures capture -> arrival from the echoed time.
    assert stats["latency_ms"]["count"] == len(seqs) and stats["latency_ms"]["p50"] > 0
    latencies = [arrival - header["t"] for header, _, arrival in client.frames]
    assert all(value > 0 for value in latencies)
    image = Image.open(io.BytesIO(client.frames[-1][1]))
    assert image.size == (64, 64)
    print(f"\n{sent} frames at 30 fps: {stats['dropped']} dropped ({stats['dropped_share']:.0%}), {len(seqs)} back, "
          f"{stats['in_flight']} in the window; capture->arrival p50 {np.percentile(latencies, 50):.0f} ms, "
          f"p95 {np.percentile(latencies, 95):.0f} ms; server p50 {stats['latency_ms']['p50']:.0f} ms; "
          f"output {stats['output_fps'] or 0:.1f} fps; tick {stats['mean_ms_per_tick']:.0f} ms")
    assert wait_until(lambda: status(server)["sessions"] == [])  # the socket closed: the stream is gone


def test_a_socket_closed_mid_stream_frees_its_stream_and_memory(server, pose_jpegs):
    async def one_session(frames: int):
        async with Client(server) as client:
            ready = await client.start()
            assert ready.get("state") == "ready", ready
            await client.feed(pose_jpegs, count=frames)
            assert status(server)["sessions"], "a live session should be open while streaming"
        # leaving the block closes the socket mid-stream: frames are still waiting and in the window

    def closed() -> bool:
        return status(server)["sessions"] == [] and status(server)["connections"] == 0

    for _ in range(2):  # warm-up: the model is loaded once and cached; allocator arenas settle
        asyncio.run(one_session(20))
        assert wait_until(closed)
    baseline = server_rss_mb(server)
    for _ in range(6):
        asyncio.run(one_session(20))
        assert wait_until(closed)
    after = server_rss_mb(server)
    print(f"\nserver RSS after two sessions {baseline:.0f} MB, after six more closed mid-stream {after:.0f} MB")
    # The built-in networks weigh 16 MB: a session that kept its model (or its stream and thread) would leave
    # 6 x that behind; allocator noise stays within a few tens of MB.
    assert after < baseline + 48


def test_two_tabs_stream_at_once_each_gets_only_its_own_frames_and_a_third_is_refused(server, pose_jpegs):
    async def run():
        async with Client(server) as first, Client(server) as second, Client(server) as third:
            assert (await first.start()).get("state") == "ready"
            assert (await second.start(reference="")).get("state") == "ready"  # another character
            refused = await third.start()
            assert refused["type"] == "error" and refused["message"] == (
                f"the server holds {MAX_SESSIONS} live sessions (its limit); try again later or raise "
                "RAIN_LIVE_MAX_SESSIONS"), refused
            assert len(status(server)["sessions"]) == MAX_SESSIONS
            sent = await asyncio.gather(first.feed(pose_jpegs, count=40, first_seq=1000),
                                        second.feed(pose_jpegs[::-1], count=40, first_seq=2000))
            assert sent == [40, 40]
            await first.settle(40)
            await second.settle(40)
            third.messages.clear()
            huge = await third.start(width=100_000)  # the bounds come before the count: the field is named
            assert huge["type"] == "error" and "width: 100000 px is over the live limit" in huge["message"]
            return [[header["seq"] for header, _, _ in client.frames] for client in (first, second)]

    first, second = asyncio.run(run())
    assert first and second
    assert set(first) <= set(range(1000, 1040)) and set(second) <= set(range(2000, 2040))  # never the other's
    assert wait_until(lambda: status(server)["sessions"] == [])


def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(server, pose_jpegs):
    async def run():
        async with Client(server) as client:
            await client.socket.send_bytes(frame_message(0, now_ms(), pose_jpegs[0]))
            early = await client.wait_for(lambda m: m.get("type") == "error")
            assert "not loaded yet" in early["message"]
            client.messages.clear()
            failed = await client.start(model="no-such-model")
            assert failed["type"] == "error" and "no-such-model" in failed["message"]
            client.messages.clear()
            failed = await client.start(reference="missing.png")
            assert failed["type"] == "error" and "reference" in failed["message"] and "Load Image" in failed["message"]
            client.messages.clear()
            failed = await client.start(levels="four")
            assert failed["type"] == "error" and "levels" in failed["message"]
            client.messages.clear()
            assert (await client.start()).get("state") == "ready"
            await client.socket.send_bytes(frame_message(1, now_ms(), b"\xff" * (5 * 1024 * 1024)))
            oversize = await client.wait_for(lambda m: m.get("type") == "error")
            assert "over the 4 MB limit" in oversize["message"]
            await client.socket.send_str("{not json")
            await client.socket.send_str(json.dumps({"type": "face_morph", "params": {"eye_size": 1}}))
            await client.wait_for(lambda m: m.get("type") == "error" and "eye_size" in m["message"])
            sent = await client.feed(pose_jpegs, count=8, first_seq=10)  # the stream still works
            stats = await client.settle(sent)  # the refused frame never counted
            assert stats["received"] == 8 and not client.socket.closed

    asyncio.run(run())
    with urllib.request.urlopen(server.base + "/object_info/LoadImage", timeout=30) as response:
        assert response.status == 200


def test_record_saves_a_browser_playable_h264_mp4_in_the_output_folder(server, pose_jpegs):
    import av

    async def run():
        async with Client(server) as client:
            assert (await client.start()).get("state") == "ready"
            await client.socket.send_str(json.dumps({"type": "record", "on": True}))
            await client.wait_for(lambda m: m.get("state") == "recording")
            await client.feed(pose_jpegs, count=32)
            await client.settle(32)
            await client.socket.send_str(json.dumps({"type": "record", "on": False}))
            return await client.wait_for(lambda m: m.get("type") in ("recorded", "error")), len(client.frames)

    recorded, frames_back = asyncio.run(run())
    assert recorded["type"] == "recorded", recorded
    path = server.output / recorded["filename"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == frames_back
    with urllib.request.urlopen(server.base + recorded["url"], timeout=30) as response:
        assert response.read(12)[4:8] == b"ftyp"  # served by ComfyUI's /view, like any output
