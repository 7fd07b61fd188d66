"""Real-host tier: a real ComfyUI with this pack linked in, driven over its HTTP API.

Opt-in: set COMFYUI_DIR to a ComfyUI checkout and COMFY_PYTHON to the python of its venv (with this pack's
requirements.txt installed, as ComfyUI-Manager would). NOTES.md says how to build both from a ComfyUI snapshot.
Without them every test here is skipped and the reason printed.

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python .venv/bin/pytest tests/test_comfyui_host.py -m comfyui -s

The pack is linked under another folder name (registry installs rename it) into a server with an empty input
folder: the pack copies its example inputs there. Every shipped workflow is converted to API format with
rain_core.cli.comfy_client.ui_to_api and the server's own /object_info and runs exactly as shipped; its files are
checked (frame count, frame rate). Also: warm-up runs block Save/Preview Image without an error while Frame
Queue goes on; POST /free gives the networks' memory back; two client ids never share a stream, a pose
position or a preview event; an interrupted live run resumes as if never interrupted; a RAIN Sampler run is
interrupted at a progress point and resumed bit-exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_host import (
    BIG_MODEL,
    DATA,
    HOST_MARKS,
    OUR_NODES,
    PACK_FOLDER,
    ROOT,
    TEST_MODEL,
    USER_FILE,
    WORKFLOWS,
    Server,
    comfy_has_gpu,
)
from PIL import Image

from rain_core.cli.comfy_client import ui_to_api
from rain_core.cpu import resident_memory

pytestmark = HOST_MARKS

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import build_tiny_models, tiny_config

    from rain_core.loading import save_rain

    instance = Server(tmp_path_factory.mktemp("comfy"))
    save_rain(build_tiny_models(tiny_config(block_out_channels=(16, 32), attention_heads=2, codec_factor=4)),
              instance.workdir / "models" / "rain" / TEST_MODEL)
    save_rain(build_tiny_models(tiny_config(block_out_channels=(96, 192), attention_heads=2, codec_factor=4)),
              instance.workdir / "models" / "rain" / BIG_MODEL)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_pack_imports_under_a_renamed_folder_and_every_node_is_listed(server, object_info):
    log = server.log_path.read_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_FOLDER in line]
    assert not failed, log[-4000:]
    assert OUR_NODES <= set(object_info)
    for name in OUR_NODES:
        assert object_info[name]["category"] == "RAIN" and object_info[name]["description"]
    assert TEST_MODEL in object_info["LoadRainModel"]["input"]["required"]["model"][0]
    assert "tiny-rain (built-in)" in object_info["LoadRainModel"]["input"]["required"]["model"][0]


def test_front_end_extension_is_served(server):
    extensions = server.get("/extensions")
    script = next(e for e in extensions if e.endswith("rain_frame_queue.js"))
    assert f"/extensions/{PACK_FOLDER}/" in script
    with urllib.request.urlopen(server.base + script, timeout=30) as response:
        assert b"rain.frame" in response.read()


def test_workflow_templates_are_listed_under_readable_names(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates[PACK_FOLDER]) == sorted(p.stem for p in WORKFLOWS)
    for name in templates[PACK_FOLDER]:  # frontend 1.27 shows a custom node template under its file name
        assert name.startswith("RAIN ") and "_" not in name
        with urllib.request.urlopen(f"{server.base}/api/workflow_templates/{PACK_FOLDER}/"
                                    f"{urllib.parse.quote(name)}.jpg", timeout=30) as response:
            assert response.read()[:3] == b"\xff\xd8\xff"


def test_workflow_templates_are_listed_in_order(server):
    listed = server.get("/workflow_templates")[PACK_FOLDER]
    intended = sorted(p.stem for p in WORKFLOWS)  # "RAIN 1 - ...", "RAIN 2 - ...": test_packaging checks the names
    folder_order = [name[:-5] for name in os.listdir(ROOT / "example_workflows") if name.endswith(".json")]
    if listed != intended and listed == folder_order:
        # ComfyUI 0.3.64 globs custom_nodes/*/example_workflows/*.json unsorted, and both front ends (1.27.10,
        # 1.58.1) show that order: the folder's own (ext4 returns names by hash). Upstream ComfyUI sorts by name.
        pytest.xfail(f"this ComfyUI lists the templates in the folder's order: {[n[:6] for n in listed]}")
    assert listed == intended


COMFY_FILES_MODEL = "comfy-files-test"
VAE_FILE, CLIP_FILE = "vae-ft-mse-random.safetensors", "clip-vit-large-patch14-random.safetensors"


def _random_like(state, seed) -> dict:
    """Values k/1024 (|k| < 64): exact in fp32, fp16 and bf16, whatever precision ComfyUI holds its copy in."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randint(-63, 64, tuple(t.shape), generator=generator) / 1024).half()
            for name, t in state.items()}


