"""Long videos in flat memory (issue 30, item 3), standalone: Pose Stream reads a long pose video lazily and RAIN
Sampler with a filename_prefix streams its frames into an H.264 file, on the built-in model and a real pose video
(the example skeleton video looped to LONG frames with rain_core.io.video's sink).

Checked: the streamed file equals the one-shot render frame for frame; a cancelled run leaves no file and no
temporary file, keeps the earlier files, and leaves the stream (and a live pose position) as before the run; memory
over the chunks of a run does not grow with the video's length (figures printed, not timed).
"""

import gc
import importlib
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from test_nodes import DATA, PACK_NAME, load_pack, pose_stream_args, standalone_host

from rain_core.cpu import resident_memory
from rain_core.io.inputs import uint8_frames
from rain_core.io.video import VideoSink, read_video_frames

LONG = 96  # frames of the looped pose video (704 x 512, 30 fps): longer than the example, shorter than a test budget
SETTINGS = {"levels": 2, "frames_per_cohort": 4, "steps": 2}  # the built-in model, quick on one thread
SIZE = 64  # the built-in model's own size


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def loop_video(path: Path, frames: int) -> Path:
    """The example skeleton video repeated up to `frames` frames, written with the pack's own sink."""
    clip, _, _ = read_video_frames(DATA / "anyone-video-1_kps.mp4", 0, frames, loop=True)
    with VideoSink(path, fps=30.0) as sink:
        sink.write(clip)
    return path


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return loop_video(tmp_path_factory.mktemp("poses") / "long-poses.mp4", LONG)


@pytest.fixture
def host(pack, tmp_path, monkeypatch):
    """The standalone host with an empty output folder and a video cache too small to keep any video decoded, so
    every pose video is read from its file as a long one is."""
    monkeypatch.setenv("RAIN_OUTPUT_DIR", str(tmp_path / "output"))
    pose_stream = importlib.import_module(f"{PACK_NAME}.nodes.pose_stream")
    video = importlib.import_module(f"{PACK_NAME}.rain_core.io.video")
    monkeypatch.setattr(pose_stream, "_decoded_videos", video.DecodedVideoCache(max_bytes=1))
    yield from standalone_host(monkeypatch, tmp_path / "models")


@pytest.fixture(scope="module")
def model(pack):
    return pack.NODE_CLASS_MAPPINGS["LoadRainModel"]().load("tiny-rain (built-in)", "auto", "auto", "auto", "fp32",
                                                            "cpu", True)[0]


REFERENCE = torch.from_numpy(np.asarray(Image.open(DATA / "anyone-1.png").convert("RGB"), np.float32) / 255.0)[None]


def sample(pack, model, poses, stream_id, flush, filename_prefix="", **overrides):
    """RAIN Sampler at width/height 0 (the model's own size); returns what the node returns."""
    settings = {**SETTINGS, **overrides}
    return pack.NODE_CLASS_MAPPINGS["RainSampler"]().sample(
        model, REFERENCE, poses, 0, 0, settings["levels"], settings["frames_per_cohort"], settings["steps"], 3.5, 0,
        stream_id, False, flush, "fresh", filename_prefix, unique_id="4")


def pose_stream(pack, **overrides):
    return pack.NODE_CLASS_MAPPINGS["RainPoseStream"]().prepare(**pose_stream_args(**overrides))[0]


@pytest.fixture(scope="module")
def one_shot(pack, model, long_video):
    """The whole pose video decoded into memory and rendered in one run, frames handed on: today's short way."""
    batch_type = type(pose_stream(pack, pose_images=torch.zeros(1, 8, 8, 3), pose_check=False))
    eager = batch_type(images=uint8_frames(read_video_frames(long_video, 0, 0)[0]), fps=30.0)
    frames = sample(pack, model, eager, "one-shot", True)[0]
    assert frames.shape == (LONG, SIZE, SIZE, 3)
    return frames


def decoded(path: Path) -> tuple[np.ndarray, float, str, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate), stream.codec_context.name, stream.codec_context.pix_fmt


def psnr(file_frames: np.ndarray, frames: torch.Tensor) -> float:
    """The lowest per-frame PSNR (dB) of a file's frames against the frames that went in."""
    expected = (frames.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8).astype(np.float64)
    errors = ((file_frames.astype(np.float64) - expected) ** 2).reshape(len(expected), -1).mean(1)
    return float(10 * np.log10(255.0**2 / max(errors.max(), 1e-12)))


