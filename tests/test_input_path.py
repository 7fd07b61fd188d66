"""One input path: the same reference and pose video through `rain animate` and through the nodes (called as
ComfyUI calls them, standalone `nodes/host.py`) give the same frames, because both go through `rain_core.io.inputs`;
and the pieces of that path (letterbox, stretch, alpha over white, keypoint rendering) on real inputs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_nodes import PACK_NAME, load_pack, pose_stream_args

from rain_core.cli import main
from rain_core.io.inputs import InputError, alpha_over_white, fit_frames, read_image, render_keypoints, uint8_frames
from rain_core.io.video import read_video_frames
from rain_core.pose import Person, PoseFrame, save_openpose_json, to_pose_keypoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REFERENCE = EXAMPLES / "anyone-1.png"  # 463×615 RGBA (opaque)
POSE_VIDEO = EXAMPLES / "anyone-video-1_kps.mp4"  # 512×704 DWPose renders
FRAMES = 6  # levels 2 × 2 frames per cohort: 3 ticks, the last cohort padded by flush
STREAM = dict(levels=2, frames_per_cohort=2, steps=2, guidance=3.5, seed=3)
SIZE = 64  # the built-in model's size


def animate(tmp_path, poses: Path) -> np.ndarray:
    """`rain animate` with the built-in model, frames written as PNGs (lossless), read back as uint8."""
    out = tmp_path / "frames"
    argv = ["animate", "--model", "tiny", "--reference", REFERENCE, "--poses", poses, "--out", out,
            "--max-frames", FRAMES, "--height", SIZE, "--width", SIZE, "--device", "cpu", "--dtype", "float32",
            "--threads", 1, "--decoder", "auto", "--json"]
    for name, value in STREAM.items():
        argv += [f"--{name.replace('_', '-')}", value]
    assert main([str(a) for a in argv]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == FRAMES
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def through_nodes(pose_stream_inputs: dict) -> np.ndarray:
    """Load RAIN Model → Pose Stream → RAIN Sampler (flush), as ComfyUI runs them; frames as a PNG would hold them."""
    pack = load_pack()
    importlib.import_module(f"{PACK_NAME}.nodes.registry").default_registry().clear()
    loader = pack.NODE_CLASS_MAPPINGS["LoadRainModel"]()
    builtin = sys.modules[f"{PACK_NAME}.nodes.model_loader"].BUILTIN_MODEL
    model = loader.load(builtin, "auto", "auto", "auto", "fp32", "cpu", True)[0]
    poses = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(**pose_stream_inputs))[0]
    # ComfyUI's Load Image: RGB float in [0, 1] (this reference is opaque, so its mask changes nothing)
    reference = torch.from_numpy(np.asarray(Image.open(REFERENCE).convert("RGB")).astype(np.float32) / 255.0)[None]
    sampler = pack.NODE_CLASS_MAPPINGS["RainSampler"]()
    frames = sampler.sample(model, reference, poses, SIZE, SIZE, STREAM["levels"], STREAM["frames_per_cohort"],
                            STREAM["steps"], STREAM["guidance"], STREAM["seed"], "input-path", True, True)[0]
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    return (frames.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)  # what VideoSink writes


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("RAIN_MODELS_DIR", str(tmp_path / "models"))
    load_pack()
    yield
    importlib.import_module(f"{PACK_NAME}.nodes.registry").default_registry().clear()


def test_pose_video_through_rain_animate_and_through_the_nodes_gives_identical_frames(tmp_path, host):
    cli = animate(tmp_path, POSE_VIDEO)
    nodes = through_nodes(dict(video_path=str(POSE_VIDEO), frames_per_run=FRAMES))
    assert np.array_equal(cli, nodes), f"max difference {np.abs(cli.astype(int) - nodes.astype(int)).max()}"
    assert cli.std() > 1  # real frames, not a blank canvas


def dancer(count: int) -> list[PoseFrame]:
    """A person measured on a 320×480 (portrait) canvas, arms moving: keypoints of another aspect than the stream."""
    frames = []
    for i in range(count):
        body = np.full((18, 3), np.nan)
        body[[0, 1, 2, 5, 8, 11]] = [[160, 60, 1], [160, 110, 1], [120, 110, 1], [200, 110, 1], [140, 250, 1],
                                     [180, 250, 1]]
        body[[3, 6]] = [[100, 160 + 10 * i, 1], [220, 160 - 10 * i, 1]]
        body[:, 0] /= 320
        body[:, 1] /= 480
        frames.append(PoseFrame([Person(body=body)], 480, 320))
    return frames


def test_keypoints_through_rain_animate_and_through_the_nodes_give_identical_frames(tmp_path, host):
    frames = dancer(FRAMES)
    save_openpose_json(frames, tmp_path / "dance.json")
    cli = animate(tmp_path, tmp_path / "dance.json")
    nodes = through_nodes(dict(pose_keypoint=to_pose_keypoint(frames)))
    assert np.array_equal(cli, nodes), f"max difference {np.abs(cli.astype(int) - nodes.astype(int)).max()}"


def test_the_shipped_keypoint_file_through_rain_animate_and_load_pose_keypoints_gives_identical_frames(
        tmp_path, host, monkeypatch):
    """The project's own {"fps", "frames"} file, as a user passes it to each entry point: the CLI's --poses and
    Load Pose Keypoints (JSON) from ComfyUI's input folder, one reader behind both."""
    shipped = EXAMPLES / "keypoints" / "rain-dance-keypoints.json"
    monkeypatch.setenv("RAIN_INPUT_DIR", str(EXAMPLES / "keypoints"))
    cli = animate(tmp_path, shipped)
    pack = load_pack()
    keypoints, fps = pack.NODE_CLASS_MAPPINGS["RainLoadPoseKeypoints"]().load(shipped.name, 0.0)
    assert fps == 30.0  # the file's own frame rate
    nodes = through_nodes(dict(pose_keypoint=keypoints[:FRAMES]))
    assert np.array_equal(cli, nodes), f"max difference {np.abs(cli.astype(int) - nodes.astype(int)).max()}"
    assert cli.std() > 1