def write_comfy_model_files(models: Path) -> None:
    """What ComfyUI's core loaders read: the SD VAE in the LDM layout and CLIP ViT-L/14 in transformers' layout (the
    only sizes their key rules accept), random; and a tiny RAIN (768-wide cross-attention) that needs both."""
    import dataclasses

    from conftest import randomize_parameters, tiny_config
    from diffusers import AutoencoderKL
    from foreign_layouts import to_ldm_vae
    from safetensors.torch import save_file

    from rain_core.loading import CONFIG_NAME, FORMAT
    from rain_core.loading.single_file import SD_VAE_CONFIG
    from rain_core.models import DenoisingUNet, PoseGuider, ReferenceUNet
    from rain_core.models.config import ClipConfig
    from rain_core.models.image_encoder import build_clip

    with torch.device("meta"):
        vae, clip = AutoencoderKL.from_config(SD_VAE_CONFIG), build_clip(ClipConfig())
    save_file(to_ldm_vae(_random_like(vae.state_dict(), 1)), str(models / "vae" / VAE_FILE))
    save_file(_random_like(clip.state_dict(), 2), str(models / "clip_vision" / CLIP_FILE))
    config = dataclasses.replace(tiny_config(codec="vae", codec_factor=8, block_out_channels=(16, 32),
                                             attention_heads=2, cross_attention_dim=768), vae=None, clip=ClipConfig())
    folder = models / "rain" / COMFY_FILES_MODEL
    folder.mkdir()
    for name, network in (("reference_unet", ReferenceUNet(config)), ("denoising_unet", DenoisingUNet(config)),
                          ("pose_guider", PoseGuider(config.pose_channels, config.pose_guider_channels))):
        save_file({k: v.contiguous() for k, v in randomize_parameters(network, 5).state_dict().items()},
                  str(folder / f"{name}.safetensors"))
    (folder / CONFIG_NAME).write_text(json.dumps({"format": FORMAT, "config": config.to_dict()}))


def comfy_files_prompt(sockets: bool, stream_id: str) -> dict:
    """8 poses through the 768-wide model, flushed: with core Load VAE / Load CLIP Vision connected, or with the
    same files chosen in Load RAIN Model's own lists."""
    prompt = sampler_prompt(stream_id, 0, 8, True, stream_id)
    prompt["1"]["inputs"].update(model=COMFY_FILES_MODEL, decoder="vae")
    prompt["4"]["inputs"].update(width=64, height=64, levels=2, frames_per_cohort=2, steps=2)
    if sockets:
        prompt["8"] = {"class_type": "VAELoader", "inputs": {"vae_name": VAE_FILE}}
        prompt["9"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_FILE}}
        prompt["1"]["inputs"].update(vae=["8", 0], clip_vision=["9", 0])
    else:
        prompt["1"]["inputs"].update(vae_name=VAE_FILE, image_encoder=CLIP_FILE)
    return prompt


def test_core_load_vae_and_load_clip_vision_feed_load_rain_model(server):
    write_comfy_model_files(server.workdir / "models")
    info = server.get("/object_info/LoadRainModel")["LoadRainModel"]["input"]
    assert VAE_FILE in info["required"]["vae_name"][0] and CLIP_FILE in info["required"]["image_encoder"][0]
    assert info["optional"]["vae"][0] == "VAE" and info["optional"]["clip_vision"][0] == "CLIP_VISION"
    taken_over = saved_frames(server, server.run(comfy_files_prompt(True, "comfy_sockets")))
    server.post("/free", {"unload_models": True, "free_memory": True})  # one copy of ViT-L at a time
    from_files = saved_frames(server, server.run(comfy_files_prompt(False, "comfy_files")))
    assert taken_over.shape == (8, 64, 64, 3) and taken_over.std() > 0
    assert np.array_equal(taken_over, from_files)  # ComfyUI's objects held the very weights of the files


