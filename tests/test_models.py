"""Properties of the RAIN networks at tiny size (real networks, random weights, CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_models, randomize_parameters

from rain_core.models import RainModelConfig, RainModels, ReferenceCache, guidance_embedding

FRAMES = 8


def _inputs(models: RainModels, seed: int = 0, frames: int = FRAMES, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    c = models.config
    size = 32 // c.codec_factor
    sample = torch.randn(batch, c.latent_channels, frames, size, size, generator=g)
    timesteps = torch.tensor([249, 499, 749, 999]).repeat_interleave(frames // 4)[None].expand(batch, -1)
    clip = torch.randn(batch, 1, c.cross_attention_dim, generator=g)
    pose = torch.rand(batch, 3, frames, 32, 32, generator=g)
    ref_latent = torch.randn(batch, c.latent_channels, size, size, generator=g)
    return sample, timesteps.clone(), clip, pose, ref_latent


@torch.no_grad()
def _run(models, sample, timesteps, clip, pose, ref_latent, w=3.5, **kwargs):
    reference = models.reference_unet(ref_latent, clip)
    features = models.pose_guider(pose)
    return models.denoising_unet(sample, timesteps, clip, features, models.guidance_embedding(w), reference, **kwargs)


def test_reference_pass_captures_one_token_set_per_spatial_self_attention(tiny_models):
    *_, clip, _, ref_latent = _inputs(tiny_models)
    with torch.no_grad():
        cache = tiny_models.reference_unet(ref_latent, clip)
    c = tiny_models.config
    expected = (sum(c.cross_attention_blocks) * (2 * c.layers_per_block + 1)) + 1  # down + up + mid
    assert len(cache.tokens) == expected == len(tiny_models.denoising_unet.reference_layers)
    assert list(cache.tokens) == list(tiny_models.denoising_unet.reference_layers)
    assert cache.tokens["down_blocks.0.attentions.0.transformer_blocks.0.attn1"].shape == (1, 16 * 16, 32)


def test_cached_reference_kv_equals_recomputed(tiny_models):
    inputs = _inputs(tiny_models)
    cached = _run(tiny_models, *inputs)
    recomputed = _run(tiny_models, *inputs, use_reference_kv_cache=False)
    torch.testing.assert_close(cached, recomputed, rtol=1e-6, atol=1e-6)
    # and the cache really holds the denoising UNet's K/V of the reference tokens
    *_, clip, _, ref_latent = inputs
    with torch.no_grad():
        cache = tiny_models.reference_unet(ref_latent, clip)
        kv = tiny_models.denoising_unet.reference_kv(cache)
        name = "mid_block.attentions.0.transformer_blocks.0.attn1"
        attn = tiny_models.denoising_unet.reference_layers[name]
        torch.testing.assert_close(kv[name][0], attn.to_k(cache.tokens[name]))


def test_reference_changes_the_output(tiny_models):
    sample, t, clip, pose, ref_latent = _inputs(tiny_models)
    a = _run(tiny_models, sample, t, clip, pose, ref_latent)
    b = _run(tiny_models, sample, t, clip, pose, ref_latent + 1)
    assert (a - b).abs().max() > 1e-3


def test_timesteps_are_per_frame_before_the_first_motion_module(tiny_models):
    sample, t, clip, pose, ref_latent = _inputs(tiny_models)
    unet = tiny_models.denoising_unet
    seen = []
    hook = unet.down_blocks[0].motion_modules[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        _run(tiny_models, sample, t, clip, pose, ref_latent)
        t2 = t.clone()
        t2[0, 3] = 5
        _run(tiny_models, sample, t2, clip, pose, ref_latent)
    finally:
        hook.remove()
    changed = (seen[0] - seen[1]).flatten(1).abs().amax(1)  # per folded frame (batch 1)
    assert changed[3] > 1e-3
    assert torch.all(changed[torch.arange(FRAMES) != 3] == 0)


def test_spatial_blocks_keep_frames_apart_and_motion_modules_mix_them(tiny_models):
    sample, t, clip, pose, ref_latent = _inputs(tiny_models)
    perturbed = sample.clone()
    perturbed[:, :, 0] += 1
    with_motion = _run(tiny_models, perturbed, t, clip, pose, ref_latent) - _run(
        tiny_models, sample, t, clip, pose, ref_latent
    )
    assert torch.all(with_motion[:, :, 1:].abs().amax(dim=(0, 1, 3, 4)) > 1e-4)  # every other frame moved

    still = RainModels.build(RainModelConfig.tiny(motion=False)).eval()
    still.load_state_dict(tiny_models.state_dict(), strict=False)  # same weights, motion modules dropped
    without = _run(still, perturbed, t, clip, pose, ref_latent) - _run(still, sample, t, clip, pose, ref_latent)
    assert without[:, :, 0].abs().max() > 1e-3
    assert torch.all(without[:, :, 1:] == 0)


def test_motion_blocks_drop_one_levels_motion_modules_and_keep_the_others_mixing_frames(tiny_models):
    config = RainModelConfig.tiny(motion_blocks=(False, True, True, True))
    assert config.has_motion(1) and not config.has_motion(0)
    partial = RainModels.build(config).eval()
    unet = partial.denoising_unet
    assert unet.down_blocks[0].motion_modules is None and unet.up_blocks[-1].motion_modules is None
    assert all(block.motion_modules is not None for block in [*unet.down_blocks[1:], *unet.up_blocks[:-1]])
    assert unet.mid_block.motion_modules is not None
    # the same weights as the full model, less the full-resolution level's motion modules
    missing, unexpected = partial.load_state_dict(tiny_models.state_dict(), strict=False)
    assert missing == [] and unexpected
    assert all(".motion_modules." in key for key in unexpected)
    assert all(key.startswith(("denoising_unet.down_blocks.0.", "denoising_unet.up_blocks.3.")) for key in unexpected)
    assert RainModelConfig.from_dict(config.to_dict()) == config
    sample, t, clip, pose, ref_latent = _inputs(tiny_models)
    perturbed = sample.clone()
    perturbed[:, :, 0] += 1
    moved = _run(partial, perturbed, t, clip, pose, ref_latent) - _run(partial, sample, t, clip, pose, ref_latent)
    assert torch.all(moved[:, :, 1:].abs().amax(dim=(0, 1, 3, 4)) > 1e-4)  # the deeper levels still mix frames
    with pytest.raises(ValueError, match="motion_blocks needs one entry per block_out_channels entry"):
        RainModelConfig.tiny(motion_blocks=(False, True))


def test_fresh_model_zero_inits_motion_pose_and_guidance_paths():
    torch.manual_seed(0)
    fresh = RainModels.build(RainModelConfig.tiny()).eval()
    sample, t, clip, pose, ref_latent = _inputs(fresh)
    assert torch.all(fresh.pose_guider(pose) == 0)
    for name, p in fresh.denoising_unet.named_parameters():
        if name.endswith(("temporal_transformer.proj_out.weight", "temporal_transformer.proj_out.bias")):
            assert torch.all(p == 0), name
    assert torch.all(fresh.denoising_unet.time_embedding.cond_proj.weight == 0)
    # so w has no effect and the motion modules are the identity: frames stay independent
    torch.testing.assert_close(
        _run(fresh, sample, t, clip, pose, ref_latent, w=1.0),
        _run(fresh, sample, t, clip, pose, ref_latent, w=8.0),
        rtol=0,
        atol=0,
    )
    perturbed = sample.clone()
    perturbed[:, :, 0] += 1
    delta = _run(fresh, perturbed, t, clip, pose, ref_latent) - _run(fresh, sample, t, clip, pose, ref_latent)
    assert torch.all(delta[:, :, 1:] == 0)


def test_guidance_embedding_changes_a_randomised_model(tiny_models):
    inputs = _inputs(tiny_models)
    assert (_run(tiny_models, *inputs, w=1.0) - _run(tiny_models, *inputs, w=8.0)).abs().max() > 1e-4


def test_guidance_embedding_is_sin_then_cos_of_w_times_1000():
    emb = guidance_embedding(torch.tensor([0.0, 2.5]), dim=8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(torch.arange(4) * -(torch.log(torch.tensor(10000.0)) / 3))
    torch.testing.assert_close(emb[1, :4], torch.sin(2500 * freqs))
    torch.testing.assert_close(emb[1, 4:], torch.cos(2500 * freqs))


def test_guidance_embedding_equals_diffusers_lcm_embedding_bit_for_bit():
    """Ours is the LCM pipelines' get_guidance_scale_embedding (what the authors call). diffusers has it only as a
    pipeline method; its model-level get_timestep_embedding computes the frequencies in another order and differs
    by up to 5e-4 at w = 8, so the engine keeps its own eight lines, pinned here to diffusers' values."""
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 1.0, 2.5, 3.5, 8.0, 0.123, 15.0])
    for dim in (512, 32, 33):
        expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, dim)
        assert torch.equal(guidance_embedding(w, dim), expected), dim


