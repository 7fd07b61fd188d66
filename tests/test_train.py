"""Training stages on a micro RAIN (real networks, real files, a few steps each)."""

import json
from pathlib import Path

import pytest
import torch

from rain_core.loading import load_rain
from rain_core.models import RainModelConfig
from rain_core.scheduler import ladder
from rain_core.train import objectives
from rain_core.train.cli import build_parser
from rain_core.train.curves import read_loss_csv
from rain_core.train.data import VideoClips, collate
from rain_core.train.trainer import DenoiseForward, TrainConfig, Trainer, enable_gradient_checkpointing

SIZE = 16  # pixels; space_to_depth ×2 -> an 8×8 latent


@pytest.fixture(autouse=True)
def restore_threads():
    """The trainers here run single-threaded (fast on a busy CPU); later tests get the thread count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro_config(tmp_path_factory):
    config = RainModelConfig.tiny(block_out_channels=(16, 16), cross_attention_dim=16, cond_proj_dim=16,
                                  clip_hidden_size=16, clip_layers=1, clip_image_size=16)
    path = tmp_path_factory.mktemp("micro") / "rain_config.json"
    path.write_text(json.dumps(config.to_dict()))
    return str(path)


def _config(micro_config, output, **overrides) -> TrainConfig:
    values = dict(stage=1, output=str(output), model=micro_config, height=SIZE, width=SIZE, batch_size=2, levels=2,
                  frames_per_cohort=1, steps=3, lr=1e-3, warmup_steps=1, checkpoint_every=0, log_every=1, seed=0, threads=1)
    values.update(overrides)
    return TrainConfig(**values)


def test_stage2_ladder_at_t0_249_is_the_inference_ladder():
    timesteps = objectives.cohort_timesteps(torch.tensor([249]), levels=4, frames_per_cohort=4)
    assert timesteps[0].tolist() == ladder(4, 4)[0].repeat_interleave(4).tolist()
    assert ladder(4, 4)[0].tolist() == [249, 499, 749, 999]


def test_stepped_timesteps_keep_cohorts_one_level_apart_over_all_offsets():
    generator = torch.Generator().manual_seed(0)
    timesteps = objectives.sample_stepped_timesteps(4000, levels=4, frames_per_cohort=4, generator=generator)
    t0 = timesteps[:, 0]
    assert t0.min() == 0 and t0.max() == 249 and len(t0.unique()) == 250
    assert torch.equal(timesteps, objectives.cohort_timesteps(t0, 4, 4))
    distilled = objectives.sample_stepped_timesteps(500, 4, 4, generator, grid=25)
    assert set(distilled[:, 0].tolist()) == set(range(24, 250, 25))


def test_noise_and_velocity_match_the_schedule_per_frame():
    latents, noise = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    timesteps = torch.tensor([[0, 250, 500, 999], [10, 20, 30, 40]])
    alpha = objectives.alphas_cumprod()[timesteps][:, None, :, None, None]
    noisy = objectives.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(noisy, alpha.sqrt() * latents + (1 - alpha).sqrt() * noise)
    v = objectives.velocity(latents, noise, timesteps)
    # the v target inverts back to the clean latents, which is what the stream's LCM step relies on
    torch.testing.assert_close(objectives.x0_from_v(noisy, v, timesteps), latents, atol=1e-5, rtol=1e-5)


def test_min_snr_weights_clamp_snr_plus_one_so_the_pure_noise_rung_keeps_weight_one():
    timesteps = torch.tensor([[999, 611, 37]])
    alpha = objectives.alphas_cumprod()[timesteps].double()
    assert alpha[0, 0] == 0  # zero terminal SNR: t = 999 is pure noise, SNR = 0
    snr = alpha / (1 - alpha)
    expected = torch.clamp(snr + 1, max=5.0) / (snr + 1)  # v-prediction: Min-SNR-γ on SNR + 1
    weights = objectives.snr_weights(timesteps, gamma=5.0)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=0)
    assert weights[0, 0] == 1.0 and weights[0, 1] == pytest.approx(1.0) and weights[0, 2] == pytest.approx(0.188, abs=1e-3)
    assert torch.equal(objectives.snr_weights(timesteps, gamma=0), torch.ones(1, 3))


def test_a_training_step_lowers_the_loss_on_a_fixed_batch(micro_config, tmp_path):
    trainer = Trainer(_config(micro_config, tmp_path, condition_dropout=0.0))
    batch = collate([trainer.dataset[i] for i in range(2)])
    losses = []
    for _ in range(6):
        loss = trainer.loss(batch, step=0)  # same noise and timesteps every time
        losses.append(loss.item())
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert losses[-1] < 0.8 * losses[0], losses


def test_a_checkpoint_resumes_to_the_same_next_loss(micro_config, tmp_path):
    Trainer(_config(micro_config, tmp_path, steps=3, checkpoint_every=2)).train()
    straight = read_loss_csv(tmp_path / "loss.csv")
    assert [row["step"] for row in straight] == [1, 2, 3]
    assert (tmp_path / "checkpoints" / "step-000002" / "trainer_state.json").exists()
    resumed = Trainer(_config(micro_config, tmp_path, steps=3, resume=True))
    assert resumed.step == 2
    resumed.train()
    again = read_loss_csv(tmp_path / "loss.csv")
    assert [row["step"] for row in again] == [1, 2, 3]
    assert again[2]["loss"] == pytest.approx(straight[2]["loss"], rel=1e-5)
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_three_stages_chain_and_distillation_trains_the_w_embedding(micro_config, tmp_path):
    stage1 = Trainer(_config(micro_config, tmp_path / "s1", steps=1)).train()
    stage2 = Trainer(_config(micro_config, tmp_path / "s2", stage=2, init=str(stage1), steps=1, train_parts="all")).train()
    stage3 = Trainer(_config(micro_config, tmp_path / "s3", stage=3, init=str(stage2), steps=2, skip_step=100)).train()
    before, after = load_rain(stage2), load_rain(stage3)
    assert not before.denoising_unet.time_embedding.cond_proj.weight.any()  # zero-initialised, untouched by 1-2
    assert after.denoising_unet.time_embedding.cond_proj.weight.abs().sum() > 0
    rows = read_loss_csv(tmp_path / "s3" / "loss.csv")
    assert len(rows) == 2 and all(row["loss"] > 0 for row in rows)


def test_gradient_checkpointing_gives_the_same_gradients(micro_config, tmp_path):
    trainer = Trainer(_config(micro_config, tmp_path, stage=2, train_parts="all"))
    batch = collate([trainer.dataset[i] for i in range(2)])
    trainer.loss(batch, 0).backward()
    plain = {n: p.grad.clone() for n, p in trainer.models.named_parameters() if p.grad is not None}
    trainer.optimizer.zero_grad()
    enable_gradient_checkpointing(trainer.models.reference_unet)
    enable_gradient_checkpointing(trainer.models.denoising_unet)
    trainer.loss(batch, 0).backward()
    assert plain
    for name, param in trainer.models.named_parameters():
        if name in plain:
            torch.testing.assert_close(param.grad, plain[name], atol=1e-5, rtol=1e-4, msg=name)
    assert isinstance(trainer.forward, DenoiseForward)


def test_video_meta_file_serves_clips_from_real_videos(tmp_path):
    video = str(Path(__file__).resolve().parents[1] / "examples" / "anyone-video-1_kps.mp4")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps([{"video": video, "pose": video}]))
    clips = VideoClips(meta, height=32, width=32, frames=4, stride=2)
    sample = clips[3]
    assert sample["frames"].shape == sample["poses"].shape == (4, 3, 32, 32)
    assert torch.equal(sample["frames"], sample["poses"])  # same file, same frames, same crop
    assert sample["reference"].shape == (3, 32, 32)
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "missing.mp4", "pose": "missing.mp4"}]))
    with pytest.raises(ValueError, match="missing.mp4"):
        VideoClips(tmp_path / "bad.json")


def test_cli_flags_map_onto_the_training_config():
    args = build_parser().parse_args(["--stage", "2", "--output", "out", "--no-motion", "--levels", "4", "--lr", "1e-4"])
    config = TrainConfig(**vars(args))
    assert (config.stage, config.motion, config.levels, config.lr, config.frames) == (2, False, 4, 1e-4, 16)


def test_learning_rate_warms_up_holds_then_anneals_to_a_tenth(micro_config, tmp_path):
    long = Trainer(_config(micro_config, tmp_path / "a", steps=100, warmup_steps=10, decay_steps=20))
    short = Trainer(_config(micro_config, tmp_path / "b", steps=60, warmup_steps=10, decay_steps=0))
    rates = [long.learning_rate(step) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    # before the anneal the schedule ignores --steps: a run stopped early and resumed is the same run
    assert rates[:80] == [short.learning_rate(step) for step in range(80)]
    assert all(a > b for a, b in zip(rates[79:], rates[80:]))
    assert rates[-1] == pytest.approx(1e-4)