def test_example_inputs_are_copied_into_the_input_folder_and_a_user_file_is_kept(server):
    for name in ("anyone-1.png", "anime-portrait.png", "anyone-video-1_kps.mp4", "rain-dance-keypoints.json",
                 "rain-face-keypoints.json"):
        assert (server.input / name).is_file(), name
    assert (server.input / USER_FILE).read_bytes() == (DATA / "anime-portrait.png").read_bytes()
    assert not list(server.input.glob(".*part"))  # no partial copies left behind


def video_info(path: Path) -> tuple[int, float, tuple[int, int]]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, float(stream.average_rate), (stream.codec_context.height, stream.codec_context.width)


def saved_files(server, entry, key) -> list[Path]:
    return [server.output / item["subfolder"] / item["filename"]
            for output in entry["outputs"].values() for item in output.get(key, []) if item["type"] == "output"]


# Poses in each shipped file workflow's input, and the frame rate the output must keep.
EXPECTED_VIDEOS = {"RAIN 1 - Pose video to animation": (64, 30.0), "RAIN 2 - Pose keypoints to animation": (60, 30.0),
                   "RAIN 4 - Anime face morph": (60, 30.0), "RAIN 5 - Long video (flat memory)": (64, 30.0)}


def run_template(server, object_info, path, live_runs: int = 7) -> list:
    """One shipped workflow exactly as a user loads it: a file workflow runs once and its video is checked; the live
    one is queued `live_runs` times by one client, as Auto Queue does. Returns the live runs' Frame Queue stats."""
    prompt = ui_to_api(json.loads(path.read_text()), object_info)  # no edits: the workflow as a user loads it
    started = time.time()
    if path.stem in EXPECTED_VIDEOS:
        entry = server.run(prompt)
        print(f"{path.stem}: {time.time() - started:.1f} s on this machine")
        videos = saved_files(server, entry, "images")
        assert len(videos) == 1 and videos[0].suffix == ".mp4", entry["outputs"]
        frames, fps, size = video_info(videos[0])
        assert (frames, fps) == EXPECTED_VIDEOS[path.stem]  # one frame per pose, at the source's frame rate
        assert size == (64, 64)  # the built-in model's own size (width/height 0)
        return []
    queue_id = next(k for k, v in prompt.items() if v["class_type"] == "RainFrameQueue")
    client = uuid.uuid4().hex
    stats = [server.run(prompt, client_id=client)["outputs"].get(queue_id, {}).get("rain_stats", [None])[0]
             for _ in range(live_runs)]
    print(f"{path.stem}: {live_runs} runs in {time.time() - started:.1f} s")
    return stats


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs_as_shipped(server, object_info, path):
    stats = run_template(server, object_info, path)
    if path.stem in EXPECTED_VIDEOS:
        return
    # Warm-up (4 levels x 4 frames): the first runs emit nothing, and Frame Queue is skipped with the rest; then
    # every run brings 4 frames.
    ran = [s for s in stats if s is not None]
    assert stats[0] is None and len(ran) >= 3 and ran[-1]["pushed"] - ran[-2]["pushed"] == 4, stats
    assert ran[-1]["target_fps"] == 30.0  # paced at the pose video's rate (the sampler's fps output)


@pytest.fixture(scope="module", params=["--lowvram", "--novram"])
def flagged_server(request, tmp_path_factory):
    """ComfyUI started with a memory flag, on the GPU: the networks load partially (--lowvram) or stream from the
    CPU (--novram). The `server` fixture is the --cpu start-up, where every template runs too."""
    if not comfy_has_gpu():
        pytest.skip(f"{request.param} needs a GPU: ComfyUI refuses it beside --cpu, and without --cpu it asks torch "
                    "for a CUDA device this host lacks")
    instance = Server(tmp_path_factory.mktemp("flag" + request.param.strip("-")))
    instance.start(extra_args=(request.param,))
    yield instance
    instance.stop()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_template_runs_in_a_lowvram_and_a_novram_start_up(flagged_server, path):
    log = flagged_server.log_path.read_text()
    assert "IMPORT FAILED" not in log, log[-3000:]
    stats = run_template(flagged_server, flagged_server.get("/object_info"), path, live_runs=5)
    if path.stem not in EXPECTED_VIDEOS:  # the live workflow: past its warm-up, frames come out
        assert any(s is not None and s["pushed"] > 0 for s in stats), stats


