"""The RAIN stream engine (rain_core/stream/) on real tiny networks.

The networks are the tiny RAIN with two UNet levels and every parameter random; frames are 16×16 px (an 8×8
latent with the tiny space_to_depth codec), so that a tick costs tens of ms.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_models, tiny_config

from rain_core.scheduler import LCMStepper, ladder
from rain_core.stream import (
    PoseInputError,
    RainStream,
    SeededNoise,
    SharedNoise,
    StreamConfig,
    StreamConfigError,
    StreamError,
    StreamStateError,
)

SIZE = 16


def make_config(**overrides) -> StreamConfig:
    settings = dict(height=SIZE, width=SIZE, levels=4, frames_per_cohort=4, steps=4, seed=0, decoder="vae")
    settings.update(overrides)
    return StreamConfig(**settings)


def pose_frames(count: int, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.rand(count, size, size, 3, generator=torch.Generator().manual_seed(seed))


REFERENCE = torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(99))


def new_stream(models, noise=None, **overrides) -> RainStream:
    if isinstance(noise, str):  # StreamConfig.noise
        noise, overrides = None, {**overrides, "noise": noise}
    stream = RainStream(models, make_config(**overrides), noise=noise)
    stream.set_reference(REFERENCE)
    return stream


def render(stream: RainStream, poses: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Push `poses` `chunk` frames at a time (all at once when None), then flush."""
    chunk = chunk or poses.shape[0]
    outputs = [stream.push(poses[i : i + chunk]) for i in range(0, poses.shape[0], chunk)]
    return torch.cat(outputs + [stream.flush()])


def assert_same_state(before: dict, after: dict) -> None:
    assert before["meta"] == after["meta"]
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, tensor in before["tensors"].items():
        assert torch.equal(tensor, after["tensors"][name]), name


