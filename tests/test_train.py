"""Training stages on a micro RAIN (real networks, real files, a few steps each)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rain_core.loading import load_rain
from rain_core.models import RainModelConfig
from rain_core.scheduler import ladder
from rain_core.train import objectives
from rain_core.train.cli import build_parser
from rain_core.train.config import TrainConfig
from rain_core.train.curves import read_loss_csv
from rain_core.train.data import VideoClips, collate
from rain_core.train.parts import DenoiseForward, StepDraws
from rain_core.train.trainer import Trainer

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


def test_one_level_draws_one_timestep_per_clip_over_the_whole_schedule_like_the_reference_stage_2():
    generator = torch.Generator().manual_seed(0)
    timesteps = objectives.sample_stepped_timesteps(20000, levels=1, frames_per_cohort=4, generator=generator)
    assert torch.equal(timesteps, timesteps[:, :1].expand(-1, 4))  # every frame of a clip at the same t
    assert timesteps.min() == 0 and timesteps.max() == 999 and len(timesteps[:, 0].unique()) == 1000


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
    """--gradient-checkpointing turns on the UNets' own (diffusers ModelMixin) checkpointing: same gradients."""
    options = dict(stage=2, train_parts="all", condition_dropout=0.0)
    plain = Trainer(_config(micro_config, tmp_path / "plain", **options))
    checkpointed = Trainer(_config(micro_config, tmp_path / "gc", gradient_checkpointing=True, **options))
    checkpointed.models.load_state_dict(plain.models.state_dict())
    assert checkpointed.models.denoising_unet.is_gradient_checkpointing and not plain.models.denoising_unet.is_gradient_checkpointing
    batch = collate([plain.dataset[i] for i in range(2)])
    plain.loss(batch, 0).backward()
    checkpointed.loss(batch, 0).backward()
    expected = {n: p.grad for n, p in plain.models.named_parameters() if p.grad is not None}
    assert any(n.startswith("reference_unet.") for n in expected)
    for name, param in checkpointed.models.named_parameters():
        if name in expected:
            torch.testing.assert_close(param.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)
    assert isinstance(checkpointed.forward, DenoiseForward)


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
    # diffusers' constant_with_warmup: step / warmup, then constant
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1e-4) and rates[10] == pytest.approx(1e-3)
    # before the anneal the schedule ignores --steps: a run stopped early and resumed is the same run
    assert rates[:80] == [short.learning_rate(step) for step in range(80)]
    assert all(a > b for a, b in zip(rates[79:], rates[80:]))
    assert rates[-1] == pytest.approx(1e-4)


def test_defaults_are_the_reference_recipe(micro_config, tmp_path):
    """Moore-AnimateAnyone configs/train/stage{1,2}.yaml: constant lr, AdamW weight decay 1e-2, noise offset 0.05,
    uncond_ratio 0.1, snr_gamma 5; CLIP and the reference UNet's last up block frozen."""
    trainer = Trainer(_config(micro_config, tmp_path, warmup_steps=0))
    assert [trainer.learning_rate(step) for step in (0, 1, 2)] == [1e-3] * 3
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
                      torch.optim.AdamW)
    assert (group["weight_decay"], group["betas"], group["eps"]) == (1e-2, (0.9, 0.999), 1e-8)
    config = trainer.config
    assert (config.noise_offset, config.condition_dropout, config.snr_gamma) == (0.05, 0.1, 5.0)
    models = trainer.models
    trainable = {id(p) for p in trainer.params}
    last_up = f"up_blocks.{len(models.reference_unet.up_blocks) - 1}."
    for name, param in models.reference_unet.named_parameters():
        assert (id(param) in trainable) == (not name.startswith(last_up)), name
    assert not any(id(p) in trainable for p in models.image_encoder.parameters())
    assert all(id(p) in trainable for p in models.pose_guider.parameters())
    with pytest.raises(ValueError, match="constant_with_warmup"):
        Trainer(_config(micro_config, tmp_path, lr_scheduler="constant", warmup_steps=5))


