"""Load RAIN Model + RAIN Sampler + Frame Queue executed standalone on a real tiny RAIN saved to disk."""

import importlib

import pytest
import torch
from conftest import build_tiny_models, tiny_config
from test_nodes import DATA, PACK_NAME, load_pack, pose_stream_args, standalone_host

from rain_core.loading import save_rain

SIZE = 32  # the tiny test model's frame size
FRAMES = 6  # pose frames per test video: levels 2 x 2 frames per cohort -> 3 ticks + 1 flush tick


def pack_registry():
    """The registry the nodes use: the pack's own copy of rain_core (imported relatively, as in ComfyUI)."""
    return importlib.import_module(f"{PACK_NAME}.nodes.registry").default_registry()


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def small_models():
    """Smaller than the shared tiny_models (2 UNet levels, x4 codec): the node tests run many short streams."""
    return build_tiny_models(tiny_config(block_out_channels=(16, 32), attention_heads=2, codec_factor=4))


@pytest.fixture
def host(pack, tmp_path, monkeypatch, small_models):
    save_rain(small_models, tmp_path / "models" / "rain" / "tiny-test")
    registry = pack_registry()
    registry.clear()
    yield from standalone_host(monkeypatch, tmp_path / "models")
    registry.clear()


@pytest.fixture
def model(pack, host):
    loader = pack.NODE_CLASS_MAPPINGS["LoadRainModel"]()
    return loader.load("tiny-test", "auto", "auto", "vae", "fp32", "cpu", True)[0]


@pytest.fixture(scope="module")
def pose_video_frames(pack):
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    return node.prepare(**pose_stream_args(video_path=str(DATA / "anyone-video-1_kps.mp4"), frames_per_run=FRAMES))[0]


@pytest.fixture(scope="module")
def whole(pack, small_models, tmp_path_factory, pose_video_frames):
    """The reference render: the whole test video in one run with flush, on its own stream."""
    folder = tmp_path_factory.mktemp("whole")
    save_rain(small_models, folder / "rain" / "tiny-test")
    handle = pack.NODE_CLASS_MAPPINGS["LoadRainModel"]()
    import os

    os.environ["RAIN_MODELS_DIR"] = str(folder)
    try:
        model = handle.load("tiny-test", "auto", "auto", "vae", "fp32", "cpu", True)[0]
        return run(pack, model, pose_video_frames, stream_id="whole-reference", flush=True)
    finally:
        del os.environ["RAIN_MODELS_DIR"]


def reference():
    gradient = torch.linspace(0, 1, 40)
    return torch.stack([gradient[:, None].expand(40, 28), gradient[None, :28].expand(40, 28),
                        torch.full((40, 28), 0.5)], -1)[None]  # (1, 40, 28, 3): another size than the stream


def blocked(value) -> bool:
    """ComfyUI's ExecutionBlocker (the standalone stand-in here): the nodes fed from this output do not run."""
    return type(value).__name__ == "ExecutionBlocker"


def run(pack, model, poses, stream_id="s", flush=False, reset=False, image=None, seed=0, keep_loaded=True,
        raw=False, **optional):
    """The sampler's frames; a blocked output (no frames this run) as an empty batch unless `raw`."""
    model.keep_loaded = keep_loaded
    node = pack.NODE_CLASS_MAPPINGS["RainSampler"]()
    output = node.sample(model, reference() if image is None else image, poses, SIZE, SIZE, 2, 2, 2, 3.5, seed,
                         stream_id, reset, flush, unique_id="3", **optional)
    if raw:
        return output
    return torch.zeros(0, SIZE, SIZE, 3) if blocked(output[0]) else output[0]


def chunk(poses, start, stop):
    return type(poses)(images=poses.images[start:stop])


def test_whole_video_in_one_run_yields_one_frame_per_pose(whole):
    assert whole.shape == (FRAMES, SIZE, SIZE, 3) and whole.dtype == torch.float32
    assert 0.0 <= whole.min() and whole.max() <= 1.0


def test_chunks_over_several_runs_continue_without_a_seam(pack, model, pose_video_frames, whole):
    parts = [run(pack, model, chunk(pose_video_frames, 0, 3), stream_id="chunked"),
             run(pack, model, chunk(pose_video_frames, 3, 5), stream_id="chunked"),
             run(pack, model, chunk(pose_video_frames, 5, 6), stream_id="chunked", flush=True)]
    assert parts[0].shape[0] == 0  # the first run is still warming up
    assert torch.equal(torch.cat(parts), whole)


