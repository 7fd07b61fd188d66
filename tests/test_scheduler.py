"""The ladder and the per-frame LCM step (rain_core/scheduler.py)."""

import pytest
import torch

from rain_core.scheduler import LCMStepper, ScheduleError, alphas_cumprod, check_steps, ladder, trailing_timesteps

# ᾱ(t) of RAIN's schedule at a few t, as produced by the authors' LCMScheduler (float32, hex exact).
AUTHORS_ALPHAS_CUMPROD = {
    0: float.fromhex("0x1.ff90960000000p-1"),
    249: float.fromhex("0x1.4ef1d80000000p-1"),
    499: float.fromhex("0x1.f059ea0000000p-3"),
    749: float.fromhex("0x1.0fbd940000000p-5"),
    874: float.fromhex("0x1.57fffe0000000p-8"),
    998: float.fromhex("0x1.a69dee0000000p-23"),
}


def test_schedule_is_zero_terminal_snr_and_matches_the_authors_values():
    alphas = alphas_cumprod()
    assert alphas.shape == (1000,) and alphas.dtype == torch.float32
    assert alphas[999].item() == 0.0
    for t, value in AUTHORS_ALPHAS_CUMPROD.items():
        assert alphas[t].item() == value


def test_trailing_timesteps_are_the_authors_not_diffusers_lcm():
    assert trailing_timesteps(4).tolist() == [999, 749, 499, 249]
    assert trailing_timesteps(8).tolist() == [999, 874, 749, 624, 499, 374, 249, 124]
    assert trailing_timesteps(3).tolist() == [999, 666, 332]


def test_ladder_four_levels_four_steps_is_249_499_749_999_oldest_first():
    assert ladder(4, 4).tolist() == [[249, 499, 749, 999]]


def test_ladder_eight_steps_makes_two_calls_per_tick_offset_by_125():
    assert ladder(4, 8).tolist() == [[249, 499, 749, 999], [124, 374, 624, 874]]


def test_ladder_other_levels():
    assert ladder(3, 3).tolist() == [[332, 666, 999]]
    assert ladder(1, 4).tolist() == [[999], [749], [499], [249]]
    assert ladder(4, 12).tolist() == [[249, 499, 749, 999], [166, 416, 666, 916], [83, 333, 583, 833]]


@pytest.mark.parametrize("levels, steps", [(4, 6), (3, 4), (0, 4), (4, 0)])
def test_steps_that_do_not_fill_the_levels_are_rejected(levels, steps):
    with pytest.raises(ScheduleError, match="levels|steps"):
        check_steps(levels, steps)
    assert issubclass(ScheduleError, ValueError)


def test_first_step_from_pure_noise_estimates_minus_v():
    stepper = LCMStepper(4)
    generator = torch.Generator().manual_seed(1)
    sample, v, noise = (torch.randn(1, 4, 2, 3, 3, generator=generator) for _ in range(3))
    _, denoised = stepper.step(v, torch.full((1, 2), 999), sample, noise)
    c_skip, c_out = stepper.boundary_scalings(torch.tensor(999))
    torch.testing.assert_close(denoised, c_out * -v + c_skip * sample, rtol=0, atol=0)


def test_frames_leaving_the_ladder_come_out_denoised_without_noise():
    stepper = LCMStepper(4)
    generator = torch.Generator().manual_seed(2)
    sample, v = torch.randn(1, 4, 4, 2, 2, generator=generator), torch.randn(1, 4, 4, 2, 2, generator=generator)
    timesteps = torch.tensor([[249, 249, 499, 499]])
    with_noise, denoised = stepper.step(v, timesteps, sample, torch.randn(sample.shape, generator=generator))
    torch.testing.assert_close(with_noise[:, :, :2], denoised[:, :, :2], rtol=0, atol=0)
    assert not torch.allclose(with_noise[:, :, 2:], denoised[:, :, 2:])
    finished_only, _ = stepper.step(v[:, :, :2], timesteps[:, :2], sample[:, :, :2], None)
    torch.testing.assert_close(finished_only, denoised[:, :, :2], rtol=0, atol=0)
    with pytest.raises(ScheduleError, match="noise"):
        stepper.step(v, timesteps, sample, None)


def test_step_matches_the_formula_frame_by_frame():
    """Vectorised over frames = the rain-method.md formula evaluated in float64 for each frame alone."""
    stepper = LCMStepper(4)
    generator = torch.Generator().manual_seed(3)
    sample, v, noise = (torch.randn(1, 4, 4, 2, 2, generator=generator) for _ in range(3))
    timesteps = torch.tensor([[249, 499, 749, 999]])
    result, _ = stepper.step(v, timesteps, sample, noise)
    alphas = alphas_cumprod().double()
    for frame, t in enumerate(timesteps[0].tolist()):
        a = alphas[t]
        a_next = alphas[t - 250] if t >= 250 else torch.tensor(1.0, dtype=torch.float64)
        z, vel, eps = (x[:, :, frame].double() for x in (sample, v, noise))
        original = a.sqrt() * z - (1 - a).sqrt() * vel
        scaled = 10.0 * t
        denoised = 0.25 / (scaled**2 + 0.25) * z + scaled / (scaled**2 + 0.25) ** 0.5 * original
        expected = a_next.sqrt() * denoised + (1 - a_next).sqrt() * eps
        torch.testing.assert_close(result[:, :, frame].double(), expected, rtol=1e-5, atol=1e-5)


def test_step_rejects_timesteps_of_the_wrong_shape_or_range():
    stepper = LCMStepper(4)
    sample = torch.zeros(1, 4, 2, 2, 2)
    with pytest.raises(ScheduleError, match="one per frame"):
        stepper.step(sample, torch.tensor([[999]]), sample, sample)
    with pytest.raises(ScheduleError, match="0…999"):
        stepper.step(sample, torch.tensor([[999, 1000]]), sample, sample)


def test_unchecked_step_reads_no_value_back_and_computes_the_same():
    """check=False is what a GPU tick uses: no timestep or noise check, so nothing is read back to the host."""
    from rain_core.accel import trace_ops

    stepper = LCMStepper(4)
    generator = torch.Generator().manual_seed(1)
    sample, v, noise = (torch.randn(1, 4, 4, 2, 2, generator=generator) for _ in range(3))
    timesteps = ladder(4, 4)
    checked, trace = trace_ops(lambda: stepper.step(v, timesteps, sample, noise))
    assert trace.syncs  # the range check reads the timesteps
    unchecked, trace = trace_ops(lambda: stepper.step(v, timesteps, sample, noise, check=False))
    assert trace.syncs == []
    assert torch.equal(unchecked[0], checked[0]) and torch.equal(unchecked[1], checked[1])