def live_prompt(model: str = TEST_MODEL, per_run: int = 4, size: int = 32, save: str | None = "live",
                queue: bool = False, preview: bool = False) -> dict:
    prompt = {
        "1": {"class_type": "LoadRainModel", "inputs": {"model": model, "vae_name": "auto", "image_encoder": "auto",
                                                        "decoder": "auto", "precision": "auto", "device": "auto",
                                                        "keep_loaded": True}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "anyone-1.png"}},
        "3": {"class_type": "RainPoseStream", "inputs": {
            "mode": "body", "video_path": "anyone-video-1_kps.mp4", "start_frame": 0, "frames_per_run": per_run,
            "loop": True, "smoothing": 0.0, "align_to_reference": False, "face_length": 0.75, "eye_height": 3.0,
            "eye_width": 1.6, "mouth_height": 1.2, "mouth_width": 0.67, "jaw_width": 0.9}},
        "4": {"class_type": "RainSampler", "inputs": {
            "rain_model": ["1", 0], "reference": ["2", 0], "poses": ["3", 0], "width": size, "height": size,
            "levels": 2, "frames_per_cohort": 2, "steps": 2, "guidance": 3.5, "seed": 3, "stream_id": "live",
            "reset": False, "flush": False}},
    }
    if save:
        prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": save}}
    if preview:
        prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    if queue:
        prompt["7"] = {"class_type": "RainFrameQueue", "inputs": {
            "frames": ["4", 0], "mode": "pace", "fps": ["4", 1], "capacity": 64, "when_full": "drop oldest",
            "flush": False, "preview": True}}
    return prompt


def saved_images(server, entry, node="5") -> np.ndarray | None:
    images = entry["outputs"].get(node, {}).get("images")
    if not images:
        return None
    return np.stack([np.asarray(Image.open(server.output / i["subfolder"] / i["filename"])) for i in images])


def test_warm_up_runs_skip_save_and_preview_image_and_frame_queue_goes_on(server):
    client = uuid.uuid4().hex
    prompt = live_prompt(per_run=2, save="warm", queue=True, preview=True)
    entries = [server.run(prompt, client_id=client) for _ in range(5)]  # each must succeed: server.run asserts it
    saved = [saved_images(server, e) for e in entries]
    # window 2 levels x 2 frames: the first run only warms up; Save Image and Preview Image do not run then
    assert saved[0] is None and "6" not in entries[0]["outputs"]
    assert all(s is not None and s.shape == (2, 32, 32, 3) for s in saved[1:])
    assert all(e["outputs"]["6"]["images"] for e in entries[1:])
    assert entries[-1]["outputs"]["7"]["rain_stats"][0]["pushed"] == 8


def rss_mb(pid: int) -> float:
    memory = resident_memory(pid)
    if memory is None:
        raise RuntimeError("no VmRSS")
    return memory["rss"] / 2**20


def test_free_gives_the_networks_memory_back(server):
    from rain_core.loading import load_rain

    weights_mb = sum(p.numel() * p.element_size() for p in load_rain(
        server.workdir / "models" / "rain" / BIG_MODEL, device="cpu").parameters()) / 2**20
    before = rss_mb(server.process.pid)
    server.run(live_prompt(model=BIG_MODEL, save=None, queue=True), client_id=uuid.uuid4().hex)
    loaded = rss_mb(server.process.pid)
    server.post("/free", {"unload_models": True, "free_memory": True})
    deadline, freed = time.time() + 60, loaded
    while time.time() < deadline and loaded - freed < 0.8 * weights_mb:
        time.sleep(0.5)
        freed = rss_mb(server.process.pid)
    print(f"RSS: {before:.0f} MB before, {loaded:.0f} MB loaded, {freed:.0f} MB after /free; "
          f"weights {weights_mb:.0f} MB")
    assert loaded - before > 0.8 * weights_mb
    assert loaded - freed > 0.8 * weights_mb  # the networks and the stream built on them are gone
    # and everything still works afterwards (the built-in loads again)
    server.run(live_prompt(save=None, queue=True), client_id=uuid.uuid4().hex)


async def _collect_events(base: str, client: str, events: list, stop):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base.replace('http', 'ws')}/ws?clientId={client}") as socket:
            while not stop.is_set():
                try:
                    message = await socket.receive(timeout=0.2)
                except TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data.get("type") == "rain.frame":
                        events.append(data["data"])
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return