def test_seeded_draws_share_the_noise_offset_across_a_clips_frames_and_drop_per_batch(micro_config, tmp_path):
    trainer = Trainer(_config(micro_config, tmp_path, stage=2, levels=2, frames_per_cohort=2, noise_offset=10.0,
                              condition_dropout=0.5))
    draws = [trainer.seeded_draws(step, (2, 12, 4, 8, 8)) for step in range(40)]
    means = draws[0].noise.mean(dim=(3, 4))  # (B, C, F): the offset dominates every frame's mean
    assert torch.allclose(means, means[:, :, :1].expand_as(means), atol=2.0)
    assert means.std(dim=(0, 1)).min() > 3.0  # and differs per clip and channel
    assert {d.drop for d in draws} == {True, False}  # one coin per batch
    assert all(torch.equal(d.timesteps[:, 2:] - d.timesteps[:, :2], torch.full((2, 2), 500)) for d in draws)
    again = trainer.seeded_draws(7, (2, 12, 4, 8, 8))
    assert torch.equal(again.noise, draws[7].noise) and again.drop == draws[7].drop


def test_injected_draws_and_latents_give_the_loss_computed_by_hand(micro_config, tmp_path):
    """The hooks a comparison needs: fixed noise/timesteps/dropout, codec latents and CLIP tokens fed directly."""
    trainer = Trainer(_config(micro_config, tmp_path, snr_gamma=5.0))
    models = trainer.models
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 12, 1, 8, 8, generator=generator)
    batch = {"latents": latents, "ref_latent": torch.randn(2, 12, 8, 8, generator=generator),
             "clip_tokens": torch.randn(2, 1, 16, generator=generator), "poses": torch.rand(2, 1, 3, SIZE, SIZE)}
    draws = StepDraws(noise=torch.randn(2, 12, 1, 8, 8, generator=generator), timesteps=torch.tensor([[999], [37]]))
    loss = trainer.loss(batch, step=0, draws=draws)
    with torch.no_grad():
        cache = models.reference_unet(batch["ref_latent"], batch["clip_tokens"])
        pose = models.pose_guider(batch["poses"].permute(0, 2, 1, 3, 4))
        alpha = objectives.alphas_cumprod()[draws.timesteps][:, None, :, None, None]
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * draws.noise
        v = models.denoising_unet(noisy, draws.timesteps, batch["clip_tokens"], pose, None, cache, use_reference_kv_cache=False)
        target = alpha.sqrt() * draws.noise - (1 - alpha).sqrt() * latents
        weights = objectives.snr_weights(draws.timesteps, 5.0)
        expected = ((v - target) ** 2).mean(dim=(1, 3, 4)).mul(weights).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-7)
    # a dropped batch skips the reference UNet (plain self-attention) and gives CLIP a zero image
    dropped = trainer.loss(batch, step=0, draws=StepDraws(draws.noise, draws.timesteps, drop=True))
    with torch.no_grad():
        zero_image = torch.zeros(2, 3, 16, 16)
        tokens = models.image_encoder.model(pixel_values=zero_image).image_embeds.unsqueeze(1)
        v = models.denoising_unet(noisy, draws.timesteps, tokens, pose, None, None)
        expected = ((v - target) ** 2).mean(dim=(1, 3, 4)).mul(weights).mean()
    torch.testing.assert_close(dropped.detach(), expected, rtol=1e-5, atol=1e-7)
    # and a draw source given to the trainer replaces its own generator
    hooked = Trainer(_config(micro_config, tmp_path / "h", snr_gamma=5.0), draws=lambda step, shape: draws)
    hooked.models.load_state_dict(models.state_dict())
    torch.testing.assert_close(hooked.loss(batch, step=5), loss.detach(), rtol=0, atol=0)


