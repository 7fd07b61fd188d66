"""Browser tier: the live panel in a real ComfyUI page, in headless Debian Chromium driven by Playwright, as a user
meets it: a shipped workflow loaded untouched (or an empty graph), the panel opened, Start pressed with nothing
typed. A fake camera plays the real pose video (a .y4m made here from examples/anyone-video-1_kps.mp4), or a photo
for the pose check.

Opt-in: the `browser` marker, plus a real ComfyUI as in tests/test_comfyui_host.py and Playwright's Python
package with the system Chromium (never a downloaded browser); COMFY_FRONTEND_ROOT serves another front end:

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python \
        .venv/bin/pytest tests/test_live_browser.py -m browser -s

Each test checks that no console error comes from the pack's files and that the page never asked for a file named
"none" (Pose Stream's empty upload widget). Screenshots go to the test's temporary folder (printed with -s).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from comfy_host import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, DATA, FRONTEND_ROOT, WORKFLOWS, live_server
from PIL import Image

pytestmark = BROWSER_MARKS

PACK_FILES = ("rain_live", "rain_frame_queue", "rain_pose_stream")
EMPTY = "empty graph"
FRAMES = "() => Number(document.querySelector('#rain-live-output').dataset.frames || 0)"
MESSAGE = "() => document.querySelector('#rain-live-message').textContent"


def write_y4m(frames, path: Path, width: int = 256, height: int = 352) -> Path:
    """Frames (BGR uint8) as raw YUV 4:2:0, the format Chromium's fake camera plays (in a loop)."""
    import cv2

    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            handle.write(b"FRAME\n" + cv2.cvtColor(cv2.resize(frame, (width, height)), cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def video_frames(video: Path):
    import cv2

    capture = cv2.VideoCapture(str(video))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        yield frame
    capture.release()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from live_server(tmp_path_factory, "comfy-browser")


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (uses the system Chromium)")
    with sync_api.sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def pose_camera(tmp_path_factory):
    path = write_y4m(video_frames(DATA / "anyone-video-1_kps.mp4"), tmp_path_factory.mktemp("camera") / "poses.y4m")
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={path}"]


@pytest.fixture(scope="module")
def photo_camera(tmp_path_factory):
    import cv2

    photo = cv2.imread(str(DATA / "anyone-1.png"))
    path = write_y4m([photo] * 30, tmp_path_factory.mktemp("camera") / "photo.y4m")
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={path}"]


def front_end() -> str:
    """The front end's name for the printed lines: its wheel's version where the unpacked wheel says it."""
    if not FRONTEND_ROOT:
        return "installed front end"
    wheel = sorted(Path(FRONTEND_ROOT).parents[1].glob("comfyui_frontend_package-*.dist-info"))
    return wheel[0].name.removesuffix(".dist-info") if wheel else FRONTEND_ROOT


class Page:
    """A ComfyUI page in a new Chromium: the pack's console errors and the requests for a file named "none"."""

    def __init__(self, browser, server):
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.errors: list[str] = []
        self.none_requests: list[str] = []

        def on_console(message):
            if message.type == "error" and any(f in message.text + str(message.location) for f in PACK_FILES):
                self.errors.append(message.text)

        self.page.on("console", on_console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)) if any(f in (e.stack or "") for f in PACK_FILES)
                     else None)
        self.page.on("request", lambda r: self.none_requests.append(r.url) if "filename=none" in r.url else None)
        self.server = server

    def open(self):
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        page = self.page
        page.goto(self.server.base)
        page.wait_for_function("() => window.app && window.app.graph && window.rainLive", timeout=120_000)
        try:  # a first visit opens the "Get Started with a Template" dialog over everything, a little later
            page.wait_for_selector(".p-dialog-mask", timeout=10_000)
            page.keyboard.press("Escape")
            page.wait_for_selector(".p-dialog-mask", state="detached", timeout=10_000)
        except PlaywrightTimeout:
            pass
        return self

    def load(self, workflow):
        """Load a shipped workflow as the Templates dialog does (the JSON untouched), or clear the graph."""
        if workflow == EMPTY:
            self.page.evaluate("() => { app.graph.clear(); app.graph.setDirtyCanvas(true, true); }")
        else:
            self.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(workflow.read_text()))
        self.page.wait_for_timeout(1000)  # previews load, the canvas settles

    def check_clean(self):
        assert not self.errors, self.errors
        assert not self.none_requests, self.none_requests


@contextlib.contextmanager
def comfy_page(playwright, server, extra_args=()):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + list(extra_args))
    try:
        yield Page(browser, server).open()
    finally:
        browser.close()


def sessions(server) -> list:
    return server.get("/rain/live/status")["sessions"]


def wait_until_no_sessions(server, page, timeout_ms: int = 30_000) -> None:
    for _ in range(timeout_ms // 250):
        if not sessions(server):
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"the server still holds {sessions(server)}")


