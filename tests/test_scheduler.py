"""The ladder and the per-frame LCM step (rain_core/scheduler.py)."""

import pytest
import torch
from conftest import bench_module

from rain_core.scheduler import LCMStepper, ScheduleError, alphas_cumprod, check_steps, ladder, trailing_timesteps

measure = bench_module("measure")  # bench/measure.py: trace_ops


def closed_form_alphas_cumprod() -> torch.Tensor:
    """RAIN's ᾱ(t) computed by hand in float64 (rain-method.md §2): scaled_linear betas (linear in sqrt(β) from
    0.00085 to 0.012 over 1000 steps), ᾱ = Π(1 − β), then the zero-terminal-SNR rescale of Lin et al. (2024):
    sqrt(ᾱ) shifted so its last value is 0 and scaled so its first value is unchanged."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


def test_schedule_is_the_zero_terminal_snr_closed_form():
    alphas = alphas_cumprod()
    assert alphas.shape == (1000,) and alphas.dtype == torch.float32
    assert alphas[999].item() == 0.0  # exactly: v-prediction at t = 999 sees pure noise
    expected = closed_form_alphas_cumprod()
    # float32 products over up to 1000 steps: measured ≤ 5.1e-7 absolute, ≤ 2.6e-6 relative for t < 990
    torch.testing.assert_close(alphas.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(alphas[:990].double(), expected[:990], rtol=1e-5, atol=0)
    assert bool((alphas[1:] < alphas[:-1]).all())  # strictly noisier at every step


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
    stepper = LCMStepper(4)
    generator = torch.Generator().manual_seed(1)
    sample, v, noise = (torch.randn(1, 4, 4, 2, 2, generator=generator) for _ in range(3))
    timesteps = ladder(4, 4)
    checked, trace = measure.trace_ops(lambda: stepper.step(v, timesteps, sample, noise))
    assert trace.syncs  # the range check reads the timesteps
    unchecked, trace = measure.trace_ops(lambda: stepper.step(v, timesteps, sample, noise, check=False))
    assert trace.syncs == []
    assert torch.equal(unchecked[0], checked[0]) and torch.equal(unchecked[1], checked[1])
