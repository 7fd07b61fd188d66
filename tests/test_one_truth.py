"""Each fact has one home: the stream's defaults live in StreamConfig, "the model's own size" in
RainModelConfig.own_frame_size. The sampler node, the CLI and the live route take the same defaults and a size
of 0 (their shipped default) resolves to the same frames for the same model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from test_nodes import DATA, PACK_NAME, all_inputs, load_pack, standalone_host

from rain_core.loading import folder_frame_size, load_rain
from rain_core.loading.layout import builtin_model_dir
from rain_core.models import RainModelConfig
from rain_core.stream import RainStream, StreamConfig

ROOT = Path(__file__).resolve().parents[1]
STREAM_WIDGETS = ("width", "height", "levels", "frames_per_cohort", "steps", "guidance", "seed", "noise")


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def builtin():
    return load_rain(builtin_model_dir())


def test_the_builtin_model_records_its_own_size_and_a_loaded_model_and_its_folder_agree(builtin):
    assert builtin.config.frame_size == (64, 64)
    assert builtin.config.own_frame_size() == (64, 64)
    assert folder_frame_size(builtin_model_dir()) == (64, 64)
    config = StreamConfig().for_models(builtin)
    assert (config.height, config.width) == (64, 64)


def test_a_config_without_frame_size_falls_back_by_its_codec(tmp_path):
    assert RainModelConfig.sd15().own_frame_size() == (512, 512)
    assert RainModelConfig.tiny().own_frame_size() == (64, 64)  # the pixel codec of the tiny family
    assert RainModelConfig.tiny(codec="vae", codec_factor=8).own_frame_size() == (512, 512)
    folder = tmp_path / "model"
    shutil.copytree(builtin_model_dir(), folder)
    data = json.loads((folder / "rain_config.json").read_text())
    del data["config"]["frame_size"]  # a model saved before the key existed
    (folder / "rain_config.json").write_text(json.dumps(data))
    assert folder_frame_size(folder) == (64, 64)
    assert load_rain(folder).config.own_frame_size() == (64, 64)
    official = tmp_path / "authors-layout"  # no rain_config.json at all: the released size
    official.mkdir()
    assert folder_frame_size(official) == (512, 512)


def test_a_zero_size_is_the_models_own_and_a_negative_one_is_refused_naming_the_field(builtin):
    stream = RainStream(builtin, StreamConfig(height=0, width=0))
    assert (stream.config.height, stream.config.width) == (64, 64)
    with pytest.raises(ValueError, match=r"StreamConfig\.height: .*0 = the model's own size"):
        RainStream(builtin, StreamConfig(height=-64))


def test_the_sampler_the_cli_and_the_live_route_take_the_defaults_of_stream_config(pack):
    default = StreamConfig()
    sampler = all_inputs(pack.NODE_CLASS_MAPPINGS["RainSampler"])
    assert {name: sampler[name][1]["default"] for name in STREAM_WIDGETS} == {
        name: getattr(default, name) for name in STREAM_WIDGETS}
    route = sys.modules[f"{PACK_NAME}.nodes.live_route"]
    assert {name: route.DEFAULTS[name] for name in STREAM_WIDGETS} == {
        name: getattr(default, name) for name in STREAM_WIDGETS}
    from rain_core.cli import build_parser

    args = build_parser().parse_args(["animate", "--model", "tiny", "--reference", "r.png", "--poses", "p.mp4",
                                      "--out", "o.mp4"])
    assert {name: getattr(args, name) for name in STREAM_WIDGETS if name not in ("width", "height")} == {
        name: getattr(default, name) for name in STREAM_WIDGETS if name not in ("width", "height")}
    assert (args.width, args.height) == (None, None)  # the model's own size, like the widgets' 0


def test_sampler_cli_and_live_route_on_their_defaults_make_frames_of_the_models_own_size(pack, tmp_path,
                                                                                          monkeypatch):
    """The same reference and pose video through the three entry points, nothing typed in: all at 64×64."""
    host = next(standalone_host(monkeypatch, tmp_path / "models"))
    loader = pack.NODE_CLASS_MAPPINGS["LoadRainModel"]()
    handle = loader.load("tiny-rain (built-in)", "auto", "auto", "auto", "auto", "cpu", True)[0]
    sampler_inputs = {name: spec[1]["default"] for name, spec in all_inputs(
        pack.NODE_CLASS_MAPPINGS["RainSampler"]).items() if len(spec) > 1 and "default" in spec[1]}
    from test_nodes import pose_stream_args

    poses = pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(
        video_path=str(DATA / "anyone-video-1_kps.mp4"), frames_per_run=16))[0]
    from rain_core.io.inputs import read_image

    reference = read_image(DATA / "anyone-1.png")
    sampler_inputs.update(rain_model=handle, reference=reference, poses=poses, flush=True)
    frames = pack.NODE_CLASS_MAPPINGS["RainSampler"]().sample(**sampler_inputs)[0]
    assert tuple(frames.shape[1:3]) == (64, 64)
    host.interrupt_processing(False)

    route = sys.modules[f"{PACK_NAME}.nodes.live_route"]
    session = route._open_session(route.read_settings({"type": "start", "width": 0, "height": 0}))
    try:
        assert (session.config.height, session.config.width) == (64, 64)
    finally:
        session.close()

    out = tmp_path / "cli.mp4"
    result = subprocess.run([sys.executable, "-m", "rain_core", "animate", "--model", "tiny", "--reference",
                             str(DATA / "anyone-1.png"), "--poses", str(DATA / "anyone-video-1_kps.mp4"),
                             "--out", str(out), "--max-frames", "8"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.height, stream.width) == (64, 64)
    assert torch.is_tensor(frames)


def test_rain_bench_honours_every_stream_flag_it_takes_and_takes_no_output_fps(capsys):
    from rain_core.cli import build_parser, main

    argv = ["bench", "--model", "tiny", "--frames", "12", "--levels", "2", "--frames-per-cohort", "2", "--steps", "2",
            "--seed", "5", "--noise", "shared", "--fast-path", "eager", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["noise"], r["fast_path"], r["frames_per_cohort"]) for r in rows] == [("shared", "eager", 2),
                                                                                 ("shared", "eager", 1)]
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "--fps", "30"])
    assert exit_info.value.code == 2


def test_the_one_push_loop_gives_the_frames_of_one_whole_push_whatever_the_chunking(builtin):
    """push_frames (the loop the CLI, the sampler, the live session and the benches share) in chunks of m, of 1,
    and with a missing pose, against one push of everything plus a flush."""
    from rain_core.io.video import read_video_frames
    from rain_core.stream.feed import push_frames

    poses = torch.from_numpy(read_video_frames(DATA / "anyone-video-1_kps.mp4", 0, 11)[0]).float() / 255
    reference = torch.from_numpy(np.array(Image.open(DATA / "anyone-1.png").convert("RGB"))).float() / 255
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, seed=4)

    def render(feed):
        stream = RainStream(builtin, config)
        stream.set_reference(reference)
        return feed(stream)

    whole = render(lambda s: torch.cat([s.push(poses), s.flush()]))
    for chunk in (None, 1, 3):
        items = render(lambda s, chunk=chunk: list(push_frames(s, poses, flush=True, chunk=chunk)))
        assert [taken for taken, _ in items][-1] == 11
        assert torch.equal(torch.cat([frames for _, frames in items]), whole)
    with_gap = list(poses[:5]) + [None] + list(poses[6:])
    held = render(lambda s: torch.cat([frames for _, frames in push_frames(s, with_gap, flush=True)]))
    assert held.shape == whole.shape and not torch.equal(held, whole)  # the missing pose held the last one
    assert render(lambda s: list(push_frames(s, [], flush=True))) == []  # nothing taken: no flush either
