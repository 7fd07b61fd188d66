"""The SD-1.5 UNet of RAIN, per frame: one class builds the reference UNet (2D, no motion, no output head)
and the denoising UNet (motion modules, w-embedding, pose features, reference attention).

Every 2D op runs on frames folded into the batch, "(b f) c h w": convolutions, GroupNorm (per frame, like the
authors' InflatedGroupNorm), spatial transformers; the time embedding is computed per frame, so each frame of
a window can sit at its own noise level. Only the motion modules look across frames. Parameter names equal
the authors' checkpoints (and diffusers' UNet2DConditionModel for the shared parts).

Both UNets are diffusers `ModelMixin`s: `enable_gradient_checkpointing()` recomputes each down/mid/up block in
the backward pass, handing the recomputation the reference-attention state the block saw in the forward.
They are not `ConfigMixin`s: one `RainModelConfig` sizes every network of a model and is saved once, in
rain_config.json, beside the authors' file names (rain_core/loading.py); a config.json per UNet would split it.
"""

from __future__ import annotations

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from einops import rearrange
from torch import nn

from .config import RainModelConfig
from .cross_attention import use_single_token_cross_attention
from .motion import MotionModule
from .reference import CaptureProcessor, ReferenceAttnProcessor, ReferenceCache
from .upsampling import FoldedUpsample2D


class _Block(nn.Module):
    """A down, mid or up block: resnet -> spatial transformer -> motion module, repeated. The UNet's
    `enable_gradient_checkpointing()` sets `gradient_checkpointing` (the attribute diffusers looks for)."""

    gradient_checkpointing = False
    _gradient_checkpointing_func = None

    def _run_layer(self, i, hidden, temb, context, num_frames):
        hidden = self.resnets[i](hidden, temb)
        if self.attentions is not None:
            hidden = self.attentions[i](hidden, encoder_hidden_states=context, return_dict=False)[0]
        if self.motion_modules is not None:
            hidden = self.motion_modules[i](hidden, num_frames)
        return hidden


def _transformers(config: RainModelConfig, channels: int, count: int) -> nn.ModuleList:
    return nn.ModuleList(
        Transformer2DModel(
            num_attention_heads=config.attention_heads,
            attention_head_dim=channels // config.attention_heads,
            in_channels=channels,
            num_layers=1,
            cross_attention_dim=config.cross_attention_dim,
            norm_num_groups=config.norm_num_groups,
        )
        for _ in range(count)
    )


def _resnet(config: RainModelConfig, in_channels: int, out_channels: int) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_channels,
        out_channels=out_channels,
        temb_channels=config.time_embed_dim,
        eps=config.norm_eps,
        groups=config.norm_num_groups,
    )


def _motion(config: RainModelConfig, channels: int, count: int) -> nn.ModuleList | None:
    if config.motion is None:
        return None
    return nn.ModuleList(MotionModule(channels, config.motion) for _ in range(count))


class DownBlock(_Block):
    def __init__(self, config, in_channels, out_channels, cross_attention, motion, downsample):
        super().__init__()
        layers = config.layers_per_block
        self.resnets = nn.ModuleList(
            _resnet(config, in_channels if i == 0 else out_channels, out_channels) for i in range(layers)
        )
        self.attentions = _transformers(config, out_channels, layers) if cross_attention else None
        self.motion_modules = _motion(config, out_channels, layers) if motion else None
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")])
            if downsample
            else None
        )

    def forward(self, hidden, temb, context, num_frames):
        skips = ()
        for i in range(len(self.resnets)):
            hidden = self._run_layer(i, hidden, temb, context, num_frames)
            skips += (hidden,)
        if self.downsamplers is not None:
            hidden = self.downsamplers[0](hidden)
            skips += (hidden,)
        return hidden, skips


