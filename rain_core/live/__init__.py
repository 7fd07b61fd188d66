"""Live sources: frames arrive at the camera's pace, the engine takes them at its own, latency stays bounded.

A camera does not wait for the engine. When the engine is slower than the source, frames must be dropped
at the door, not queued: a queue that grows without bound turns into seconds of latency. `FrameIntake`
holds at most `capacity` frames; a frame that arrives when it is full pushes out the oldest waiting frame
(counted as dropped), so the engine always takes the newest frames. Frames the engine never takes are never
decoded.

`LiveSession` owns one `RainStream` and turns live frames into pose frames in one of three modes:
  - "pose": the frames are pose renders already (a pose video), used as they are;
  - "detect": DWPose finds the body, hands and face, drawn as a DWPose skeleton (needs the optional detector);
  - "face_morph": DWPose's face landmarks remapped to anime proportions (the authors' live demo), with
    parameters that can change while streaming and apply from the next tick.
A frame can also arrive as a `PoseFrame` (keypoints found elsewhere), which skips the detector.

Every output frame carries the sequence number and capture timestamp of the input frame it animates, so a
client can measure latency from capture to display; the session measures its own share (received → emitted)
and the structural floor, the look-ahead of window − 1 frames: a frame cannot leave before the poses of the
window − 1 frames after it have arrived. Nothing here imports ComfyUI; the ComfyUI route (nodes/live_route.py)
and the `rain` command drive the same session.

Modules: `frames` (intake, checks, codecs, meters), `recorder` (LiveRecorder), `session` (LiveSession, networks_lock).
"""

from .frames import (
    DETECTOR_FILES_HINT,
    LIVE_MODES,
    MAX_FRAME_BYTES,
    MAX_FRAME_SIDE,
    FrameIntake,
    LatencyMeter,
    LiveFrame,
    LiveInputError,
    LiveOutput,
    LiveSourceError,
    RateMeter,
    as_uint8,
    check_frame_bytes,
    decode_frame,
    encode_jpeg,
)
from .recorder import (
    LiveRecorder,
)
from .session import (
    FairLock,
    LiveSession,
    LiveSettings,
    networks_lock,
)

__all__ = [
    "LIVE_MODES",
    "DETECTOR_FILES_HINT",
    "MAX_FRAME_BYTES",
    "MAX_FRAME_SIDE",
    "LiveInputError",
    "LiveSourceError",
    "check_frame_bytes",
    "decode_frame",
    "encode_jpeg",
    "as_uint8",
    "LiveFrame",
    "LiveOutput",
    "FrameIntake",
    "RateMeter",
    "LatencyMeter",
    "LiveRecorder",
    "FairLock",
    "networks_lock",
    "LiveSettings",
    "LiveSession",
]
