"""The synthetic world: procedural characters with exact ground truth (world.py) and their drawing (render.py).
Used by `rain demo`, the training data (`rain train --data synthetic`) and `bench/quality.py`; it needs no training."""

from .render import pose_frame, render_character, render_skeleton
from .world import (
           HELDOUT_BASE,
           MOTION_KINDS,
           PATTERNS,
           SPLITS,
           TEMPOS,
           WORLDS,
           BodyPose,
           Character,
           Motion,
           SyntheticWorld,
)

__all__ = ["HELDOUT_BASE", "MOTION_KINDS", "PATTERNS", "SPLITS", "TEMPOS", "WORLDS", "BodyPose", "Character", "Motion",
           "SyntheticWorld", "pose_frame", "render_character", "render_skeleton"]