def listen(base: str, clients: list[str]):
    """Websocket clients connected as `clients` in a background thread; returns ({client: events}, stop)."""
    import asyncio
    import threading

    events = {client: [] for client in clients}
    stop = threading.Event()

    def main():
        async def all_clients():
            await asyncio.gather(*(_collect_events(base, c, events[c], stop) for c in clients))
        asyncio.run(all_clients())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    time.sleep(1.0)  # connected
    return events, stop, thread


def test_two_clients_never_share_a_stream_a_pose_position_or_a_preview(server):
    tab_a, tab_b, idle, solo = (uuid.uuid4().hex for _ in range(4))
    events, stop, thread = listen(server.base, [tab_a, tab_b, idle])
    prompt = live_prompt(per_run=2, save="clients", queue=True)
    try:
        runs = {tab_a: [], tab_b: []}
        for _ in range(4):  # the two tabs queue the same workflow in turn, as two Auto Queues do
            for client in (tab_a, tab_b):
                runs[client].append(saved_images(server, server.run(prompt, client_id=client)))
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(10)
    alone = [saved_images(server, server.run(prompt, client_id=solo)) for _ in range(4)]
    for client in (tab_a, tab_b):  # each tab saw the poses 0, 1, 2, ... and its own stream, as if alone
        assert [r is None for r in runs[client]] == [a is None for a in alone]
        assert all(np.array_equal(r, a) for r, a in zip(runs[client], alone) if a is not None)
    assert len(events[tab_a]) == len(events[tab_b]) == 3  # the Frame Queue runs after warm-up, per tab
    assert events[idle] == []  # a client that queued nothing gets no previews
    assert [e["pushed"] for e in events[tab_a]] == [2, 4, 6]  # its own queue: the other tab's frames not in it


def test_interrupted_live_run_resumes_as_if_never_interrupted(server):
    reference, cut = uuid.uuid4().hex, uuid.uuid4().hex
    prompt = live_prompt(per_run=16, save="resume", size=32)
    # On a quiet machine a run lasts a fraction of a second, so the first tries interrupt early; a run that finishes
    # before the interrupt counts as the next run, so the reference needs one run per try, plus two after.
    delays = (0.05, 0.1, 0.2, 0.3, 0.6, 1.2, 2.4)
    expected = [saved_images(server, server.run(prompt, client_id=reference)) for _ in range(len(delays) + 2)]
    got = [saved_images(server, server.run(prompt, client_id=cut))]
    interrupted = False
    for delay in delays:
        prompt_id = server.queue(prompt, cut)
        while not server.get("/queue")["queue_running"]:
            time.sleep(0.02)
        time.sleep(delay)
        server.post("/interrupt")
        entry = server.wait(prompt_id)
        if entry["status"]["status_str"] == "success":
            got.append(saved_images(server, entry))  # finished first: it counts as the next run
            continue
        interrupted = dict(entry["status"]["messages"]).get("execution_interrupted", {}).get("node_id") == "4"
        if interrupted:
            break
    assert interrupted, "could not interrupt RAIN Sampler mid-run; see server.log"
    for _ in range(max(2, 3 - len(got))):  # the resumed stream, at least two runs past the interrupted one
        got.append(saved_images(server, server.run(prompt, client_id=cut)))
    assert len(got) <= len(expected)
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))


def sampler_prompt(stream_id: str, start: int, count: int, flush: bool, prefix: str) -> dict:
    return {
        "1": {"class_type": "LoadRainModel", "inputs": {"model": TEST_MODEL, "vae_name": "auto", "image_encoder": "auto",
                                                        "decoder": "auto", "precision": "fp32", "device": "cpu",
                                                        "keep_loaded": True}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "anyone-1.png"}},
        "3": {"class_type": "RainPoseStream", "inputs": {
            "mode": "body", "video_path": "anyone-video-1_kps.mp4", "start_frame": start, "frames_per_run": count,
            "loop": False, "smoothing": 0.0, "align_to_reference": False, "face_length": 0.75, "eye_height": 3.0,
            "eye_width": 1.6, "mouth_height": 1.2, "mouth_width": 0.67, "jaw_width": 0.9}},
        "4": {"class_type": "RainSampler", "inputs": {
            "rain_model": ["1", 0], "reference": ["2", 0], "poses": ["3", 0], "width": 32, "height": 32, "levels": 4,
            "frames_per_cohort": 2, "steps": 4, "guidance": 3.5, "seed": 7, "stream_id": stream_id, "reset": False,
            "flush": flush}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }


