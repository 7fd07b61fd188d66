"""The `rain` command end to end on tiny real networks, real files and the real pose videos in examples/."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import write_official_checkpoint

from rain_core.cli import main
from rain_core.loading import load_rain, save_rain
from rain_core.pose import Person, PoseFrame, save_openpose_json, to_pose_keypoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def video_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_models):
    return save_rain(tiny_models, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def pose_json(tmp_path_factory):
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        body = np.concatenate([rng.uniform(0.2, 0.8, (18, 2)), np.ones((18, 1))], axis=1)
        frames.append(PoseFrame([Person(body=body)], canvas_width=256, canvas_height=256))
    path = tmp_path_factory.mktemp("poses") / "poses.json"
    save_openpose_json(frames, path)
    return path


def test_demo_writes_a_video_and_reports_speed_latency_and_psnr(tmp_path, tiny_folder, capsys):
    out = tmp_path / "demo.mp4"
    code, stdout, _ = run(["demo", "--model", tiny_folder, "--out", out, "--frames", 8, "--size", 32,
                           "--height", 32, "--width", 32, "--scale", 1, "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["frames"] == 8 and video_frames(out) == 8
    assert np.isfinite(summary["psnr_db"]) and np.isfinite(summary["copy_reference_psnr_db"])
    assert summary["latency_frames"] == 15 and summary["fps"] > 0
    assert not list(tmp_path.glob(".*partial*")), "no temporary file may be left behind"


def test_animate_authors_layout_with_a_real_pose_video(tmp_path, tiny_models, capsys):
    folder = write_official_checkpoint(tiny_models, tmp_path / "official")
    out = tmp_path / "anim.mp4"
    code, stdout, err = run(["animate", "--model", folder, "--reference", EXAMPLES / "anyone-1.png",
                             "--poses", EXAMPLES / "anyone-video-1_kps.mp4", "--max-frames", 22,
                             "--height", 32, "--width", 32, "--out", out, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["frames"] == 22 and video_frames(out) == 22
    # what bench/fullsize_cpu.py reads: load and reference time, each full push's tick (wall and CPU), the
    # median after the p - 1 = 3 warm-up ticks, and resident memory at each phase
    assert len(summary["tick_seconds"]) == len(summary["tick_cpu_seconds"]) == 5  # 22 frames: 5 full pushes
    steady = sorted(summary["tick_seconds"][3:])
    assert summary["steady_seconds_per_tick"] == steady[1] and summary["steady_cpu_seconds_per_tick"] > 0
    assert summary["load_seconds"] > 0 and summary["reference_seconds"] > 0 and summary["dtype"] == "float32"
    memory = summary["memory_gib"]
    assert set(memory) == {"loaded", "reference", "end"} and memory["end"]["peak_rss_gib"] >= memory["end"]["rss_gib"] > 0


def test_animate_from_openpose_json_and_keypoint_order_is_kept(tmp_path, tiny_folder, pose_json, capsys):
    out = tmp_path / "frames"  # no video suffix: a PNG sequence folder
    code, _, err = run(["animate", "--model", tiny_folder, "--reference", EXAMPLES / "anime-portrait.png",
                        "--poses", pose_json, "--height", 32, "--width", 32, "--out", out], capsys)
    assert code == 0, err
    assert len(sorted(out.glob("*.png"))) == 6


def test_pose_keypoint_json_is_accepted_too(tmp_path, tiny_folder, capsys):
    body = np.concatenate([np.full((18, 2), 0.5), np.ones((18, 1))], axis=1)
    keypoints = to_pose_keypoint([PoseFrame([Person(body=body)], canvas_width=64, canvas_height=64)] * 4)
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(keypoints))
    code, _, err = run(["animate", "--model", tiny_folder, "--reference", EXAMPLES / "anyone-2.png",
                        "--poses", path, "--height", 32, "--width", 32, "--out", tmp_path / "o.mp4"], capsys)
    assert code == 0, err
    assert video_frames(tmp_path / "o.mp4") == 4


def test_convert_round_trip_is_bit_exact(tmp_path, tiny_models, capsys):
    official = write_official_checkpoint(tiny_models, tmp_path / "official")
    code, _, err = run(["convert", official, tmp_path / "converted"], capsys)
    assert code == 0, err
    a, b = load_rain(official), load_rain(tmp_path / "converted")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["animate", "--no-such-flag"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("case", ["missing_reference", "missing_model", "bad_steps", "missing_out_folder",
                                  "unreadable_video", "missing_poses"])
def test_bad_input_exits_2_with_a_helpful_message_and_no_partial_file(case, tmp_path, tiny_folder, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous good file")
    argv = {"model": tiny_folder, "reference": EXAMPLES / "anyone-1.png",
            "poses": EXAMPLES / "anyone-video-2_kps.mp4", "out": out}
    extra = []
    expected = ""
    if case == "missing_reference":
        argv["reference"], expected = tmp_path / "nope.png", "nope.png"
    elif case == "missing_model":
        argv["model"], expected = tmp_path / "no-model", "no-model"
    elif case == "bad_steps":
        extra, expected = ["--steps", 3], "steps"
    elif case == "missing_out_folder":
        argv["out"], expected = tmp_path / "missing" / "x.mp4", "does not exist"
    elif case == "unreadable_video":
        fake = tmp_path / "fake.mp4"
        fake.write_text("this is not a video")
        argv["poses"], expected = fake, "fake.mp4"
    elif case == "missing_poses":
        argv["poses"], expected = tmp_path / "none.mp4", "none.mp4"
    code, _, err = run(["animate", *[x for k, v in argv.items() for x in (f"--{k}", v)], "--height", 32,
                        "--width", 32, "--max-frames", 4, *extra], capsys)
    assert code == 2, err
    assert expected in err
    assert out.read_bytes() == b"previous good file", "a failed run must not touch the existing output"
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
