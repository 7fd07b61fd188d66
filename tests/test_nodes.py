"""The node classes, called the way ComfyUI calls them, with nodes/host.py in standalone mode.

The pack is imported like ComfyUI's `load_custom_node` does it: the repository root as a package under
a folder name of its own (registry installs rename the folder), so relative imports are exercised too.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples"  # real inputs shipped with the pack (examples/README.md)
PACK_NAME = "renamed_rain_pack"
CUSTOM_TYPES = {"RAIN_MODEL", "RAIN_POSES", "POSE_KEYPOINT", "VIDEO"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def standalone_host(monkeypatch, models_dir):
    """nodes/host.py in standalone mode with a clean slate for one test (a generator for fixtures to yield from)."""
    monkeypatch.setenv("RAIN_MODELS_DIR", str(models_dir))
    module = sys.modules[f"{PACK_NAME}.nodes.host"]
    module.sent_events.clear()
    module.progress_hooks.clear()
    module.set_client_id(None)
    yield module
    module.progress_hooks.clear()
    module.interrupt_processing(False)
    module.set_client_id(None)


@pytest.fixture
def host(pack, tmp_path, monkeypatch):
    yield from standalone_host(monkeypatch, tmp_path / "models")


def all_inputs(node_class):
    spec = node_class.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


# ------------------------------------------------------------------------------------------------- contract


def test_pack_exports_its_nodes_with_display_names_and_web_directory(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert sorted(pack.NODE_DISPLAY_NAME_MAPPINGS.values()) == ["Frame Queue", "Load Pose Keypoints (JSON)",
                                                                "Load RAIN Model", "Pose Stream", "RAIN Sampler"]
    assert (ROOT / pack.WEB_DIRECTORY / "rain_frame_queue.js").is_file()


def test_host_is_standalone_outside_comfyui(pack):
    host = sys.modules[f"{PACK_NAME}.nodes.host"]
    assert host.IN_COMFYUI is False


def test_only_host_imports_comfyui():
    comfy_modules = ("folder_paths", "comfy", "server", "execution", "comfy_execution")
    for path in list((ROOT / "nodes").glob("*.py")) + list((ROOT / "rain_core").rglob("*.py")):
        if path.name == "host.py":
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                assert words[1].split(".")[0] not in comfy_modules, f"{path}: {line.strip()}"


@pytest.mark.parametrize("key", ["LoadRainModel", "RainPoseStream", "RainSampler", "RainFrameQueue"])
def test_node_contract_is_consistent(pack, key):
    node = pack.NODE_CLASS_MAPPINGS[key]
    assert node.CATEGORY == "RAIN"
    assert isinstance(node.DESCRIPTION, str) and len(node.DESCRIPTION) > 40
    assert callable(getattr(node(), node.FUNCTION))
    assert len(node.RETURN_TYPES) == len(node.RETURN_NAMES) == len(node.OUTPUT_TOOLTIPS)
    for kind in node.RETURN_TYPES:
        assert kind in WIDGET_TYPES | CUSTOM_TYPES | {"IMAGE"}
    spec = node.INPUT_TYPES()
    inputs = all_inputs(node)
    # The run function accepts every declared input (and the hidden ones) by name.
    code = getattr(node, node.FUNCTION).__code__
    accepted = set(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])
    takes_kwargs = bool(code.co_flags & 0x08)
    for name in list(inputs) + list(spec.get("hidden", {})):
        assert name in accepted or takes_kwargs, f"{key}.{node.FUNCTION} does not take {name}"
    for name, (kind, options) in inputs.items():
        assert options.get("tooltip"), f"{key}.{name} has no tooltip"
        if isinstance(kind, list):
            assert kind, f"{key}.{name}: empty combo"
            assert options.get("default", kind[0]) in kind
        elif kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], f"{key}.{name} default out of range"
            if kind == "INT" and "step" in options:
                assert (options["default"] - options["min"]) % options["step"] == 0
        elif kind in ("STRING", "BOOLEAN"):
            assert "default" in options
        else:
            assert kind in CUSTOM_TYPES | {"IMAGE", "VAE", "CLIP_VISION"}, f"{key}.{name}: unknown type {kind}"


def test_seed_has_no_front_end_randomizer(pack):
    # A randomized seed would change the stream's settings on every Auto Queue run.
    assert all_inputs(pack.NODE_CLASS_MAPPINGS["RainSampler"])["seed"][1]["control_after_generate"] is False


def test_builtin_model_is_the_default_when_models_rain_is_empty(pack, host):
    choices = all_inputs(pack.NODE_CLASS_MAPPINGS["LoadRainModel"])["model"][0]
    assert choices == ["tiny-rain (built-in)", "RAIN-v0.1 (download from Hugging Face)"]


def test_model_folders_in_models_rain_are_listed_first(pack, host, tmp_path):
    (tmp_path / "models" / "rain" / "RAIN-v0.1").mkdir(parents=True)
    choices = all_inputs(pack.NODE_CLASS_MAPPINGS["LoadRainModel"])["model"][0]
    assert choices == ["RAIN-v0.1", "tiny-rain (built-in)", "RAIN-v0.1 (download from Hugging Face)"]


def test_missing_model_folder_lists_every_expected_file(pack, host):
    loader = pack.NODE_CLASS_MAPPINGS["LoadRainModel"]()
    with pytest.raises(FileNotFoundError) as error:
        loader.load("RAIN-v0.1", "auto", "auto", "vae", "fp32", "cpu", True)
    message = str(error.value)
    for expected in ("rain/<name>/", "motion_unet.pth", "reference_unet.pth", "pose_guider.pth", "sd-vae-ft-mse",
                     "sd-image-variations", "taesdv.pth", "huggingface.co"):
        assert expected in message


def test_taesdv_decoder_without_its_file_says_where_it_goes(pack, host, tmp_path):
    (tmp_path / "models" / "rain" / "m").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="taesdv.pth.*vae_approx"):
        pack.NODE_CLASS_MAPPINGS["LoadRainModel"]().load("m", "auto", "auto", "taesdv", "fp32", "cpu", True)


# ---------------------------------------------------------------------------------------------- Pose Stream


def pose_stream_args(**overrides):
    args = {"mode": "body", "video_path": "", "start_frame": 0, "frames_per_run": 0, "loop": False,
            "smoothing": 0.0, "align_to_reference": False, "face_length": 0.75, "eye_height": 3.0, "eye_width": 1.6,
            "mouth_height": 1.2, "mouth_width": 0.67, "jaw_width": 0.9, "unique_id": "7"}
    args.update(overrides)
    return args


def keypoint_frames(count=3, with_face=True):
    """POSE_KEYPOINT as comfyui_controlnet_aux emits it: a standing person, normalised coordinates."""
    body = [0.5, 0.2, 1, 0.5, 0.3, 1, 0.4, 0.3, 1, 0.35, 0.45, 1, 0.33, 0.6, 1, 0.6, 0.3, 1, 0.65, 0.45, 1,
            0.67, 0.6, 1, 0.45, 0.6, 1, 0.45, 0.8, 1, 0.45, 0.95, 1, 0.55, 0.6, 1, 0.55, 0.8, 1, 0.55, 0.95, 1,
            0.48, 0.18, 1, 0.52, 0.18, 1, 0.46, 0.19, 1, 0.54, 0.19, 1]
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    face = np.stack([0.5 + 0.04 * np.cos(angles), 0.2 + 0.05 * np.sin(angles), np.ones(68)], 1).ravel().tolist()
    frames = []
    for index in range(count):
        shifted = [v + 0.01 * index if i % 3 == 0 else v for i, v in enumerate(body)]
        person = {"pose_keypoints_2d": shifted, "face_keypoints_2d": face if with_face else None,
                  "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}
        frames.append({"people": [person], "canvas_width": 256, "canvas_height": 384})
    return frames


def test_pose_stream_renders_pose_keypoint_skeletons(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    poses, preview = node.prepare(**pose_stream_args(pose_keypoint=keypoint_frames(3)))
    assert len(poses) == 3 and preview.shape == (3, 384, 256, 3)
    assert preview.dtype == torch.float32 and 0 < preview.mean() < 0.5  # a skeleton on black
    rendered = poses.render(128, 128)
    assert rendered.shape == (3, 128, 128, 3)


def test_pose_stream_face_morph_draws_face_dots_only(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    body, _ = node.prepare(**pose_stream_args(pose_keypoint=keypoint_frames(1)))
    morph, morph_preview = node.prepare(**pose_stream_args(mode="face-morph", pose_keypoint=keypoint_frames(1)))
    assert morph_preview.sum() > 0
    assert not torch.equal(body.render(256, 256), morph.render(256, 256))
    # Stronger eye_height moves the eye dots: the drawing follows the sliders.
    taller, _ = node.prepare(**pose_stream_args(mode="face-morph", eye_height=5.0, pose_keypoint=keypoint_frames(1)))
    assert not torch.equal(taller.render(256, 256), morph.render(256, 256))


def test_pose_stream_face_morph_on_pose_images_says_keypoints_are_needed(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    with pytest.raises(ValueError, match="face-morph needs keypoints"):
        node.prepare(**pose_stream_args(mode="face-morph", pose_images=torch.zeros(2, 64, 64, 3)))


def real_pose_images(count: int, height: int = 48, width: int = 40) -> torch.Tensor:
    """Frames of the example pose video (rendered skeletons on black), resized: what a pose IMAGE input holds."""
    import cv2

    from rain_core.io.video import read_video_frames

    decoded = read_video_frames(DATA / "anyone-video-1_kps.mp4", 0, count)[0]
    return torch.from_numpy(np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
                                      for f in decoded]).astype(np.float32) / 255.0)


def test_pose_stream_passes_pose_images_through(pack, host):
    images = real_pose_images(5)
    poses, preview = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(pose_images=images))
    assert torch.equal(poses.render(48, 40), images) and torch.equal(preview, images)


def test_pose_stream_refuses_camera_footage_as_pose_images_with_the_one_message_unless_told(pack, host):
    """The same check and words as `rain animate --poses` (rain_core.io.inputs.check_pose_render)."""
    photo = torch.from_numpy(np.asarray(Image.open(DATA / "anyone-1.png").convert("RGB").resize((40, 48)),
                                        np.float32) / 255.0)[None].repeat(3, 1, 1, 1)
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    with pytest.raises(ValueError, match=r"pose_images: these frames do not look like rendered skeletons .*"
                                         r"--no-pose-check`, Pose Stream's pose_check"):
        node.prepare(**pose_stream_args(pose_images=photo))
    poses, _ = node.prepare(**pose_stream_args(pose_images=photo, pose_check=False))
    assert len(poses) == 3


def test_pose_stream_reads_a_chunk_of_a_real_pose_video(pack, host):
    video = DATA / "anyone-video-1_kps.mp4"
    poses, preview = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(
        **pose_stream_args(video_path=str(video), start_frame=10, frames_per_run=6))
    assert len(poses) == 6 and preview.shape == (6, 704, 512, 3) and not poses.live
    assert preview.max() > 0.5  # skeleton colours are present


def test_looping_pose_video_is_live_and_advances_each_run(pack, host):
    node_class = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]
    video = str(DATA / "anyone-video-2_kps.mp4")  # 48 frames
    assert math.isnan(node_class.IS_CHANGED(video_path=video, loop=True))
    assert node_class.IS_CHANGED(video_path=video, loop=False) == node_class.IS_CHANGED(video_path=video, loop=False)
    node = node_class()
    args = pose_stream_args(video_path=video, frames_per_run=30, loop=True, unique_id="loop-test")
    first, _ = node.prepare(**args)
    second, _ = node.prepare(**args)  # frames 30..47 then 0..11: wraps at the end
    assert first.live and len(second) == 30
    assert torch.equal(second.images[18], first.images[0])


def test_a_pose_video_longer_than_the_preview_stays_on_disk_until_the_sampler_reads_it(pack, host):
    from rain_core.io.video import read_video_frames

    video = DATA / "anyone-video-1_kps.mp4"  # 64 frames
    poses, preview = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(video_path=str(video)))
    limit = sys.modules[f"{PACK_NAME}.nodes.pose_stream"].PREVIEW_FRAMES
    assert poses.clip is not None and poses._images is None and len(poses) == 64 and poses.fps == 30.0
    assert preview.shape == (limit, 704, 512, 3)  # no output of the node grows with the video
    expected = torch.from_numpy(read_video_frames(video, 0, 0)[0].astype(np.float32) / 255.0)
    chunks = list(poses.chunks(5, 64, 64))
    assert [len(c) for c in chunks] == [5] * 12 + [4]
    assert torch.equal(torch.cat(chunks), expected) and torch.equal(poses.images, expected)
    assert torch.equal(preview, expected[:limit])
    short, short_preview = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(
        **pose_stream_args(video_path=str(video), start_frame=3, frames_per_run=limit))
    assert short.clip is None and torch.equal(short_preview, expected[3:3 + limit])  # short reads: as before


def test_a_core_video_from_a_file_is_read_from_the_file_as_video_path_is(pack, host):
    class VideoFromFile:  # comfy_api's VideoFromFile: the file through get_stream_source(), frames through components
        def get_stream_source(self):
            return str(DATA / "anyone-video-1_kps.mp4")

        def get_components(self):
            raise AssertionError("decoded whole into memory")

    poses, preview = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(video=VideoFromFile()))
    same, _ = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(
        **pose_stream_args(video_path=str(DATA / "anyone-video-1_kps.mp4")))
    assert poses.clip is not None and len(poses) == 64 and poses.fps == 30.0
    assert torch.equal(torch.cat(list(poses.chunks(16, 64, 64))), same.images)


def test_a_live_position_waits_for_whatever_takes_the_poses_and_moves_at_once_when_nothing_does(pack, host):
    """The commit follows the prompt's links, never a node's class name (issue 30, item 7)."""
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    video = str(DATA / "anyone-video-1_kps.mp4")

    def first_pose(prompt):  # a node id of its own: the live position is kept per client and node
        return node.prepare(**pose_stream_args(video_path=video, frames_per_run=2, loop=True, unique_id="31",
                                               prompt=prompt))[0]

    taken = {"31": {"class_type": "RainPoseStream", "inputs": {}},
             "9": {"class_type": "SomeOtherPacksSampler", "inputs": {"poses": ["31", 0]}}}
    batch = first_pose(taken)
    assert torch.equal(first_pose(taken).images, batch.images)  # not committed: the same poses again
    batch.commit()
    moved = first_pose(taken)
    assert not torch.equal(moved.images, batch.images)
    moved.commit()
    preview_only = {"31": {"class_type": "RainPoseStream", "inputs": {}},
                    "5": {"class_type": "PreviewImage", "inputs": {"images": ["31", 1]}}}
    a, b = first_pose(preview_only), first_pose(preview_only)  # nothing takes the poses: each run moves on
    assert not torch.equal(a.images, b.images) and a.on_commit is None


def test_pose_stream_without_a_source_names_the_inputs(pack, host):
    with pytest.raises(ValueError, match="pose_images, pose_keypoint, video or video_frames"):
        pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args())


def test_pose_stream_align_to_reference_moves_the_pose(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    reference = keypoint_frames(1)
    reference[0]["people"][0]["pose_keypoints_2d"] = [
        v * 0.5 + 0.25 if i % 3 != 2 else v for i, v in enumerate(reference[0]["people"][0]["pose_keypoints_2d"])]
    plain, _ = node.prepare(**pose_stream_args(pose_keypoint=keypoint_frames(2)))
    aligned, _ = node.prepare(**pose_stream_args(pose_keypoint=keypoint_frames(2), align_to_reference=True,
                                                 reference_pose=reference))
    assert not torch.equal(plain.render(128, 128), aligned.render(128, 128))


# ---------------------------------------------------------------------------------------------- Frame Queue


def frame_queue_args(frames, **overrides):
    args = {"frames": frames, "mode": "pace", "fps": 16.0, "capacity": 64, "when_full": "error", "flush": False,
            "preview": True, "unique_id": "fq-1"}
    args.update(overrides)
    return args


def test_frame_queue_collect_mode_holds_frames_until_flush(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainFrameQueue"]()
    batches = [torch.full((4, 16, 16, 3), i / 10) for i in range(3)]
    for batch in batches:
        frames, fps, latency, queued = node.run(**frame_queue_args(batch, mode="collect",
                                                                   unique_id="collect"))["result"]
        assert isinstance(frames, host.ExecutionBlocker) and fps == 16.0  # nothing released: consumers skip
    frames, fps, latency, queued = node.run(**frame_queue_args(torch.zeros(0, 16, 16, 3), mode="collect",
                                                               flush=True, unique_id="collect"))["result"]
    assert torch.equal(frames, torch.cat(batches)) and queued == 0 and latency >= 0


def test_frame_queue_sends_the_preview_event_with_stats(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainFrameQueue"]()
    node.run(**frame_queue_args(torch.rand(4, 16, 16, 3), unique_id="12"))
    event, data = host.sent_events[-1]
    assert event == "rain.frame" and data["node"] == "12"
    assert data["images"][0].startswith("data:image/jpeg;base64,")
    assert {"output_fps", "latency_ms", "queued", "target_fps"} <= set(data)
    json.dumps(data)  # the websocket payload must be JSON


def test_frame_queue_over_capacity_errors_and_keeps_its_frames(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainFrameQueue"]()
    args = frame_queue_args(torch.rand(6, 8, 8, 3), mode="collect", capacity=8, unique_id="full")
    node.run(**args)
    with pytest.raises(RuntimeError, match="Frame Queue is full.*kept"):
        node.run(**args)
    output = node.run(**{**args, "frames": torch.zeros(0, 8, 8, 3), "flush": True})
    frames = output["result"][0]
    assert output["ui"]["rain_stats"][0]["released"] == 6  # the stats reach the prompt history too
    assert frames.shape[0] == 6


def test_pose_stream_detects_poses_in_video_frames_with_the_dwpose_files_in_models_rain(pack, host, tmp_path):
    from test_pose_detector import write_tiny_dwpose

    folder = tmp_path / "models" / "rain" / "dwpose"
    folder.mkdir(parents=True)
    write_tiny_dwpose(folder)
    video = torch.rand(3, 48, 40, 3)
    poses, preview = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(video_frames=video))
    assert preview.shape == (3, 48, 40, 3)
    assert poses.frames is not None and len(poses.frames) == 3


def test_pose_stream_without_dwpose_files_says_which_file_goes_where(pack, host, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # online, they are fetched (tests/test_nodes_detector_download.py)
    with pytest.raises(Exception, match=r"(?s)yolox_l\.onnx.*dwpose"):
        pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(video_frames=torch.rand(1, 32, 32, 3)))


def test_frame_queue_released_means_this_run_in_the_event_and_in_the_history(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainFrameQueue"]()
    for _ in range(2):
        output = node.run(**frame_queue_args(torch.rand(3, 8, 8, 3), mode="collect", flush=True,
                                             unique_id="meaning"))
    event = host.sent_events[-1][1]
    history = output["ui"]["rain_stats"][0]
    assert event["released"] == history["released"] == 3  # this run's frames
    assert event["released_total"] == history["released_total"] == 6  # since the queue began


def test_frame_queue_latency_runs_from_the_pose_arrival(pack, host):
    import time

    convert = sys.modules[f"{PACK_NAME}.nodes.convert"]
    frames = torch.rand(2, 8, 8, 3)
    convert.frame_origins.set(frames, [time.monotonic() - 0.25] * 2)  # the poses came in 250 ms ago
    output = pack.NODE_CLASS_MAPPINGS["RainFrameQueue"]().run(**frame_queue_args(frames, unique_id="latency"))
    assert output["result"][0].shape[0] >= 1
    assert 250 <= output["result"][2] < 5000 and output["ui"]["rain_stats"][0]["latency_ms"] >= 250


def test_frame_queues_and_events_are_per_client(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["RainFrameQueue"]()
    host.set_client_id("tab-a")
    node.run(**frame_queue_args(torch.rand(5, 8, 8, 3), mode="collect", unique_id="9"))
    assert host.sent_events[-1][1]["client"] == "tab-a"
    host.set_client_id("tab-b")
    output = node.run(**frame_queue_args(torch.rand(2, 8, 8, 3), mode="collect", flush=True, unique_id="9"))
    assert output["result"][0].shape[0] == 2  # tab-a's five frames stay in tab-a's queue
    assert host.sent_events[-1][1]["client"] == "tab-b"
    host.set_client_id("tab-a")
    output = node.run(**frame_queue_args(torch.zeros(0, 8, 8, 3), mode="collect", flush=True, unique_id="9"))
    assert output["result"][0].shape[0] == 5


def test_video_path_lists_the_input_folder_videos_with_an_upload_button(pack, host, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("RAIN_INPUT_DIR", str(tmp_path / "input"))
    (tmp_path / "input").mkdir()
    shutil.copy(DATA / "anyone-video-2_kps.mp4", tmp_path / "input" / "dance.mp4")
    (tmp_path / "input" / "notes.txt").write_text("not a video")
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]
    choices, options = all_inputs(node)["video_path"]
    assert choices == ["none", "webcam", "dance.mp4"] and options["video_upload"] is True
    assert node.VALIDATE_INPUTS(video_path="dance.mp4") is True
    assert node.VALIDATE_INPUTS(video_path=str(DATA / "anyone-video-1_kps.mp4")) is True  # a full path too
    assert node.VALIDATE_INPUTS(video_path="webcam:1") is True
    assert "no file at" in node.VALIDATE_INPUTS(video_path="missing.mp4")
    poses, _ = node().prepare(**pose_stream_args(video_path="dance.mp4", frames_per_run=4))
    assert len(poses) == 4 and poses.fps == 30.0  # the container's frame rate travels with the poses


def test_pose_stream_takes_a_video_with_its_frame_rate(pack, host):
    from types import SimpleNamespace

    class Video:  # the interface of ComfyUI's VIDEO (comfy_api VideoInput.get_components)
        def get_components(self):
            return SimpleNamespace(images=real_pose_images(5, 24, 16), audio=None, frame_rate=25)

    poses, preview = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(video=Video()))
    assert len(poses) == 5 and poses.fps == 25.0 and preview.shape == (5, 24, 16, 3)
    images, _ = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(
        pose_images=real_pose_images(2, 8, 8), fps=12.0))
    assert images.fps == 12.0


def test_load_pose_keypoints_reads_the_shipped_example_with_its_frame_rate(pack, host, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("RAIN_INPUT_DIR", str(tmp_path / "input"))
    (tmp_path / "input").mkdir()
    shutil.copy(DATA / "keypoints" / "rain-dance-keypoints.json", tmp_path / "input")
    (tmp_path / "input" / "broken.json").write_text('{"frames": [{"people": "nobody"}]}')
    node = pack.NODE_CLASS_MAPPINGS["RainLoadPoseKeypoints"]
    assert all_inputs(node)["file"][0] == ["broken.json", "rain-dance-keypoints.json"]
    keypoints, fps = node().load("rain-dance-keypoints.json", 0.0)
    assert len(keypoints) == 60 and fps == 30.0
    assert node().load("rain-dance-keypoints.json", 12.0)[1] == 12.0
    poses, preview = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(
        pose_keypoint=keypoints, fps=fps))
    assert len(poses) == 60 and poses.fps == 30.0 and preview.shape[0] == 60
    with pytest.raises(ValueError, match="broken.json"):
        node().load("broken.json", 0.0)
    assert "no 'missing.json'" in node.VALIDATE_INPUTS("missing.json")
