"""What running RAIN inside ComfyUI costs: the live workflow under repeated queueing vs RainStream directly.

Starts a real ComfyUI with this pack linked in (as tests/test_comfyui_host.py does), queues the shipped live
workflow ("RAIN 3 - Live preview (Auto Queue)": a looping pose video, 4 poses per run, the built-in model at its
64 px, Frame Queue with its preview) again and again as Auto Queue does, and takes each run's execution time from
the history's timestamps. After each run it pushes the same number of poses into a RainStream of the same model
and settings in this process (interleaved, so both sides see the same load on a shared machine). Prints frames per second of both and their ratio (goal: >= 0.9). Nothing is asserted.

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python .venv/bin/python bench/comfy_overhead.py

Same threads on both sides (--threads, default 2: OMP_NUM_THREADS for the server, torch.set_num_threads here),
and the same OpenMP wait policy: rain_core sets OMP_WAIT_POLICY=PASSIVE before torch loads (rain_core/cpu.py),
which ComfyUI, importing torch first, never gets unless it is started with it; --same-omp-policy (default on)
starts the server with this process's policy, --no-same-omp-policy shows what a default ComfyUI start costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORKFLOW = ROOT / "example_workflows" / "RAIN 3 - Live preview (Auto Queue).json"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=60) as response:
        return json.loads(response.read())


def post(base, path, payload):
    request = urllib.request.Request(base + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


class PromptRunner:
    """Queues a prompt and waits for its end on ComfyUI's websocket, then reads its history once. (Polling
    /history every 20 ms, as this script first did, had the server answer ~25 requests during each run on the
    same two cores: part of what it measured was its own polling.)"""

    def __init__(self, base: str, client: str):
        import asyncio

        self.base, self.client = base, client
        self.loop = asyncio.new_event_loop()
        self.session, self.socket = self.loop.run_until_complete(self._connect())

    async def _connect(self):
        import aiohttp

        session = aiohttp.ClientSession()
        socket = await session.ws_connect(self.base.replace("http", "ws", 1) + f"/ws?clientId={self.client}")
        return session, socket

    async def _finished(self, prompt_id: str) -> None:
        import aiohttp

        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            data = event.get("data") or {}
            if data.get("prompt_id") == prompt_id and event.get("type") in (
                    "execution_success", "execution_error", "execution_interrupted"):
                return
        raise RuntimeError("ComfyUI closed the websocket")

    def run(self, prompt) -> dict:
        import asyncio

        prompt_id = post(self.base, "/prompt", {"prompt": prompt, "client_id": self.client})["prompt_id"]
        self.loop.run_until_complete(asyncio.wait_for(self._finished(prompt_id), 600))
        entry = None
        while entry is None:  # the history entry is stored just after the success event goes out
            entry = get(self.base, f"/history/{prompt_id}").get(prompt_id)
            if entry is None:
                time.sleep(0.01)
        if entry["status"]["status_str"] != "success":
            raise RuntimeError(_describe_failure(entry))
        return entry

    def close(self) -> None:
        self.loop.run_until_complete(self.socket.close())
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


def _describe_failure(entry) -> str:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return (f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}\n"
                    + "".join(data.get("traceback") or [])[-3000:])
    return json.dumps(entry["status"]["messages"])[-2000:]


def execution_seconds(entry) -> float:
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def comfy_side(args, workdir: Path, direct_push) -> tuple[list[float], list[float], int]:
    from rain_core.cli.comfy_client import ui_to_api

    custom = workdir / "custom_nodes"
    custom.mkdir()
    (custom / "ComfyUI-RAIN").symlink_to(ROOT)
    (workdir / "input").mkdir()
    paths = workdir / "paths.yaml"
    paths.write_text(f"bench:\n    custom_nodes: {custom}\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.same_omp_policy and os.environ.get("OMP_WAIT_POLICY"):
        env["OMP_WAIT_POLICY"] = os.environ["OMP_WAIT_POLICY"]
    else:
        env.pop("OMP_WAIT_POLICY", None)
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen(
        [args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-api-nodes",
         "--extra-model-paths-config", str(paths), "--input-directory", str(workdir / "input"),
         "--output-directory", str(workdir / "output"), "--temp-directory", str(workdir), "--disable-auto-launch"],
        cwd=args.comfyui_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 300
        while True:
            try:
                object_info = get(base, "/object_info")
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError((workdir / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        prompt = ui_to_api(json.loads(WORKFLOW.read_text()), object_info)
        frames_per_run = next(n for n in prompt.values()
                              if n["class_type"] == "RainPoseStream")["inputs"]["frames_per_run"]
        runner = PromptRunner(base, uuid.uuid4().hex)
        try:
            for _ in range(args.warmup):  # the stream's window fills; the model loads
                runner.run(prompt)
                direct_push(frames_per_run)
            times, direct = [], []
            for _ in range(args.runs):  # interleaved, so that both sides see the same load on a shared machine
                times.append(execution_seconds(runner.run(prompt)))
                direct.append(direct_push(frames_per_run))
        finally:
            runner.close()
        return times, direct, frames_per_run
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def direct_stream(args):
    """A RainStream of the same model and settings in this process; returns push(n) -> seconds of one push."""
    import numpy as np
    import torch
    from PIL import Image

    from rain_core import RainStream, StreamConfig
    from rain_core.io.video import read_video_frames
    from rain_core.loading import load_rain

    torch.set_num_threads(args.threads)
    models = load_rain(ROOT / "rain_core" / "assets" / "tiny-rain", device="cpu", dtype=torch.float32)
    config = StreamConfig(levels=4, frames_per_cohort=4, steps=4, guidance=3.5, height=64, width=64, seed=0)
    stream = RainStream(models, config)
    reference = np.asarray(Image.open(ROOT / "examples" / "anyone-1.png").convert("RGB"), np.float32) / 255.0
    stream.set_reference(torch.from_numpy(reference))
    poses, _, _ = read_video_frames(ROOT / "examples" / "anyone-video-1_kps.mp4", 0, 0)
    poses = torch.from_numpy(poses.astype(np.float32) / 255.0)
    position = 0

    def push(count: int) -> float:
        nonlocal position
        chunk = poses[[(position + i) % len(poses) for i in range(count)]]
        position += count
        with torch.inference_mode():
            started = time.perf_counter()
            stream.push(chunk)
            return time.perf_counter() - started

    return push


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR"))
    parser.add_argument("--python", default=os.environ.get("COMFY_PYTHON"))
    parser.add_argument("--runs", type=int, default=10, help="steady runs measured (default 10)")
    parser.add_argument("--warmup", type=int, default=6, help="runs before measuring (default 6)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--same-omp-policy", action=argparse.BooleanOptionalAction, default=True,
                        help="start ComfyUI with this process's OMP_WAIT_POLICY (default: on)")
    args = parser.parse_args()
    if not (args.comfyui_dir and args.python):
        parser.error("set COMFYUI_DIR and COMFY_PYTHON (or --comfyui-dir / --python): a ComfyUI checkout and its python")
    import rain_core  # noqa: F401  (first: its OpenMP wait policy must be set before torch loads)

    workdir = Path(tempfile.mkdtemp(prefix="rain-comfy-overhead-"))
    push = direct_stream(args)
    try:
        comfy, direct, frames_per_run = comfy_side(args, workdir, push)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    comfy_fps = frames_per_run / statistics.median(comfy)
    direct_fps = frames_per_run / statistics.median(direct)
    policy = os.environ.get("OMP_WAIT_POLICY") if args.same_omp_policy else "(ComfyUI default)"
    print(f"frames per run: {frames_per_run}, runs: {args.runs} after {args.warmup} warm-up, threads: {args.threads}, "
          f"server OMP_WAIT_POLICY: {policy}")
    print(f"ComfyUI live workflow: median {1000 * statistics.median(comfy):.0f} ms per run "
          f"(min {1000 * min(comfy):.0f}) -> {comfy_fps:.1f} fps")
    print(f"RainStream.push direct: median {1000 * statistics.median(direct):.0f} ms per push "
          f"(min {1000 * min(direct):.0f}) -> {direct_fps:.1f} fps")
    print(f"ratio ComfyUI / direct: {comfy_fps / direct_fps:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