def test_the_engine_loads_a_model_without_accelerate_and_training_says_what_to_install(tmp_path):
    """accelerate is a training-only extra: with it missing the engine still imports and loads the built-in model."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["accelerate"] = None  # what an install without the train extra looks like to `import accelerate`
import rain_core.cli, rain_core.loading, rain_core.stream, rain_core.train.trainer as trainer
from rain_core.train.config import TrainConfig
from rain_core.loading.layout import builtin_model_dir
rain_core.loading.load_rain(builtin_model_dir())
try:
    trainer.Trainer(TrainConfig(stage=1, output=sys.argv[1]))
except ImportError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pip install 'comfyui-rain[train]'" in result.stdout


def test_stage3_target_is_a_constant_rate_ema_of_the_student(micro_config, tmp_path):
    stage2 = Trainer(_config(micro_config, tmp_path / "s2", stage=2, steps=1)).train()
    trainer = Trainer(_config(micro_config, tmp_path / "s3", stage=3, init=str(stage2), skip_step=100, ema_decay=0.9))
    student, target = trainer.models.denoising_unet, trainer.target.models.denoising_unet
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    for _ in range(2):  # the same rate from the very first update (no EMA warm-up ramp)
        trainer._update_target()
        for name, param in student.named_parameters():
            before[name] = 0.9 * before[name] + 0.1 * param.detach()
    for name, param in target.named_parameters():
        torch.testing.assert_close(param, before[name], rtol=1e-6, atol=1e-6, msg=name)
    # the EMA's shadow tensors are the target network's parameters: no third copy of the UNet
    assert [s.data_ptr() for s in trainer.ema.shadow_params] == [p.data_ptr() for p in target.parameters()]


def test_8bit_adamw_trains_and_resumes_to_the_same_next_loss(tmp_path):
    """--optimizer adamw8bit (bitsandbytes, the reference's stage-2 optimizer): its quantised state goes through the
    safetensors checkpoint and a resumed run continues to the same loss."""
    pytest.importorskip("bitsandbytes")
    config = RainModelConfig.tiny(block_out_channels=(32, 32), cross_attention_dim=16, cond_proj_dim=16,
                                  clip_hidden_size=16, clip_layers=1, clip_image_size=16)
    path = tmp_path / "rain_config.json"
    path.write_text(json.dumps(config.to_dict()))
    options = dict(model=str(path), optimizer="adamw8bit", steps=3, checkpoint_every=2)
    Trainer(_config(str(path), tmp_path / "run", **options)).train()
    straight = read_loss_csv(tmp_path / "run" / "loss.csv")
    resumed = Trainer(_config(str(path), tmp_path / "run", resume=True, **options))
    quantised = [s for s in resumed.optimizer.state.values() if any(torch.is_tensor(v) and v.dtype == torch.uint8 for v in s.values())]
    assert resumed.step == 2 and quantised  # 8-bit moments restored from the checkpoint
    resumed.train()
    assert read_loss_csv(tmp_path / "run" / "loss.csv")[2]["loss"] == pytest.approx(straight[2]["loss"], rel=1e-5)


def test_8bit_adamw_without_bitsandbytes_names_the_extra(micro_config, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` sees when it is not installed
    with pytest.raises(ImportError, match=r"comfyui-rain\[train-8bit\]"):
        Trainer(_config(micro_config, tmp_path, optimizer="adamw8bit"))
    with pytest.raises(ValueError, match="adamw or adamw8bit"):
        Trainer(_config(micro_config, tmp_path, optimizer="sgd"))


def test_motion_blocks_drop_one_levels_motion_modules_from_an_init_model_and_fine_tune_the_rest(micro_config, tmp_path):
    from rain_core.loading import save_rain
    from rain_core.models import RainModels

    full = RainModels.build(RainModelConfig.from_dict(json.loads(Path(micro_config).read_text())))
    save_rain(full, tmp_path / "full")
    trainer = Trainer(_config(micro_config, tmp_path / "out", stage=2, init=str(tmp_path / "full"), motion_blocks="0,1",
                              train_parts="all", frames_per_cohort=2, steps=2))
    unet = trainer.models.denoising_unet
    assert trainer.models.config.motion_blocks == (False, True)
    assert unet.down_blocks[0].motion_modules is None and unet.up_blocks[-1].motion_modules is None
    assert unet.down_blocks[1].motion_modules is not None and unet.mid_block.motion_modules is not None
    # every other weight is the init model's
    kept = trainer.models.state_dict()
    assert all(torch.equal(kept[key], value) for key, value in full.state_dict().items() if key in kept)
    assert len(kept) < len(full.state_dict())
    final = trainer.train()
    assert load_rain(final).config.motion_blocks == (False, True)
    with pytest.raises(ValueError, match="--motion-blocks 1: expected 2 comma-separated 0/1 flags"):
        Trainer(_config(micro_config, tmp_path / "bad", stage=2, init=str(tmp_path / "full"), motion_blocks="1"))
    with pytest.raises(ValueError, match="--motion-blocks 0,1 with --no-motion"):
        Trainer(_config(micro_config, tmp_path / "bad2", stage=2, init=str(tmp_path / "full"), motion_blocks="0,1",
                        motion=False))


def test_top_width_prunes_the_top_level_by_norm_group_and_fine_tunes_the_narrow_model(micro_config, tmp_path):
    from rain_core.loading import save_rain
    from rain_core.models import RainModels
    from rain_core.train.narrow import narrow_top_level

    with pytest.raises(ValueError, match="transformers or motion modules on its top level"):
        narrow_top_level(RainModels.build(RainModelConfig.from_dict(json.loads(Path(micro_config).read_text()))), 8)
    # the built-in model's layout: a top level of plain resnets
    full = RainModels.build(RainModelConfig.tiny(
        block_out_channels=(16, 24), cross_attention_dim=16, cond_proj_dim=16, clip_hidden_size=16, clip_layers=1,
        clip_image_size=16, cross_attention_blocks=(False, True), motion_blocks=(False, True)))
    for parameter in full.parameters():  # the authors' zero inits would make every channel equally weak
        torch.nn.init.normal_(parameter, std=0.1)
    old, groups = full.config.block_out_channels[0], full.config.norm_num_groups
    narrow = narrow_top_level(full, old - groups)
    assert narrow.config.block_out_channels == (old - groups, *full.config.block_out_channels[1:])
    source, pruned = full.denoising_unet, narrow.denoising_unet
    # conv_in's output channels are the kept ones, the same number from every norm group, in order
    rows = [int((source.conv_in.weight == row).flatten(1).all(1).nonzero()) for row in pruned.conv_in.weight]
    assert rows == sorted(rows) and len(rows) == old - groups
    per_group = old // groups
    assert all(sum(r // per_group == g for r in rows) == per_group - 1 for g in range(groups))
    # the top up block's last resnet reads cat([top hidden, top skip]): both halves pruned with the same channels
    first = pruned.up_blocks[-1].resnets[-1].conv1.weight
    expected = source.up_blocks[-1].resnets[-1].conv1.weight[rows][:, rows + [old + r for r in rows]]
    assert torch.equal(first, expected)
    # lower levels are copied unchanged, and the pruned model runs
    assert torch.equal(pruned.down_blocks[1].resnets[0].conv2.weight, source.down_blocks[1].resnets[0].conv2.weight)
    assert narrow_top_level(full, old) is full
    # the time embedding keeps its width and weights (every level's time conditioning is unchanged); the top
    # resnets' projections of it keep their inputs and lose the pruned output rows
    assert narrow.config.time_channels == old and narrow.config.time_embed_dim == full.config.time_embed_dim
    for name, tensor in source.time_embedding.state_dict().items():
        assert torch.equal(pruned.time_embedding.state_dict()[name], tensor), name
    torch.testing.assert_close(pruned.down_blocks[0].resnets[0].time_emb_proj.weight,
                               source.down_blocks[0].resnets[0].time_emb_proj.weight[rows], rtol=0, atol=0)
    timesteps = torch.tensor([999.0, 3.0])
    torch.testing.assert_close(pruned.time_embedding(pruned.time_proj(timesteps)),
                               source.time_embedding(source.time_proj(timesteps)), rtol=0, atol=0)
    # keep_time=False narrows it with the top level, as the SD-1.5 layout ties them
    tied = narrow_top_level(full, old - groups, keep_time=False)
    assert tied.config.time_channels is None and tied.config.time_embed_dim == 4 * (old - groups)
    with pytest.raises(ValueError, match="--top-width 5: expected a multiple of norm_num_groups"):
        narrow_top_level(full, 5)
    save_rain(full, tmp_path / "full")
    trainer = Trainer(_config(micro_config, tmp_path / "out", stage=2, init=str(tmp_path / "full"),
                              top_width=old - groups, train_parts="all", frames_per_cohort=2, steps=2))
    final = trainer.train()
    assert load_rain(final).config.block_out_channels[0] == old - groups
    losses = [row["loss"] for row in read_loss_csv(tmp_path / "out" / "loss.csv")]
    assert len(losses) == 2 and all(loss == loss and loss < 1e3 for loss in losses)


def test_distill_trains_against_the_teachers_outputs_at_the_drawn_guidance(micro_config, tmp_path):
    """--distill: the target is the teacher's v for the same noisy window, reference, poses and w (never dropped);
    a model distilled into itself has loss 0."""
    from rain_core.loading import save_rain
    from rain_core.models import RainModels

    config = RainModelConfig.from_dict(json.loads(Path(micro_config).read_text()))
    folders = {}
    for seed, name in ((1, "teacher"), (2, "student")):
        torch.manual_seed(seed)
        models = RainModels.build(config)
        for parameter in models.parameters():  # random everywhere: zero inits (the w-embedding) would hide w
            torch.nn.init.normal_(parameter, std=0.05)
        save_rain(models, tmp_path / name)
        folders[name] = str(tmp_path / name)
    trainer = Trainer(_config(micro_config, tmp_path / "out", stage=2, levels=2, frames_per_cohort=1, skip_step=25,
                              init=folders["student"], distill=folders["teacher"], train_parts="all"))
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 12, 2, 8, 8, generator=generator)
    batch = {"latents": latents, "ref_latent": torch.randn(2, 12, 8, 8, generator=generator),
             "clip_tokens": torch.randn(2, 1, 16, generator=generator), "poses": torch.rand(2, 2, 3, SIZE, SIZE)}
    guidance = torch.tensor([2.5, 4.0])
    draws = StepDraws(noise=torch.randn(2, 12, 2, 8, 8, generator=generator),
                      timesteps=torch.tensor([[499, 999], [24, 524]]), drop=True, guidance=guidance)
    loss = trainer.loss(batch, step=0, draws=draws)
    noisy = objectives.add_noise(latents, draws.noise, draws.timesteps)
    with torch.no_grad():
        outputs = [DenoiseForward(load_rain(folders[name]))(noisy, draws.timesteps, batch["ref_latent"],
                                                            batch["clip_tokens"], batch["poses"], guidance=guidance)
                   for name in ("student", "teacher")]
        other_w = DenoiseForward(load_rain(folders["teacher"]))(noisy, draws.timesteps, batch["ref_latent"],
                                                                batch["clip_tokens"], batch["poses"], guidance=guidance + 1)
    assert not torch.allclose(other_w, outputs[1])  # the target depends on w: the test can tell which w was used
    torch.testing.assert_close(loss.detach(), objectives.per_frame_mse(*outputs), rtol=1e-5, atol=1e-7)
    # its own draws: a w per clip within the stage-3 range, timesteps on the stage-3 grid (the stream's among them)
    own = trainer.seeded_draws(7, tuple(latents.shape))
    assert own.guidance is not None and ((own.guidance >= 2.0) & (own.guidance <= 4.5)).all()
    assert ((own.timesteps + 1) % 25 == 0).all()
    itself = Trainer(_config(micro_config, tmp_path / "self", stage=2, levels=2, frames_per_cohort=1,
                             init=folders["teacher"], distill=folders["teacher"], train_parts="all"))
    assert itself.loss(batch, step=0, draws=draws).item() == 0.0
    with pytest.raises(ValueError, match="--distill trains stage 2"):
        Trainer(_config(micro_config, tmp_path / "s3", stage=3, init=folders["student"], distill=folders["teacher"]))


def test_velocity_towards_the_truth_is_the_velocity_for_noised_truth_and_leads_any_sample_to_it():
    generator = torch.Generator().manual_seed(11)
    latents, noise = torch.randn(2, 4, 3, 5, 5, generator=generator), torch.randn(2, 4, 3, 5, 5, generator=generator)
    timesteps = torch.tensor([[249, 499, 999], [0, 749, 998]])
    noisy = objectives.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(objectives.velocity_towards(noisy, latents, timesteps),
                               objectives.velocity(latents, noise, timesteps), rtol=1e-4, atol=1e-5)
    # a sample the stream made (not noised truth): the target's x0 estimate is still the truth
    stray = torch.randn(2, 4, 3, 5, 5, generator=generator)
    x0 = objectives.x0_from_v(stray, objectives.velocity_towards(stray, latents, timesteps), timesteps)
    torch.testing.assert_close(x0, latents, rtol=1e-4, atol=1e-4)


def test_roll_window_walks_the_clip_cohort_by_cohort_and_an_oracle_leaves_the_truth_noised_by_the_last_tick():
    """p = 3 levels, m = 2, 2 ticks: the window moves two frames a tick, and with a model that always predicts the
    truth the final window is the truth of the clip's last p·m frames noised by the last tick's ε (the newest cohort
    by the clip's own ε at t = 999)."""
    levels, m, ticks = 3, 2, 2
    width = levels * m
    generator = torch.Generator().manual_seed(5)
    truth = torch.randn(1, 4, width + ticks * m, 3, 3, generator=generator)
    noise = torch.randn(truth.shape, generator=generator)
    step_noise = torch.randn(ticks, 1, 4, width, 3, 3, generator=generator)
    seen = []

    def oracle(window, timesteps, frames):
        seen.append((frames.start, frames.stop, timesteps[0].tolist()))
        return objectives.velocity_towards(window, truth[:, :, frames], timesteps)

    window, timesteps = objectives.roll_window(truth, noise, step_noise, levels, m, oracle)
    ladder = [332, 332, 665, 665, 998, 998]  # 1000 // 3 − 1 and the two levels above it
    assert seen == [(0, 6, ladder), (2, 8, ladder)]
    assert timesteps[0].tolist() == ladder
    alpha = objectives.alphas_cumprod()[timesteps][:, None, :, None, None]
    expected = alpha.sqrt() * truth[:, :, ticks * m:] + (1 - alpha).sqrt() * torch.cat(
        [step_noise[-1][:, :, m:], noise[:, :, -m:]], dim=2)
    torch.testing.assert_close(window, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="need 10 frames"):
        objectives.roll_window(truth[:, :, :-1], noise[:, :, :-1], step_noise, levels, m, oracle)


def test_rollout_ticks_lengthen_the_clips_train_on_the_rolled_window_and_refuse_other_stages(micro_config, tmp_path):
    trainer = Trainer(_config(micro_config, tmp_path, stage=2, rollout_ticks=1, steps=2))
    assert trainer.config.frames == 3 and trainer.dataset[0]["frames"].shape[0] == 3  # p·m + 1 tick of m = 1
    batch = collate([trainer.dataset[0], trainer.dataset[1]])
    draws = trainer.seeded_draws(0, (2, 12, 3, 8, 8))
    assert draws.step_noise.shape == (1, 2, 12, 2, 8, 8) and draws.timesteps.tolist() == [[499, 999]] * 2
    rolled = trainer.loss(batch, 0, draws)
    rolled.backward()
    assert torch.isfinite(rolled) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.params)
    # the same window noised from the truth (what plain stage 2 trains on) gives another loss
    latents, ref_latent, clip = trainer.encode(batch)
    window, timesteps, _, poses = trainer._rolled_window(latents, draws.noise, draws, ref_latent, clip, batch["poses"])
    plain = objectives.add_noise(latents[:, :, 1:], torch.cat([draws.step_noise[0][:, :, 1:], draws.noise[:, :, 2:]], 2),
                                 draws.timesteps)
    assert poses.shape[1] == 2 and timesteps.tolist() == draws.timesteps.tolist() and (window - plain).abs().max() > 1e-3
    assert Path(trainer.train()).is_dir()
    for overrides in ({"stage": 3, "init": str(Path(trainer.output) / "final")}, {"stage": 1}, {"rollout_ticks": -1, "stage": 2}):
        with pytest.raises(ValueError, match="--rollout-ticks"):
            Trainer(_config(micro_config, tmp_path / "x", **{"rollout_ticks": 1, **overrides}))


def test_rollout_fraction_rolls_that_share_of_steps_and_trains_the_rest_as_plain_stage_2(micro_config, tmp_path):
    """--rollout-fraction 0.5: about half the steps roll; a step left plain is exactly plain stage 2 on the clip's
    last p·m frames; with fraction 1 every step rolls and ε is drawn as before."""
    mixed = Trainer(_config(micro_config, tmp_path / "mixed", stage=2, rollout_ticks=1, rollout_fraction=0.5))
    shape = (2, 12, 3, 8, 8)
    draws = [mixed.seeded_draws(step, shape) for step in range(40)]
    rolled = [d.step_noise is not None for d in draws]
    assert 10 <= sum(rolled) <= 30
    plain_step = rolled.index(False)
    batch = collate([mixed.dataset[0], mixed.dataset[1]])
    loss = mixed.loss(batch, plain_step, draws[plain_step])
    # the same trainer as a plain stage 2 (no rollout), on the clip's last p·m frames with the same draws
    config, d = mixed.config, draws[plain_step]
    mixed.config = dataclasses.replace(config, rollout_ticks=0, rollout_fraction=1.0)
    last = {"frames": batch["frames"][:, 1:], "poses": batch["poses"][:, 1:], "reference": batch["reference"]}
    expected = mixed.loss(last, plain_step, StepDraws(d.noise[:, :, 1:], d.timesteps, d.drop, d.guidance))
    mixed.config = config
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-8)
    assert d.timesteps.shape == (2, 2)

    every = Trainer(_config(micro_config, tmp_path / "every", stage=2, rollout_ticks=1, rollout_fraction=1.0))
    for step in range(8):  # every step rolls; the coin comes after ε, so ε is the same either way
        a, b = every.seeded_draws(step, shape), mixed.seeded_draws(step, shape)
        assert a.step_noise is not None and torch.equal(a.noise, b.noise)
    with pytest.raises(ValueError, match="--rollout-fraction"):
        Trainer(_config(micro_config, tmp_path / "x", stage=2, rollout_fraction=0.5))
    with pytest.raises(ValueError, match="--rollout-fraction"):
        Trainer(_config(micro_config, tmp_path / "y", stage=2, rollout_ticks=1, rollout_fraction=0.0))


