"""The one tick inside the stream (`rain_core.stream.tick.Tick`): every tick — warm-up, steady state, flush — runs
it; fast_path="graph" only adds the CUDA-graph replay of steady-state ticks (a no-op off CUDA, so here it must give
the same frames bit for bit). Chunk invariance, a reference change, a resume from a file and a failed push all go
through it. The meta-device test runs a whole stream on tensors without values: any read of a device value raises.
"""

from __future__ import annotations

import pytest
import torch
from conftest import bench_module, build_tiny_models, tiny_config

from rain_core.models import RainModels
from rain_core.stream import (
    Occupancy,
    RainStream,
    SeededNoise,
    StreamConfig,
    StreamConfigError,
    Tick,
    resolve_precision,
)
from rain_core.stream.accel import FastPath

measure = bench_module("measure")  # bench/measure.py: trace_ops
SIZE = 16
REFERENCE = torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(99))


@pytest.fixture(scope="module")
def models() -> RainModels:
    """The tiny RAIN with a TAESDV (so the decoder memory is carried through the tick's buffers too)."""
    return build_tiny_models(tiny_config(block_out_channels=(32, 32), taesdv_channels=8))


def make_stream(models, fast_path: str = "eager", noise=None, **overrides) -> RainStream:
    settings = dict(height=SIZE, width=SIZE, levels=3, frames_per_cohort=2, steps=3, seed=4, decoder="taesdv")
    settings.update(overrides)
    stream = RainStream(models, StreamConfig(fast_path=fast_path, **settings), noise=noise)
    stream.set_reference(REFERENCE)
    return stream


def pose_frames(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(seed))


def render(stream: RainStream, poses: torch.Tensor, chunk: int) -> torch.Tensor:
    outputs = [stream.push(poses[i : i + chunk]) for i in range(0, poses.shape[0], chunk)]
    return torch.cat(outputs + [stream.flush()])


