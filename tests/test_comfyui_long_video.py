"""Real-host tier: long videos in flat memory through a real ComfyUI (issue 30, item 3).

The long-video template runs as shipped (default widgets) and its file is checked: every pose frame, the pose
video's frame rate, H.264 yuv420p that decodes to its end, nothing temporary left beside it; a run cancelled
mid-way leaves no file; and bench/comfy_long_video.py --smoke (its own servers, 96 and 384 frames) keeps the
server's peak memory flat. Opt-in like tests/test_comfyui_host.py:

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python .venv/bin/pytest -q -m comfyui tests/test_comfyui_long_video.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import av
import pytest
from comfy_host import COMFY_PYTHON, COMFYUI_DIR, HOST_MARKS, ROOT, Server

from rain_core.cli.comfy_client import ui_to_api

pytestmark = HOST_MARKS
TEMPLATE = ROOT / "example_workflows" / "RAIN 5 - Long video (flat memory).json"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    instance = Server(tmp_path_factory.mktemp("comfy-long"))
    instance.start()
    yield instance
    instance.stop()


def shipped_prompt(server) -> dict:
    return ui_to_api(json.loads(TEMPLATE.read_text()), server.get("/object_info"))


def test_the_long_video_template_runs_as_shipped_and_writes_a_playable_h264_file(server):
    entry = server.run(shipped_prompt(server))
    files = [(item, output) for output in entry["outputs"].values() for item in output.get("images", [])]
    videos = [item for item, output in files if item["type"] == "output"]
    assert len(videos) == 1 and videos[0]["filename"].endswith(".mp4"), entry["outputs"]
    assert videos[0]["subfolder"] == "rain" and videos[0]["filename"].startswith("long_")
    previews = [item for item, output in files if item["type"] == "temp"]
    assert len(previews) == 1  # Preview Image got the last frame only
    path = server.output / "rain" / videos[0]["filename"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert float(stream.average_rate) == 30.0 and stream.frames == 64  # the example's 64 poses, at 30 fps
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(decoded) == 64 and decoded[-1].shape == (64, 64, 3)  # the built-in model's own size
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing temporary beside it


def test_a_cancelled_long_run_leaves_no_file(server, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from comfy_long_video import loop_video

    video = loop_video(tmp_path / "poses-640.mp4", 640)
    prompt = shipped_prompt(server)
    poses = next(node for node in prompt.values() if node["class_type"] == "RainPoseStream")
    poses["inputs"]["video_path"] = str(video)
    sampler = next(node for node in prompt.values() if node["class_type"] == "RainSampler")
    sampler["inputs"]["filename_prefix"] = "rain/cancelled"
    prompt_id = server.queue(prompt)
    deadline = time.time() + 300
    while not any(p.name.endswith(".partial.mp4") for p in (server.output / "rain").glob(".*")):
        assert time.time() < deadline, "no temporary file appeared"
        time.sleep(0.1)  # the sampler is writing: frames are on their way into the temporary file
    server.post("/interrupt")
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert dict(entry["status"]["messages"]).get("execution_interrupted", {}).get("node_id") is not None
    assert not [p.name for p in (server.output / "rain").iterdir() if "cancelled" in p.name]


def test_the_bench_smoke_keeps_the_servers_peak_memory_flat(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "comfy_long_video.py"), "--smoke", "--old-frames", "0",
               "--out", str(tmp_path), "--comfyui-dir", COMFYUI_DIR, "--python", COMFY_PYTHON]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    result = json.loads((tmp_path / "comfy_long_video.json").read_text())
    rows = result["rows"]
    assert [row["frames"] for row in rows] == [96, 384] == [row["output_frames"] for row in rows]
    print(finished.stdout[-600:])
    # 288 more 704 x 512 pose frames held as float32 would add 1.2 GB to a ~1 GB server
    assert result["ratio_384_vs_96"] < 1.15, result
