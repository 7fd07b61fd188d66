"""Browser tier: the live panel in a real ComfyUI page, in headless Debian Chromium driven by Playwright, with a
fake camera that plays the real pose video (a .y4m made here from examples/anyone-video-1_kps.mp4).

Opt-in: the `browser` marker, plus a real ComfyUI as in tests/test_comfyui_host.py and Playwright's Python
package with the system Chromium (never a downloaded browser):

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python \
        .venv/bin/pytest tests/test_live_browser.py -m browser -s

The panel opens, Start streams the camera to /rain/live, animated frames come back and are drawn beside the
input, and a screenshot shows both. A browser with no camera gets a clear message in the panel.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from comfy_host import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, DATA, LIVE_REFERENCE, live_server
from PIL import Image

REFERENCE = LIVE_REFERENCE


pytestmark = BROWSER_MARKS


def write_y4m(video: Path, path: Path, width: int = 256, height: int = 352) -> Path:
    """The pose video as raw YUV 4:2:0 frames, the format Chromium's fake camera plays (in a loop)."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            handle.write(b"FRAME\n" + cv2.cvtColor(cv2.resize(frame, (width, height)), cv2.COLOR_BGR2YUV_I420).tobytes())
    capture.release()
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from live_server(tmp_path_factory, "comfy-browser")


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (uses the system Chromium)")
    with sync_api.sync_playwright() as instance:
        yield instance


def open_comfyui(browser, server, errors: list):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "rain_live" in m.text else None)
    page.on("pageerror", lambda e: errors.append(str(e)) if "rain_live" in (e.stack or "") else None)
    page.goto(server.base)
    page.wait_for_function("() => window.app && window.app.graph && window.rainLive", timeout=120_000)
    try:  # a first visit opens the "Get Started with a Template" dialog over everything, a little later
        page.wait_for_selector(".p-dialog-mask", timeout=15_000)
        page.keyboard.press("Escape")
        page.wait_for_selector(".p-dialog-mask", state="detached", timeout=15_000)
    except PlaywrightTimeout:
        pass
    return page


def set_fields(page, **values):
    page.click("#rain-live-settings > summary", position={"x": 4, "y": 4})  # unfold the settings
    for name, value in values.items():
        page.fill(f"#rain-live-{name}", str(value))


@contextlib.contextmanager
def live_panel(playwright, server, source: str, extra_args=()):
    """A ComfyUI page in a new Chromium with the live panel open on `source`; yields (page, pack JS errors)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + list(extra_args))
    errors: list[str] = []
    try:
        page = open_comfyui(browser, server, errors)
        page.click("#rain-live-toggle")
        page.select_option("#rain-live-source", source)
        yield page, errors
    finally:
        browser.close()


def test_panel_streams_the_fake_camera_and_shows_input_and_animation_side_by_side(server, playwright, tmp_path):
    y4m = write_y4m(DATA / "anyone-video-1_kps.mp4", tmp_path / "poses.y4m")
    fake_camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                   f"--use-file-for-fake-video-capture={y4m}"]
    with live_panel(playwright, server, "webcam", fake_camera) as (page, errors):
        page.select_option("#rain-live-mode", "pose")  # the fake camera shows a pose video
        set_fields(page, model="tiny-rain (built-in)", width=64, height=64, levels=2, frames_per_cohort=2, steps=2,
                   reference=REFERENCE)
        page.click("#rain-live-start")
        page.wait_for_function("() => Number(document.querySelector('#rain-live-output').dataset.frames || 0) >= 6",
                               timeout=180_000)
        video = page.evaluate("() => { const v = document.querySelector('#rain-live-input');"
                              " return [v.videoWidth, v.videoHeight, v.paused]; }")
        assert video == [256, 352, False]
        # the server's counters come with its periodic stats message, which a fast model's first frames can beat
        page.wait_for_function("() => document.querySelector('#rain-live-stats').textContent.includes('dropped')",
                               timeout=60_000)
        stats = page.text_content("#rain-live-stats")
        assert "fps" in stats and "latency p50" in stats and "dropped" in stats, stats
        assert float(page.get_attribute("#rain-live-stats", "data-latency-p50")) > 0
        shot = tmp_path / "live_panel.png"
        page.locator("#rain-live-panel").screenshot(path=str(shot))
        print(f"\nscreenshot: {shot}; stats: {stats}")
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
        assert not errors, errors


def test_no_camera_gives_a_clear_message_in_the_panel(server, playwright):
    with live_panel(playwright, server, "webcam") as (page, errors):  # no camera at all
        page.click("#rain-live-start")
        page.wait_for_function("() => document.querySelector('#rain-live-message').textContent.length > 0",
                               timeout=30_000)
        message = page.text_content("#rain-live-message")
        assert "No camera found" in message or "Camera refused" in message, message
        assert page.is_enabled("#rain-live-start") and not page.is_enabled("#rain-live-stop")
        assert not errors, errors


def test_example_pose_video_needs_no_camera_and_a_missing_model_is_reported(server, playwright):
    """The no-download path: the pack's example pose video plays in the page and drives the built-in model."""
    with live_panel(playwright, server, "example") as (page, errors):  # no camera at all
        set_fields(page, model="no-such-model", width=64, height=64, levels=2, frames_per_cohort=2, steps=2)
        page.click("#rain-live-start")
        page.wait_for_function("() => document.querySelector('#rain-live-message').textContent.includes('no-such')",
                               timeout=60_000)
        page.wait_for_function("() => !document.querySelector('#rain-live-start').disabled", timeout=10_000)
        page.fill("#rain-live-model", "tiny-rain (built-in)")
        page.click("#rain-live-start")
        page.wait_for_function("() => Number(document.querySelector('#rain-live-output').dataset.frames || 0) >= 4",
                               timeout=180_000)
        assert page.evaluate("() => document.querySelector('#rain-live-input').videoWidth") == 512
        assert "streaming" in page.text_content("#rain-live-message")
        page.click("#rain-live-stop")
        assert not errors, errors
