"""Live latency: a 30 fps pose video through the live route, next to the engine alone on the same machine.

    .venv/bin/python bench/live_latency.py                       # built-in model, 64 px, 4 levels x 4 frames
    .venv/bin/python bench/live_latency.py --seconds 20 --levels 2 --frames-per-cohort 2 --steps 2
    .venv/bin/python bench/live_latency.py --server http://127.0.0.1:8188   # also a running ComfyUI's /rain/live

Rows:
  engine alone   rain_core.live.LiveSession fed JPEG frames at 30 fps in this process (worker thread, no socket);
  route          the same frames over a websocket to nodes/live_route.py served by a bare aiohttp app in a child
                 process (the handler ComfyUI runs, without ComfyUI);
  route (ComfyUI) with --server: the route of a running ComfyUI with this pack.
For each: output fps, the share of input frames dropped at the door, latency p50/p95 from capture to display
(to arrival at the client: decoding and drawing a 64 px JPEG in a browser adds ~1 ms), and how far p50 sits above
the structural floor, the look-ahead of window - 1 frames at 30 fps. Speed is printed, never asserted.
Writes bench/results/live_latency.json (atomically).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rain_core.io.files import write_json_atomic  # noqa: E402

PACK = "rain_pack_bench"
VIDEO = ROOT / "examples" / "anyone-video-1_kps.mp4"
REFERENCE = ROOT / "examples" / "anyone-1.png"
RESULTS = ROOT / "bench" / "results" / "live_latency.json"


def load_pack():
    """The pack as ComfyUI imports it (a package under another name), for its live route."""
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return sys.modules[f"{PACK}.nodes.live_route"]


def serve(port: int, threads: int) -> None:
    """Child process: the live route on a bare aiohttp app."""
    import torch
    from aiohttp import web

    torch.set_num_threads(threads)
    live_route = load_pack()
    routes = web.RouteTableDef()
    live_route.register(routes)
    app = web.Application(client_max_size=live_route.MAX_MESSAGE_BYTES)
    app.add_routes(routes)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


def pose_jpegs(count: int = 64) -> list[bytes]:
    from PIL import Image

    from rain_core.io.video import read_video_frames
    from rain_core.live import encode_jpeg

    frames, _, _ = read_video_frames(VIDEO, 0, count)
    return [encode_jpeg(np.asarray(Image.fromarray(f).resize((256, 352)))) for f in frames]


def summarise(name: str, latencies: list[float], arrivals: list[float], stats: dict, sent: int, floor_ms: float,
              seconds: float, lookahead: int):
    fps = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * 1000 if len(arrivals) > 1 else None
    # Frames dropped at the door never enter the window, so the look-ahead is counted in frames the engine took:
    # the floor at the engine's intake rate is (window - 1) / (frames taken per second).
    taken_fps = stats["taken"] / seconds
    floor_taken_ms = lookahead / taken_fps * 1000 if taken_fps else None
    p50 = float(np.percentile(latencies, 50)) if latencies else None
    p95 = float(np.percentile(latencies, 95)) if latencies else None
    return {"row": name, "sent": sent, "received": stats["received"], "dropped": stats["dropped"],
            "dropped_share": stats["dropped"] / sent if sent else None, "frames_back": len(latencies),
            "output_fps": fps, "latency_p50_ms": p50, "latency_p95_ms": p95, "floor_ms": floor_ms,
            "above_floor_ms": p50 - floor_ms if p50 is not None else None,
            "times_floor": p50 / floor_ms if p50 is not None and floor_ms else None,
            "taken_fps": taken_fps, "floor_at_taken_rate_ms": floor_taken_ms,
            "mean_ms_per_tick": stats.get("mean_ms_per_tick"),
            # Latency in ticks: comparable across rows measured under different load (expect about `levels`).
            "latency_p50_ticks": p50 / stats["mean_ms_per_tick"] if p50 and stats.get("mean_ms_per_tick") else None}


# ------------------------------------------------------------------------------------------- engine alone


def run_engine(args, jpegs: list[bytes], floor_ms: float) -> dict:
    import torch
    from PIL import Image

    from rain_core import StreamConfig, load_rain
    from rain_core.live import LiveSession

    torch.set_num_threads(args.threads)
    models = load_rain(ROOT / "rain_core" / "assets" / "tiny-rain")
    reference = np.asarray(Image.open(REFERENCE).convert("RGB"))
    session = LiveSession(models, config(args, StreamConfig), reference)
    latencies, arrivals = [], []

    def on_outputs(outputs):
        now = time.perf_counter() * 1000
        for output in outputs:
            latencies.append(now - output.capture_ms)
            arrivals.append(now)

    session.start(on_outputs)
    sent = feed_sync(lambda seq, t, data: session.submit(data, seq=seq, capture_ms=t), jpegs, args)
    wait_settled(lambda: session.stats(), lambda: len(latencies), sent)
    stats = session.stats()
    session.close()
    return summarise("engine alone", latencies, arrivals, stats, sent, floor_ms, args.seconds,
                     args.levels * args.frames_per_cohort - 1)


def config(args, cls):
    return cls(height=args.size, width=args.size, levels=args.levels, frames_per_cohort=args.frames_per_cohort,
               steps=args.steps, seed=0)


def feed_sync(submit, jpegs, args) -> int:
    count = int(args.seconds * args.fps)
    started = time.perf_counter()
    for index in range(count):
        delay = started + index / args.fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submit(index, time.perf_counter() * 1000, jpegs[index % len(jpegs)])
    return count


def wait_settled(get_stats, frames_back, sent, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = get_stats()
        if stats and stats["received"] == sent and stats["waiting"] == 0 and stats["pushed"] == stats["taken"] \
                and stats["emitted"] == frames_back():
            time.sleep(0.6)
            again = get_stats()
            if again["emitted"] == frames_back():
                return
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------- over the route


async def run_route(name: str, url: str, args, jpegs: list[bytes], floor_ms: float) -> dict:
    import aiohttp

    latencies, arrivals, messages = [], [], []
    async with aiohttp.ClientSession() as client, client.ws_connect(url, max_msg_size=0) as ws:
        async def read():
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    now = time.perf_counter() * 1000
                    (length,) = struct.unpack(">I", message.data[:4])
                    header = json.loads(message.data[4:4 + length])
                    latencies.append(now - header["t"])
                    arrivals.append(now)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    messages.append(json.loads(message.data))

        reader = asyncio.ensure_future(read())
        await ws.send_str(json.dumps({"type": "start", "model": "tiny-rain (built-in)", "width": args.size,
                                      "height": args.size, "levels": args.levels,
                                      "frames_per_cohort": args.frames_per_cohort, "steps": args.steps,
                                      "seed": 0, "reference": "", "mode": "pose"}))
        while not any(m.get("state") == "ready" or m.get("type") == "error" for m in messages):
            await asyncio.sleep(0.05)
        failed = [m for m in messages if m.get("type") == "error"]
        if failed:
            raise RuntimeError(f"{name}: {failed[0]['message']}")
        count = int(args.seconds * args.fps)
        started = time.perf_counter()
        for index in range(count):
            delay = started + index / args.fps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            header = json.dumps({"seq": index, "t": time.perf_counter() * 1000}).encode()
            await ws.send_bytes(struct.pack(">I", len(header)) + header + jpegs[index % len(jpegs)])

        def latest():
            return next((m for m in reversed(messages) if m.get("type") == "stats"), None)

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stats = latest()
            if stats and stats["received"] == count and stats["waiting"] == 0 and stats["emitted"] == len(latencies):
                await asyncio.sleep(0.7)
                if latest()["emitted"] == len(latencies):
                    break
            await asyncio.sleep(0.05)
        reader.cancel()
    return summarise(name, latencies, arrivals, latest(), count, floor_ms, args.seconds,
                     args.levels * args.frames_per_cohort - 1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_child(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--threads", str(args.threads)],
                             cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return child, f"ws://127.0.0.1:{port}/rain/live"
        except OSError:
            if child.poll() is not None:
                raise RuntimeError("the route's child process exited") from None
            time.sleep(0.2)
    child.kill()
    raise RuntimeError("the route's child process did not listen within 120 s")


# ------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the 30 fps source plays")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--frames-per-cohort", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--server", help="also measure a running ComfyUI's route, e.g. http://127.0.0.1:8188")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.threads)
        return 0

    window = args.levels * args.frames_per_cohort
    floor_ms = (window - 1) / args.fps * 1000
    jpegs = pose_jpegs()
    rows = [run_engine(args, jpegs, floor_ms)]
    child, url = start_child(args)
    try:
        rows.append(asyncio.run(run_route("route", url, args, jpegs, floor_ms)))
    finally:
        child.terminate()
        child.wait(30)
    if args.server:
        comfy = args.server.rstrip("/").replace("http://", "ws://").replace("https://", "wss://") + "/rain/live"
        rows.append(asyncio.run(run_route("route (ComfyUI)", comfy, args, jpegs, floor_ms)))

    print(f"\nlive latency: built-in model, {args.size} px, {args.levels} levels x {args.frames_per_cohort} frames "
          f"(window {window}), {args.steps} steps, {args.fps:.0f} fps source for {args.seconds:.0f} s, "
          f"{args.threads} torch thread(s), {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"structural floor: look-ahead of window - 1 = {window - 1} frames = {floor_ms:.0f} ms at {args.fps:.0f} fps; "
          "with frames dropped at the door the look-ahead counts frames the engine took (floor@taken)")
    header = f"{'row':<16} {'out fps':>8} {'dropped':>8} {'p50 ms':>8} {'p95 ms':>8} {'p50-floor':>10} {'x floor':>8} {'taken fps':>9} {'floor@taken':>11} {'tick ms':>8} {'p50 ticks':>9}"
    print(header)
    print("-" * len(header))

    def fmt(value, pattern):
        return format(value, pattern) if value is not None else "-"

    for row in rows:
        print(f"{row['row']:<16} {fmt(row['output_fps'], '8.1f')} {fmt(row['dropped_share'], '8.0%')} "
              f"{fmt(row['latency_p50_ms'], '8.0f')} {fmt(row['latency_p95_ms'], '8.0f')} "
              f"{fmt(row['above_floor_ms'], '10.0f')} {fmt(row['times_floor'], '8.1f')} "
              f"{fmt(row['taken_fps'], '9.1f')} {fmt(row['floor_at_taken_rate_ms'], '11.0f')} "
              f"{fmt(row['mean_ms_per_tick'], '8.0f')} {fmt(row['latency_p50_ticks'], '9.1f')}")
    result = {"command": "bench/live_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": {"size": args.size, "levels": args.levels, "frames_per_cohort": args.frames_per_cohort,
                           "steps": args.steps, "fps": args.fps, "seconds": args.seconds, "threads": args.threads,
                           "window": window, "lookahead_frames": window - 1},
              "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform()},
              "floor_ms": floor_ms, "rows": rows}
    target = write_json_atomic(args.json.resolve(), result)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
