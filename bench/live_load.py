"""Live sessions under load (issue 32): K concurrent /rain/live sessions against ONE server, and clients that try to
take it down.

    .venv/bin/python bench/live_load.py                          # K = 1, 2, 4, 8 on a bare route, 20 s each
    .venv/bin/python bench/live_load.py --smoke                  # seconds: K = 1, 2, a 2 x 2 window (a test runs it)
    COMFYUI_DIR=... COMFY_PYTHON=... .venv/bin/python bench/live_load.py --comfyui   # a real ComfyUI's route

Each session is a real websocket client (aiohttp) like the live panel: its own reference (examples/anyone-1.png,
anyone-2.png, anime-portrait.png, then copies, as files of the server's input folder), its own pose video and start
offset (examples/anyone-video-{1,2}_kps.mp4 as 256 x 352 JPEGs, the panel's camera size), frames sent at 30 fps
paced on the clock with seq numbers of its own range (client k sends k * 1,000,000 + n). The built-in model at the
stream's defaults (width/height 0 = its own 64 px, 4 levels x 4 frames, 4 steps) unless told otherwise.
Per session: output fps, frames dropped (at the door and on the way out), latency p50/p95 from capture to arrival,
and `isolated`: every frame the client received carries a seq that this client sent. Per row: the server's resident
memory (peak while streaming, from /proc through psutil).
Then the adversarial phase, while `--adversarial-streams` sessions keep streaming: a client asking for a huge frame
size (must be refused with the route's message naming the field and the limit) and a client opening sessions in a
loop on new sockets, keeping them (admitted up to the server's limit, then refused with the limit's message, never
crashing the server); the streaming sessions' fps must not fall to 0.
Servers: by default the route on a bare aiohttp app in a child process (bench/live_latency.py --serve: the handler
ComfyUI runs, without ComfyUI); --comfyui starts a real ComfyUI with the pack (tests/comfy_host.py's harness).
The server's RAIN_LIVE_MAX_SESSIONS is --max-sessions (default: the largest K, at least one more than the
adversarial phase's streams). The server runs the eager CPU tick
(RAIN_NO_COMPILE=1, no background compile mid-measurement); --compiled leaves the fast path to "auto" (the compiled
tick once its package is in the cache, bench/cpu_live.py: ~3x faster). Speed is printed and recorded, never
asserted; --smoke exits 1 when a check fails (isolation, refusals, a server that died, streams that stopped).
Writes bench/results/live_load.json (atomically; --out elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from rain_core.io.files import write_json_atomic  # noqa: E402

EXAMPLES = ROOT / "examples"
REFERENCES = ("anyone-1.png", "anyone-2.png", "anime-portrait.png")
VIDEOS = ("anyone-video-1_kps.mp4", "anyone-video-2_kps.mp4")
RESULTS = ROOT / "bench" / "results" / "live_load.json"
SEQ_RANGE = 1_000_000
MODEL = "tiny-rain (built-in)"
MAX_SESSIONS_ENV = "RAIN_LIVE_MAX_SESSIONS"


def pose_jpegs(video: str, size=(256, 352)) -> list[bytes]:
    from PIL import Image

    from rain_core.io.video import read_video_frames
    from rain_core.live import encode_jpeg

    frames, _, _ = read_video_frames(EXAMPLES / video, 0, 10_000)
    return [encode_jpeg(np.asarray(Image.fromarray(frame).resize(size))) for frame in frames]


def now_ms() -> float:
    return time.perf_counter() * 1000.0


# ------------------------------------------------------------------------------------------- servers


class BareServer:
    """The route on a bare aiohttp app in a child process (bench/live_latency.py --serve)."""

    name = "bare aiohttp route"

    def __init__(self, workdir: Path, max_sessions: int, threads: int):
        from live_latency import free_port

        self.input = workdir / "input"
        self.input.mkdir(parents=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RAIN_INPUT_DIR": str(self.input), "RAIN_OUTPUT_DIR": str(workdir),
               MAX_SESSIONS_ENV: str(max_sessions)}  # (the fast-path switches are in os.environ: main)
        self.log = open(workdir / "server.log", "w")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "live_latency.py"), "--serve",
                                         str(self.port), "--threads", str(threads)], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.workdir = workdir

    def wait_up(self, timeout: float = 180) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the route's child exited:\n{(self.workdir / 'server.log').read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the route's child did not listen within {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class ComfyServer:
    """A real ComfyUI with the pack (tests/comfy_host.py: COMFYUI_DIR, COMFY_PYTHON, COMFY_FRONTEND_ROOT ...)."""

    def __init__(self, workdir: Path, max_sessions: int, threads: int):
        sys.path.insert(0, str(ROOT / "tests"))
        import comfy_host

        if comfy_host.REASON:
            raise SystemExit(comfy_host.REASON)
        os.environ[MAX_SESSIONS_ENV] = str(max_sessions)  # the server process inherits it
        workdir.mkdir(parents=True)
        self.server = comfy_host.Server(workdir)
        self.name = "ComfyUI " + _comfy_version(Path(comfy_host.COMFYUI_DIR))

    def wait_up(self) -> None:
        self.server.start()
        self.input, self.base, self.process = self.server.input, self.server.base, self.server.process

    def stop(self) -> None:
        self.server.stop()


def _comfy_version(folder: Path) -> str:
    text = (folder / "comfyui_version.py").read_text() if (folder / "comfyui_version.py").exists() else ""
    return text.split('"')[1] if '"' in text else "?"


def server_rss_mb(process) -> float | None:
    try:
        import psutil

        return psutil.Process(process.pid).memory_info().rss / 2**20
    except Exception:  # psutil missing, or the server is gone (recorded as None)
        return None


async def live_status(base: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as client, client.get(base + "/rain/live/status") as response:
        return await response.json()


# ------------------------------------------------------------------------------------------- a client


class Client:
    """One live session like the panel: frames out at the source's pace, everything that comes back recorded."""

    def __init__(self, base: str, index: int, reference: str, jpegs: list[bytes], offset: int, settings: dict):
        self.url = base.replace("http://", "ws://") + "/rain/live"
        self.index, self.reference, self.jpegs, self.offset, self.settings = index, reference, jpegs, offset, settings
        self.sent: set[int] = set()
        self.frames: list[tuple[int, float, float]] = []  # (seq, capture ms, arrival ms)
        self.messages: list[dict] = []
        self.ready: dict | None = None

    async def open(self, client) -> Client:
        self.ws = await client.ws_connect(self.url, max_msg_size=0)
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        import aiohttp

        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                (length,) = struct.unpack(">I", message.data[:4])
                header = json.loads(message.data[4:4 + length])
                self.frames.append((header["seq"], header["t"], now_ms()))
            elif message.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))

    async def start(self, timeout: float = 600) -> dict:
        await self.ws.send_str(json.dumps({"type": "start", "model": MODEL, "reference": self.reference,
                                           "mode": "pose", "seed": self.index, **self.settings}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if message.get("state") == "ready" or message.get("type") == "error":
                    self.ready = message
                    return message
            await asyncio.sleep(0.05)
        raise TimeoutError(f"session {self.index}: not ready in {timeout} s")

    async def feed(self, seconds: float, fps: float) -> None:
        started = time.perf_counter()
        for n in range(int(seconds * fps)):
            delay = started + n / fps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            seq = self.index * SEQ_RANGE + n
            header = json.dumps({"seq": seq, "t": now_ms()}).encode()
            self.sent.add(seq)
            if self.ws.closed:
                return
            await self.ws.send_bytes(struct.pack(">I", len(header)) + header +
                                     self.jpegs[(self.offset + n) % len(self.jpegs)])

    def latest_stats(self) -> dict:
        return next((m for m in reversed(self.messages) if m.get("type") == "stats"), {})

    def fps_between(self, start_ms: float, end_ms: float) -> float:
        count = sum(1 for _, _, arrival in self.frames if start_ms <= arrival <= end_ms)
        return count / ((end_ms - start_ms) / 1000) if end_ms > start_ms else 0.0

    def summary(self, start_ms: float, end_ms: float) -> dict:
        """fps_out: the steady rate, frames back from this session's first one to the end of the feed (its window
        fills first: window - 1 frames go in before one comes out, which takes longest on a crowded server, and is
        first_frame_s); fps_out_whole_row: the same over the whole row."""
        latencies = [arrival - capture for _, capture, arrival in self.frames if capture is not None]
        stats = self.latest_stats()
        seqs = [seq for seq, _, _ in self.frames]
        first = self.frames[0][2] if self.frames else None
        steady = self.fps_between(first, end_ms) if first is not None and end_ms - first > 1000 else 0.0
        return {"session": self.index, "reference": self.reference, "frames_sent": len(self.sent),
                "frames_back": len(seqs), "fps_out": round(steady, 2),
                "fps_out_whole_row": round(self.fps_between(start_ms, end_ms), 2),
                "first_frame_s": round((first - start_ms) / 1000, 2) if first is not None else None,
                "dropped": stats.get("dropped", 0) + stats.get("dropped_out", 0),
                "dropped_share": round((stats.get("dropped", 0) + stats.get("dropped_out", 0)) / len(self.sent), 3)
                if self.sent else None,
                "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
                "latency_p95_ms": round(float(np.percentile(latencies, 95)), 1) if latencies else None,
                "tick_ms": round(stats["mean_ms_per_tick"], 1) if stats.get("mean_ms_per_tick") else None,
                "fast_path": stats.get("fast_path"),
                "server": {key: stats.get(key) for key in ("received", "taken", "dropped", "pushed", "emitted",
                                                            "dropped_out", "errors")},
                "isolated": all(seq in self.sent for seq in seqs),
                "in_order": seqs == sorted(seqs),
                "errors": [m["message"] for m in self.messages if m.get("type") == "error"][:3]}

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


def make_clients(base: str, count: int, first_index: int, videos: dict, settings: dict) -> list[Client]:
    clients = []
    for k in range(count):
        index = first_index + k
        video = VIDEOS[index % len(VIDEOS)]
        clients.append(Client(base, index, f"load-ref-{index}.png", videos[video], offset=7 * index, settings=settings))
    return clients


class RssSampler:
    def __init__(self, process, period_s: float = 0.5):
        self.process, self.period_s, self.samples = process, period_s, []

    async def run(self) -> None:
        while True:
            value = server_rss_mb(self.process)
            if value is not None:
                self.samples.append(value)
            await asyncio.sleep(self.period_s)


# ------------------------------------------------------------------------------------------- phases


async def wait_no_sessions(base: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (await live_status(base))["sessions"]:
            return True
        await asyncio.sleep(0.2)
    return False


async def load_row(server, k: int, videos: dict, args, settings: dict) -> dict:
    import aiohttp

    rss_before = server_rss_mb(server.process)
    sampler = RssSampler(server.process)
    sampling = asyncio.ensure_future(sampler.run())
    async with aiohttp.ClientSession() as http:
        clients = [await c.open(http) for c in make_clients(server.base, k, 1, videos, settings)]
        started = time.monotonic()
        readies = await asyncio.gather(*(c.start() for c in clients))
        start_s = time.monotonic() - started
        failed = [r for r in readies if r.get("type") == "error"]
        begin = now_ms()
        await asyncio.gather(*(c.feed(args.seconds, args.fps) for c in clients))
        end = now_ms()
        await asyncio.sleep(1.0)  # the last stats message
        sessions = [c.summary(begin, end) for c in clients]
        for c in clients:
            await c.close()
    sampling.cancel()
    freed = await wait_no_sessions(server.base)
    fps = [s["fps_out"] for s in sessions]
    p50s = [s["latency_p50_ms"] for s in sessions if s["latency_p50_ms"] is not None]
    p95s = [s["latency_p95_ms"] for s in sessions if s["latency_p95_ms"] is not None]
    row = {"sessions": k, "start_s": round(start_s, 2), "failed_starts": [r["message"] for r in failed],
           "fps_out_mean": round(float(np.mean(fps)), 2), "fps_out_min": round(min(fps), 2),
           "fps_out_total": round(sum(fps), 2),
           "first_frame_s_max": max((s["first_frame_s"] or 0) for s in sessions),
           "dropped_share_mean": round(float(np.mean([s["dropped_share"] or 0 for s in sessions])), 3),
           "latency_p50_ms": round(float(np.median(p50s)), 1) if p50s else None,
           "latency_p95_ms": round(float(max(p95s)), 1) if p95s else None,
           "tick_ms_mean": round(float(np.mean([s["tick_ms"] for s in sessions if s["tick_ms"]])), 1)
           if any(s["tick_ms"] for s in sessions) else None,
           "server_rss_mb_before": round(rss_before, 1) if rss_before else None,
           "server_rss_mb_peak": round(max(sampler.samples), 1) if sampler.samples else None,
           "isolated": all(s["isolated"] for s in sessions), "freed": freed, "per_session": sessions}
    print(f"K={k}: out {row['fps_out_mean']:.1f} fps per session (min {row['fps_out_min']:.1f}, total "
          f"{row['fps_out_total']:.1f}; first frame after ≤ {row['first_frame_s_max']} s), dropped {row['dropped_share_mean']:.0%}, latency p50 {row['latency_p50_ms']} "
          f"ms, p95 {row['latency_p95_ms']} ms, tick {row['tick_ms_mean']} ms, RSS peak {row['server_rss_mb_peak']} MB, "
          f"isolated {row['isolated']}, freed {freed}, started in {start_s:.1f} s", flush=True)
    return row


async def adversarial(server, videos: dict, args, settings: dict, limit: int) -> dict:
    """Streaming sessions keep going while one client asks for a huge size and another opens sessions in a loop."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        streams = [await c.open(http) for c in make_clients(server.base, args.adversarial_streams, 101, videos,
                                                             settings)]
        await asyncio.gather(*(c.start() for c in streams))
        begin = now_ms()
        feeding = asyncio.gather(*(c.feed(args.adversarial_seconds, args.fps) for c in streams))

        # a client asking for more than a session may: each refused with the field and the limit
        huge_answers = []
        for ask in ({"width": 100_000, "height": 100_000}, {"width": 1024, "height": 1024},
                    {"levels": 16, "frames_per_cohort": 16}, {"steps": 1000}):
            huge = await Client(server.base, 900, "", videos[VIDEOS[0]], 0, {**settings, **ask}).open(http)
            answer = await huge.start()
            huge_answers.append({"asked": ask, "answer": answer.get("message") or answer.get("state")})
            await huge.close()

        # a client opening sessions in a loop on new sockets, keeping them: admitted up to the limit, then refused
        opened, refusals, attempts, errors = [], [], 0, []
        loop_until = time.monotonic() + args.adversarial_seconds * 0.8
        while time.monotonic() < loop_until:
            attempts += 1
            try:
                greedy = await Client(server.base, 200 + attempts, "", videos[VIDEOS[1]], 0, settings).open(http)
                answer = await greedy.start()
            except Exception as error:  # the server must never drop a socket on this
                errors.append(f"{type(error).__name__}: {error}")
                await asyncio.sleep(0.25)
                continue
            if answer.get("state") == "ready":
                opened.append(greedy)
            else:
                refusals.append(answer.get("message"))
                await greedy.close()
                await asyncio.sleep(0.25)
        held = len((await live_status(server.base))["sessions"])
        fill_end = now_ms()
        await feeding
        end = now_ms()
        await asyncio.sleep(1.0)
        sessions = [c.summary(begin, end) for c in streams]
        # fps of the streams once the greedy client had filled the server (the second half of the phase)
        fps_when_full = [round(c.fps_between(fill_end, end) if end - fill_end > 1000
                               else c.fps_between((begin + end) / 2, end), 2) for c in streams]
        for c in streams + opened:
            await c.close()
    alive = server.process.poll() is None
    freed = await wait_no_sessions(server.base) if alive else False
    expected = (f"the server holds {limit} live sessions (its limit); try again later or raise {MAX_SESSIONS_ENV}")
    result = {"streams": len(streams), "seconds": args.adversarial_seconds, "limit": limit,
              "huge_size": huge_answers,
              "huge_refused": all("over the live limit" in (a["answer"] or "") for a in huge_answers),
              "loop_attempts": attempts, "loop_admitted": len(opened), "loop_refused": len(refusals),
              "loop_refusal_message": refusals[0] if refusals else None,
              "loop_refusals_as_expected": bool(refusals) and all(r == expected for r in refusals),
              "loop_socket_errors": errors[:3], "sessions_held_when_full": held,
              "stream_fps_out": [s["fps_out"] for s in sessions], "stream_fps_when_full": fps_when_full,
              "streams_kept_streaming": all(f > 0 for f in fps_when_full),
              "isolated": all(s["isolated"] for s in sessions), "server_alive": alive, "freed": freed,
              "per_session": sessions}
    print(f"adversarial: huge sizes refused {result['huge_refused']} ({huge_answers[0]['answer']!r}); loop client "
          f"{attempts} attempts, {len(opened)} admitted, {len(refusals)} refused ({result['loop_refusal_message']!r}); "
          f"{held} sessions held; streams {result['stream_fps_out']} fps, when full {fps_when_full}; server alive "
          f"{alive}, freed {freed}", flush=True)
    return result


def capacity(rows: list[dict], target_fps: float, cores: int, tick_floor_ms: float, fps: float, m: int) -> dict:
    """Sessions per core at `target_fps` out each, from the measured rows; per GPU, an estimate from a tick time."""
    served = [r["sessions"] for r in rows if r["fps_out_min"] >= target_fps and r["isolated"]]
    best_total = max(r["fps_out_total"] for r in rows)
    ticks_per_session = fps / m  # ticks a second that keep up with a full-rate source
    return {"target_fps_out": target_fps, "cores": cores,
            "most_sessions_measured_at_target": max(served) if served else 0,
            "sessions_per_core_measured": round((max(served) if served else 0) / cores, 2),
            "fps_out_total_best": best_total,
            "sessions_per_core_from_throughput": round(best_total / target_fps / cores, 2),
            "gpu_estimate": {
                "label": "ESTIMATE, not measured: sessions one GPU serves at a full-rate source = (1000 / tick ms) / "
                         "(source fps / frames_per_cohort); tick = the NOTES floor for RAIN-v0.1 at 512 px on an H100 "
                         "(20.4 TFLOP per tick at ~989 TFLOP/s dense BF16), a lower bound on the tick time",
                "tick_ms": tick_floor_ms, "ticks_per_session_per_s": ticks_per_session,
                "sessions_per_gpu_upper_bound": round(1000 / tick_floor_ms / ticks_per_session, 1),
                "sessions_per_gpu_at_40pct_of_peak": round(0.4 * 1000 / tick_floor_ms / ticks_per_session, 1)}}


async def run_all(args) -> dict:
    ks = [int(k) for k in args.ks.split(",")]
    limit = args.max_sessions or max(*ks, args.adversarial_streams + 1)
    settings = {"levels": args.levels, "frames_per_cohort": args.frames_per_cohort, "steps": args.steps,
                "width": args.size, "height": args.size}
    settings = {key: value for key, value in settings.items() if value is not None}
    videos = {video: pose_jpegs(video) for video in VIDEOS}
    workdir = Path(tempfile.mkdtemp(prefix="rain-live-load-"))
    server = (ComfyServer if args.comfyui else BareServer)(workdir / "server", limit, args.threads)
    try:
        server.wait_up()
        for index in [*range(1, max(ks) + 1), *range(101, 101 + args.adversarial_streams)]:  # distinct references
            shutil.copy(EXAMPLES / REFERENCES[(index - 1) % len(REFERENCES)], server.input / f"load-ref-{index}.png")
        print(f"server: {server.name} at {server.base}, {MAX_SESSIONS_ENV}={limit}", flush=True)
        rows = [await load_row(server, k, videos, args, settings) for k in ks]
        attack = await adversarial(server, videos, args, settings, limit)
        rss_end = server_rss_mb(server.process)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    window = (args.levels or 4) * (args.frames_per_cohort or 4)
    cores = os.cpu_count() or 1
    return {"bench": "live_load",
            "command": "bench/live_load.py " + " ".join(args.argv),
            "server": server.name, "max_sessions": limit,
            "settings": {"model": MODEL, "size": args.size or "model's own (64)", "levels": args.levels or 4,
                         "frames_per_cohort": args.frames_per_cohort or 4, "steps": args.steps or 4, "window": window,
                         "source_fps": args.fps, "seconds": args.seconds,
                         "frame": "256x352 JPEG", "server_torch_threads": args.threads},
            "machine": {"cpus": cores, "load_average": os.getloadavg(), "platform": platform.platform(),
                        "env": {k: os.environ.get(k) for k in ("RAIN_NO_COMPILE", "RAIN_BACKGROUND_COMPILE",
                                                               "OMP_WAIT_POLICY")}},
            "rows": rows, "adversarial": attack, "server_rss_mb_end": round(rss_end, 1) if rss_end else None,
            "capacity": capacity(rows, args.target_fps, cores, 21.0, args.fps, args.frames_per_cohort or 4)}


def checks(result: dict) -> list[str]:
    """What must hold whatever the speed: isolation, refusals with their messages, a live server, streams that go on."""
    failures = []
    for row in result["rows"]:
        if not row["isolated"]:
            failures.append(f"K={row['sessions']}: a session received frames it did not send")
        if row["failed_starts"]:
            failures.append(f"K={row['sessions']}: starts failed: {row['failed_starts'][:2]}")
        if not row["freed"]:
            failures.append(f"K={row['sessions']}: sessions left on the server after their sockets closed")
        if any(s["frames_back"] == 0 for s in row["per_session"]):
            failures.append(f"K={row['sessions']}: a session got no frames back (a longer --seconds lets a slow "
                            "server fill every window)")
    attack = result["adversarial"]
    for key in ("huge_refused", "loop_refusals_as_expected", "streams_kept_streaming", "isolated", "server_alive",
                "freed"):
        if not attack[key]:
            failures.append(f"adversarial: {key} is false ({json.dumps({k: v for k, v in attack.items() if k != 'per_session'})[:600]})")
    if attack["loop_socket_errors"]:
        failures.append(f"adversarial: sockets failed: {attack['loop_socket_errors']}")
    return failures


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,4,8", help="concurrent sessions per row (default 1,2,4,8)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each row streams (default 20)")
    parser.add_argument("--fps", type=float, default=30.0, help="each client's source rate (default 30)")
    parser.add_argument("--size", type=int, default=None, help="width = height (default: the model's own, 0)")
    parser.add_argument("--levels", type=int, default=None)
    parser.add_argument("--frames-per-cohort", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--max-sessions", type=int, default=None, help="the server's limit (default: the largest K)")
    parser.add_argument("--adversarial-streams", type=int, default=2)
    parser.add_argument("--adversarial-seconds", type=float, default=20.0)
    parser.add_argument("--target-fps", type=float, default=5.0,
                        help="output fps a session counts as served at (default 5: live latency is about "
                             "(window - 1) / fps out, ~3 s at the default window of 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the bare server's torch threads")
    parser.add_argument("--comfyui", action="store_true", help="a real ComfyUI (COMFYUI_DIR, COMFY_PYTHON)")
    parser.add_argument("--compiled", action="store_true",
                        help="leave the server's CPU fast path to 'auto' (default: the eager tick, no background compile)")
    parser.add_argument("--smoke", action="store_true", help="seconds: K = 1, 2, a 2 x 2 window, short phases")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    args.argv = argv
    # inherited by the server process: OpenMP threads that sleep while they wait (NOTES: a busy CPU otherwise makes
    # ticks several times slower; the README asks ComfyUI to start this way), and the eager tick unless --compiled
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not args.compiled:
        os.environ.update({"RAIN_NO_COMPILE": "1", "RAIN_BACKGROUND_COMPILE": "0"})
    if args.smoke:
        args.ks, args.seconds, args.adversarial_seconds = "1,2", 3.0, 4.0
        args.levels, args.frames_per_cohort, args.steps = 2, 2, 2
        args.max_sessions = args.max_sessions or 3
        args.adversarial_streams = 1
    result = asyncio.run(run_all(args))
    failures = checks(result)
    result["checks_failed"] = failures
    cap = result["capacity"]
    print(f"capacity: {cap['most_sessions_measured_at_target']} sessions at ≥ {cap['target_fps_out']:.0f} fps out each "
          f"on {cap['cores']} cores ({cap['sessions_per_core_measured']} per core; from the best total throughput "
          f"{cap['fps_out_total_best']} fps: {cap['sessions_per_core_from_throughput']} per core); per GPU "
          f"(estimate) ≤ {cap['gpu_estimate']['sessions_per_gpu_upper_bound']} at a full-rate source")
    target = write_json_atomic(args.out.resolve(), result)
    print(f"wrote {target}")
    for failure in failures:
        print("CHECK FAILED:", failure)
    return 1 if failures and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
