"""Frame sources and sinks that never hold a whole video in memory.

Sources (`open_pose_source`): a video file (PyAV), a folder of images (sorted by name) or a webcam
index. They yield RGB frames one at a time, float32 (H, W, 3) in [0, 1] by default or uint8 with
`as_uint8=True`, optionally letterboxed to a model size.

`letterbox` fits a frame into (height, width) without distortion (scaled to fit, centred, black bars)
and returns where the picture went, so coordinates and images can be mapped back.

A video file whose frames stop before the count its container lists, or fail to decode, raises
`VideoReadError` (with `.expected` and `.decoded`), so a damaged pose video is refused instead of cut short.

`VideoSink` writes H.264 yuv420p in an mp4/mov (PyAV, libx264: what browsers and ComfyUI's previews play), VP9
in a .webm, an animated .gif, or a folder of PNG frames (a name without a suffix); any other suffix is refused.
Output goes to a temporary sibling and is renamed into place by `close()`; on error or `abort()` the partial
output is removed and any earlier file at the path is left untouched.

Modules: `reading` (sources, probing, clips, the decoded-video cache), `sink` (VideoSink).
"""

from .reading import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    DecodedVideoCache,
    FrameSource,
    ImageFolderSource,
    LetterboxInfo,
    VideoClip,
    VideoFileSource,
    VideoInfo,
    VideoReadError,
    VideoSourceError,
    WebcamSource,
    letterbox,
    letterbox_info,
    open_pose_source,
    probe_video,
    read_video_frames,
)
from .sink import (
    H264_OPTIONS,
    VP9_OPTIONS,
    VideoSink,
    VideoSinkError,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "VideoSourceError",
    "VideoReadError",
    "LetterboxInfo",
    "letterbox_info",
    "letterbox",
    "FrameSource",
    "VideoInfo",
    "probe_video",
    "read_video_frames",
    "VideoClip",
    "DecodedVideoCache",
    "VideoFileSource",
    "ImageFolderSource",
    "WebcamSource",
    "open_pose_source",
    "VideoSinkError",
    "H264_OPTIONS",
    "VP9_OPTIONS",
    "VideoSink",
]