@pytest.fixture
def written(pack, monkeypatch):
    """Every batch of frames the pack's VideoSink is given, in order. (The frames are compared before encoding:
    libx264 is not bit-reproducible at this 64 px size here, even on one thread; at 128 px and above it was.)"""
    sink = importlib.import_module(f"{PACK_NAME}.rain_core.io.video").VideoSink
    batches, write = [], sink.write

    def recording(self, frames):
        batches.append(torch.as_tensor(frames).clone())
        return write(self, frames)

    monkeypatch.setattr(sink, "write", recording)
    return batches


def listing(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def test_the_streamed_file_equals_the_one_shot_render_frame_for_frame(pack, host, model, long_video, one_shot,
                                                                      written, tmp_path):
    poses = pose_stream(pack, video_path=str(long_video))
    assert poses.clip is not None and len(poses) == LONG  # nothing decoded beyond the preview yet
    result = sample(pack, model, poses, "streamed", True, filename_prefix="rain/long")
    last, fps = result["result"]
    assert last.shape == (1, SIZE, SIZE, 3) and torch.equal(last, one_shot[-1:]) and fps == 30.0
    assert result["ui"] == {"images": [{"filename": "long_00001_.mp4", "subfolder": "rain", "type": "output"}],
                            "animated": (True,)}
    assert max(len(batch) for batch in written) == SETTINGS["frames_per_cohort"]  # written as they came
    assert torch.equal(torch.cat(written), one_shot)  # frame for frame
    folder = tmp_path / "output" / "rain"
    assert sorted(p.name for p in folder.iterdir()) == ["long_00001_.mp4"]  # and no temporary file beside it
    frames, rate, codec, pix_fmt = decoded(folder / "long_00001_.mp4")
    assert (len(frames), rate, codec, pix_fmt) == (LONG, 30.0, "h264", "yuv420p")
    assert psnr(frames, one_shot) > 30  # H.264 at crf 18 of these frames
    # the next run numbers its file on, as Save Video does
    again = sample(pack, model, pose_stream(pack, video_path=str(long_video), frames_per_run=8), "streamed-2", True,
                   filename_prefix="rain/long")
    assert again["ui"]["images"][0]["filename"] == "long_00002_.mp4"


def test_a_cancelled_run_leaves_no_file_keeps_the_earlier_ones_and_the_next_run_resumes(pack, host, model,
                                                                                       long_video, one_shot,
                                                                                       written, tmp_path):
    folder = tmp_path / "output" / "rain"
    first = sample(pack, model, pose_stream(pack, video_path=str(long_video), frames_per_run=24), "cut", False,
                   filename_prefix="rain/part")
    emitted = 24 - (SETTINGS["levels"] - 1) * SETTINGS["frames_per_cohort"]  # the warm-up holds one cohort back
    assert torch.equal(torch.cat(written), one_shot[:emitted]) and torch.equal(first["result"][0], one_shot[
        emitted - 1:emitted])
    before = listing(folder)
    assert list(before) == ["part_00001_.mp4"]
    rest = pose_stream(pack, video_path=str(long_video), start_frame=24)

    def cancel_at_tick_6(node_id, value, total, preview):
        if value == 6:
            host.interrupt_processing()

    host.progress_hooks.append(cancel_at_tick_6)
    written.clear()
    with pytest.raises(host.Interrupted):
        sample(pack, model, rest, "cut", True, filename_prefix="rain/part")
    host.progress_hooks.clear()
    assert written  # frames of the cancelled run had gone into its temporary file
    assert listing(folder) == before  # no new file, no partial file, the earlier file untouched
    written.clear()
    resumed = sample(pack, model, rest, "cut", True, filename_prefix="rain/part")
    assert resumed["ui"]["images"][0]["filename"] == "part_00002_.mp4"
    assert torch.equal(torch.cat(written), one_shot[emitted:])  # as if the cancelled run had never been
    assert len(decoded(folder / "part_00002_.mp4")[0]) == LONG - emitted


def test_a_cancelled_run_leaves_a_live_pose_position_where_it_was(pack, host, model, long_video, tmp_path):
    prompt = {"33": {"class_type": "RainPoseStream", "inputs": {}},
              "4": {"class_type": "RainSampler", "inputs": {"poses": ["33", 0]}}}
    live = {"video_path": str(long_video), "frames_per_run": 20, "loop": True, "unique_id": "33", "prompt": prompt}
    poses = pose_stream(pack, **live)
    assert poses.clip.start == 0 and poses.live
    host.progress_hooks.append(lambda node_id, value, total, preview: host.interrupt_processing())
    with pytest.raises(host.Interrupted):
        sample(pack, model, poses, "live", False, filename_prefix="rain/live")
    host.progress_hooks.clear()
    again = pose_stream(pack, **live)
    assert again.clip.start == 0  # the cancelled run's poses come again
    sample(pack, model, again, "live", False, filename_prefix="rain/live")
    assert pose_stream(pack, **live).clip.start == 20
    assert [p.name for p in (tmp_path / "output" / "rain").iterdir()] == ["live_00001_.mp4"]


def rss_mb() -> float:
    memory = resident_memory()
    return memory["rss"] / 2**20 if memory else float("nan")


@pytest.fixture
def small_model(pack, host, tmp_path):
    """A small random RAIN for the memory figures: the pose video's frames dominate, not the model."""
    from conftest import build_tiny_models, tiny_config

    from rain_core.loading import save_rain

    save_rain(build_tiny_models(tiny_config(block_out_channels=(16, 32), attention_heads=2, codec_factor=4)),
              tmp_path / "models" / "rain" / "tiny-test")
    return pack.NODE_CLASS_MAPPINGS["LoadRainModel"]().load("tiny-test", "auto", "auto", "vae", "fp32", "cpu", True)[0]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_over_the_chunks_of_a_run_does_not_grow_with_the_video_length(pack, host, small_model, tmp_path):
    """Whole runs at 48 and 4 x 48 frames of a 704 x 512 pose video: the peak of numpy's allocations (tracemalloc:
    the decoded and converted pose frames) and the RSS sampled at every chunk. Kept whole, the 144 more frames would
    cost 144 x 5.4 MB (uint8 + float32) = 780 MB more."""
    figures = {}
    for frames in (48, 192):
        video = loop_video(tmp_path / f"poses-{frames}.mp4", frames)
        gc.collect()
        samples = []
        host.progress_hooks.append(lambda node_id, value, total, preview, samples=samples: samples.append(rss_mb()))
        start = rss_mb()
        tracemalloc.start()
        try:
            poses = pose_stream(pack, video_path=str(video))
            result = sample(pack, small_model, poses, f"memory-{frames}", True, filename_prefix="rain/memory",
                            levels=1, frames_per_cohort=8, steps=1)
            traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
            host.progress_hooks.clear()
        assert result["result"][0].shape[0] == 1
        quarter = len(samples) // 4
        figures[frames] = {"traced_peak_mb": traced_peak, "rss_start_mb": start, "rss_peak_mb": max(samples),
                           "rss_growth_over_chunks_mb": max(samples[quarter:]) - max(samples[:quarter]),
                           "chunks": len(samples)}
    print("\nmemory per run (MB):", {k: {n: round(v, 1) for n, v in f.items()} for k, f in figures.items()})
    short, long = figures[48], figures[192]
    assert long["traced_peak_mb"] - short["traced_peak_mb"] < 16  # kept whole: +780 MB
    assert long["rss_peak_mb"] - long["rss_start_mb"] < short["rss_peak_mb"] - short["rss_start_mb"] + 128
    assert long["rss_growth_over_chunks_mb"] < 64


def test_output_files_are_numbered_as_save_video_numbers_and_stay_in_the_output_folder(pack, host, tmp_path):
    output = tmp_path / "output"
    first = host.output_file("rain/long", ".mp4")
    assert first == output / "rain" / "long_00001_.mp4" and first.parent.is_dir()
    first.write_bytes(b"")
    (output / "rain" / "long_00007_.mp4").write_bytes(b"")
    (output / "rain" / "longer_00009_.mp4").write_bytes(b"")  # another prefix: not counted
    assert host.output_file("rain/long", ".mp4").name == "long_00008_.mp4"
    with pytest.raises(ValueError, match="leads out of the output folder"):
        host.output_file("../elsewhere/long", ".mp4")
