"""The one tick driven on its own (as the benchmarks drive it) and the speed helpers: a `Tick` loaded with a stream's
state and given the noise `TickNoise` lays out equals the stream's next tick bit for bit, the fused LCM step equals
LCMStepper, the tick reads nothing back to the host (so it can be captured as a CUDA graph), and the GPU benchmark
script runs end to end on CPU with --tiny."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import bench_module, build_tiny_models

from rain_core.models import RainModelConfig, RainModels
from rain_core.scheduler import FusedLCMStep, LCMStepper, ladder
from rain_core.stream import RainStream, SeededNoise, StreamConfig, Tick, TickNoise
from rain_core.stream.accel import CudaGraphed, FastPath, to_channels_last

ROOT = Path(__file__).resolve().parents[1]
measure = bench_module("measure")  # bench/measure.py: trace_ops, latency_seconds


@pytest.fixture(scope="module")
def small_models() -> RainModels:
    """Two UNet levels and a TAESDV: the smallest RAIN with every part of a tick, all parameters random."""
    config = RainModelConfig.tiny(
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32, cond_proj_dim=32, taesdv_channels=8
    )
    return build_tiny_models(config, seed=7)


def _steady_stream(models, config: StreamConfig):
    stream = RainStream(models, config)
    generator = torch.Generator().manual_seed(3)
    stream.set_reference(torch.rand(config.height, config.width, 3, generator=generator))
    poses = torch.rand(config.window + config.frames_per_cohort, config.height, config.width, 3, generator=generator)
    stream.push(poses[: config.window])  # the window fills and the first cohort leaves: steady state
    return stream, poses[config.window :]


@pytest.mark.parametrize("levels, steps", [(3, 3), (2, 4)])
def test_tick_driven_alone_equals_the_stream_tick_on_a_full_window(small_models, levels, steps):
    config = StreamConfig(levels=levels, frames_per_cohort=2, steps=steps, height=16, width=16, seed=5)
    stream, new_poses = _steady_stream(small_models, config)
    state = stream.state_dict()
    meta, tensors = state["meta"], state["tensors"]
    memory = [tensors[f"decoder_memory.{i}"] for i in range(sum(k.startswith("decoder_memory.") for k in tensors))]

    expected_frames = stream.push(new_poses)
    expected_latents = stream.state_dict()["tensors"]["window_latents"]

    latents = tensors["window_latents"]
    latent_shape = (latents.shape[1], *latents.shape[3:])
    assembly = TickNoise(ladder(levels, steps).tolist(), LCMStepper(steps).step_length, 2, latent_shape)
    initial, step_noise = assembly.draw(SeededNoise(config.seed), [*meta["cohorts"], meta["next_cohort"]], 0, True)
    reference = stream._reference  # noqa: SLF001 - the exact reference the stream used, read only
    tick = Tick(small_models, config, reference["clip_tokens"], reference["cache"], FastPath())
    tick.load_state(tensors["window_latents"], tensors["window_pose_features"], memory)
    tick.set_inputs(new_poses, initial, step_noise)
    frames = tick.run()

    assert frames.shape == expected_frames.shape == (2, 16, 16, 3)
    assert torch.equal(frames, expected_frames)
    assert torch.equal(tick.latents, expected_latents)


@pytest.mark.parametrize("levels, steps", [(4, 4), (4, 8), (3, 6)])
def test_fused_lcm_step_equals_lcm_stepper(levels, steps):
    timesteps = ladder(levels, steps).repeat_interleave(2, dim=1)  # (calls, F): 2 frames per cohort
    stepper = LCMStepper(steps)
    fused = FusedLCMStep(stepper, timesteps)
    generator = torch.Generator().manual_seed(0)
    for call in range(timesteps.shape[0]):
        sample, v, noise = (torch.randn(1, 4, timesteps.shape[1], 3, 3, generator=generator) for _ in range(3))
        expected, _ = stepper.step(v, timesteps[call][None], sample, noise)
        torch.testing.assert_close(fused(call, sample, v, noise), expected, atol=1e-6, rtol=1e-5)


def test_fused_lcm_step_refuses_timesteps_off_the_schedule():
    with pytest.raises(ValueError, match="timesteps outside"):
        FusedLCMStep(LCMStepper(4), torch.tensor([[249, 1000]]))


def test_full_size_tick_runs_on_meta_so_it_reads_no_value_back():
    """A meta tensor has no values: any .item()/bool() in the tick would raise. Full SD-1.5 size, no memory used."""
    config = RainModelConfig.sd15()
    config.vae = {
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 2,
        "latent_channels": 4,
    }
    with torch.device("meta"):
        models = RainModels.build(config, with_image_encoder=False)
        clip = torch.randn(1, 1, 768)
        cache = models.reference_unet(torch.randn(1, 4, 64, 64), clip)
    tick = Tick(models, StreamConfig(height=512, width=512), clip, cache, noise="device")
    frames = tick.run()
    assert frames.device.type == "meta" and frames.shape == (4, 512, 512, 3)
    assert tick.latents.shape == (1, 4, 12, 64, 64) and tick.pose_features.shape == (1, 320, 12, 64, 64)


def test_tick_trace_has_no_host_syncs_but_lcm_stepper_does(small_models):
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, height=16, width=16)
    clip = torch.randn(1, 1, small_models.config.cross_attention_dim)
    with torch.no_grad():
        cache = small_models.reference_unet(torch.randn(1, small_models.config.latent_channels, 8, 8), clip)
    tick = Tick(small_models, config, clip, cache, FastPath(), noise="device")
    _, trace = measure.trace_ops(tick.run)
    assert trace.syncs == []
    assert len(trace.ops) > 100 and trace.bytes_written > 0

    unfused = Tick(small_models, config, clip, cache, FastPath(fused_step=False), noise="device")
    _, trace = measure.trace_ops(unfused.run)
    assert any("scheduler.py" in where for _, where in trace.syncs), trace.syncs


def test_channels_last_tick_gives_the_same_frames(small_models):
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, height=16, width=16)
    clip = torch.randn(1, 1, small_models.config.cross_attention_dim)
    with torch.no_grad():
        cache = small_models.reference_unet(torch.randn(1, small_models.config.latent_channels, 8, 8), clip)
    poses = torch.rand(2, 16, 16, 3)
    noise = (torch.randn(1, 12, 2, 8, 8), torch.randn(1, 1, 12, 4, 8, 8))
    outputs = []
    for channels_last in (False, True):
        parts = (small_models.denoising_unet, small_models.pose_guider, small_models.fast_decoder)
        if channels_last:
            for part in parts:
                to_channels_last(part)
        try:
            tick = Tick(small_models, config, clip, cache, FastPath(channels_last=channels_last))
            tick.set_inputs(poses, *noise)
            outputs.append(tick.run().clone())
        finally:
            for part in parts:
                part.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


def test_cuda_graphed_call_runs_eagerly_off_cuda():
    calls = []
    graphed = CudaGraphed(lambda: calls.append(1) or len(calls), "cpu")
    assert graphed() == 1 and graphed() == 2 and graphed.graph is None


def test_fast_path_for_cpu_changes_no_numerics_setting():
    fast = FastPath.for_device("cpu")
    assert fast.dtype is None and not fast.cuda_graph and not fast.tf32 and fast.attention == "auto"
    with pytest.raises(ValueError, match="attention"):
        FastPath(attention="xformers")


def test_latency_counts_the_window_look_ahead_and_refuses_a_tick_that_falls_behind():
    latency = measure.latency_seconds(levels=4, frames_per_cohort=4, input_fps=30.0, tick_seconds=0.05)
    assert latency["first"] == pytest.approx(15 / 30 + 0.05) and latency["last"] == pytest.approx(12 / 30 + 0.05)
    behind = measure.latency_seconds(levels=4, frames_per_cohort=4, input_fps=30.0, tick_seconds=0.2)  # > 4/30 s
    assert not behind["keeps_up"] and math.isinf(behind["mean"])


def test_gpu_stream_tiny_run_writes_every_section_to_json(tmp_path):
    gpu_stream = bench_module("gpu_stream")
    gpu_stream.main(
        ["--tiny", "--out", str(tmp_path), "--rows", "eager_fp32_math,fused_step", "--skip", "compile", "--ticks", "1"]
    )
    results = json.loads((tmp_path / "gpu_stream.json").read_text())
    for section in ("environment", "ceiling", "build", "copies", "cost", "engine", "check", "rows", "memory"):
        assert results["sections"][section]["status"] == "ok", (section, results["errors"])
    assert results["errors"] == []
    assert results["cost"]["host_syncs_per_tick"] == 0 and results["cost"]["flops_per_tick_kv_cached"] > 0
    assert results["engine"]["static_vs_stream_relative_error"]["frames"] < 1e-5
    assert 0 < results["check"]["relative_error"]["frames_tick1"] < 0.1  # bf16 vs fp32: close, not identical
    timed = {row["id"]: row for row in results["rows"] if "ms_per_tick" in row}
    assert set(timed) == {"eager_fp32_math", "fused_step"}
    for row in timed.values():
        assert row["ms_per_tick"] > 0 and row["fps"] > 0
        assert set(row["stage_ms"]) == {"guider", "unet", "step", "decode"}
        assert set(row["latency_30fps_s"]) == {"first", "last", "mean", "keeps_up"}
    assert results["memory"]["resident_gib"] > 0  # on the CPU: the process's resident memory, not 0
    assert (tmp_path / "gpu_stream_table.txt").read_text().startswith("RAIN tick on")