def stream_with_nothing_typed(page, server, shots: Path, name: str, source: str | None = None) -> str:
    """Open the panel, (pick a source,) press Start: frames come back and the stats show; a screenshot of the page
    and of the panel. Returns the stats line."""
    page.click("#rain-live-toggle")
    if source is not None:
        page.select_option("#rain-live-source", source)
    assert page.input_value("#rain-live-mode") == "pose"  # the source never changes the mode
    page.click("#rain-live-start")
    try:
        page.wait_for_function(f"() => ({FRAMES})() >= 6", timeout=180_000)
        # the server's counters come with its periodic stats message, which a fast model's first frames can beat
        page.wait_for_function("() => document.querySelector('#rain-live-stats').textContent.includes('dropped')",
                               timeout=60_000)
    except Exception as error:
        raise AssertionError(f"{name}: no frames; the panel says {page.evaluate(MESSAGE)!r}") from error
    stats = page.text_content("#rain-live-stats")
    assert "fps" in stats and "latency p50" in stats and "dropped" in stats, stats
    assert "streaming" in page.evaluate(MESSAGE)
    page.screenshot(path=str(shots / f"{name}.png"))
    page.locator("#rain-live-panel").screenshot(path=str(shots / f"{name}-panel.png"))
    print(f"\n[{front_end()}] {name}: {stats} | {page.evaluate(MESSAGE)} | {shots / (name + '.png')}")
    return stats


@pytest.mark.parametrize("workflow", [*WORKFLOWS, EMPTY], ids=lambda w: w if w == EMPTY else w.stem)
def test_panel_streams_over_each_shipped_workflow_with_nothing_typed(server, playwright, workflow, tmp_path):
    """The example pose video (the panel's default source) through the settings the panel reads from the graph: the
    sampler's own (width/height 0 = the model's own size), its Load RAIN Model and Load Image (none: the server's)."""
    with comfy_page(playwright, server) as tab:
        tab.load(workflow)
        page = tab.page
        stream_with_nothing_typed(page, server, tmp_path, "empty" if workflow == EMPTY else workflow.stem)
        read = page.evaluate("() => Object.fromEntries(['model', 'width', 'levels', 'reference'].map("
                             "f => [f, document.querySelector('#rain-live-' + f).value]))")
        if workflow == EMPTY:
            assert read == {"model": "", "width": "", "levels": "", "reference": ""}, read  # the server's defaults
        else:
            assert read["model"] == "tiny-rain (built-in)" and read["width"] == "0" and read["levels"] == "4", read
            assert read["reference"] in {"anyone-1.png", "anyone-2.png", "anime-portrait.png"}, read
        assert page.evaluate("() => document.querySelector('#rain-live-input').videoWidth") == 512
        assert len(sessions(server)) == 1
        page.click("#rain-live-stop")
        wait_until_no_sessions(server, page)
        tab.check_clean()


def test_panel_streams_the_fake_camera_and_shows_input_and_animation_side_by_side(server, playwright, pose_camera,
                                                                                 tmp_path):
    live = next(w for w in WORKFLOWS if "Live" in w.name)
    with comfy_page(playwright, server, pose_camera) as tab:
        tab.load(live)
        page = tab.page
        stream_with_nothing_typed(page, server, tmp_path, "webcam", source="webcam")
        video = page.evaluate("() => { const v = document.querySelector('#rain-live-input');"
                              " return [v.videoWidth, v.videoHeight, v.paused]; }")
        assert video == [256, 352, False]
        assert float(page.get_attribute("#rain-live-stats", "data-latency-p50")) > 0
        shot = tmp_path / "webcam-panel.png"
        panel = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
        boxes = [page.locator(sel).bounding_box() for sel in ("#rain-live-input", "#rain-live-output")]
        origin = page.locator("#rain-live-panel").bounding_box()
        crops = [panel[int(b["y"] - origin["y"]):int(b["y"] - origin["y"] + b["height"]),
                       int(b["x"] - origin["x"]):int(b["x"] - origin["x"] + b["width"])] for b in boxes]
        assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"]  # side by side: input left, animation right
        assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2
        for crop in crops:  # both show a picture, not an empty box
            assert crop.std() > 10, crop.std()
        page.click("#rain-live-stop")
        assert page.evaluate("() => document.querySelector('#rain-live-input').srcObject") is None  # camera released
        wait_until_no_sessions(server, page)
        tab.check_clean()


