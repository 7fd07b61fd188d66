"""The real-host harness shared by the host and browser tiers: a real ComfyUI (COMFYUI_DIR, run by COMFY_PYTHON)
with this pack linked in under another folder name, started in a temporary work folder.

Environment:
  COMFYUI_DIR, COMFY_PYTHON   the ComfyUI checkout and the python of its venv (NOTES.md says how they were built);
                              without them the tiers are skipped with the reason printed
  COMFY_FRONTEND_ROOT         optional: a front end to serve instead of the installed comfyui-frontend-package
                              (the folder holding index.html of another comfyui-frontend-package wheel)
  COMFY_EXTRA_ARGS            optional: more start-up flags, e.g. "--lowvram" or "--novram"
  RAIN_CHROMIUM               optional: the Chromium the browser tiers drive (default: Debian's)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples"  # real inputs shipped with the pack (examples/README.md)
PACK_FOLDER = "ComfyUI-RAIN-renamed"
OUR_NODES = {"LoadRainModel", "RainPoseStream", "RainSampler", "RainFrameQueue", "RainLoadPoseKeypoints"}
TEST_MODEL = "tiny-host-test"
BIG_MODEL = "host-memory-test"  # large enough for its weights to show in the server's RSS
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
USER_FILE = "anyone-2.png"  # present in the input folder before the server starts: must not be overwritten

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFY_PYTHON = os.environ.get("COMFY_PYTHON")
if not (COMFYUI_DIR and Path(COMFYUI_DIR, "main.py").is_file()):
    REASON = "real-host tier skipped: set COMFYUI_DIR to a ComfyUI checkout (and COMFY_PYTHON to its venv's python)"
elif not (COMFY_PYTHON and Path(COMFY_PYTHON).exists()):
    REASON = f"real-host tier skipped: COMFY_PYTHON must name the python that runs ComfyUI in {COMFYUI_DIR}"
else:
    REASON = None
if REASON:
    print(REASON)
HOST_MARKS = [pytest.mark.comfyui] + ([pytest.mark.skip(reason=REASON)] if REASON else [])
FRONTEND_ROOT = os.environ.get("COMFY_FRONTEND_ROOT") or None
EXTRA_ARGS = shlex.split(os.environ.get("COMFY_EXTRA_ARGS", ""))
GPU_MEMORY_FLAGS = {"--lowvram", "--novram", "--normalvram", "--highvram", "--gpu-only"}


def comfy_has_gpu() -> bool:
    """Whether COMFY_PYTHON's torch sees a CUDA device (the memory flags need one)."""
    if REASON:
        return False
    probe = subprocess.run([COMFY_PYTHON, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=300)
    return probe.stdout.strip() == "True"

# The browser tiers (test_browser.py, test_live_browser.py) share these: Debian's Chromium, never a downloaded one.
CHROMIUM = os.environ.get("RAIN_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
if REASON:
    BROWSER_SKIP = REASON
elif not Path(CHROMIUM).exists():
    BROWSER_SKIP = f"browser tier skipped: no Chromium at {CHROMIUM} (apt-get install chromium, or set RAIN_CHROMIUM)"
else:
    BROWSER_SKIP = None
BROWSER_MARKS = [pytest.mark.browser, pytest.mark.comfyui] + ([pytest.mark.skip(reason=BROWSER_SKIP)] if BROWSER_SKIP else [])
LIVE_REFERENCE = "live-reference.png"  # a file of the server's input folder, as a Load Image node names it


def live_server(tmp_path_factory, name: str):
    """A real ComfyUI with the pack and a reference in its input folder, for the live tiers (yield from it)."""
    instance = Server(tmp_path_factory.mktemp(name))
    instance.start()
    shutil.copy(DATA / "anyone-1.png", instance.workdir / "input" / LIVE_REFERENCE)  # as a Load Image upload would
    yield instance
    instance.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`base_directory=True`: the workdir is ComfyUI's base directory (`--base-directory`), so ComfyUI's own models/
    folder, where downloads go, is the workdir's; otherwise the test's model folders are added to the checkout's.
    `env`: variables added to the server's environment."""

    def __init__(self, workdir: Path, base_directory: bool = False, env: dict | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.process = None
        self.base_directory = base_directory
        self.env = env or {}

    def start(self, extra_args: tuple[str, ...] = ()):
        custom_nodes = self.workdir / "custom_nodes"
        custom_nodes.mkdir()
        (custom_nodes / PACK_FOLDER).symlink_to(ROOT)
        models = self.workdir / "models"
        for kind in ("rain", "vae", "clip_vision"):  # the test's own model files, beside ComfyUI's folders
            (models / kind).mkdir(parents=True, exist_ok=True)
        paths = self.workdir / "paths.yaml"
        if self.base_directory:
            paths.write_text("{}\n")  # the base directory holds custom_nodes/ and models/ already
        else:
            paths.write_text(f"pack_under_test:\n    custom_nodes: {custom_nodes}\n    rain: {models / 'rain'}\n"
                             f"    vae: {models / 'vae'}\n    clip_vision: {models / 'clip_vision'}\n")
        inputs = self.input = self.workdir / "input"
        inputs.mkdir()
        # The user's own file of a name the examples use; the pack copies the other examples in at start-up.
        shutil.copy(DATA / "anime-portrait.png", inputs / USER_FILE)
        self.output = self.workdir / "output"
        self.output.mkdir()
        # --cpu unless a memory flag asks for the GPU (ComfyUI refuses --lowvram/--novram beside --cpu)
        device = [] if set(extra_args + tuple(EXTRA_ARGS)) & GPU_MEMORY_FLAGS else ["--cpu"]
        command = [COMFY_PYTHON, "main.py", *device, "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-api-nodes", "--extra-model-paths-config", str(paths), "--input-directory", str(inputs),
                   "--output-directory", str(self.output), "--temp-directory", str(self.workdir),
                   "--disable-auto-launch", *extra_args, *EXTRA_ARGS]
        if self.base_directory:
            command += ["--base-directory", str(self.workdir)]
        if FRONTEND_ROOT:
            command += ["--front-end-root", FRONTEND_ROOT]
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=COMFYUI_DIR, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env})
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                self.get("/object_info/LoadImage")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not come up in 300 s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.log.close()

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path, payload=None):
        request = urllib.request.Request(self.base + path, data=json.dumps(payload or {}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body else None

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt: dict, timeout: float = 600, client_id: str | None = None) -> dict:
        entry = self.wait(self.queue(prompt, client_id), timeout)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-3000:]
        return entry