def test_interrupt_at_a_progress_point_leaves_the_stream_as_before_the_run(pack, host, model, pose_video_frames,
                                                                          whole):
    first = run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="cut")

    def cancel_on_second_tick(node_id, value, total, preview):
        if value == 2:
            host.interrupt_processing()

    host.progress_hooks.append(cancel_on_second_tick)
    with pytest.raises(host.Interrupted):
        run(pack, model, chunk(pose_video_frames, 2, 6), stream_id="cut", flush=True)
    host.progress_hooks.clear()
    again = run(pack, model, chunk(pose_video_frames, 2, 6), stream_id="cut", flush=True)
    assert torch.equal(torch.cat([first, again]), whole)


def test_interrupted_first_run_leaves_no_stream_behind(pack, host, model, pose_video_frames):
    host.progress_hooks.append(lambda node_id, value, total, preview: host.interrupt_processing())
    with pytest.raises(host.Interrupted):
        run(pack, model, pose_video_frames, stream_id="new")
    assert host.state_key("stream", "new") not in pack_registry().stream_ids() and not pack_registry().stream_ids()


def test_resumed_stream_with_other_settings_is_refused_until_reset(pack, model, pose_video_frames, whole):
    run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="live")
    with pytest.raises(ValueError, match=r"seed: 0 -> 5.*reset"):
        run(pack, model, chunk(pose_video_frames, 2, 4), stream_id="live", seed=5)
    restarted = run(pack, model, pose_video_frames, stream_id="live", reset=True, flush=True)
    assert torch.equal(restarted, whole)


def test_shared_noise_is_the_engines_shared_noise_and_a_setting_of_the_stream(pack, model, pose_video_frames, whole,
                                                                              small_models):
    from rain_core.stream import RainStream, StreamConfig

    shared = run(pack, model, pose_video_frames, stream_id="shared-noise", flush=True, noise="shared")
    assert not torch.equal(shared, whole)  # the default is fresh noise
    engine = RainStream(small_models, StreamConfig(height=SIZE, width=SIZE, levels=2, frames_per_cohort=2, steps=2,
                                                   decoder="vae", noise="shared"))
    engine.set_reference(reference()[0])
    frames = torch.cat([engine.push(pose_video_frames.render(SIZE, SIZE)), engine.flush()])
    assert torch.allclose(shared, frames, atol=1e-6)
    run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="noise-change")
    with pytest.raises(ValueError, match=r"noise: 'fresh' -> 'shared'.*reset"):
        run(pack, model, chunk(pose_video_frames, 2, 4), stream_id="noise-change", noise="shared")


def test_changing_the_reference_image_is_a_settings_change(pack, model, pose_video_frames):
    run(pack, model, chunk(pose_video_frames, 0, 1), stream_id="ref-change")
    with pytest.raises(ValueError, match="reference"):
        run(pack, model, chunk(pose_video_frames, 1, 2), stream_id="ref-change", image=reference().flip(1))


def test_reference_with_alpha_is_composited_over_white(pack, model, pose_video_frames):
    rgb = reference()
    transparent = torch.cat([torch.zeros_like(rgb), torch.zeros_like(rgb[..., :1])], -1)  # fully transparent
    white = torch.ones_like(rgb)
    a = run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="alpha", image=transparent, flush=True)
    b = run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="white", image=white, flush=True)
    assert torch.equal(a, b)


def test_pose_images_of_another_size_are_letterboxed(pack, model):
    poses = type(pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(
        **pose_stream_args(pose_images=torch.zeros(1, 8, 8, 3)))[0])(images=torch.rand(2, 50, 20, 3))
    assert run(pack, model, poses, flush=True).shape == (2, SIZE, SIZE, 3)


def test_model_moved_off_the_device_between_runs_when_not_kept_loaded(pack, model, pose_video_frames, whole):
    offloaded = run(pack, model, pose_video_frames, stream_id="offloaded", flush=True, keep_loaded=False)
    assert torch.equal(offloaded, whole)


