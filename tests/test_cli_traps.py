"""The `rain` command tried as a new user would (issue 12 §4): each trap found by hand has a test here.

Real tiny networks (the built-in model), real files from examples/, real damaged and wrong inputs made from them."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_official_checkpoint
from PIL import Image

from rain_core.cli import build_parser, main
from rain_core.io.video import VideoSink, probe_video

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REFERENCE = EXAMPLES / "anyone-1.png"
POSES_30FPS = EXAMPLES / "anyone-video-1_kps.mp4"  # 64 frames, 30 fps, 512×704
POSES_SHORT = EXAMPLES / "anyone-video-2_kps.mp4"  # 48 frames


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def previous_output(tmp_path: Path) -> Path:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous good file")
    return out


def assert_untouched(out: Path) -> None:
    assert out.read_bytes() == b"previous good file", "a failed or interrupted run must leave the output as it was"
    assert not [p for p in out.parent.iterdir() if "partial" in p.name], "no temporary file may be left behind"


# ---- sizes, the built-in model, fps -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "builtin"])
def test_animate_with_the_builtin_model_runs_at_its_own_size(name, tmp_path, capsys):
    out = tmp_path / "anim.mp4"
    code, stdout, err = run(["animate", "--model", name, "--reference", REFERENCE, "--poses", POSES_30FPS,
                             "--max-frames", 4, "--out", out, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["size"] == [64, 64] and summary["output_fps"] == 30
    info = probe_video(out)
    assert (info.height, info.width, info.frame_count) == (64, 64, 4)
    assert round(info.fps) == 30, "the output keeps the pose video's frame rate"


def test_shared_noise_flag_makes_the_output_steadier_and_a_wrong_value_is_refused(tmp_path, capsys):
    from rain_core.io.video import read_video_frames

    change = {}
    for noise in ("fresh", "shared"):
        out = tmp_path / f"{noise}.mp4"
        code, _, err = run(["animate", "--model", "tiny", "--reference", REFERENCE, "--poses", POSES_30FPS,
                            "--max-frames", 12, "--noise", noise, "--out", out], capsys)
        assert code == 0, err
        frames = read_video_frames(out, 0, 0)[0].astype(np.float32)
        change[noise] = float(np.abs(np.diff(frames, axis=0)).mean())
    assert change["shared"] < 0.7 * change["fresh"], change  # the background stops crawling
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["animate", "--noise", "sideways"])
    assert exit_info.value.code == 2 and "invalid choice: 'sideways'" in capsys.readouterr().err


def test_demo_and_bench_run_at_the_models_own_size(tmp_path, capsys):
    code, stdout, err = run(["demo", "--model", "tiny", "--frames", 4, "--scale", 1, "--no-side-by-side",
                             "--out", tmp_path / "demo.mp4", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["size"] == [64, 64]
    assert (probe_video(tmp_path / "demo.mp4").height, probe_video(tmp_path / "demo.mp4").width) == (64, 64)
    code, stdout, err = run(["bench", "--model", "builtin", "--frames", 12, "--levels", 2, "--frames-per-cohort", 2,
                             "--steps", 2, "--no-baseline", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["size"] == [64, 64]


def test_live_from_a_30_fps_file_writes_30_fps_at_the_models_size(tmp_path, capsys):
    out = tmp_path / "live.mp4"
    code, stdout, err = run(["live", "--model", "tiny", "--reference", REFERENCE, "--source", POSES_30FPS,
                             "--max-frames", 8, "--out", out, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["size"] == [64, 64]
    info = probe_video(out)
    assert round(info.fps) == 30 and (info.height, info.width, info.frame_count) == (64, 64, 8)


def test_outputs_are_created_with_the_users_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, _, err = run(["animate", "--model", "tiny", "--reference", REFERENCE, "--poses", POSES_SHORT,
                            "--max-frames", 4, "--out", tmp_path / "anim.mp4"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "anim.mp4").stat().st_mode) == 0o644


# ---- inputs that must be refused before any compute -----------------------------------------------------------


def test_a_pose_video_with_randomised_bytes_exits_2_and_keeps_the_output(tmp_path, capsys):
    # The issue randomised bytes 200k–600k of a 228-frame file; examples/ holds a 185 kB cut, so the same damage
    # (the middle of the file) is bytes 40k–140k here.
    data = bytearray(POSES_30FPS.read_bytes())
    data[40_000:140_000] = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    out = previous_output(tmp_path)
    code, _, err = run(["animate", "--model", "tiny", "--reference", REFERENCE, "--poses", broken, "--out", out],
                       capsys)
    assert code == 2, err
    assert "broken.mp4" in err and ("damaged" in err or "truncated" in err) and "Traceback" not in err
    assert_untouched(out)


def test_camera_footage_given_as_the_pose_video_is_refused(tmp_path, capsys):
    photo = np.asarray(Image.open(REFERENCE).convert("RGB").resize((128, 160)))
    footage = tmp_path / "talking-head.mp4"
    with VideoSink(footage, fps=30) as sink:
        for shift in range(12):
            sink.write(np.roll(photo, shift * 2, axis=1))
    out = previous_output(tmp_path)
    code, _, err = run(["animate", "--model", "tiny", "--reference", REFERENCE, "--poses", footage, "--out", out],
                       capsys)
    assert code == 2, err
    assert "talking-head.mp4" in err and "skeletons" in err and "--no-pose-check" in err
    assert_untouched(out)


@pytest.mark.parametrize("case", ["one_pixel", "blank"])
def test_a_reference_that_is_no_picture_is_refused(case, tmp_path, capsys):
    reference = tmp_path / f"{case}.png"
    Image.new("RGB", (1, 1) if case == "one_pixel" else (256, 256), (255, 255, 255)).save(reference)
    out = previous_output(tmp_path)
    code, _, err = run(["animate", "--model", "tiny", "--reference", reference, "--poses", POSES_SHORT,
                        "--out", out], capsys)
    assert code == 2, err
    assert f"{case}.png" in err and ("1×1" in err if case == "one_pixel" else "blank" in err)
    assert_untouched(out)


@pytest.mark.parametrize("value", ["-5", "0", "many"])
def test_max_frames_must_be_positive(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["animate", "--model", "tiny", "--reference", str(REFERENCE), "--poses", str(POSES_SHORT),
              "--out", str(tmp_path / "o.mp4"), "--max-frames", value])
    assert exit_info.value.code == 2
    assert "--max-frames" in capsys.readouterr().err


def test_a_pth_holding_pickled_objects_is_refused_for_safety_without_suggesting_to_turn_the_check_off(
        tmp_path, tiny_models, capsys):
    folder = write_official_checkpoint(tiny_models, tmp_path / "official")
    torch.save({"weights": torch.zeros(2), "options": argparse.Namespace(lr=1e-4)}, folder / "pose_guider.pth")
    code, _, err = run(["convert", folder, tmp_path / "converted"], capsys)
    assert code == 2, err
    assert "refused for safety" in err and "argparse.Namespace" in err
    assert "weights_only" not in err and "damaged" not in err and "truncated" not in err


# ---- rc 2 with a message, not a traceback ----------------------------------------------------------------------


def test_queue_with_an_unreachable_server_exits_2(tmp_path, capsys):
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "RAIN Sampler", "inputs": {}}}))
    code, _, err = run(["queue", workflow, "--server", "http://127.0.0.1:9", "--timeout", 2], capsys)
    assert code == 2, err
    assert "--server http://127.0.0.1:9" in err and "Traceback" not in err


def test_queue_drives_one_server_and_points_to_rain_batch_for_several(tmp_path, capsys):
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "RAIN Sampler", "inputs": {}}}))
    code, _, err = run(["queue", workflow, "--server", "http://127.0.0.1:9", "--server", "http://127.0.0.1:10"],
                       capsys)
    assert code == 2, err
    assert "one ComfyUI server" in err and "rain batch" in err and "Traceback" not in err


def test_live_detector_without_the_onnx_files_names_the_flag(tmp_path, capsys):
    empty = tmp_path / "dwpose"
    empty.mkdir()
    code, _, err = run(["live", "--model", "tiny", "--reference", REFERENCE, "--source", POSES_SHORT,
                        "--poses", "detector", "--dwpose-dir", empty, "--out", tmp_path / "o.mp4"], capsys)
    assert code == 2, err
    assert "--poses detector" in err and "--dwpose-dir" in err and "folder=" not in err
    assert "Traceback" not in err


def test_screen_capture_without_mss_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mss", None)  # as if not installed (`import mss` raises ImportError)
    code, _, err = run(["live", "--model", "tiny", "--reference", REFERENCE, "--source", "screen",
                        "--out", tmp_path / "o.mp4", "--max-frames", 4], capsys)
    assert code == 2, err
    assert "comfyui-rain[screen]" in err


# ---- rain convert in the README layout -----------------------------------------------------------------------------


def test_convert_finds_the_image_encoder_in_the_readme_layout(tmp_path, tiny_models, capsys):
    models = tmp_path / "models"
    folder = write_official_checkpoint(tiny_models, models / "rain" / "RAIN-v0.1")
    (models / "clip_vision").mkdir()
    shutil.move(folder / "image_encoder", models / "clip_vision" / "sd-image-variations")
    code, _, err = run(["convert", folder, models / "rain" / "RAIN-v0.1-st"], capsys)
    assert code == 0, err
    assert (models / "rain" / "RAIN-v0.1-st" / "image_encoder.safetensors").is_file()


def test_convert_takes_the_image_encoder_flag(tmp_path, tiny_models, capsys):
    folder = write_official_checkpoint(tiny_models, tmp_path / "official")
    encoder = tmp_path / "elsewhere" / "encoder"
    shutil.move(folder / "image_encoder", encoder)
    code, _, err = run(["convert", folder, tmp_path / "st"], capsys)
    assert code == 2 and "image encoder" in err
    code, _, err = run(["convert", folder, tmp_path / "st", "--image-encoder", encoder], capsys)
    assert code == 0, err


# ---- --json everywhere ----------------------------------------------------------------------------------------------


def test_every_command_takes_json():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        if name == "train":
            continue  # its flags are the trainer's; cli/train.py takes --json itself (tested below, slow tier)
        assert "--json" in sub._option_string_actions, name


@pytest.mark.slow
def test_train_json_prints_the_model_folder(tmp_path, capsys):
    code, stdout, err = run(["train", "--stage", 1, "--output", tmp_path / "run", "--model", "tiny", "--steps", 2,
                             "--json"], capsys)
    assert code == 0, err
    assert Path(json.loads(stdout)["model"]).is_dir()


# ---- Ctrl-C ------------------------------------------------------------------------------------------------------------


def _long_pose_video(path: Path, frames: int = 900) -> Path:
    """A long skeleton video (the example's 64 frames at 64 px, repeated) so a run is surely mid-stream at Ctrl-C."""
    from rain_core.io.video import read_video_frames

    clip, _, _ = read_video_frames(POSES_30FPS, 0, 0)
    small = np.stack([np.asarray(Image.fromarray(f).resize((64, 64), Image.BILINEAR)) for f in clip])
    with VideoSink(path, fps=30) as sink:
        for start in range(0, frames, len(small)):
            sink.write(small[: frames - start])
    return path


class _Rain:
    """`python -m rain_core ...` in a subprocess, with stderr collected as it arrives."""

    def __init__(self, *argv):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &`, nohup) inherits SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler in the child, so the signal would vanish
        self.process = subprocess.Popen([sys.executable, "-m", "rain_core", *map(str, argv)], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.process.stderr.read1(4096), b""):
            self.err += chunk

    def wait_for_frames(self, timeout: float = 120.0) -> None:
        """Until tqdm shows frames going through the stream."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.err.decode(errors="replace")
            if any(int(n) > 0 for n in re.findall(r"rain animate: (\d+)frame", text)):
                return
            assert self.process.poll() is None, text
            time.sleep(0.2)
        raise AssertionError(f"no progress within {timeout} s: {self.err.decode(errors='replace')}")

    def interrupt_and_wait(self, timeout: float = 60.0, times: int = 1) -> tuple[int, str, float]:
        start = time.monotonic()
        for _ in range(times):
            self.process.send_signal(signal.SIGINT)
            time.sleep(0.05)
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code, self.err.decode(errors="replace"), time.monotonic() - start


@pytest.fixture(scope="module")
def long_poses(tmp_path_factory):
    return _long_pose_video(tmp_path_factory.mktemp("poses") / "long_kps.mp4")


def test_ctrl_c_exits_130_and_leaves_the_output_untouched(tmp_path, long_poses):
    out = previous_output(tmp_path)
    rain = _Rain("animate", "--model", "tiny", "--reference", REFERENCE, "--poses", long_poses, "--out", out,
                 "--threads", 1)
    rain.wait_for_frames()
    code, err, seconds = rain.interrupt_and_wait()
    assert code == 130, err
    assert "interrupted" in err and "was not changed" in err and "Traceback" not in err
    assert seconds < 20, f"exit took {seconds:.1f} s after Ctrl-C"
    assert_untouched(out)


@pytest.mark.slow  # ~20 s each on a loaded 2-core machine: a subprocess imports torch
def test_keep_partial_writes_the_frames_so_far_beside_the_output(tmp_path, long_poses):
    out = previous_output(tmp_path)
    rain = _Rain("animate", "--model", "tiny", "--reference", REFERENCE, "--poses", long_poses, "--out", out,
                 "--threads", 1, "--keep-partial")
    rain.wait_for_frames()
    code, err, seconds = rain.interrupt_and_wait()
    assert code == 130, err
    assert out.read_bytes() == b"previous good file"
    partial = tmp_path / "out.partial.mp4"
    assert partial.is_file() and f"are in {partial}" in err
    frames = probe_video(partial).frame_count
    assert 0 < frames < 900
    assert seconds < 30, f"exit took {seconds:.1f} s after Ctrl-C"


@pytest.mark.slow
def test_a_second_ctrl_c_ends_a_keep_partial_run_at_once(tmp_path, long_poses):
    out = previous_output(tmp_path)
    rain = _Rain("animate", "--model", "tiny", "--reference", REFERENCE, "--poses", long_poses, "--out", out,
                 "--threads", 1, "--keep-partial")
    rain.wait_for_frames()
    code, err, seconds = rain.interrupt_and_wait(times=2)
    assert code == 130, err
    assert out.read_bytes() == b"previous good file" and "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file may be left behind"
    assert seconds < 20


@pytest.mark.slow
def test_ctrl_c_ends_rain_live_promptly_and_keeps_what_was_animated(tmp_path, long_poses):
    out = tmp_path / "live.mp4"
    rain = _Rain("live", "--model", "tiny", "--reference", REFERENCE, "--source", long_poses, "--out", out,
                 "--threads", 1, "--json")
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".live.mp4.rain-tmp-")]:  # the sink's temporary
        assert time.monotonic() < deadline and rain.process.poll() is None, rain.err.decode(errors="replace")
        time.sleep(0.2)
    code, err, seconds = rain.interrupt_and_wait()
    assert code == 0, err  # Ctrl-C is how a live run ends
    summary = json.loads(rain.process.stdout.read())
    assert summary["interrupted"] and probe_video(out).frame_count == summary["frames"] > 0
    assert seconds < 20