def test_stream_guidance_feeds_stage_2_the_drawn_w_and_never_drops_the_condition(micro_config, tmp_path):
    trainer = Trainer(_config(micro_config, tmp_path, stage=2, stream_guidance=True, condition_dropout=1.0,
                              guidance_min=2.0, guidance_max=4.0))
    draws = trainer.seeded_draws(0, (2, 12, 2, 8, 8))
    assert not draws.drop and draws.guidance.shape == (2,) and bool(((draws.guidance >= 2) & (draws.guidance <= 4)).all())
    batch = collate([trainer.dataset[0], trainer.dataset[1]])
    # the w-embedding must matter for the check to tell which w was fed
    torch.nn.init.normal_(trainer.models.denoising_unet.time_embedding.cond_proj.weight, std=0.5)
    latents, ref_latent, clip = trainer.encode(batch)
    noisy = objectives.add_noise(latents, draws.noise, draws.timesteps)
    target = objectives.velocity(latents, draws.noise, draws.timesteps)

    def loss_at(w):
        with torch.no_grad():
            v = trainer.forward(noisy, draws.timesteps, ref_latent, clip, batch["poses"], guidance=w)
        return objectives.per_frame_mse(v, target)

    loss = trainer.loss(batch, 0, draws).detach()
    torch.testing.assert_close(loss, loss_at(draws.guidance), rtol=1e-5, atol=1e-7)
    assert (loss - loss_at(draws.guidance + 1)).abs() > 1e-6
    with pytest.raises(ValueError, match="--stream-guidance"):
        Trainer(_config(micro_config, tmp_path / "s1", stream_guidance=True))