@pytest.mark.parametrize(
    "levels, m, steps, decoder",
    [(3, 2, 3, "taesdv"), (2, 2, 4, "taesdv"), (4, 1, 4, "vae")],  # 1 and 2 UNet calls per tick; the full codec
)
def test_every_tick_runs_the_one_tick_from_warm_up_to_flush(models, levels, m, steps, decoder, monkeypatch):
    seen = []
    run = Tick.run
    monkeypatch.setattr(Tick, "run", lambda self, occupancy=None: (seen.append(occupancy), run(self, occupancy))[1])
    poses = pose_frames(41, seed=1)  # a partial last cohort, padded by flush
    settings = dict(levels=levels, frames_per_cohort=m, steps=steps, decoder=decoder)
    eager = make_stream(models, "eager", **settings)
    frames = render(eager, poses, chunk=5)
    cohorts = -(-41 // m)
    assert frames.shape == (41, SIZE, SIZE, 3) and eager.stats["ticks"] == len(seen) == cohorts + levels - 1
    warm_up = [Occupancy(levels - 1 - k, k + 1, True) for k in range(levels - 1)]
    flush = [Occupancy(0, levels - 1 - k, False) for k in range(levels - 1)]
    assert seen == warm_up + [Occupancy.steady(levels)] * (cohorts - levels + 1) + flush
    # "graph" differs only by the CUDA-graph replay of steady-state ticks: off CUDA, the very same computation
    graph = make_stream(models, "graph", **settings)
    assert torch.equal(render(graph, poses, chunk=7), frames)
    assert graph.stats["fast_path"] == "graph" and graph.stats["graph_ticks"] == 0  # nothing captured on the CPU


def test_one_tick_is_chunk_invariant_bit_for_bit(models):
    poses = pose_frames(17, seed=2)
    whole = render(make_stream(models), poses, chunk=17)
    assert torch.equal(render(make_stream(models), poses, chunk=1), whole)
    assert torch.equal(render(make_stream(models), poses, chunk=3), whole)


def test_reference_change_mid_stream_rebuilds_the_tick(models):
    poses = pose_frames(24, seed=3)
    changed, unchanged = make_stream(models), make_stream(models)
    assert torch.equal(changed.push(poses[:12]), unchanged.push(poses[:12]))
    tick = changed._tick_object  # noqa: SLF001 - which tick object serves the stream, read only
    changed.set_reference(1 - REFERENCE)
    after = changed.push(poses[12:])
    assert changed._tick_object is not tick  # noqa: SLF001
    assert not torch.allclose(unchanged.push(poses[12:]), after, atol=1e-3)  # the new reference is used
    # the same as a stream that had the new reference from the start, given the same window: resume, then swap
    resumed = make_stream(models)
    resumed.push(poses[:12])
    resumed.set_reference(1 - REFERENCE)
    assert torch.equal(resumed.push(poses[12:]), after)


def test_one_tick_resumes_from_a_file_bit_exactly(models, tmp_path):
    poses = pose_frames(26, seed=5)
    straight = make_stream(models)
    expected = torch.cat([straight.push(poses[:11]), straight.push(poses[11:]), straight.flush()])

    interrupted = make_stream(models)
    first = interrupted.push(poses[:11])  # steady state, mid-cohort
    interrupted.save(tmp_path / "stream.safetensors")
    interrupted.push(poses[11:15])  # this object goes on; the file must not care
    resumed = RainStream(models, StreamConfig(height=SIZE, width=SIZE))
    resumed.load(tmp_path / "stream.safetensors")
    assert resumed.config.fast_path == "eager"
    assert torch.equal(torch.cat([first, resumed.push(poses[11:]), resumed.flush()]), expected)


class FailOnce(SeededNoise):
    """Real noise, except that drawing cohort `fail_at`'s first step noise raises once."""

    def __init__(self, seed, fail_at):
        super().__init__(seed)
        self.fail_at = fail_at

    def step(self, cohort, step, shape):
        if cohort == self.fail_at:
            self.fail_at = None
            raise RuntimeError("device lost")
        return super().step(cohort, step, shape)


def test_a_failed_push_rolls_back_and_the_retry_is_exact(models):
    poses = pose_frames(20, seed=6)
    straight = make_stream(models)
    expected = render(straight, poses, chunk=10)
    stream = make_stream(models, noise=FailOnce(4, fail_at=7))
    first = stream.push(poses[:10])  # cohorts 0-4: the tick's buffers hold the window now
    before = stream.state_dict()
    with pytest.raises(RuntimeError, match="device lost"):
        stream.push(poses[10:])  # cohorts 5 and 6 tick, cohort 7 fails
    after = stream.state_dict()
    assert before["meta"] == after["meta"]
    assert all(torch.equal(before["tensors"][name], after["tensors"][name]) for name in before["tensors"])
    assert torch.equal(torch.cat([first, stream.push(poses[10:]), stream.flush()]), expected)


def test_auto_is_eager_on_cpu_and_bad_values_are_refused(models):
    stream = make_stream(models, "auto")
    stream.push(pose_frames(10))
    assert stream.stats["fast_path"] == "eager" and stream.stats["graph_ticks"] == 0
    one_level = make_stream(models, "eager", levels=1, steps=1)  # nothing kept between ticks: empty buffers
    assert one_level.push(pose_frames(4)).shape == (4, SIZE, SIZE, 3)
    with pytest.raises(StreamConfigError, match="fast_path"):
        make_stream(models, "cuda")
    with pytest.raises(StreamConfigError, match="output_device"):
        make_stream(models, "eager", output_device="gpu")
    legacy = StreamConfig.from_dict({**StreamConfig().to_dict(), "fast_path": "off"})  # states saved before
    assert legacy.fast_path == "eager"


def test_whole_stream_on_meta_reads_no_device_value():
    """Meta tensors have shapes but no values: .item(), bool(), nonzero() on one raise. Warm-up, steady state and
    flush all run through the tick, so no tick reads a device value (= no host-device sync on CUDA) and every
    steady-state push records the same aten ops on the same shapes (what graph capture needs)."""
    with torch.device("meta"):
        models = RainModels.build(tiny_config(block_out_channels=(32, 32), taesdv_channels=8))
    config = StreamConfig(height=SIZE, width=SIZE, levels=3, frames_per_cohort=2, steps=3, fast_path="graph")
    stream = RainStream(models, StreamConfig.from_dict({**config.to_dict(), "output_device": "device"}))
    with torch.device("meta"):
        clip_tokens = torch.zeros(1, 1, models.config.cross_attention_dim)
        latent = torch.zeros(1, *stream._latent_shape)  # noqa: SLF001 - the image encoder cannot run on meta
    stream._install_reference(clip_tokens, latent)  # noqa: SLF001
    assert stream.push(pose_frames(4)).shape[0] == 0  # warm-up
    traces = []
    for push in range(3):
        frames, trace = measure.trace_ops(lambda push=push: stream.push(pose_frames(2, seed=push)))
        assert frames.device.type == "meta" and frames.shape == (2, SIZE, SIZE, 3)
        traces.append(trace)
    assert stream.stats["ticks"] == 5
    assert traces[1].ops == traces[2].ops  # static shapes, tick after tick
    # The only values read are the CPU pose frames' (input checks and "is there a pose at all")
    assert {where.split(" ")[-1] for _, where in traces[2].syncs} <= {"(as_frames)", "(_push_frames)"}
    assert stream.flush().shape == (4, SIZE, SIZE, 3)


def test_speed_options_reach_the_tick_and_the_unfused_step_agrees(models):
    poses = pose_frames(14, seed=8)
    fused = render(make_stream(models), poses, chunk=14)
    unfused_stream = RainStream(models, make_stream(models).config, fast=FastPath(fused_step=False))
    unfused_stream.set_reference(REFERENCE)
    unfused = render(unfused_stream, poses, chunk=14)
    assert unfused_stream._tick_object.fast.fused_step is False  # noqa: SLF001
    # LCMStepper.step vs the fused multiply-add, through warm-up, steady state and flush: float32 rounding only
    torch.testing.assert_close(unfused, fused, rtol=0, atol=5e-6)


def test_auto_precision_is_one_rule():
    assert resolve_precision("auto", "cpu") == torch.float32
    assert resolve_precision(None, "cpu") == torch.float32
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16  # the authors' inference precision
    assert resolve_precision("bf16", "cuda") == torch.bfloat16 and resolve_precision("float32", "cuda") == torch.float32
    assert resolve_precision(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", "cuda")