class Recorder:
    """Observes what a network is called with (a forward pre-hook; the network still runs)."""

    def __init__(self, module, argument: int):
        self.values = []
        self.handle = module.register_forward_pre_hook(lambda _, args: self.values.append(args[argument].clone()))

    def close(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def models():
    return build_tiny_models(tiny_config(block_out_channels=(32, 32)))


@pytest.fixture(scope="module")
def motion_free_models():
    return build_tiny_models(tiny_config(block_out_channels=(32, 32), motion=False))


# ---------------------------------------------------------------------------------------------- equivalences


@pytest.fixture(scope="module")
def offline_render(models):
    poses = pose_frames(18)  # 4 full cohorts + a partial one that flush pads
    return poses, render(new_stream(models), poses)


@pytest.mark.parametrize("chunk", [1, 3, 4, 17])
def test_chunked_push_equals_offline_render(models, offline_render, chunk):
    poses, offline = offline_render
    assert offline.shape == (18, SIZE, SIZE, 3)
    assert torch.equal(render(new_stream(models), poses, chunk), offline)


def test_same_seed_gives_the_same_frames_and_another_seed_other_frames(models, offline_render):
    poses, offline = offline_render
    assert torch.equal(render(new_stream(models, seed=0), poses), offline)
    assert not torch.allclose(render(new_stream(models, seed=1), poses), offline)


def test_seeded_noise_depends_only_on_seed_cohort_and_step():
    noise = SeededNoise(5)
    assert torch.equal(noise.step(3, 1, (1, 2, 4, 3, 3)), SeededNoise(5).step(3, 1, (1, 2, 4, 3, 3)))
    assert not torch.equal(noise.step(3, 1, (1, 2, 4, 3, 3)), noise.step(3, 2, (1, 2, 4, 3, 3)))
    assert not torch.equal(noise.initial(3, (1, 2, 4, 3, 3)), noise.initial(4, (1, 2, 4, 3, 3)))


def test_shared_noise_makes_a_still_pose_a_still_picture_where_fresh_noise_changes_every_frame(motion_free_models):
    still = pose_frames(1).repeat(12, 1, 1, 1)  # one pose held for 12 frames
    shared = render(new_stream(motion_free_models, noise="shared", levels=2, frames_per_cohort=2, steps=2), still)
    fresh = render(new_stream(motion_free_models, levels=2, frames_per_cohort=2, steps=2), still)
    assert shared.shape == fresh.shape == (12, SIZE, SIZE, 3)
    assert torch.allclose(shared, shared[:1].expand_as(shared), atol=1e-5)  # every frame the same picture
    assert (fresh[1:] - fresh[:-1]).abs().mean() > 1e-3  # each frame's own noise changes it
    by_source = render(new_stream(motion_free_models, noise=SharedNoise(0), levels=2, frames_per_cohort=2, steps=2),
                       still)
    assert torch.equal(by_source, shared)  # StreamConfig(noise="shared") is SharedNoise(seed)


def test_a_shared_noise_stream_resumes_bit_exact_from_its_saved_state(models, tmp_path):
    poses = pose_frames(20)
    whole = render(new_stream(models, noise="shared"), poses)
    first = new_stream(models, noise="shared")
    head = first.push(poses[:9])
    first.save(tmp_path / "shared.safetensors")
    second = RainStream(models, make_config())  # fresh noise until the file says otherwise
    second.load(tmp_path / "shared.safetensors")
    assert second.config.noise == "shared"
    assert torch.equal(torch.cat([head, second.push(poses[9:]), second.flush()]), whole)


class ReplayNoise:
    """Noise laid out like the authors' offline pipeline: all initial latents up front, and one tensor per UNet
    call covering that call's whole window of cohorts."""

    def __init__(self, initial, per_call, levels, m, calls_per_tick):
        self.initial_latents, self.per_call = initial, per_call
        self.levels, self.m, self.calls = levels, m, calls_per_tick

    def initial(self, cohort, shape):
        return self.initial_latents[:, :, cohort * self.m : (cohort + 1) * self.m]

    def step(self, cohort, step, shape):
        tick, call = cohort + step // self.calls, step % self.calls
        first_in_window = max(0, tick - self.levels + 1)
        offset = (cohort - first_in_window) * self.m
        return self.per_call[tick * self.calls + call][:, :, offset : offset + self.m]


def offline_window_loop(models, poses, reference, levels, m, steps, initial, per_call):
    """The authors' offline algorithm written independently: the whole clip's latents in one tensor, a window
    [l, r) sliding over it with the ladder sliced for warm-up and flush, all frames decoded at the end."""
    cohorts = poses.shape[0] // m
    calls = steps // levels
    rungs = ladder(levels, steps)
    stepper = LCMStepper(steps)
    latents = initial.clone()
    with torch.no_grad():
        clip_tokens = models.image_encoder.encode(reference[None])
        cache = models.reference_unet(models.codec.encode(reference[None].permute(0, 3, 1, 2)), clip_tokens)
        features = models.pose_guider(poses.permute(3, 0, 1, 2)[None])
        guidance = models.guidance_embedding(3.5)
        for tick in range(cohorts + levels - 1):
            left, right = max(0, tick - levels + 1), min(cohorts, tick + 1)
            lowest = levels - (tick - left + 1)  # ladder level of the oldest cohort in the window
            for call in range(calls):
                timesteps = rungs[call, lowest : lowest + right - left].repeat_interleave(m)[None]
                span = slice(left * m, right * m)
                v = models.denoising_unet(
                    latents[:, :, span], timesteps, clip_tokens, features[:, :, span], guidance, cache
                )
                latents[:, :, span] = stepper.step(v, timesteps, latents[:, :, span], per_call[tick * calls + call])[0]
        return models.codec.decode(latents[0].transpose(0, 1)).permute(0, 2, 3, 1)


@pytest.mark.parametrize("levels, m, steps", [(4, 4, 4), (3, 2, 6)])
def test_stream_reproduces_the_offline_window_loop_given_its_noise(models, levels, m, steps):
    frames = m * (levels + 2)
    generator = torch.Generator().manual_seed(11)
    poses = pose_frames(frames, seed=3)
    latent_shape = (models.config.latent_channels, SIZE // 2, SIZE // 2)
    initial = torch.randn(1, latent_shape[0], frames, *latent_shape[1:], generator=generator)
    calls = steps // levels
    per_call = []
    for tick in range(frames // m + levels - 1):
        width = min(frames // m, tick + 1) - max(0, tick - levels + 1)
        per_call += [
            torch.randn(1, latent_shape[0], width * m, *latent_shape[1:], generator=generator) for _ in range(calls)
        ]
    expected = offline_window_loop(models, poses, REFERENCE, levels, m, steps, initial, per_call)
    noise = ReplayNoise(initial, per_call, levels, m, calls)
    streamed = render(new_stream(models, noise, levels=levels, frames_per_cohort=m, steps=steps), poses, chunk=3)
    torch.testing.assert_close(streamed, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- warm-up and flush


def test_warm_up_fills_noisiest_levels_first_and_flush_drains_them(models):
    stream = new_stream(models)
    recorder = Recorder(models.denoising_unet, 1)
    try:
        counts = [stream.push(pose_frames(4, seed=i)).shape[0] for i in range(5)]
        pending = stream.push(pose_frames(2, seed=9)).shape[0]
        flushed = stream.flush().shape[0]
    finally:
        recorder.close()
    assert counts == [0, 0, 0, 4, 4] and pending == 0
    assert flushed == 3 * 4 + 2  # three cohorts in flight + the padded partial one (only its real frames)
    per_tick = [sorted(set(t[0].tolist())) for t in recorder.values]
    assert per_tick == [
        [999],
        [749, 999],
        [499, 749, 999],
        [249, 499, 749, 999],
        [249, 499, 749, 999],
        [249, 499, 749, 999],  # the padded partial cohort enters at flush
        [249, 499, 749],
        [249, 499],
        [249],
    ]
    assert stream.stats["frames_in"] == 22 and stream.stats["frames_out"] == 22 and stream.stats["ticks"] == 9


def test_eight_steps_make_two_unet_calls_per_tick_with_offset_timesteps(models):
    stream = new_stream(models, steps=8)
    recorder = Recorder(models.denoising_unet, 1)
    try:
        outputs = [stream.push(pose_frames(4, seed=i)).shape[0] for i in range(4)]
    finally:
        recorder.close()
    assert outputs == [0, 0, 0, 4]
    assert [t[0, ::4].tolist() for t in recorder.values[-2:]] == [[249, 499, 749, 999], [124, 374, 624, 874]]
    assert len(recorder.values) == 8 and stream.stats["unet_calls_per_tick"] == 2


def test_first_frame_leaves_after_a_window_of_poses(models):
    stream = new_stream(models)
    arrivals = [stream.push(pose_frames(1, seed=i)).shape[0] for i in range(20)]
    assert arrivals.index(4) == 15  # frame 0 leaves when pose 15 (= window - 1 later) has arrived
    assert stream.stats["latency_frames"] == 15


def test_pose_features_are_computed_once_per_frame(models):
    stream = new_stream(models)
    recorder = Recorder(models.pose_guider, 0)
    try:
        stream.push(pose_frames(24))
    finally:
        recorder.close()
    assert [tuple(x.shape) for x in recorder.values] == [(1, 3, 4, SIZE, SIZE)] * 6  # only the entering cohort


# ---------------------------------------------------------------------------------------------- state


def test_resume_through_a_file_is_bit_exact(models, tmp_path):
    poses = pose_frames(22, seed=4)
    straight = new_stream(models)
    first = straight.push(poses[:9])
    expected = torch.cat([first, straight.push(poses[9:]), straight.flush()])

    interrupted = new_stream(models)
    interrupted.push(poses[:9])
    interrupted.save(tmp_path / "stream.safetensors")
    resumed = RainStream(models, make_config(seed=123, levels=2))  # config and reference come from the file
    resumed.load(tmp_path / "stream.safetensors")
    assert resumed.config == make_config()
    assert_same_state(resumed.state_dict(), interrupted.state_dict())
    assert torch.equal(torch.cat([first, resumed.push(poses[9:]), resumed.flush()]), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["stream.safetensors"]  # no temporary left behind


def test_taesdv_memory_is_carried_from_tick_to_tick_and_saved(tmp_path):
    models = build_tiny_models(tiny_config(block_out_channels=(32, 32), taesdv_channels=8))
    decoder = models.fast_decoder
    clean = []
    original_decode = decoder.decode
    # The tick sizes its memory buffers with one decode without memory; the stream's own decodes carry memory.
    decoder.decode = lambda latents, memory: (
        memory is not None and clean.append(latents.clone()),
        original_decode(latents, memory),
    )[1]
    poses = pose_frames(20, seed=5)
    stream = new_stream(models, decoder="auto")
    assert stream.stats["decoder"] == "taesdv"
    first = stream.push(poses[:10])
    stream.save(tmp_path / "s.safetensors")
    rest = torch.cat([stream.push(poses[10:]), stream.flush()])
    # decoding the whole clip in one TAESDV call = decoding it tick by tick with the memory carried
    whole, _ = original_decode(torch.cat(clean), None)
    torch.testing.assert_close(torch.cat([first, rest]), whole.permute(0, 2, 3, 1), rtol=0, atol=1e-6)
    resumed = RainStream(models, make_config())
    resumed.load(tmp_path / "s.safetensors")
    assert torch.equal(torch.cat([resumed.push(poses[10:]), resumed.flush()]), rest)


def test_reset_starts_the_same_stream_again(models, offline_render):
    poses, offline = offline_render
    stream = new_stream(models)
    stream.push(pose_frames(7, seed=8))
    stream.reset()
    assert stream.stats["frames_in"] == 0 and stream.has_reference
    assert torch.equal(render(stream, poses), offline)
    stream.reset(keep_reference=False)
    with pytest.raises(StreamStateError, match="set_reference"):
        stream.push(poses[:1])


def test_reference_can_change_mid_stream(models):
    poses = pose_frames(24, seed=6)
    same = new_stream(models)
    changed = new_stream(models)
    assert torch.equal(same.push(poses[:12]), changed.push(poses[:12]))
    changed.set_reference(1 - REFERENCE)
    assert not torch.allclose(same.push(poses[12:]), changed.push(poses[12:]))


# ---------------------------------------------------------------------------------------------- missing poses


def test_missing_pose_holds_the_last_pose_or_stays_empty(models):
    poses = pose_frames(4, seed=7)
    for policy, expected_third in (("hold", poses[1]), ("empty", torch.zeros_like(poses[1]))):
        stream = new_stream(models, missing_pose=policy)
        recorder = Recorder(models.pose_guider, 0)
        try:
            stream.push([poses[0], poses[1], None, torch.zeros_like(poses[3])])
        finally:
            recorder.close()
        given = recorder.values[0][0].permute(1, 2, 3, 0)  # (m, H, W, 3)
        assert torch.equal(given[0], poses[0]) and torch.equal(given[1], poses[1])
        assert torch.equal(given[2], expected_third) and torch.equal(given[3], expected_third)


def test_a_chunk_with_no_pose_at_all_holds_the_last_one(models):
    poses = pose_frames(2, seed=7)
    stream = new_stream(models, frames_per_cohort=4)
    recorder = Recorder(models.pose_guider, 0)
    try:
        stream.push(poses)
        stream.push([None, None])
    finally:
        recorder.close()
    given = recorder.values[0][0].permute(1, 2, 3, 0)
    assert torch.equal(given[2], poses[1]) and torch.equal(given[3], poses[1])


# ---------------------------------------------------------------------------------------------- baseline


def test_stream_batch_baseline_one_frame_per_level_without_motion_modules(motion_free_models):
    poses = pose_frames(9, seed=2)
    stream = new_stream(motion_free_models, frames_per_cohort=1)
    arrivals = [stream.push(poses[i : i + 1]).shape[0] for i in range(9)]
    assert arrivals == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert stream.flush().shape[0] == 3
    offline = render(new_stream(motion_free_models, frames_per_cohort=1), poses)
    assert torch.equal(render(new_stream(motion_free_models, frames_per_cohort=1), poses, chunk=2), offline)


@pytest.mark.parametrize("motion", [False, True])
def test_only_motion_modules_let_frames_see_each_other(models, motion_free_models, motion):
    """Changing one pose changes only that frame without motion modules, its window neighbours with them."""
    chosen, m = (models, 2) if motion else (motion_free_models, 1)
    poses = pose_frames(8, seed=12)
    edited = poses.clone()
    edited[5] = 1 - edited[5]
    before = render(new_stream(chosen, frames_per_cohort=m, levels=2, steps=2), poses)
    after = render(new_stream(chosen, frames_per_cohort=m, levels=2, steps=2), edited)
    changed = [i for i in range(8) if not torch.equal(before[i], after[i])]
    assert changed == ([2, 3, 4, 5, 6, 7] if motion else [5])


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def busy_stream(models):
    """A stream mid-flight: two cohorts in the window and two frames waiting."""
    stream = new_stream(models)
    stream.push(pose_frames(10, seed=1))
    return stream


BAD_POSES = {
    "wrong channel count": (lambda: torch.rand(2, SIZE, SIZE, 4), "alpha"),
    "channel-first": (lambda: torch.rand(2, 3, SIZE, SIZE), "channel-first"),
    "NaN": (lambda: pose_frames(2).index_put_((torch.tensor([1]),), torch.tensor(float("nan"))), "NaN"),
    "Inf": (lambda: pose_frames(2).index_put_((torch.tensor([0]),), torch.tensor(float("inf"))), "Inf"),
    "empty push": (lambda: torch.zeros(0, SIZE, SIZE, 3), "empty"),
    "0-255 values": (lambda: pose_frames(2) * 255, "255"),
    "not an image": (lambda: "poses.mp4", "tensor or array"),
    "wrong rank": (lambda: torch.rand(SIZE, SIZE), r"\(N, H, W, 3\)"),
    "frames of two sizes": (lambda: [torch.rand(SIZE, SIZE, 3), torch.rand(8, 8, 3)], "one size"),
}


@pytest.mark.parametrize("case", sorted(BAD_POSES))
def test_bad_poses_are_refused_and_the_stream_is_unchanged(busy_stream, case):
    make, message = BAD_POSES[case]
    before = busy_stream.state_dict()
    with pytest.raises(PoseInputError, match=message):
        busy_stream.push(make())
    assert_same_state(before, busy_stream.state_dict())


def test_other_size_is_refused_when_strict(models):
    stream = new_stream(models, resize="strict")
    stream.push(pose_frames(3))
    before = stream.state_dict()
    with pytest.raises(PoseInputError, match=r"16×16.*32×16"):
        stream.push(torch.rand(1, 32, 16, 3))
    assert_same_state(before, stream.state_dict())


def test_other_size_is_letterboxed_without_distortion(models):
    stream = new_stream(models)
    recorder = Recorder(models.pose_guider, 0)
    wide = torch.zeros(4, 8, 16, 3)
    wide[:, :, :8] = 1.0  # left half white: a square of 8×8 px
    try:
        stream.push(wide)
    finally:
        recorder.close()
    given = recorder.values[0][0, :, 0].permute(1, 2, 0)  # first frame, (H, W, 3)
    assert given[:4].abs().max() == 0 and given[12:].abs().max() == 0  # black bars top and bottom
    assert torch.equal(given[4:12, :8], torch.ones(8, 8, 3)) and given[4:12, 8:].abs().max() == 0


def test_push_after_flush_is_refused(models):
    stream = new_stream(models)
    stream.push(pose_frames(5))
    stream.flush()
    before = stream.state_dict()
    with pytest.raises(StreamStateError, match="reset"):
        stream.push(pose_frames(1))
    with pytest.raises(StreamStateError, match="reset"):
        stream.flush()
    assert_same_state(before, stream.state_dict())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(steps=6), "multiple of levels"),
        (dict(levels=8, frames_per_cohort=8, steps=8), "position encoding"),
        (dict(height=18), "multiples of 4"),
        (dict(decoder="taesdv"), "no TAESDV"),
        (dict(missing_pose="skip"), "missing_pose"),
        (dict(frames_per_cohort=0), "frames_per_cohort"),
    ],
)
def test_impossible_configs_are_refused(models, overrides, message):
    with pytest.raises(StreamConfigError, match=message):
        RainStream(models, make_config(**overrides))


def test_errors_are_value_errors():
    for error in (StreamError, StreamConfigError, PoseInputError, StreamStateError):
        assert issubclass(error, ValueError)


class FailingNoise(SeededNoise):
    """Real noise until cohort `fail_at`, then an error: a failure in the middle of a multi-tick push."""

    def __init__(self, fail_at):
        super().__init__(0)
        self.fail_at = fail_at

    def initial(self, cohort, shape):
        if cohort >= self.fail_at:
            raise RuntimeError("device lost")
        return super().initial(cohort, shape)


def test_a_failure_inside_a_tick_rolls_the_whole_push_back(models):
    stream = new_stream(models, noise=FailingNoise(fail_at=2))
    stream.push(pose_frames(6))
    before = stream.state_dict()
    with pytest.raises(RuntimeError, match="device lost"):
        stream.push(pose_frames(8))  # cohort 1's tick runs, then cohort 2's fails
    assert_same_state(before, stream.state_dict())


def test_damaged_state_files_are_refused(models, motion_free_models, tmp_path):
    stream = new_stream(models)
    stream.push(pose_frames(5))
    before = stream.state_dict()
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StreamStateError, match="not a readable"):
        stream.load(tmp_path / "bad.safetensors")
    with pytest.raises(StreamStateError, match="not found"):
        stream.load(tmp_path / "missing.safetensors")
    other = RainStream(motion_free_models, make_config())
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(StreamStateError, match="another shape"):
        stream.load(tmp_path / "other.safetensors")
    assert_same_state(before, stream.state_dict())


# ---------------------------------------------------------------------------------------------- endless


def test_memory_stays_flat_over_a_long_stream(models):
    """Hundreds of frames: after warm-up the state has the same tensors of the same sizes at every tick, and the
    process does not grow beyond noise."""
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    stream = new_stream(models, levels=2, frames_per_cohort=2, steps=2)
    poses = pose_frames(8, seed=13)
    shapes, rss = set(), {}
    for push in range(38):  # 304 frames, 152 ticks
        stream.push(poses)
        if push >= 2:
            state = stream.state_dict()
            shapes.add(tuple((name, tuple(t.shape)) for name, t in sorted(state["tensors"].items())))
            assert len(state["meta"]["cohorts"]) <= 2
        if push in (10, 37):
            rss[push] = process.memory_info().rss
    assert len(shapes) == 1
    assert stream.stats["frames_out"] == 304 - 2 and stream.stats["frames_in_flight"] == 2  # one cohort stays
    assert rss[37] - rss[10] < 40 * 2**20, f"RSS grew by {(rss[37] - rss[10]) / 2**20:.1f} MiB over 216 frames"
