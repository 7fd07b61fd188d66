"""Long videos through a real ComfyUI: the server's memory after 1,000 vs 10,000 frames of the long-video template.

For each length a fresh ComfyUI starts with this pack linked in (as tests/comfy_host.py does), a looped pose video
of that many frames is written (the example skeleton video, 704 x 512, 30 fps, repeated; rain_core.io.video's sink),
and "RAIN 5 - Long video (flat memory)" runs as shipped except Pose Stream's video_path, which names that file.
The server's resident memory is sampled every 0.2 s during the run; `peak_rss_mib` is the kernel's high-water mark
of the server process (VmHWM: start-up and run), `after_rss_mib` its RSS once the run ended. The output file is
checked (frame count, frame rate, H.264). Goal: peak at 10,000 frames <= 1.10 x peak at 1,000.

    OMP_WAIT_POLICY=PASSIVE COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python \
        nice -n 10 .venv/bin/python bench/comfy_long_video.py            # 1,000 and 10,000 frames, + the old way
    ... bench/comfy_long_video.py --smoke --out /tmp/x                   # 96 and 384 frames, a few minutes

`--old-frames N` (default 320; 0 = skip) also measures the old way for comparison, as the issue did: the pack as it
was before the long-video work (`--old-rev`, default 4e8d65d, exported from git) running its "RAIN 1 - Pose video to
animation" as shipped (core Load Video -> Pose Stream -> RAIN Sampler -> Create Video -> Save Video) on a looped
video of N frames. The sampler runs the tick eagerly (RAIN_NO_COMPILE=1) at --threads (default 2) with
OMP_WAIT_POLICY=PASSIVE, so both lengths run the same code at the same speed; `--compile` lets it use or build the
compiled CPU tick instead. Writes <out>/comfy_long_video.json (rows: frames, peak_rss_mib, after_rss_mib, seconds,
fps; ratio_10k_vs_1k). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from comfy_overhead import free_port, get, post  # noqa: E402  (the same way to talk to a ComfyUI)

from rain_core.cpu import resident_memory  # noqa: E402

LONG_TEMPLATE = ROOT / "example_workflows" / "RAIN 5 - Long video (flat memory).json"
OLD_TEMPLATE = ROOT / "example_workflows" / "RAIN 1 - Pose video to animation.json"
POSE_VIDEO = ROOT / "examples" / "anyone-video-1_kps.mp4"  # 64 frames, 704 x 512, 30 fps


def loop_video(path: Path, frames: int) -> Path:
    """The example skeleton video repeated to `frames` frames (64 decoded frames in memory, written as they go)."""
    from rain_core.io.video import VideoSink, read_video_frames

    if path.is_file():
        return path
    clip, _, _ = read_video_frames(POSE_VIDEO, 0, 0)
    with VideoSink(path, fps=30.0) as sink:
        for first in range(0, frames, len(clip)):
            sink.write(clip[:min(len(clip), frames - first)])
    return path


def memory(pid: int) -> dict:
    """The server's resident memory in MiB: VmRSS (now) and VmHWM (peak); empty once the process has ended."""
    memory = resident_memory(pid)
    return {"VmRSS": memory["rss"] / 2**20, "VmHWM": memory["peak"] / 2**20} if memory else {}


