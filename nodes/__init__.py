"""The RAIN nodes. Node files are thin: they convert ComfyUI values, call rain_core, and convert back.

Node files import the engine (diffusers, PyAV, the live session) inside the functions that use it: ComfyUI imports
every pack when it starts, and this one takes 0.06 s that way instead of about 3 s. nodes/host.py imports ComfyUI's
own modules lazily too: they exist only inside ComfyUI, and the tests run the nodes without it."""

from pathlib import Path

from . import host
from .frame_queue import FrameQueueNode
from .keypoints import LoadPoseKeypoints
from .model_loader import LoadRainModel
from .pose_stream import PoseStream
from .sampler import RainSampler

host.register_model_folders()
# The shipped workflows name these inputs: copy them into ComfyUI's input folder (never over a user's file).
host.install_examples(Path(__file__).resolve().parent.parent / "examples")
host.install_examples(Path(__file__).resolve().parent.parent / "examples" / "keypoints", (".json",))

NODE_CLASS_MAPPINGS = {
    "LoadRainModel": LoadRainModel,
    "RainPoseStream": PoseStream,
    "RainSampler": RainSampler,
    "RainFrameQueue": FrameQueueNode,
    "RainLoadPoseKeypoints": LoadPoseKeypoints,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadRainModel": "Load RAIN Model",
    "RainPoseStream": "Pose Stream",
    "RainSampler": "RAIN Sampler",
    "RainFrameQueue": "Frame Queue",
    "RainLoadPoseKeypoints": "Load Pose Keypoints (JSON)",
}