def test_camera_footage_in_pose_mode_stops_with_the_pose_check_message_and_frees_everything(server, playwright,
                                                                                          photo_camera, tmp_path):
    """A real camera (here a photo) in "pose video as is" mode: the mode stays the user's, the server's pose check
    ends the session, and the panel stops sending, releases the camera and says why. Pose check off lets it through."""
    with comfy_page(playwright, server, photo_camera) as tab:
        tab.load(WORKFLOWS[0])
        page = tab.page
        page.click("#rain-live-toggle")
        page.select_option("#rain-live-source", "webcam")
        assert page.input_value("#rain-live-mode") == "pose" and page.is_checked("#rain-live-pose-check")
        page.click("#rain-live-start")
        page.wait_for_function(f"() => ({MESSAGE})().includes('rendered skeletons')", timeout=180_000)
        message = page.evaluate(MESSAGE)
        assert "DWPose detection mode" in message, message
        page.wait_for_function("() => !document.querySelector('#rain-live-start').disabled", timeout=10_000)
        assert not page.is_enabled("#rain-live-stop")
        assert page.evaluate("() => document.querySelector('#rain-live-input').srcObject") is None  # camera released
        sent = page.evaluate("() => rainLive.sent")
        page.wait_for_timeout(1000)
        assert page.evaluate("() => rainLive.sent") == sent  # nothing sent after the stop
        wait_until_no_sessions(server, page)
        page.screenshot(path=str(tmp_path / "pose-check.png"))
        print(f"\n[{front_end()}] pose check: {message} | {tmp_path / 'pose-check.png'}")
        page.uncheck("#rain-live-pose-check")
        page.click("#rain-live-start")
        page.wait_for_function(f"() => ({FRAMES})() >= 4", timeout=180_000)  # checked off: it animates the photo
        page.click("#rain-live-stop")
        wait_until_no_sessions(server, page)
        tab.check_clean()


def test_detection_mode_without_the_detector_names_the_files_and_how_to_get_them(server, playwright, pose_camera):
    """DWPose detection chosen by the user where the detector cannot run (here: no onnxruntime in ComfyUI's venv, no
    files): the session ends at the first frame with the message, and the panel stops and frees everything."""
    with comfy_page(playwright, server, pose_camera) as tab:
        page = tab.page
        page.click("#rain-live-toggle")
        page.select_option("#rain-live-source", "webcam")
        page.select_option("#rain-live-mode", "detect")
        page.click("#rain-live-start")
        page.wait_for_function(f"() => ({MESSAGE})().includes('dwpose')", timeout=180_000)
        message = page.evaluate(MESSAGE)
        for part in ("models/rain/dwpose/", "yolox_l.onnx", "dw-ll_ucoco_384.onnx", "rain download --what dwpose"):
            assert part in message, (part, message)
        page.wait_for_function("() => !document.querySelector('#rain-live-start').disabled", timeout=10_000)
        assert page.evaluate("() => document.querySelector('#rain-live-input').srcObject") is None
        assert page.input_value("#rain-live-mode") == "detect"  # still the user's choice
        wait_until_no_sessions(server, page)
        tab.check_clean()


def test_no_camera_gives_a_clear_message_in_the_panel(server, playwright):
    with comfy_page(playwright, server) as tab:  # no camera at all
        page = tab.page
        page.click("#rain-live-toggle")
        page.select_option("#rain-live-source", "webcam")
        page.click("#rain-live-start")
        page.wait_for_function(f"() => ({MESSAGE})().length > 0", timeout=30_000)
        message = page.evaluate(MESSAGE)
        assert "No camera found" in message or "Camera refused" in message, message
        assert page.is_enabled("#rain-live-start") and not page.is_enabled("#rain-live-stop")
        tab.check_clean()


def test_a_failed_start_says_why_and_frees_the_session_then_a_keypoint_file_streams(server, playwright, tmp_path):
    """A model that does not exist: the error before "ready" stops the panel and no session is left. Then the
    file source with a keypoint .json (the same file the CLI and Load Pose Keypoints read) streams."""
    with comfy_page(playwright, server) as tab:
        page = tab.page
        page.click("#rain-live-toggle")
        page.click("#rain-live-settings > summary", position={"x": 4, "y": 4})
        page.fill("#rain-live-model", "no-such-model")
        page.click("#rain-live-start")
        page.wait_for_function(f"() => ({MESSAGE})().includes('no-such')", timeout=60_000)
        page.wait_for_function("() => !document.querySelector('#rain-live-start').disabled", timeout=10_000)
        assert page.evaluate("() => rainLive.socket") is None
        wait_until_no_sessions(server, page)
        page.fill("#rain-live-model", "")
        page.set_input_files("#rain-live-panel input[type=file]", str(DATA / "keypoints" / "rain-dance-keypoints.json"))
        page.select_option("#rain-live-source", "file")
        page.click("#rain-live-start")
        page.wait_for_function(f"() => ({FRAMES})() >= 6", timeout=180_000)
        assert "rain-dance-keypoints.json" in page.evaluate(MESSAGE)
        page.locator("#rain-live-panel").screenshot(path=str(tmp_path / "keypoints-panel.png"))
        page.click("#rain-live-stop")
        wait_until_no_sessions(server, page)
        tab.check_clean()