class Server:
    """A ComfyUI in its own work folder with the pack linked in; the same start-up as the host tier."""

    def __init__(self, args, workdir: Path, pack: Path = ROOT):
        self.workdir = workdir
        custom = workdir / "custom_nodes"
        custom.mkdir(parents=True)
        (custom / "ComfyUI-RAIN").symlink_to(pack)
        self.input, self.output = workdir / "input", workdir / "output"
        self.input.mkdir()
        self.output.mkdir()
        paths = workdir / "paths.yaml"
        paths.write_text(f"bench:\n    custom_nodes: {custom}\n")
        self.base = f"http://127.0.0.1:{free_port()}"
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        if args.compile:
            env.pop("RAIN_NO_COMPILE", None)
        else:
            env["RAIN_NO_COMPILE"] = "1"
        self.log = open(workdir / "server.log", "w")
        self.process = subprocess.Popen(
            [args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", self.base.rsplit(":", 1)[1],
             "--disable-api-nodes", "--extra-model-paths-config", str(paths), "--input-directory", str(self.input),
             "--output-directory", str(self.output), "--temp-directory", str(workdir), "--disable-auto-launch"],
            cwd=args.comfyui_dir, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 300
        while True:
            try:
                self.object_info = get(self.base, "/object_info")
                return
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError((workdir / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)

    def run(self, prompt: dict, timeout: float) -> tuple[dict, dict]:
        """Queue `prompt`, sample the server's memory until it ends; (history entry, memory figures)."""
        before = memory(self.process.pid)
        samples, done = [], threading.Event()

        def sample():
            while not done.is_set():
                rss = memory(self.process.pid).get("VmRSS")  # none once the process has ended
                if rss is not None:
                    samples.append(rss)
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = time.time() + timeout
        try:
            try:
                prompt_id = post(self.base, "/prompt", {"prompt": prompt, "client_id": "bench"})["prompt_id"]
            except urllib.error.HTTPError as error:  # the server refused the prompt: say why
                raise RuntimeError(f"/prompt: {error}: {error.read().decode(errors='replace')[-3000:]}") from None
            while True:
                entry = get(self.base, f"/history/{prompt_id}").get(prompt_id)
                if entry and entry["status"].get("completed") is not None:
                    break
                if time.time() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"the run did not end in {timeout} s (server log: {self.workdir})")
                time.sleep(1.0)
        finally:
            done.set()
            sampler.join()
        time.sleep(2.0)  # ComfyUI drops the previous prompt's outputs it does not cache; give the heap a moment
        after = memory(self.process.pid)
        if entry["status"]["status_str"] != "success":
            raise RuntimeError(json.dumps(entry["status"]["messages"])[-3000:])
        return entry, {"rss_before_mib": before["VmRSS"], "peak_rss_mib": after["VmHWM"],
                       "peak_rss_sampled_mib": max(samples, default=before["VmRSS"]), "after_rss_mib": after["VmRSS"]}

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def execution_seconds(entry) -> float:
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def output_video(server: Server, entry) -> Path:
    files = [server.output / item["subfolder"] / item["filename"] for output in entry["outputs"].values()
             for item in output.get("images", []) if item.get("type") == "output"]
    if len(files) != 1:
        raise RuntimeError(f"expected one output video, found {files}")
    return files[0]


def old_pack(args, workdir: Path) -> Path:
    """The pack as committed at --old-rev, exported from this repository's git (no work tree of it is touched)."""
    folder = workdir / f"pack-{args.old_rev}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old_rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def measure(args, workdir: Path, frames: int, old: bool) -> dict:
    from rain_core.cli.comfy_client import ui_to_api
    from rain_core.io.video import probe_video

    video = loop_video(Path(args.videos) / f"poses-{frames}.mp4", frames)
    server = Server(args, workdir / f"{'old' if old else 'long'}-{frames}", old_pack(args, workdir) if old else ROOT)
    try:
        template = OLD_TEMPLATE if old else LONG_TEMPLATE
        prompt = ui_to_api(json.loads(template.read_text()), server.object_info)
        if old:  # core Load Video lists the input folder: the video goes there, under the name the template uses
            shutil.copy(video, server.input / "anyone-video-1_kps.mp4")
        else:
            poses = next(node for node in prompt.values() if node["class_type"] == "RainPoseStream")
            poses["inputs"]["video_path"] = str(video)
        started = time.time()
        entry, figures = server.run(prompt, args.timeout)
        wall = time.time() - started
        seconds = execution_seconds(entry)
        info = probe_video(output_video(server, entry))
        if info.frame_count != frames or info.codec != "h264":
            raise RuntimeError(f"output: {info} for {frames} pose frames")
        row = {"frames": frames, "way": f"RAIN 1 (core Load Video, Create/Save Video), pack at {args.old_rev}" if old else
               "RAIN 5 (lazy video_path, sampler streams to the file)", **figures, "seconds": round(seconds, 1),
               "wall_seconds": round(wall, 1), "fps": round(frames / seconds, 2), "output_frames": info.frame_count,
               "output_fps": info.fps}
        print(json.dumps(row), flush=True)
        return row
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR"))
    parser.add_argument("--python", default=os.environ.get("COMFY_PYTHON"))
    parser.add_argument("--frames", default="1000,10000", help="lengths to render, comma-separated")
    parser.add_argument("--old-frames", type=int, help="the old way's length (default 320, --smoke 96; 0: skip it)")
    parser.add_argument("--old-rev", default="4e8d65d", help="git revision of the pack the old way runs")
    parser.add_argument("--smoke", action="store_true", help="96 and 384 frames (a few minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="let the sampler use the compiled CPU tick")
    parser.add_argument("--videos", help="folder for the looped pose videos (kept and reused; default: temporary)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds one run may take")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder of comfy_long_video.json")
    args = parser.parse_args(argv)
    if not (args.comfyui_dir and args.python):
        parser.error("set COMFYUI_DIR and COMFY_PYTHON (or --comfyui-dir / --python): a ComfyUI checkout and its python")
    if args.smoke:
        args.frames = "96,384"
    if args.old_frames is None:
        args.old_frames = 96 if args.smoke else 320
    lengths = [int(n) for n in args.frames.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="rain-comfy-long-"))
    args.videos = str(Path(args.videos).resolve()) if args.videos else str(workdir / "videos")
    Path(args.videos).mkdir(parents=True, exist_ok=True)
    try:
        rows = [measure(args, workdir, frames, old=False) for frames in lengths]
        old = [measure(args, workdir, args.old_frames, old=True)] if args.old_frames else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    short, long = rows[0], rows[-1]
    ratio = long["peak_rss_mib"] / short["peak_rss_mib"]
    result = {
        "bench": "comfy_long_video", "command": "bench/comfy_long_video.py " + " ".join(argv or sys.argv[1:]),
        "host": "ComfyUI (real server, --cpu)", "threads": args.threads, "tick": "compiled" if args.compile else "eager",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "rows": rows, "old_way": old,
        f"ratio_{_k(long['frames'])}_vs_{_k(short['frames'])}": round(ratio, 3),
        "after_ratio": round(long["after_rss_mib"] / short["after_rss_mib"], 3), "goal": "<= 1.10",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comfy_long_video.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"peak server RSS: {short['frames']} frames {short['peak_rss_mib']:.0f} MiB, {long['frames']} frames "
          f"{long['peak_rss_mib']:.0f} MiB: ratio {ratio:.3f} (goal <= 1.10); after the run "
          f"{short['after_rss_mib']:.0f} vs {long['after_rss_mib']:.0f} MiB")
    for row in old:
        print(f"old way, {row['frames']} frames: peak {row['peak_rss_mib']:.0f} MiB, after {row['after_rss_mib']:.0f}")
    return 0


def _k(frames: int) -> str:
    return f"{frames // 1000}k" if frames % 1000 == 0 else str(frames)


if __name__ == "__main__":
    raise SystemExit(main())