def test_sampler_progress_sends_previews(pack, host, model, pose_video_frames):
    seen = []
    host.progress_hooks.append(lambda node_id, value, total, preview: seen.append((value, total, preview)))
    run(pack, model, chunk(pose_video_frames, 0, 4), stream_id="progress", flush=True)
    assert [value for value, _, _ in seen] == [1, 2, 3]  # 2 chunks of 2 frames + the flush
    assert seen[-1][2] is not None and seen[-1][2].size == (SIZE, SIZE)


def test_sampler_into_frame_queue_paces_and_flushes_everything(pack, model, pose_video_frames, whole):
    queue = pack.NODE_CLASS_MAPPINGS["RainFrameQueue"]()
    released = []
    for start in range(0, FRAMES, 2):
        frames = run(pack, model, chunk(pose_video_frames, start, start + 2), stream_id="paced",
                     flush=start + 2 == FRAMES)
        released.append(queue.run(frames, "pace", 1.0, 64, "error", False, False, unique_id="q")["result"][0])
    released.append(queue.run(torch.zeros(0, SIZE, SIZE, 3), "pace", 1.0, 64, "error", True, False,
                              unique_id="q")["result"][0])
    released = [torch.zeros(0, SIZE, SIZE, 3) if blocked(frames) else frames for frames in released]
    assert released[0].shape[0] == 0 and released[1].shape[0] == 1  # 1 fps: one frame at a time
    assert torch.equal(torch.cat(released), whole)


def test_warm_up_run_blocks_downstream_nodes_and_passes_the_pose_fps(pack, model, pose_video_frames):
    frames, fps = run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="warm", raw=True)
    assert blocked(frames) and frames.message is None  # silently: Save Image / Preview Image just do not run
    frames, fps = run(pack, model, chunk(pose_video_frames, 2, 4), stream_id="warm", raw=True)
    assert frames.shape == (2, SIZE, SIZE, 3)
    assert pose_video_frames.fps == 30.0 and fps == 16.0  # chunk() made pose images without a frame rate
    assert run(pack, model, pose_video_frames, stream_id="fps", flush=True, raw=True)[1] == 30.0


def test_decoder_is_part_of_what_a_load_returns(pack, host):
    loader = pack.NODE_CLASS_MAPPINGS["LoadRainModel"]()
    auto = loader.load("tiny-test", "auto", "auto", "auto", "fp32", "cpu", True)[0]
    vae = loader.load("tiny-test", "auto", "auto", "vae", "fp32", "cpu", True)[0]
    # Regression: a cache keyed without the decoder handed the "auto" load back for "vae", and a stream started
    # on one then refused every later run ("|auto|" -> "|vae|").
    assert vae is not auto and vae.decoder == "vae"
    assert auto.decoder == "vae"  # no fast decoder in this model: auto means the codec, and says so


def test_two_clients_with_one_stream_id_get_two_streams(pack, host, model, pose_video_frames, whole):
    host.set_client_id("tab-a")
    first_a = run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="live")
    host.set_client_id("tab-b")
    first_b = run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="live")  # not tab-a's continuation
    host.set_client_id("tab-a")
    rest_a = run(pack, model, chunk(pose_video_frames, 2, 6), stream_id="live", flush=True)
    assert torch.equal(torch.cat([first_a, rest_a]), whole) and torch.equal(first_b, first_a)
    host.set_client_id("tab-b")
    assert pack_registry().stream_ids() == [host.state_key("stream", "live")]  # only tab-b's is still open


def test_shared_stream_id_is_one_stream_for_every_client(pack, host, model, pose_video_frames, whole):
    host.set_client_id("tab-a")
    first = run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="shared:stage")
    host.set_client_id("tab-b")
    rest = run(pack, model, chunk(pose_video_frames, 2, 6), stream_id="shared:stage", flush=True)
    assert torch.equal(torch.cat([first, rest]), whole)


def test_streams_go_when_their_model_handle_goes(pack, host, pose_video_frames):
    import gc
    import weakref

    loader = pack.NODE_CLASS_MAPPINGS["LoadRainModel"]()
    handle = loader.load("tiny-test", "auto", "auto", "vae", "fp32", "cpu", True)[0]
    run(pack, handle, chunk(pose_video_frames, 0, 2), stream_id="held")
    networks = weakref.ref(handle.models)
    assert pack_registry().stream_ids()
    del handle  # what ComfyUI does on POST /free {"free_memory": true}, or when another model is loaded
    gc.collect()
    assert not pack_registry().stream_ids() and networks() is None  # nothing keeps the weights in memory


