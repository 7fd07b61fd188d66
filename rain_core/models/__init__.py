"""RAIN networks (no sampling logic): UNets over frames, motion modules, reference attention, pose guider,
codecs, TAESDV and the CLIP image encoder."""

from .bundle import RainModels, guidance_embedding
from .codecs import SpaceToDepthCodec, VaeCodec
from .config import ClipConfig, MotionConfig, RainModelConfig
from .image_encoder import ClipImageEncoder
from .motion import MotionModule
from .pose_guider import PoseGuider
from .reference import ReferenceCache
from .taesdv import TAESDV
from .unet import DenoisingUNet, ReferenceUNet

__all__ = [
    "ClipConfig",
    "ClipImageEncoder",
    "DenoisingUNet",
    "MotionConfig",
    "MotionModule",
    "PoseGuider",
    "RainModelConfig",
    "RainModels",
    "ReferenceCache",
    "ReferenceUNet",
    "SpaceToDepthCodec",
    "TAESDV",
    "VaeCodec",
    "guidance_embedding",
]
