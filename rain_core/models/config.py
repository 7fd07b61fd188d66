"""Sizes of the RAIN networks: one dataclass builds the released SD-1.5 size and the tiny test sizes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

CODEC_KINDS = ("vae", "space_to_depth")


@dataclass
class MotionConfig:
    """AnimateDiff "Vanilla" temporal transformer settings (the authors' `motion_module_kwargs`)."""

    num_attention_heads: int = 8
    num_transformer_blocks: int = 1
    attention_blocks: int = 2  # "Temporal_Self", "Temporal_Self"
    max_frames: int = 32  # length of the sinusoidal position table (temporal_position_encoding_max_len)
    norm_num_groups: int = 32  # the authors hard-code 32 in TemporalTransformer3DModel


@dataclass
class ClipConfig:
    """Shape of the CLIP vision tower (`CLIPVisionModelWithProjection`); `projection_dim` must equal the UNets'
    cross-attention dim because its `image_embeds` token is their context."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768


@dataclass
class RainModelConfig:
    """Everything needed to build the RAIN networks at any size.

    `sd15()` is the released size (authors' configs/unet.json + rain_morpher.yaml unet_additional_kwargs);
    `tiny()` builds the same classes small enough for CPU tests and the tiny trainable model.
    """

    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    # per down block: whether it has spatial transformers (SD: CrossAttnDownBlock x3, DownBlock); up blocks mirror it
    cross_attention_blocks: tuple[bool, ...] = (True, True, True, False)
    # per down block: whether it and its mirrored up block have motion modules (None: every level, as in AnimateDiff
    # and the release; the mid block has them whenever `motion` is set). Dropping the full-resolution level's motion
    # modules is what makes the built-in model fast on a CPU.
    motion_blocks: tuple[bool, ...] | None = None
    layers_per_block: int = 2
    attention_heads: int = 8  # SD-1.5's `attention_head_dim: 8` is in fact the head count
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cond_proj_dim: int | None = 512  # LCM w-embedding size; None builds a UNet without it
    motion: MotionConfig | None = field(default_factory=MotionConfig)  # None: motion-free (m = 1 baseline)
    pose_guider_channels: tuple[int, ...] = (16, 32, 96, 256)  # one stride-2 conv per step: 3 steps -> 1/8
    codec: str = "vae"  # "vae" (AutoencoderKL) or "space_to_depth" (exact pixel_unshuffle)
    codec_factor: int = 8  # spatial downscale of the codec
    vae_scaling_factor: float = 0.18215
    vae: dict | None = None  # AutoencoderKL config for a built-from-scratch VAE (None: loaded from a folder)
    clip: ClipConfig = field(default_factory=ClipConfig)
    taesdv_channels: int | None = 64  # None: no TAESDV fast decoder
    # width of the timestep sinusoid (the time MLP is 4 × this); None: the top level's width, as in SD-1.5. A model
    # whose top level was narrowed keeps its old time embedding, so every level's time conditioning is unchanged.
    time_channels: int | None = None
    # (height, width) in pixels of the frames the model was trained on; None: by its codec (`own_frame_size`).
    frame_size: tuple[int, int] | None = None

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        self.cross_attention_blocks = tuple(self.cross_attention_blocks)
        if self.motion_blocks is not None:
            self.motion_blocks = tuple(bool(flag) for flag in self.motion_blocks)
        self.pose_guider_channels = tuple(self.pose_guider_channels)
        if self.frame_size is not None:
            self.frame_size = tuple(int(side) for side in self.frame_size)
        if isinstance(self.motion, dict):
            self.motion = MotionConfig(**self.motion)
        if isinstance(self.clip, dict):
            self.clip = ClipConfig(**self.clip)
        self.validate()

    def validate(self) -> None:
        def fail(message):
            raise ValueError(f"RainModelConfig: {message}")

        if self.codec not in CODEC_KINDS:
            fail(f"codec must be one of {CODEC_KINDS}, found {self.codec!r}")
        if len(self.cross_attention_blocks) != len(self.block_out_channels):
            fail("cross_attention_blocks needs one entry per block_out_channels entry")
        if self.motion_blocks is not None and len(self.motion_blocks) != len(self.block_out_channels):
            fail("motion_blocks needs one entry per block_out_channels entry (or None for every level)")
        pose_downscale = 2 ** (len(self.pose_guider_channels) - 1)
        if pose_downscale != self.codec_factor:
            fail(
                f"the pose guider downsamples by {pose_downscale} ({len(self.pose_guider_channels) - 1} stride-2 convs) "
                f"but the codec by {self.codec_factor}; use {_log2(self.codec_factor) + 1} pose_guider_channels"
            )
        if self.time_channels is not None and (self.time_channels < 2 or self.time_channels % 2):
            fail(f"time_channels must be an even number of at least 2 (or None for the top width), found {self.time_channels}")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups or channels % self.attention_heads:
                fail(f"block channels {channels} must be divisible by norm_num_groups and attention_heads")
            if self.motion is not None and (
                channels % self.motion.norm_num_groups or channels % self.motion.num_attention_heads
            ):
                fail(f"block channels {channels} must be divisible by the motion module's groups and heads")
        if self.clip.projection_dim != self.cross_attention_dim:
            fail("clip.projection_dim must equal cross_attention_dim (the CLIP token is the cross-attention context)")
        if self.codec == "space_to_depth" and self.latent_channels != 3 * self.codec_factor**2:
            fail(f"space_to_depth with factor {self.codec_factor} gives {3 * self.codec_factor**2} latent channels")
        if self.frame_size is not None and (len(self.frame_size) != 2 or min(self.frame_size) < 1):
            fail(f"frame_size must be (height, width) in pixels or None, found {self.frame_size}")

    def own_frame_size(self) -> tuple[int, int]:
        """The one answer to "the model's own size", (height, width): `frame_size` when the config records it,
        else by the codec: 512×512 for the SD VAE (the released RAIN-v0.1 works at 512²), 64×64 for the
        pixel codec of the tiny family. Streams, nodes, the CLI and the live panel all ask here when a size is 0."""
        if self.frame_size is not None:
            return self.frame_size
        return (512, 512) if self.codec == "vae" else (64, 64)

    def has_motion(self, level: int) -> bool:
        """Whether the down block `level` (and the up block that mirrors it) has motion modules."""
        return self.motion is not None and (self.motion_blocks is None or self.motion_blocks[level])

    @property
    def time_proj_channels(self) -> int:
        """Width of the timestep sinusoid."""
        return self.time_channels or self.block_out_channels[0]

    @property
    def time_embed_dim(self) -> int:
        return self.time_proj_channels * 4

    @property
    def pose_channels(self) -> int:
        """Channels of the pose feature: the output of the denoising UNet's conv_in."""
        return self.block_out_channels[0]

    @classmethod
    def sd15(cls) -> RainModelConfig:
        """The released RAIN-v0.1 networks (SD-1.5 UNets, sd-vae-ft-mse, CLIP ViT-L/14, TAESDV)."""
        return cls()

    @classmethod
    def tiny(
        cls,
        block_out_channels=(32, 32, 64, 64),
        cross_attention_dim: int = 32,
        attention_heads: int = 4,
        codec: str = "space_to_depth",
        codec_factor: int = 2,
        motion: bool = True,
        norm_num_groups: int = 8,
        cond_proj_dim: int | None = 32,
        clip_hidden_size: int = 32,
        clip_layers: int = 2,
        clip_image_size: int = 32,
        taesdv_channels: int | None = None,
        layers_per_block: int = 1,
        cross_attention_blocks: tuple[bool, ...] | None = None,
        motion_blocks: tuple[bool, ...] | None = None,
    ) -> RainModelConfig:
        """A small RAIN for tests and the tiny trainable default (space_to_depth ×2: 64 px -> 12×32×32 latent).

        The pose guider gets one stride-2 conv per halving of the codec, so pose features always land on the
        latent grid. With codec="vae" a small AutoencoderKL (×8, 4 channels) is built from scratch.
        `cross_attention_blocks` (one flag per level) defaults to transformers on every level but the deepest, as in SD.
        """
        steps = _log2(codec_factor)
        pose_channels = tuple([8, 16, 16, 32][: steps + 1]) if steps <= 3 else (8,) + (16,) * steps
        if codec == "space_to_depth":
            latent_channels, vae = 3 * codec_factor**2, None
        else:
            latent_channels = 4
            down = steps + 1
            vae = {
                "in_channels": 3,
                "out_channels": 3,
                "latent_channels": 4,
                "down_block_types": ["DownEncoderBlock2D"] * down,
                "up_block_types": ["UpDecoderBlock2D"] * down,
                "block_out_channels": [16] * down,
                "layers_per_block": 1,
                "norm_num_groups": 8,
            }
        return cls(
            latent_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            cross_attention_blocks=tuple(cross_attention_blocks)
            if cross_attention_blocks is not None
            else (True,) * (len(block_out_channels) - 1) + (False,),
            motion_blocks=motion_blocks,  # __post_init__ makes it a tuple
            layers_per_block=layers_per_block,
            attention_heads=attention_heads,
            cross_attention_dim=cross_attention_dim,
            norm_num_groups=norm_num_groups,
            cond_proj_dim=cond_proj_dim,
            motion=MotionConfig(num_attention_heads=attention_heads, norm_num_groups=norm_num_groups)
            if motion
            else None,
            pose_guider_channels=pose_channels,
            codec=codec,
            codec_factor=codec_factor,
            vae=vae,
            clip=ClipConfig(
                hidden_size=clip_hidden_size,
                intermediate_size=clip_hidden_size * 2,
                num_hidden_layers=clip_layers,
                num_attention_heads=2,
                image_size=clip_image_size,
                patch_size=8,
                projection_dim=cross_attention_dim,
            ),
            taesdv_channels=taesdv_channels,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RainModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"RainModelConfig: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)


def _log2(n: int) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"RainModelConfig: codec_factor must be a power of two, found {n}")
    return n.bit_length() - 1