def saved_frames(server, entry) -> np.ndarray:
    frames = saved_images(server, entry)
    return np.zeros((0, 32, 32, 3), np.uint8) if frames is None else frames  # a warm-up run saves nothing


def test_keep_loaded_off_hands_the_networks_back_after_each_run_and_the_stream_goes_on(server):
    """keep_loaded off: the sampler detaches the networks through the ModelPatcher after each run (no edit of
    ComfyUI's list of loaded models); the next run loads them again and the stream continues as if kept loaded."""
    kept, detached = sampler_prompt("kept", 0, 8, False, "kept"), sampler_prompt("detached", 0, 8, False, "detached")
    detached["1"]["inputs"]["keep_loaded"] = False
    client = uuid.uuid4().hex  # one client: its streams go on from run to run
    runs = []
    for start in (0, 8, 16):
        for prompt in (kept, detached):
            prompt["3"]["inputs"]["start_frame"] = start
        runs.append([saved_frames(server, server.run(p, client_id=client)) for p in (kept, detached)])
    assert sum(len(k) for k, _ in runs) > 0  # past the warm-up, frames came out
    assert all(np.array_equal(k, d) for k, d in runs)


def test_interrupted_run_leaves_the_stream_and_the_next_run_resumes_it(server):
    expected = [saved_frames(server, server.run(sampler_prompt("reference", 0, 8, False, "ref_a"))),
                saved_frames(server, server.run(sampler_prompt("reference", 8, 40, True, "ref_b")))]
    first = saved_frames(server, server.run(sampler_prompt("resumed", 0, 8, False, "cut_a")))
    interrupted_in_sampler = False
    for delay in (0.5, 1.0, 2.0, 4.0):
        prompt_id = server.queue(sampler_prompt("resumed", 8, 40, True, "cut_b"))
        while not server.get("/queue")["queue_running"]:
            time.sleep(0.02)
        time.sleep(delay)
        server.post("/interrupt")
        entry = server.wait(prompt_id)
        messages = dict(entry["status"]["messages"])
        if entry["status"]["status_str"] == "success":
            break  # finished before the interrupt arrived: this run advanced the stream; the test is void
        interrupted_in_sampler = messages.get("execution_interrupted", {}).get("node_id") == "4"
        if interrupted_in_sampler:
            break
    assert interrupted_in_sampler, "could not interrupt RAIN Sampler mid-run; see server.log"
    resumed = saved_frames(server, server.run(sampler_prompt("resumed", 8, 40, True, "cut_b_again")))
    assert np.array_equal(first, expected[0]) and np.array_equal(resumed, expected[1])


# The sweeps render 12 poses at 32 px (video_path, read first, takes the place of the linked video): the shipped
# workflow itself runs in full in test_shipped_workflow_runs_as_shipped.
SHORT_JOB = ["--set", "RainSampler.width=32", "--set", "RainSampler.height=32", "--set",
             "RainPoseStream.video_path=anyone-video-1_kps.mp4", "--set", "RainPoseStream.frames_per_run=12"]


def test_rain_queue_sweeps_references_downloads_outputs_and_reports_a_failed_job(server, object_info, tmp_path,
                                                                                  capsys):
    from rain_core.cli import main

    refs = tmp_path / "refs"
    refs.mkdir()
    for name in ("anyone-1.png", "anyone-2.png"):
        shutil.copy(DATA / name, refs / name)
    (refs / "broken.png").write_text("not an image")  # this job must fail while the others finish
    argv = ["queue", str(ROOT / "example_workflows" / "RAIN 1 - Pose video to animation.json"), "--server", server.base,
            "--sweep", f"image={refs}/*.png", *SHORT_JOB, "--out", str(tmp_path / "out"), "--json"]
    code = main(argv)
    summary = json.loads(capsys.readouterr().out)
    by_name = {job["name"]: job for job in summary["jobs"]}
    assert code == 1 and summary["failed"] == 1, summary
    assert by_name["job-broken"]["status"] == "error" and by_name["job-broken"]["error"]
    for name in ("job-anyone-1", "job-anyone-2"):
        assert by_name[name]["status"] == "success"
        assert len(by_name[name]["files"]) == 1 and Path(by_name[name]["files"][0]).stat().st_size > 0