class MidBlock(_Block):
    """resnet, then (transformer -> motion -> resnet); the authors' UNetMidBlock3DCrossAttn order."""

    def __init__(self, config, channels, motion):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(config, channels, channels), _resnet(config, channels, channels)])
        self.attentions = _transformers(config, channels, 1)
        self.motion_modules = _motion(config, channels, 1) if motion else None

    def forward(self, hidden, temb, context, num_frames):
        hidden = self.resnets[0](hidden, temb)
        hidden = self.attentions[0](hidden, encoder_hidden_states=context, return_dict=False)[0]
        if self.motion_modules is not None:
            hidden = self.motion_modules[0](hidden, num_frames)
        return self.resnets[1](hidden, temb)


class UpBlock(_Block):
    def __init__(self, config, in_channels, prev_channels, out_channels, cross_attention, motion, upsample):
        super().__init__()
        layers = config.layers_per_block + 1
        self.resnets = nn.ModuleList(
            _resnet(
                config,
                (prev_channels if i == 0 else out_channels) + (in_channels if i == layers - 1 else out_channels),
                out_channels,
            )
            for i in range(layers)
        )
        self.attentions = _transformers(config, out_channels, layers) if cross_attention else None
        self.motion_modules = _motion(config, out_channels, layers) if motion else None
        if upsample:
            self.upsamplers = nn.ModuleList([FoldedUpsample2D(out_channels, use_conv=True, out_channels=out_channels)])
        else:
            self.upsamplers = None

    def forward(self, hidden, skips, temb, context, num_frames, upsample_size=None):
        for i in range(len(self.resnets)):
            hidden = torch.cat([hidden, skips[-1]], dim=1)
            skips = skips[:-1]
            hidden = self._run_layer(i, hidden, temb, context, num_frames)
        if self.upsamplers is not None:
            hidden = self.upsamplers[0](hidden, output_size=upsample_size)
        return hidden


class _ReplayReference:
    """Calls a block with the reference-attention state its processors hold now (the reference tokens or K/V
    and frame count they read; the tokens the reference UNet's capture records). Gradient checkpointing
    recomputes the block in the backward pass, after the UNet has cleared that state; this puts it back for the
    recomputation and restores what was there after, so nothing recomputed outlives the backward pass."""

    def __init__(self, block: nn.Module):
        self.block = block
        self.processors = [
            m.processor
            for m in block.modules()
            if isinstance(getattr(m, "processor", None), (ReferenceAttnProcessor, CaptureProcessor))
        ]
        self.state = [dict(vars(p)) for p in self.processors]
        self.forward_done = False

    def __call__(self, *args):
        if not self.forward_done:  # the forward pass itself: the processors hold its state already
            self.forward_done = True
            return self.block(*args)
        previous = [dict(vars(p)) for p in self.processors]
        for processor, state in zip(self.processors, self.state):
            vars(processor).update(state)
        try:
            return self.block(*args)
        finally:
            for processor, state in zip(self.processors, previous):
                vars(processor).update(state)