def test_batch_items_are_independent(tiny_models):
    sample, t, clip, pose, ref_latent = _inputs(tiny_models, batch=2)
    both = _run(tiny_models, sample, t, clip, pose, ref_latent)
    first = _run(tiny_models, sample[:1], t[:1], clip[:1], pose[:1], ref_latent[:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)


def test_pose_features_land_on_the_latent_grid_for_each_codec_factor():
    from rain_core.models import PoseGuider

    for factor in (2, 4, 8):
        config = RainModelConfig.tiny(codec_factor=factor)
        guider = randomize_parameters(PoseGuider(config.pose_channels, config.pose_guider_channels))
        features = guider(torch.rand(1, 3, 2, 32, 32))
        assert features.shape == (1, config.block_out_channels[0], 2, 32 // factor, 32 // factor)


def test_config_rejects_a_pose_guider_that_misses_the_latent_grid():
    with pytest.raises(ValueError, match="pose guider downsamples by 8"):
        RainModelConfig.tiny().__class__(**{**RainModelConfig.tiny().to_dict(), "pose_guider_channels": (8, 8, 8, 8)})


def test_config_round_trips_through_a_dict():
    config = RainModelConfig.tiny(codec="vae", codec_factor=8)
    assert RainModelConfig.from_dict(config.to_dict()) == config
    assert RainModelConfig.from_dict(RainModelConfig.sd15().to_dict()) == RainModelConfig.sd15()


def test_space_to_depth_codec_round_trips_images_exactly(tiny_models):
    images = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
    latents = tiny_models.codec.encode(images)
    assert latents.shape == (2, 12, 16, 16)
    torch.testing.assert_close(tiny_models.codec.decode(latents), images, rtol=0, atol=1e-6)


def test_vae_codec_scales_the_posterior_mean():
    config = RainModelConfig.tiny(codec="vae", codec_factor=8)
    models = RainModels.build(config, with_image_encoder=False).eval()
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        latents = models.codec.encode(images)
        mean = models.codec.vae.encode(images * 2 - 1).latent_dist.mean
        torch.testing.assert_close(latents, mean * 0.18215)
        decoded = models.codec.decode(latents)
        expected = (models.codec.vae.decode(mean).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(decoded, expected)


def test_taesdv_chunked_decoding_with_memory_equals_one_pass():
    from rain_core.models import TAESDV

    decoder = randomize_parameters(TAESDV(latent_channels=4, channels=8, upsamplings=2), seed=3).eval()
    latents = torch.randn(6, 4, 4, 4)
    with torch.no_grad():
        whole, _ = decoder.decode(latents, None)
        first, memory = decoder.decode(latents[:4], None)
        second, _ = decoder.decode(latents[4:], memory)
    assert whole.shape == (6, 3, 16, 16)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-6, atol=1e-6)
    assert whole.min() >= 0 and whole.max() <= 1


def test_reference_cache_survives_a_safetensors_round_trip_value_for_value(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    sample, t, clip, pose, ref_latent = _inputs(tiny_models)
    with torch.no_grad():
        cache = tiny_models.reference_unet(ref_latent, clip)
        tiny_models.denoising_unet.reference_kv(cache)
    save_file(cache.state_dict(), str(tmp_path / "cache.safetensors"))
    again = ReferenceCache.from_state_dict(load_file(str(tmp_path / "cache.safetensors")))
    assert list(again.tokens) == list(cache.tokens) and list(again.kv) == list(cache.kv)
    for name in cache.tokens:  # every tensor where it belongs: a swapped layer or key/value pair fails here
        assert torch.equal(again.tokens[name], cache.tokens[name]), name
        assert torch.equal(again.kv[name][0], cache.kv[name][0]) and torch.equal(again.kv[name][1], cache.kv[name][1])
        assert not torch.equal(cache.kv[name][0], cache.kv[name][1])
    unet, features, w = tiny_models.denoising_unet, tiny_models.pose_guider(pose), tiny_models.guidance_embedding(3.5)
    with torch.no_grad():
        expected = unet(sample, t, clip, features, w, cache)
        assert torch.equal(unet(sample, t, clip, features, w, again), expected)


def test_image_encoder_gives_one_token_per_image(tiny_models):
    tokens = tiny_models.image_encoder.encode(torch.rand(2, 48, 40, 3))
    assert tokens.shape == (2, 1, tiny_models.config.cross_attention_dim)


def test_build_tiny_models_is_reproducible():
    a, b = build_tiny_models(), build_tiny_models()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_gradient_checkpointing_keeps_fewer_activations_and_gives_the_same_gradients():
    """diffusers' enable_gradient_checkpointing() on both UNets: the blocks' activations are not kept for the
    backward pass but recomputed there, with the reference tokens each block saw in the forward."""
    models = build_tiny_models(seed=3).train()
    sample, t, clip, pose, ref_latent = _inputs(models)

    def gradients():
        kept = []  # elements of every tensor autograd keeps for the backward pass outside checkpointed blocks
        models.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda x: kept.append(x.numel()) or x, lambda x: x):
            reference = models.reference_unet(ref_latent, clip)
            v = models.denoising_unet(sample, t, clip, models.pose_guider(pose), models.guidance_embedding(3.5),
                                      reference, use_reference_kv_cache=False)  # training path: grads reach tokens
        (v**2).mean().backward()
        return sum(kept), {name: p.grad.clone() for name, p in models.named_parameters() if p.grad is not None}

    plain_kept, plain = gradients()
    assert not models.denoising_unet.is_gradient_checkpointing
    for unet in (models.reference_unet, models.denoising_unet):
        unet.enable_gradient_checkpointing()
    assert models.denoising_unet.is_gradient_checkpointing and models.reference_unet.is_gradient_checkpointing
    checkpointed_kept, checkpointed = gradients()
    assert checkpointed_kept < plain_kept / 4
    assert plain.keys() == checkpointed.keys() and any("reference_unet" in name for name in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    for unet in (models.reference_unet, models.denoising_unet):  # nothing recomputed stays behind in a processor
        for layer in unet.reference_layers.values():
            assert getattr(layer.processor, "captured", None) is None and getattr(layer.processor, "reference", None) is None
        unet.disable_gradient_checkpointing()
    assert not models.denoising_unet.is_gradient_checkpointing


def test_folded_upsample_equals_diffusers_nearest_upsample_and_conv_in_value_and_gradient():
    from diffusers.models.upsampling import Upsample2D

    from rain_core.models.upsampling import FoldedUpsample2D

    torch.manual_seed(0)
    plain = Upsample2D(8, use_conv=True, out_channels=6)
    folded = FoldedUpsample2D(8, use_conv=True, out_channels=6)
    folded.load_state_dict(plain.state_dict())  # same parameter names: checkpoints load either way
    for shape in [(3, 8, 5, 7), (1, 8, 1, 1)]:
        x = torch.randn(shape, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        expected, got = plain(x), folded(x2)
        assert got.shape == expected.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
        assert torch.allclose(got, expected, atol=1e-5)
        weights = torch.randn_like(expected)
        (expected * weights).sum().backward()
        (got * weights).sum().backward()
        assert torch.allclose(x2.grad, x.grad, atol=1e-5)
        for a, b in zip(folded.parameters(), plain.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-4)
            a.grad = b.grad = None
    # an output size that is not twice the input (odd latent sizes) runs diffusers' own path
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(folded(x, output_size=(9, 9)), plain(x, output_size=(9, 9)))


def test_cross_attention_to_one_token_equals_diffusers_attention_and_falls_back_for_more_tokens():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from rain_core.models.cross_attention import SingleTokenCrossAttnProcessor

    torch.manual_seed(0)
    attention = Attention(16, cross_attention_dim=12, heads=2, dim_head=8)
    hidden = torch.randn(5, 9, 16)
    for tokens in (1, 3):
        context = torch.randn(5, tokens, 12)
        attention.set_processor(AttnProcessor2_0())
        expected = attention(hidden, encoder_hidden_states=context)
        attention.set_processor(SingleTokenCrossAttnProcessor())
        got = attention(hidden, encoder_hidden_states=context)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-6), tokens


def test_the_unet_uses_both_shortcuts_and_keeps_the_authors_parameter_names(tiny_models):
    from rain_core.models.cross_attention import SingleTokenCrossAttnProcessor
    from rain_core.models.upsampling import FoldedUpsample2D

    unet = tiny_models.denoising_unet
    cross = [m for name, m in unet.named_modules() if name.endswith(".attn2")]
    assert cross and all(isinstance(m.processor, SingleTokenCrossAttnProcessor) for m in cross)
    upsamplers = [m for m in unet.modules() if isinstance(m, FoldedUpsample2D)]
    assert len(upsamplers) == len(unet.up_blocks) - 1
    assert "up_blocks.0.upsamplers.0.conv.weight" in unet.state_dict()
