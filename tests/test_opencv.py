"""OpenCV as the card says (`opencv-python`, with a GUI): `rain live` says why no window opens, the pack says what to
keep when several OpenCV builds share one cv2 folder, and (slow tier) installing the pack's requirement where
opencv-python-headless or opencv-contrib-python already sits leaves one working cv2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_nodes import load_pack

from rain_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def opencv_requirement() -> str:
    """The pack's OpenCV line of requirements.txt (what ComfyUI-Manager installs, one line at a time)."""
    return next(line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                if line.lower().startswith("opencv"))


def test_the_pack_requires_the_cards_opencv_build_with_a_gui():
    assert re.fullmatch(r"opencv-python>=[0-9.]+", opencv_requirement())


@pytest.mark.parametrize("build_information, environ, reason", [
    ("  GUI:                           NONE\n", {"DISPLAY": ":0"}, "has no GUI (opencv-python-headless?)"),
    ("  GUI:                           QT5\n", {}, "no display (neither DISPLAY nor WAYLAND_DISPLAY is set"),
])
def test_rain_live_without_out_says_why_no_window_opens(monkeypatch, capsys, build_information, environ, reason):
    import cv2

    monkeypatch.setattr(cv2, "getBuildInformation", lambda: build_information)
    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cv2, "namedWindow", lambda name: pytest.fail("OpenCV was asked for a window"), raising=False)
    code = main(["live", "--model", "tiny", "--reference", str(EXAMPLES / "anyone-1.png"), "--source",
                 str(EXAMPLES / "anyone-video-1_kps.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and reason in err and "pass --out FILE.mp4" in err, err


def test_the_pack_names_every_opencv_build_in_the_cv2_folder_and_the_one_to_keep():
    host = load_pack().nodes.host
    assert host.opencv_advice({"opencv-python": "5.1.0.95"}) is None
    advice = host.opencv_advice({"opencv-python": "5.1.0.95", "opencv-python-headless": "4.12.0.88"})
    assert "opencv-python 5.1.0.95, opencv-python-headless 4.12.0.88" in advice
    assert "pip uninstall -y opencv-python opencv-python-headless, then pip install opencv-python" in advice
    advice = host.opencv_advice({"opencv-python": "5.1.0.95", "opencv-contrib-python": "5.1.0.95"})
    assert advice.endswith("pip install opencv-contrib-python")


CHECK_CV2 = """
import json, sys
from importlib import metadata
import cv2, numpy as np
frame = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
capture = cv2.VideoCapture(sys.argv[1])
ok, decoded = capture.read()
gui = [l.split(":", 1)[1].strip() for l in cv2.getBuildInformation().splitlines() if l.strip().startswith("GUI:")]
builds = {}
for name in ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"):
    try:
        builds[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps({"file": cv2.__file__, "version": cv2.__version__, "gui": gui[0] if gui else "NONE",
                  "resize": list(cv2.resize(frame, (32, 24)).shape), "png": bool(cv2.imencode(".png", frame)[0]),
                  "video": [ok, list(decoded.shape) if ok else None], "contrib": hasattr(cv2, "ximgproc"),
                  "builds": builds}))
"""


def pip(venv: Path, *args: str) -> None:
    """pip of the test's own environment acting on `venv` (a venv made without pip: fast)."""
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                           "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        if re.search(r"No matching distribution|Could not fetch|Failed to establish|Network is unreachable",
                     done.stderr):
            pytest.skip(f"the package index is unreachable: {done.stderr.strip().splitlines()[-1]}")
        raise AssertionError(done.stderr[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("present", ["opencv-python-headless==4.12.0.88", "opencv-contrib-python==5.1.0.95"])
def test_installing_the_pack_where_another_opencv_sits_leaves_one_working_cv2(tmp_path, present):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip(venv, "numpy", present)  # the environment before the pack
    pip(venv, "--no-deps", opencv_requirement())  # the pack's requirement line, installed as the Manager does
    result = subprocess.run([str(venv / "bin" / "python"), "-c", CHECK_CV2, str(EXAMPLES / "anyone-video-1_kps.mp4")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    print(present, "->", found)
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert [p.name for p in site.iterdir() if p.name.startswith("cv2")] == ["cv2"]  # one cv2 folder
    assert Path(found["file"]).parent == site / "cv2"
    assert found["resize"] == [24, 32, 3] and found["png"] and found["video"] == [True, [704, 512, 3]]
    assert found["gui"] != "NONE"  # the card's build has a GUI: `rain live` can open its window
    assert set(found["builds"]) == {"opencv-python", present.split("==")[0]}
    advice = load_pack().nodes.host.opencv_advice(found["builds"])  # what the pack logs at load in that environment
    assert advice and present.split("==")[0] in advice