class _RainUNet(ModelMixin):
    """The SD-1.5 trunk over frames folded into the batch. `denoising` adds what only the video UNet has:
    motion modules, the w-embedding `cond_proj` and the output head (the released reference_unet.pth has no
    conv_norm_out/conv_out: the reference pass only needs the captured tokens)."""

    _supports_gradient_checkpointing = True

    def __init__(self, config: RainModelConfig, denoising: bool, processor):
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        motion = denoising and config.motion is not None

        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(config.time_proj_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(
            config.time_proj_channels, config.time_embed_dim, cond_proj_dim=config.cond_proj_dim if denoising else None
        )
        if self.time_embedding.cond_proj is not None:
            nn.init.zeros_(self.time_embedding.cond_proj.weight)  # a fresh w-embedding changes nothing

        self.down_blocks = nn.ModuleList()
        out_channels = channels[0]
        for i, attention in enumerate(config.cross_attention_blocks):
            in_channels, out_channels = out_channels, channels[i]
            self.down_blocks.append(
                DownBlock(
                    config,
                    in_channels,
                    out_channels,
                    attention,
                    motion and config.has_motion(i),
                    downsample=i < len(channels) - 1,
                )
            )
        self.mid_block = MidBlock(config, channels[-1], motion)

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(channels))
        out_channels = reversed_channels[0]
        for i, attention in enumerate(reversed(config.cross_attention_blocks)):
            prev_channels, out_channels = out_channels, reversed_channels[i]
            in_channels = reversed_channels[min(i + 1, len(channels) - 1)]
            self.up_blocks.append(
                UpBlock(
                    config,
                    in_channels,
                    prev_channels,
                    out_channels,
                    attention,
                    motion and config.has_motion(len(channels) - 1 - i),
                    upsample=i < len(channels) - 1,
                )
            )

        if denoising:
            self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, channels[0], eps=config.norm_eps)
            self.conv_act = nn.SiLU()
            self.conv_out = nn.Conv2d(channels[0], config.latent_channels, kernel_size=3, padding=1)

        # the spatial self-attentions that read (or, in the reference UNet, write) reference tokens;
        # a plain dict keeps them out of the module tree (they are already registered where they live)
        self.reference_layers: dict[str, nn.Module] = {}
        for name, module in self.named_modules():
            if name.endswith("transformer_blocks.0.attn1") and "motion_modules" not in name:
                module.set_processor(processor())
                self.reference_layers[name] = module
        use_single_token_cross_attention(self)  # attn2 sees one CLIP token: its output is that token's value

    def _time_embedding(self, timesteps: torch.Tensor, guidance: torch.Tensor | None, dtype) -> torch.Tensor:
        """timesteps (B, F) -> per-frame embedding (B*F, time_embed_dim)."""
        batch, frames = timesteps.shape
        t_emb = self.time_proj(timesteps.reshape(-1)).to(dtype)
        condition = None
        if guidance is not None:
            if self.time_embedding.cond_proj is None:
                raise ValueError("guidance_embedding given, but this UNet has no cond_proj (cond_proj_dim is None)")
            if guidance.shape[0] not in (1, batch):
                raise ValueError(f"guidance_embedding: expected batch 1 or {batch}, found {guidance.shape[0]}")
            condition = guidance.to(dtype).expand(batch, -1).repeat_interleave(frames, dim=0)
        return self.time_embedding(t_emb, condition)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        """What diffusers' `enable_gradient_checkpointing()` / `disable_gradient_checkpointing()` call. Only our
        blocks are checkpointed (diffusers would also flag the Transformer2DModels inside them, whose
        recomputation could not see the reference state: see `_ReplayReference`)."""
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = enable
            block._gradient_checkpointing_func = gradient_checkpointing_func

    def _block(self, block: _Block, *args):
        if block.gradient_checkpointing and torch.is_grad_enabled():
            return block._gradient_checkpointing_func(_ReplayReference(block), *args)
        return block(*args)

    def _trunk(self, hidden, temb, context, num_frames, pose_features=None):
        hidden = self.conv_in(hidden)
        if pose_features is not None:
            hidden = hidden + pose_features  # the pose guider's output joins right after conv_in
        # like the authors: force the upsample sizes when the latent is not a multiple of the total downscale
        overall = 2 ** (len(self.up_blocks) - 1)
        force_size = any(s % overall for s in hidden.shape[-2:])
        skips = (hidden,)
        for block in self.down_blocks:
            hidden, block_skips = self._block(block, hidden, temb, context, num_frames)
            skips += block_skips
        hidden = self._block(self.mid_block, hidden, temb, context, num_frames)
        for i, block in enumerate(self.up_blocks):
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            size = skips[-1].shape[-2:] if force_size and i < len(self.up_blocks) - 1 else None
            hidden = self._block(block, hidden, block_skips, temb, context, num_frames, size)
        return hidden


