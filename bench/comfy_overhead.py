"""What running RAIN inside ComfyUI costs: the live workflow under repeated queueing vs RainStream directly.

Starts a real ComfyUI with this pack linked in (as tests/test_comfyui_host.py does), queues the shipped live
workflow ("RAIN 3 - Live preview (Auto Queue)": a looping pose video, 4 poses per run, the built-in model at its
64 px, Frame Queue with its preview) again and again as Auto Queue does, and takes each run's execution time from
the history's timestamps. After each run it pushes the same number of poses into a RainStream of the same model
and settings in this process (interleaved, so both sides see the same load on a shared machine). Prints frames per second of both and their ratio (goal: >= 0.9). Nothing is asserted.

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python .venv/bin/python bench/comfy_overhead.py

Same threads on both sides (--threads, default 2: OMP_NUM_THREADS for the server, torch.set_num_threads here),
and the same OpenMP wait policy: rain_core sets OMP_WAIT_POLICY=PASSIVE before torch loads (rain_core/cpu_fast.py),
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


def run_prompt(base, prompt, client) -> dict:
    prompt_id = post(base, "/prompt", {"prompt": prompt, "client_id": client})["prompt_id"]
    while True:
        entry = get(base, f"/history/{prompt_id}").get(prompt_id)
        if entry and entry["status"].get("completed") is not None:
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(json.dumps(entry["status"]["messages"])[-2000:])
            return entry
        time.sleep(0.02)


def execution_seconds(entry) -> float:
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def comfy_side(args, workdir: Path, direct_push) -> tuple[list[float], list[float], int]:
    from rain_core.comfy_client import ui_to_api

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
        client = uuid.uuid4().hex
        for _ in range(args.warmup):  # the stream's window fills; the model loads
            run_prompt(base, prompt, client)
            direct_push(frames_per_run)
        times, direct = [], []
        for _ in range(args.runs):  # interleaved, so that both sides see the same load on a shared machine
            times.append(execution_seconds(run_prompt(base, prompt, client)))
            direct.append(direct_push(frames_per_run))
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
    from rain_core.loading import load_rain
    from rain_core.video import read_video_frames

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
