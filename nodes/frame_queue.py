"""Frame Queue: collects the sampler's frames across runs and releases them at a steady pace."""

from __future__ import annotations

import base64
import io

from . import host
from .convert import frame_origins, image_batch, to_pil
from .registry import default_registry

PREVIEW_EVENT = "rain.frame"
PREVIEW_FRAMES = 4  # newest frames sent to the widget per run
PREVIEW_SIZE = 256  # longest side of a preview thumbnail, pixels


def _data_url(frame) -> str:
    buffer = io.BytesIO()
    to_pil(frame, PREVIEW_SIZE).save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class FrameQueueNode:
    CATEGORY = "RAIN"
    DESCRIPTION = ("Collects the frames RAIN Sampler emits, across runs, and hands them on at the target fps: each "
                   "run outputs the frames that are due (mode 'pace'), or holds everything until flush (mode "
                   "'collect', for saving a video fed in chunks). Shows the newest frames and the measured fps and "
                   "latency on the node. Output IMAGE batches go to Save Image, Preview Image, Create Video or "
                   "VideoHelperSuite's Video Combine.")
    RETURN_TYPES = ("IMAGE", "FLOAT", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "latency_ms", "queued")
    OUTPUT_TOOLTIPS = (
        "The frames released by this run. When none are due, the nodes fed from here do not run this time.",
        "The frame rate the queue paces at (its fps input), for Create Video / Video Combine.",
        "Mean time from each released frame's pose arriving (Pose Stream) to its release, milliseconds.",
        "Frames still waiting in the queue after this run.",
    )
    FUNCTION = "run"
    OUTPUT_NODE = True  # runs (and drives the preview widget) even with nothing connected downstream

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "Frames from RAIN Sampler (an empty batch is fine)."}),
                "mode": (["pace", "collect"], {
                    "default": "pace",
                    "tooltip": "pace: release the frames that are due at the target fps each run. collect: hold "
                               "every frame until a run with flush on, then release them all."}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 0.5,
                                  "tooltip": "Target output rate in frames per second. Connect RAIN Sampler's fps "
                                             "to pace at the pose source's rate."}),
                "capacity": ("INT", {"default": 512, "min": 1, "max": 100000,
                                     "tooltip": "Most frames the queue holds. What happens beyond it: see "
                                                "when_full."}),
                "when_full": (["error", "drop oldest", "release now"], {
                    "default": "error",
                    "tooltip": "Over capacity: error stops with a message and keeps the queued frames; drop oldest "
                               "discards the oldest frames (live previews); release now hands the excess on at "
                               "once (never drops a frame)."}),
                "flush": ("BOOLEAN", {"default": False,
                                      "tooltip": "Release every queued frame on this run (end of a video)."}),
                "preview": ("BOOLEAN", {"default": True,
                                        "tooltip": "Show the newest frames and fps/latency on this node."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def run(self, frames, mode, fps, capacity, when_full, flush, preview, unique_id=None):
        origins = frame_origins.get(frames)  # when each frame's pose arrived, for RAIN Sampler's output
        if frames.shape[0]:
            frames = image_batch(frames, "frames")
        # One queue per client and node: two browser tabs running the same workflow never mix their frames.
        queue_id = host.state_key("frame-queue", unique_id if unique_id is not None else id(self))
        queue = default_registry().frame_queue(queue_id, capacity=capacity, fps=fps, when_full=when_full)
        queue.push(frames, origins=origins)
        if flush:
            released = queue.pop_all()
        elif mode == "pace":
            released = queue.pop_due()
        else:  # collect: only what exceeds capacity under "release now" leaves before the flush
            released = queue.pop_excess()
        stats = queue.stats()
        count = 0 if released is None else int(released.shape[0])
        # `released`: frames handed on by this run; `released_total`: since the queue was created. Same names in
        # the websocket event and in the prompt history.
        report = {**stats.to_dict(), "released": count}
        if preview:
            shown = released if count else frames
            host.send_event(PREVIEW_EVENT, {
                "node": str(unique_id) if unique_id is not None else None,
                "images": [_data_url(frame) for frame in shown[-PREVIEW_FRAMES:]],
                **report,
            })
        output = released if count else host.ExecutionBlocker(None)  # nothing due: the consumers skip this run
        result = (output, float(queue.fps), float(stats.latency_ms), int(stats.queued))
        # The stats also go to the prompt's history (and to API clients) as this node's UI output.
        return {"ui": {"rain_stats": [report]}, "result": result}