def test_live_pose_position_moves_on_only_when_the_sampler_run_succeeds(pack, host, model):
    node = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]()
    prompt = {"3": {"class_type": "RainPoseStream", "inputs": {}},
              "4": {"class_type": "RainSampler", "inputs": {"poses": ["3", 0]}}}
    args = pose_stream_args(video_path=str(DATA / "anyone-video-1_kps.mp4"), frames_per_run=2, loop=True,
                            unique_id="3", prompt=prompt)
    first = node.prepare(**args)[0]
    again = node.prepare(**args)[0]  # the first batch was never committed (its run failed): same poses
    assert torch.equal(first.images, again.images)
    host.progress_hooks.append(lambda node_id, value, total, preview: host.interrupt_processing())
    with pytest.raises(host.Interrupted):
        run(pack, model, again, stream_id="poses")
    host.progress_hooks.clear()
    retry = node.prepare(**args)[0]
    assert torch.equal(retry.images, first.images)  # the interrupted run's poses come again
    run(pack, model, retry, stream_id="poses")
    following = node.prepare(**args)[0]
    assert not torch.equal(following.images, first.images)
    assert torch.equal(following.images, node.prepare(**pose_stream_args(
        video_path=str(DATA / "anyone-video-1_kps.mp4"), start_frame=2, frames_per_run=2))[0].images)


def test_runs_under_inference_mode_as_comfyui_calls_nodes(pack, model, pose_video_frames, whole):
    with torch.inference_mode():  # ComfyUI executes nodes in inference mode: inference tensors have no version
        image = reference().clone()
        first = run(pack, model, chunk(pose_video_frames, 0, 2), stream_id="inference", image=image)
        rest = run(pack, model, chunk(pose_video_frames, 2, 6), stream_id="inference", image=image, flush=True)
    assert torch.equal(torch.cat([first, rest]), whole)


def test_download_choice_fetches_the_release_into_models_with_progress_then_loads_it(pack, host, tmp_path,
                                                                                      monkeypatch, pose_video_frames):
    import shutil

    from conftest import write_official_checkpoint
    from hub_server import LocalHub

    # A tiny stand-in of the release served by a local hub in the real repositories' layout (no internet).
    official = write_official_checkpoint(build_tiny_models(tiny_config(block_out_channels=(16, 32),
                                                                       attention_heads=2, codec_factor=4)),
                                         tmp_path / "official")
    files = {("Pscgylotti/RAIN-v0.1", name): (official / name).read_bytes()
             for name in ("reference_unet.pth", "motion_unet.pth", "pose_guider.pth")}
    for file in (official / "image_encoder").iterdir():
        files[("lambdalabs/sd-image-variations-diffusers", f"image_encoder/{file.name}")] = file.read_bytes()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):  # not read: this stand-in has its own codec
        files[("stabilityai/sd-vae-ft-mse", name)] = b"{}"
    models = tmp_path / "models"
    (models / "rain" / "RAIN-v0.1").mkdir(parents=True, exist_ok=True)
    shutil.copy(official / "rain_config.json", models / "rain" / "RAIN-v0.1")  # the release needs none; this does
    seen = []
    host.progress_hooks.append(lambda node_id, value, total, preview: seen.append(value))
    with LocalHub(files) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        loader = pack.NODE_CLASS_MAPPINGS["LoadRainModel"]()
        handle = loader.load("RAIN-v0.1 (download from Hugging Face)", "auto", "auto", "vae", "fp32", "cpu", True,
                             unique_id="1")[0]
    assert (models / "rain" / "RAIN-v0.1" / "motion_unet.pth").is_file()
    assert (models / "clip_vision" / "sd-image-variations" / "config.json").is_file()
    assert seen and seen[-1] == 1000  # ComfyUI's progress bar (standalone hooks here) reached the end
    assert run(pack, handle, chunk(pose_video_frames, 0, 2), stream_id="downloaded", flush=True).shape[0] == 2
    seen.clear()
    again = loader.load("RAIN-v0.1 (download from Hugging Face)", "auto", "auto", "vae", "fp32", "cpu", True)[0]
    assert again.source == handle.source and seen == []  # complete: nothing fetched, no hub needed
