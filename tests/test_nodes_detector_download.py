"""Pose Stream fetches the DWPose files on first use from a local hub on 127.0.0.1 (the real huggingface_hub client
runs against the files' real repository and names), as comfyui_controlnet_aux does for its preprocessors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hub_server import LocalHub
from test_nodes import DATA, PACK_NAME, load_pack, pose_stream_args, standalone_host
from test_pose_detector import write_tiny_dwpose

from rain_core.io.video import read_video_frames

pytest.importorskip("onnxruntime")

DWPOSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture
def host(pack, tmp_path, monkeypatch):
    pose_stream = __import__(f"{PACK_NAME}.nodes.pose_stream", fromlist=["_detectors"])
    pose_stream._detectors.clear()
    yield from standalone_host(monkeypatch, tmp_path / "models")
    pose_stream._detectors.clear()


@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    folder = write_tiny_dwpose(tmp_path_factory.mktemp("served"))
    with LocalHub({("yzd-v/DWPose", name): (folder / name).read_bytes() for name in DWPOSE_FILES}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield server, folder


def video_frames(count=3):
    frames, _, _ = read_video_frames(DATA / "anyone-video-1_kps.mp4", 0, count)
    return torch.from_numpy(frames.astype(np.float32) / 255.0)


def test_video_frames_fetch_the_detector_once_with_progress_then_pose_every_frame(pack, host, hub, tmp_path):
    _, served = hub
    progress = []
    host.progress_hooks.append(lambda node_id, value, total, preview: progress.append((node_id, value, total)))
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    poses, preview = node.prepare(**pose_stream_args(video_frames=video_frames(3)))
    folder = tmp_path / "models" / "rain" / "dwpose"
    for name in DWPOSE_FILES:  # the README layout, byte for byte
        assert (folder / name).read_bytes() == (served / name).read_bytes()
    assert progress and progress[-1] == ("7", 1000, 1000)
    assert len(poses) == 3 and poses.frames is not None and preview.shape[0] == 3
    # the planted detector finds its people: every frame has a body with confident points
    assert all(len(frame.people) >= 1 for frame in poses.frames)

    progress.clear()
    node.prepare(**pose_stream_args(video_frames=video_frames(2)))
    assert progress == []  # the files are there now: nothing is fetched again


def test_offline_the_missing_detector_is_a_clear_error_and_nothing_is_requested(pack, host, hub, monkeypatch,
                                                                                tmp_path):
    server, _ = hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    detector_error = __import__(f"{PACK_NAME}.rain_core.pose", fromlist=["DetectorUnavailable"]).DetectorUnavailable
    with pytest.raises(detector_error, match=r"yolox_l\.onnx.*HF_HUB_OFFLINE is set.*rain download --what dwpose"):
        node.prepare(**pose_stream_args(video_frames=video_frames(1)))
    assert server.requests == []


def test_the_live_panel_in_detect_mode_uses_the_same_detector_and_fetches_it(pack, host, hub, tmp_path):
    from rain_core.live import LiveSession, LiveSettings
    from rain_core.loading import load_rain
    from rain_core.loading.layout import builtin_model_dir
    from rain_core.stream import StreamConfig

    route = __import__(f"{PACK_NAME}.nodes.live_route", fromlist=["_models_folder_detector"])
    frames, _, _ = read_video_frames(DATA / "anyone-video-1_kps.mp4", 0, 2)
    config = StreamConfig(height=64, width=64, levels=2, frames_per_cohort=2, steps=2, seed=3)
    session = LiveSession(load_rain(builtin_model_dir()), config, frames[0], LiveSettings(mode="detect"),
                          make_detector=route._models_folder_detector)
    try:
        for frame in frames:
            session.submit(frame)
        session.step()
        stats = session.stats()
        assert stats["failed"] == 0 and stats["pushed"] == 2
    finally:
        session.close()
    assert (tmp_path / "models" / "rain" / "dwpose" / "yolox_l.onnx").is_file()
