"""Writes the example workflows (ComfyUI UI format, version 0.4) and their .jpg thumbnails.

Run from the repository root after changing a node's inputs: '.venv/bin/python workflows/make_workflows.py'.
tests/test_workflows.py checks the written files against the nodes, so a stale workflow fails there.
Widget values are positional, in the order of each node's widget inputs, as the front end saves them.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"

# Sockets of the nodes used here: (inputs [(name, type)], outputs [(name, type)]).
SOCKETS = {
    "LoadRainModel": ([], [("rain_model", "RAIN_MODEL")]),
    "RainPoseStream": ([("pose_images", "IMAGE"), ("pose_keypoint", "POSE_KEYPOINT"), ("video_frames", "IMAGE"),
                        ("reference_pose", "POSE_KEYPOINT")], [("poses", "RAIN_POSES"), ("pose_preview", "IMAGE")]),
    "RainSampler": ([("rain_model", "RAIN_MODEL"), ("reference", "IMAGE"), ("poses", "RAIN_POSES")],
                    [("frames", "IMAGE")]),
    "RainFrameQueue": ([("frames", "IMAGE")], [("frames", "IMAGE"), ("fps", "FLOAT"), ("latency_ms", "FLOAT"),
                                               ("queued", "INT")]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "LoadVideo": ([], [("VIDEO", "VIDEO")]),
    "GetVideoComponents": ([("video", "VIDEO")], [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
    "CreateVideo": ([("images", "IMAGE"), ("audio", "AUDIO")], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "SaveImage": ([("images", "IMAGE")], []),
    "DWPreprocessor": ([("image", "IMAGE")], [("IMAGE", "IMAGE"), ("POSE_KEYPOINT", "POSE_KEYPOINT")]),
    "Note": ([], []),
}

FACE_DEFAULTS = [0.75, 3.0, 1.6, 1.2, 0.67, 0.9]
DWPOSE_WIDGETS = ["enable", "enable", "enable", 512, "yolox_l.onnx", "dw-ll_ucoco_384_bs5.torchscript.pt", "disable"]


def pose_stream(mode="body", video_path="", start_frame=0, frames_per_run=0, loop=False, smoothing=0.0,
                align=False, face=None):
    return [mode, video_path, start_frame, frames_per_run, loop, smoothing, align, *(face or FACE_DEFAULTS)]


def sampler(width=512, height=512, levels=4, frames_per_cohort=4, steps=4, guidance=3.5, seed=0, stream_id="rain",
            reset=False, flush=False):
    return [width, height, levels, frames_per_cohort, steps, guidance, seed, stream_id, reset, flush]


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, kind, widgets, pos, size=(320, 260), title=None):
        inputs, outputs = SOCKETS[kind]
        node = {"id": len(self.nodes) + 1, "type": kind, "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": kind}, "widgets_values": widgets}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def note(self, text, pos, size=(420, 220)):
        return self.add("Note", [text], pos, size, title="Read me")

    def link(self, source, output, target, input_name):
        slot = next(i for i, o in enumerate(source["outputs"]) if o["name"] == output)
        socket = next(i for i, s in enumerate(target["inputs"]) if s["name"] == input_name)
        kind = source["outputs"][slot]["type"]
        link_id = len(self.links) + 1
        self.links.append([link_id, source["id"], slot, target["id"], socket, kind])
        source["outputs"][slot]["links"].append(link_id)
        target["inputs"][socket]["link"] = link_id

    def workflow(self):
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(self.links))), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                "version": 0.4}


def animate_pose_video():
    """(1) Reference image + rendered pose video -> animation file. Core nodes and ours only; no downloads."""
    g = Graph()
    g.note("Reference image + pose video -> animation (no downloads: the built-in tiny-rain model).\n\n"
           "Put 'anyone-1.png' (the character) and 'anyone-video-1_kps.mp4' (a rendered DWPose skeleton video) "
           "in ComfyUI/input, or pick your own. For the released RAIN weights choose them in Load RAIN Model and "
           "set width/height to 512. The video is written to output/rain/.", (0, -260))
    model = g.add("LoadRainModel", ["tiny-rain (built-in)", "auto", "auto", "auto", "auto", "auto", True], (0, 0))
    reference = g.add("LoadImage", ["anyone-1.png", "image"], (0, 300), (320, 360))
    video = g.add("LoadVideo", ["anyone-video-1_kps.mp4", "image"], (360, 300), (320, 360))
    components = g.add("GetVideoComponents", [], (720, 300), (240, 90))
    poses = g.add("RainPoseStream", pose_stream(), (1000, 300), (320, 480))
    rain = g.add("RainSampler", sampler(width=64, height=64, flush=True, stream_id="pose-video"), (1360, 0),
                 (320, 380))
    create = g.add("CreateVideo", [16.0], (1720, 0), (260, 90))
    save = g.add("SaveVideo", ["rain/animation", "auto", "auto"], (2020, 0), (360, 360))
    g.link(video, "VIDEO", components, "video")
    g.link(components, "images", poses, "pose_images")
    g.link(model, "rain_model", rain, "rain_model")
    g.link(reference, "IMAGE", rain, "reference")
    g.link(poses, "poses", rain, "poses")
    g.link(rain, "frames", create, "images")
    g.link(create, "VIDEO", save, "video")
    return g.workflow()


def dwpose_to_rain():
    """(2) Any video -> comfyui_controlnet_aux DWPose -> RAIN, poses aligned to the reference."""
    g = Graph()
    g.note("DWPose -> RAIN. Needs the comfyui_controlnet_aux pack "
           "(github.com/Fannovel16/comfyui_controlnet_aux; install it with ComfyUI-Manager). DWPose Estimator "
           "downloads its detector files on first use. The second estimator measures the reference character so "
           "Pose Stream can align the dancer's body to it.", (0, -260))
    model = g.add("LoadRainModel", ["tiny-rain (built-in)", "auto", "auto", "auto", "auto", "auto", True], (0, 0))
    reference = g.add("LoadImage", ["anyone-2.png", "image"], (0, 300), (320, 360))
    video = g.add("LoadVideo", ["dance.mp4", "image"], (360, 300), (320, 360))
    components = g.add("GetVideoComponents", [], (720, 300), (240, 90))
    detect = g.add("DWPreprocessor", DWPOSE_WIDGETS, (1000, 300), (320, 260), title="DWPose Estimator (video)")
    detect_reference = g.add("DWPreprocessor", DWPOSE_WIDGETS, (1000, 620), (320, 260),
                             title="DWPose Estimator (reference)")
    poses = g.add("RainPoseStream", pose_stream(smoothing=0.3, align=True), (1360, 300), (320, 480))
    rain = g.add("RainSampler", sampler(flush=True, stream_id="dwpose"), (1720, 0), (320, 380))
    create = g.add("CreateVideo", [16.0], (2080, 0), (260, 90))
    save = g.add("SaveVideo", ["rain/dwpose", "auto", "auto"], (2380, 0), (360, 360))
    g.link(video, "VIDEO", components, "video")
    g.link(components, "images", detect, "image")
    g.link(reference, "IMAGE", detect_reference, "image")
    g.link(detect, "POSE_KEYPOINT", poses, "pose_keypoint")
    g.link(detect_reference, "POSE_KEYPOINT", poses, "reference_pose")
    g.link(model, "rain_model", rain, "rain_model")
    g.link(reference, "IMAGE", rain, "reference")
    g.link(poses, "poses", rain, "poses")
    g.link(rain, "frames", create, "images")
    g.link(create, "VIDEO", save, "video")
    return g.workflow()


def live_preview():
    """(3) A looping pose video as a live source under Auto Queue -> Frame Queue preview."""
    g = Graph()
    g.note("Live stream. Turn on Auto Queue (Queue button menu -> Instant). Every run Pose Stream reads "
           "the next 4 frames of the looping pose video (a live source: it always re-runs), RAIN Sampler "
           "continues the stream 'live', and Frame Queue paces the frames and shows them with fps and latency. "
           "Set video_path to 'webcam' for a camera once the DWPose detector is installed. Toggle reset on "
           "the sampler for one run to restart the stream.", (0, -260))
    model = g.add("LoadRainModel", ["tiny-rain (built-in)", "auto", "auto", "auto", "auto", "auto", True], (0, 0))
    reference = g.add("LoadImage", ["anyone-1.png", "image"], (0, 300), (320, 360))
    poses = g.add("RainPoseStream", pose_stream(video_path="anyone-video-1_kps.mp4", frames_per_run=4, loop=True),
                  (360, 300), (320, 480))
    rain = g.add("RainSampler", sampler(width=64, height=64, stream_id="live"), (720, 0), (320, 380))
    queue = g.add("RainFrameQueue", ["pace", 16.0, 64, "drop oldest", False, True], (1080, 0), (320, 420))
    g.link(model, "rain_model", rain, "rain_model")
    g.link(reference, "IMAGE", rain, "reference")
    g.link(poses, "poses", rain, "poses")
    g.link(rain, "frames", queue, "frames")
    return g.workflow()


def face_morph_portrait():
    """(4) Face morph from a portrait video: DWPose face landmarks -> anime face dots -> RAIN."""
    g = Graph()
    g.note("Face morph from a portrait video (the RAIN authors' live demo). Needs the "
           "comfyui_controlnet_aux pack for DWPose Estimator (face detection on). Pose Stream remaps the 68 "
           "face landmarks toward anime proportions (the sliders) and draws 26 dots; the reference should be an "
           "upper-body anime portrait. Use the released RAIN weights for a meaningful result.", (0, -260))
    model = g.add("LoadRainModel", ["tiny-rain (built-in)", "auto", "auto", "auto", "auto", "auto", True], (0, 0))
    reference = g.add("LoadImage", ["anime-portrait.png", "image"], (0, 300), (320, 360))
    video = g.add("LoadVideo", ["portrait.mp4", "image"], (360, 300), (320, 360))
    components = g.add("GetVideoComponents", [], (720, 300), (240, 90))
    detect = g.add("DWPreprocessor", ["disable", "disable", "enable", *DWPOSE_WIDGETS[3:]], (1000, 300),
                   (320, 260), title="DWPose Estimator (face)")
    poses = g.add("RainPoseStream", pose_stream(mode="face-morph", smoothing=0.3), (1360, 300), (320, 480))
    preview = g.add("PreviewImage", [], (1360, 820), (320, 260))
    rain = g.add("RainSampler", sampler(flush=True, stream_id="face-morph", guidance=2.5), (1720, 0), (320, 380))
    queue = g.add("RainFrameQueue", ["collect", 16.0, 4096, "release now", True, True], (2080, 0), (320, 420))
    create = g.add("CreateVideo", [16.0], (2440, 0), (260, 90))
    save = g.add("SaveVideo", ["rain/face-morph", "auto", "auto"], (2740, 0), (360, 360))
    g.link(video, "VIDEO", components, "video")
    g.link(components, "images", detect, "image")
    g.link(detect, "POSE_KEYPOINT", poses, "pose_keypoint")
    g.link(poses, "pose_preview", preview, "images")
    g.link(model, "rain_model", rain, "rain_model")
    g.link(reference, "IMAGE", rain, "reference")
    g.link(poses, "poses", rain, "poses")
    g.link(rain, "frames", queue, "frames")
    g.link(queue, "frames", create, "images")
    g.link(create, "VIDEO", save, "video")
    return g.workflow()


def thumbnail(path: Path, title: str, pictures: list[Path]) -> None:
    """A 512x288 card: the inputs side by side and the workflow's name."""
    card = Image.new("RGB", (512, 288), (24, 26, 32))
    tiles = [Image.open(p).convert("RGB") for p in pictures if p.exists()]
    for index, tile in enumerate(tiles):
        tile.thumbnail((512 // max(1, len(tiles)) - 12, 220))
        card.paste(tile, (8 + index * (512 // len(tiles)), 8))
    ImageDraw.Draw(card).text((12, 252), title, fill=(235, 235, 235))
    card.save(path, quality=85)


def pose_frame(video: Path) -> Path:
    import cv2

    capture = cv2.VideoCapture(str(video))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 60)
    ok, bgr = capture.read()
    capture.release()
    out = Path("/tmp") / f"{video.stem}_frame.png"
    if ok:
        Image.fromarray(bgr[..., ::-1]).save(out)
    return out


def main() -> None:
    workflows = {
        "rain_pose_video_to_animation": (animate_pose_video, "Reference + pose video -> animation (tiny-rain)",
                                         [DATA / "anyone-1.png", pose_frame(DATA / "anyone-video-1_kps.mp4")]),
        "rain_dwpose_to_rain": (dwpose_to_rain, "DWPose (comfyui_controlnet_aux) -> RAIN",
                                [DATA / "anyone-2.png", pose_frame(DATA / "anyone-video-2_kps.mp4")]),
        "rain_live_preview": (live_preview, "Live: looping pose video -> Frame Queue preview (Auto Queue)",
                              [DATA / "anyone-1.png", DATA / "pose-1.png"]),
        "rain_face_morph_portrait": (face_morph_portrait, "Face morph from a portrait video",
                                     [DATA / "anime-portrait.png"]),
    }
    for name, (build, title, pictures) in workflows.items():
        (HERE / f"{name}.json").write_text(json.dumps(build(), indent=1) + "\n")
        thumbnail(HERE / f"{name}.jpg", title, pictures)
        print("wrote", HERE / f"{name}.json")


if __name__ == "__main__":
    main()