class ReferenceUNet(_RainUNet):
    """2D reference UNet: one pass at t = 0 over the reference latent captures the reference tokens."""

    def __init__(self, config: RainModelConfig):
        super().__init__(config, denoising=False, processor=CaptureProcessor)

    def forward(self, ref_latent: torch.Tensor, clip_tokens: torch.Tensor) -> ReferenceCache:
        """ref_latent (B, C, h, w) (codec latent, already scaled), clip_tokens (B, 1, D) -> ReferenceCache."""
        if ref_latent.dim() != 4:
            raise ValueError(f"reference latent: expected (B, C, h, w), found shape {tuple(ref_latent.shape)}")
        batch = ref_latent.shape[0]
        timesteps = torch.zeros(batch, 1, device=ref_latent.device, dtype=torch.float32)
        temb = self._time_embedding(timesteps, None, ref_latent.dtype)
        try:
            self._trunk(ref_latent, temb, clip_tokens.to(ref_latent.dtype), num_frames=1)
            return ReferenceCache({name: layer.processor.captured for name, layer in self.reference_layers.items()})
        finally:
            for layer in self.reference_layers.values():
                layer.processor.captured = None


class DenoisingUNet(_RainUNet):
    """The video UNet: per-frame timesteps, pose features, w-embedding, reference attention, motion modules."""

    def __init__(self, config: RainModelConfig):
        super().__init__(config, denoising=True, processor=ReferenceAttnProcessor)

    def reference_kv(self, reference: ReferenceCache) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """K/V projections of the reference tokens by this UNet's attn1 layers; computed on first use and kept
        in the cache, so a tick never recomputes anything about the reference."""
        for name, attn in self.reference_layers.items():
            if name not in reference.kv:
                tokens = reference.tokens[name]
                reference.kv[name] = (attn.to_k(tokens), attn.to_v(tokens))
        return reference.kv

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        clip_tokens: torch.Tensor,
        pose_features: torch.Tensor | None = None,
        guidance_embedding: torch.Tensor | None = None,
        reference: ReferenceCache | None = None,
        use_reference_kv_cache: bool = True,
    ) -> torch.Tensor:
        """sample (B,C,F,h,w); timesteps (B,F) per frame (a scalar or (B,) means the same t for all frames);
        clip_tokens (B,1,D); pose_features (B,Cp,F,h,w); guidance_embedding (B,cond_proj_dim) or None;
        reference: the ReferenceCache of the reference image (None: plain self-attention).
        use_reference_kv_cache=False recomputes the reference K/V from the tokens (training, checks).
        Returns the v prediction (B,C,F,h,w)."""
        if sample.dim() != 5:
            raise ValueError(f"sample: expected (B, C, F, h, w), found shape {tuple(sample.shape)}")
        batch, _, frames = sample.shape[:3]
        timesteps = _per_frame_timesteps(timesteps, batch, frames, sample.device)
        temb = self._time_embedding(timesteps, guidance_embedding, sample.dtype)
        context = clip_tokens.to(sample.dtype).expand(batch, -1, -1).repeat_interleave(frames, dim=0)
        hidden = rearrange(sample, "b c f h w -> (b f) c h w")
        pose = rearrange(pose_features, "b c f h w -> (b f) c h w") if pose_features is not None else None

        per_layer = {}
        if reference is not None:
            per_layer = self.reference_kv(reference) if use_reference_kv_cache else reference.tokens
        try:
            for name, layer in self.reference_layers.items():
                layer.processor.reference = per_layer.get(name)
                layer.processor.num_frames = frames
            hidden = self._trunk(hidden, temb, context, frames, pose)
        finally:
            for layer in self.reference_layers.values():
                layer.processor.reference = None
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return rearrange(hidden, "(b f) c h w -> b c f h w", f=frames)


def _per_frame_timesteps(timesteps, batch: int, frames: int, device) -> torch.Tensor:
    timesteps = torch.as_tensor(timesteps, device=device)
    if timesteps.dim() == 0:
        timesteps = timesteps.expand(batch)
    if timesteps.dim() == 1:
        timesteps = timesteps[:, None].expand(batch, frames) if timesteps.shape[0] == batch else timesteps[None]
    if timesteps.shape != (batch, frames):
        raise ValueError(
            f"timesteps: expected shape (batch, frames) = ({batch}, {frames}), found {tuple(timesteps.shape)}"
        )
    return timesteps