def test_keypoints_are_letterboxed_not_stretched():
    frame = dancer(1)[0]  # portrait 320×480 onto a square: bars left and right
    drawn = render_keypoints([frame], 64, 64)[0]
    columns = drawn.amax(dim=(0, 2)) > 0
    assert drawn.shape == (64, 64, 3) and not columns[:10].any() and not columns[-10:].any()


def test_real_pose_video_is_letterboxed_once_with_one_resampler():
    video, _, _ = read_video_frames(POSE_VIDEO, 0, 2)
    frames = uint8_frames(video)  # (2, 704, 512, 3)
    boxed = fit_frames(frames, 64, 64)
    # 704×512 → 64×47 centred: 8 black columns left, 9 right
    assert boxed.shape == (2, 64, 64, 3) and boxed[:, :, :8].abs().max() == 0 and boxed[:, :, -9:].abs().max() == 0
    assert boxed[:, :, 8:-9].amax() > 0.5  # the skeleton survives the shrink
    stretched = fit_frames(frames, 64, 64, "stretch")

    def width(images):  # columns between the first and the last one with any skeleton pixel
        columns = (images.amax(dim=(0, 1, 3)) > 0).nonzero()
        return int(columns[-1] - columns[0]) + 1

    assert width(stretched) > width(boxed) * 1.2  # no bars: the picture is pulled wider (×64/47) instead
    assert torch.equal(fit_frames(boxed, 64, 64), boxed)  # already the size: unchanged
    with pytest.raises(InputError, match="resize"):
        fit_frames(frames, 64, 64, "crop")


def test_alpha_is_composited_over_white_and_grey_becomes_rgb(tmp_path):
    rgba = torch.tensor([[[[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.5]]]])
    assert torch.allclose(alpha_over_white(rgba)[0, 0], torch.tensor([[1.0, 0, 0], [1, 1, 1], [0.5, 1, 0.5]]))
    assert alpha_over_white(torch.full((1, 2, 2, 1), 0.25)).shape == (1, 2, 2, 3)
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0] = 255
    pixels[:2, ..., 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(pixels, "RGBA").save(tmp_path / "half.png")
    image = read_image(tmp_path / "half.png")
    assert image.shape == (1, 4, 4, 3)
    assert torch.equal(image[0, 0, 0], torch.tensor([1.0, 0, 0])) and torch.equal(image[0, 3, 0], torch.ones(3))
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")
