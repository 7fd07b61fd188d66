"""The stream's fast path (StreamConfig.fast_path): steady-state ticks through `rain_core.accel.StaticTick`.

On CUDA "auto" turns it on (with a CUDA graph); here it is forced on with fast_path="static" (graph capture is a
no-op off CUDA), and every result is compared with the general eager tick ("off"): same frames to float32
rounding over long streams, through warm-up, flush, a reference change, a resume from a file and a failed push.
The meta-device test runs a whole stream on tensors without values: any read of a device value would raise.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_models, tiny_config

from rain_core.accel import trace_ops
from rain_core.models import RainModels
from rain_core.stream import RainStream, SeededNoise, StreamConfig, StreamConfigError

SIZE = 16
REFERENCE = torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(99))
# The fused LCM step rounds differently from LCMStepper; over 200 frames the frames differed by ≤ 1.6e-6.
ROUNDING = dict(rtol=0, atol=5e-6)


@pytest.fixture(scope="module")
def models() -> RainModels:
    """The tiny RAIN with a TAESDV (so the decoder memory is carried through the static tick too)."""
    return build_tiny_models(tiny_config(block_out_channels=(32, 32), taesdv_channels=8))


def make_stream(models, fast_path: str, noise=None, **overrides) -> RainStream:
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
def test_static_fast_path_equals_the_eager_tick_over_a_long_stream(models, levels, m, steps, decoder):
    poses = pose_frames(41, seed=1)  # a partial last cohort, padded by flush
    settings = dict(levels=levels, frames_per_cohort=m, steps=steps, decoder=decoder)
    eager = make_stream(models, "off", **settings)
    fast = make_stream(models, "static", **settings)
    expected, frames = render(eager, poses, chunk=5), render(fast, poses, chunk=5)
    assert frames.shape == expected.shape == (41, SIZE, SIZE, 3)
    torch.testing.assert_close(frames, expected, **ROUNDING)
    cohorts = -(-41 // m)
    assert fast.stats["static_ticks"] == cohorts - (levels - 1)  # every tick with a full window, none other
    assert eager.stats["static_ticks"] == 0 and fast.stats["ticks"] == eager.stats["ticks"]
    assert fast.stats["frames_out"] == 41 and fast.stats["fast_path"] == "static"


def test_fast_path_is_chunk_invariant_bit_for_bit(models):
    poses = pose_frames(17, seed=2)
    whole = render(make_stream(models, "static"), poses, chunk=17)
    assert torch.equal(render(make_stream(models, "static"), poses, chunk=1), whole)
    assert torch.equal(render(make_stream(models, "static"), poses, chunk=3), whole)


def test_reference_change_mid_stream_rebuilds_the_static_tick(models):
    poses = pose_frames(24, seed=3)
    eager, fast = make_stream(models, "off"), make_stream(models, "static")
    before = [eager.push(poses[:12]), fast.push(poses[:12])]
    for stream in (eager, fast):
        stream.set_reference(1 - REFERENCE)
    after = [eager.push(poses[12:]), fast.push(poses[12:])]
    torch.testing.assert_close(before[1], before[0], **ROUNDING)
    torch.testing.assert_close(after[1], after[0], **ROUNDING)
    unchanged = make_stream(models, "static")
    unchanged.push(poses[:12])
    assert not torch.allclose(unchanged.push(poses[12:]), after[1], atol=1e-3)  # the new reference is used


def test_fast_path_resumes_from_a_file_bit_exactly(models, tmp_path):
    poses = pose_frames(26, seed=5)
    straight = make_stream(models, "static")
    expected = torch.cat([straight.push(poses[:11]), straight.push(poses[11:]), straight.flush()])

    interrupted = make_stream(models, "static")
    first = interrupted.push(poses[:11])  # steady state, mid-cohort
    interrupted.save(tmp_path / "stream.safetensors")
    interrupted.push(poses[11:15])  # this object goes on; the file must not care
    resumed = RainStream(models, StreamConfig(height=SIZE, width=SIZE))
    resumed.load(tmp_path / "stream.safetensors")
    assert resumed.config.fast_path == "static"
    assert torch.equal(torch.cat([first, resumed.push(poses[11:]), resumed.flush()]), expected)
    eager = render(make_stream(models, "off"), poses, chunk=26)
    torch.testing.assert_close(expected, eager, **ROUNDING)


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


def test_a_failed_push_on_the_fast_path_rolls_back_and_the_retry_is_exact(models):
    poses = pose_frames(20, seed=6)
    straight = make_stream(models, "static")
    expected = render(straight, poses, chunk=10)
    stream = make_stream(models, "static", noise=FailOnce(4, fail_at=7))
    first = stream.push(poses[:10])  # cohorts 0-4: the static tick holds the window now
    before = stream.state_dict()
    with pytest.raises(RuntimeError, match="device lost"):
        stream.push(poses[10:])  # cohorts 5 and 6 tick through the static tick, cohort 7 fails
    after = stream.state_dict()
    assert before["meta"] == after["meta"]
    assert all(torch.equal(before["tensors"][name], after["tensors"][name]) for name in before["tensors"])
    assert torch.equal(torch.cat([first, stream.push(poses[10:]), stream.flush()]), expected)


def test_auto_is_off_on_cpu_and_bad_values_are_refused(models):
    stream = make_stream(models, "auto")
    stream.push(pose_frames(10))
    assert stream.stats["fast_path"] == "off" and stream.stats["static_ticks"] == 0
    assert make_stream(models, "static", levels=1, steps=1).stats["fast_path"] == "off"  # nothing kept between ticks
    with pytest.raises(StreamConfigError, match="fast_path"):
        make_stream(models, "cuda")
    with pytest.raises(StreamConfigError, match="output_device"):
        make_stream(models, "off", output_device="gpu")


def test_whole_stream_on_meta_reads_no_device_value_and_steady_ticks_are_static():
    """Meta tensors have shapes but no values: .item(), bool(), nonzero() on one raise. Warm-up, steady state
    (static tick) and flush all run, so no tick reads a device value (= no host-device sync on CUDA) and every
    steady-state push records the same aten ops on the same shapes (what graph capture needs)."""
    with torch.device("meta"):
        models = RainModels.build(tiny_config(block_out_channels=(32, 32), taesdv_channels=8))
    config = StreamConfig(height=SIZE, width=SIZE, levels=3, frames_per_cohort=2, steps=3, fast_path="graph")
    stream = RainStream(models, dataclass_replace(config, output_device="device"))
    with torch.device("meta"):
        clip_tokens = torch.zeros(1, 1, models.config.cross_attention_dim)
        latent = torch.zeros(1, *stream._latent_shape)  # noqa: SLF001 - the image encoder cannot run on meta
    stream._install_reference(clip_tokens, latent)  # noqa: SLF001
    assert stream.push(pose_frames(4)).shape[0] == 0  # warm-up, eager
    traces = []
    for push in range(3):
        frames, trace = trace_ops(lambda push=push: stream.push(pose_frames(2, seed=push)))
        assert frames.device.type == "meta" and frames.shape == (2, SIZE, SIZE, 3)
        traces.append(trace)
    assert stream.stats["static_ticks"] == 3 and stream.stats["fast_path"] == "graph"
    assert traces[1].ops == traces[2].ops  # static shapes, tick after tick
    # The only values read are the CPU pose frames' (input checks and "is there a pose at all")
    assert {where.split(" ")[-1] for _, where in traces[2].syncs} <= {"(_as_frames)", "(_push_frames)"}
    assert stream.flush().shape == (4, SIZE, SIZE, 3)


def dataclass_replace(config: StreamConfig, **changes) -> StreamConfig:
    return StreamConfig.from_dict({**config.to_dict(), **changes})
