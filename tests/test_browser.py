"""Browser tier: the shipped workflows and the Frame Queue widget in a real ComfyUI page, in headless Debian
Chromium driven by Playwright (the system browser through executable_path; never a downloaded one).

Opt-in: the `browser` marker, plus a real ComfyUI as in tests/test_comfyui_host.py and Playwright's Python
package:

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python .venv/bin/pytest tests/test_browser.py -m browser -s

Each shipped workflow loads with every node known and no console error from the pack's JS; the live workflow is
queued several times from the page (as the Run button does) and the Frame Queue widget shows frames and its
stats. Screenshots are kept in the test's temporary folder.
"""

from __future__ import annotations

import json
import time

import pytest
from comfy_host import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, ROOT, WORKFLOWS, Server

PACK_JS = "rain_frame_queue"

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    instance = Server(tmp_path_factory.mktemp("comfy-pack-browser"))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (uses the system Chromium)")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        def on_console(message):
            if message.type == "error" and (PACK_JS in message.text or PACK_JS in str(message.location)):
                errors.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: errors.append(str(error)) if PACK_JS in (error.stack or "") else None)
        page.goto(server.base)
        page.wait_for_function("() => window.app && window.app.graph && document.querySelector('canvas')",
                               timeout=180_000)
        try:  # a first visit opens the "Get Started with a Template" dialog over the canvas
            page.wait_for_selector(".p-dialog-mask", timeout=10_000)
            page.keyboard.press("Escape")
        except sync_api.TimeoutError:
            pass
        page.rain_errors = errors
        page.rain_shots = tmp_path_factory.mktemp("screenshots")
        yield page
        browser.close()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_loads_with_every_node_known(page, path):
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(path.read_text()))
    time.sleep(0.5)
    types = page.evaluate("() => app.graph._nodes.map(n => [n.type, n.constructor.comfyClass ?? null])")
    missing = [kind for kind, comfy_class in types if comfy_class is None and kind not in ("Note", "MarkdownNote")]
    assert not missing, f"unknown node types in the page: {missing}"
    page.screenshot(path=str(page.rain_shots / f"{path.stem}.png"))
    assert page.rain_errors == [], page.rain_errors


def test_live_workflow_queued_from_the_page_fills_the_frame_queue_widget(page):
    live = ROOT / "example_workflows" / "RAIN 3 - Live preview (Auto Queue).json"
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(live.read_text()))
    widget = """() => {
        const node = app.graph._nodes.find(n => n.type === 'RainFrameQueue');
        const preview = node && node.rainPreview;
        return preview ? {label: preview.label.textContent, src: preview.image.src || ''} : null;
    }"""
    assert page.evaluate(widget)["label"].startswith("waiting")
    shown = None
    for run in range(8):  # warm-up runs emit nothing; then each run brings 4 frames to the widget
        page.evaluate("async () => { await app.queuePrompt(0, 1); }")
        deadline = time.time() + 180
        while time.time() < deadline:
            if page.evaluate("async () => (await (await fetch('/queue')).json()).queue_running.length") == 0 and \
                    page.evaluate("async () => (await (await fetch('/queue')).json()).queue_pending.length") == 0:
                break
            time.sleep(0.2)
        shown = page.evaluate(widget)
        if shown["src"].startswith("data:image/jpeg") and run >= 5:
            break
    page.screenshot(path=str(page.rain_shots / "live-frame-queue.png"))
    assert shown["src"].startswith("data:image/jpeg;base64,"), shown
    assert "fps" in shown["label"] and "latency" in shown["label"] and "queued" in shown["label"], shown
    latency = int(shown["label"].split("latency ")[1].split(" ms")[0])
    assert latency > 0, shown  # measured from the poses' arrival, never the old constant 0
    assert page.rain_errors == [], page.rain_errors
