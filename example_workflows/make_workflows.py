"""Writes the example workflows (ComfyUI UI format, version 0.4) and their .jpg thumbnails.

Run from the repository root after changing a node's inputs: '.venv/bin/python example_workflows/make_workflows.py'.
The folder is example_workflows/ because ComfyUI serves the first of example_workflows/, example/, examples/,
workflow/, workflows/ it finds, and this pack has an examples/ folder of inputs.
tests/test_workflows.py checks the written files against the nodes, so a stale workflow fails there.
Widget values are positional, in the order of each node's widget inputs, as the front end saves them.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "examples"  # the example inputs; the pack copies them into ComfyUI's input folder

# Sockets of the nodes used here: (inputs [(name, type)], outputs [(name, type)]).
SOCKETS = {
    "LoadRainModel": ([], [("rain_model", "RAIN_MODEL")]),
    "RainPoseStream": ([("pose_images", "IMAGE"), ("video", "VIDEO"), ("fps", "FLOAT"),
                        ("pose_keypoint", "POSE_KEYPOINT"), ("video_frames", "IMAGE"),
                        ("reference_pose", "POSE_KEYPOINT")], [("poses", "RAIN_POSES"), ("pose_preview", "IMAGE")]),
    "RainSampler": ([("rain_model", "RAIN_MODEL"), ("reference", "IMAGE"), ("poses", "RAIN_POSES")],
                    [("frames", "IMAGE"), ("fps", "FLOAT")]),
    "RainFrameQueue": ([("frames", "IMAGE")], [("frames", "IMAGE"), ("fps", "FLOAT"), ("latency_ms", "FLOAT"),
                                               ("queued", "INT")]),
    "RainLoadPoseKeypoints": ([], [("pose_keypoint", "POSE_KEYPOINT"), ("fps", "FLOAT")]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "LoadVideo": ([], [("VIDEO", "VIDEO")]),
    "CreateVideo": ([("images", "IMAGE"), ("audio", "AUDIO")], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "SaveImage": ([("images", "IMAGE")], []),
    "Note": ([], []),
}

FACE_DEFAULTS = [0.75, 3.0, 1.6, 1.2, 0.67, 0.9]
BUILTIN = "tiny-rain (built-in)"


def pose_stream(mode="body", video_path="none", start_frame=0, frames_per_run=0, loop=False, smoothing=0.0,
                align=False, face=None, pose_check=True):
    return [mode, video_path, start_frame, frames_per_run, loop, smoothing, align, *(face or FACE_DEFAULTS),
            pose_check]


def sampler(stream_id="rain", reset=False, flush=False, **settings):
    """RAIN Sampler's widget values: StreamConfig's defaults (their one home) unless a template sets one."""
    from rain_core.stream.config import StreamConfig

    values = {**StreamConfig().to_dict(), **settings}
    return [values["width"], values["height"], values["levels"], values["frames_per_cohort"], values["steps"],
            values["guidance"], values["seed"], stream_id, reset, flush, values["noise"]]


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
        if not any(s["name"] == input_name for s in target["inputs"]):  # a widget turned into an input socket
            kind = source["outputs"][slot]["type"]
            target["inputs"].append({"name": input_name, "type": kind, "widget": {"name": input_name}, "link": None})
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


def model_loader(g):
    return g.add("LoadRainModel", [BUILTIN, "auto", "auto", "auto", "auto", "auto", True], (0, 0))


def feed_sampler(g, model, reference, poses, rain):
    g.link(model, "rain_model", rain, "rain_model")
    g.link(reference, "IMAGE", rain, "reference")
    g.link(poses, "poses", rain, "poses")


def save_video(g, source, prefix: str, x: int):
    """Create Video + Save Video at the frame rate that travels with `source`'s frames."""
    create = g.add("CreateVideo", [16.0], (x, 0), (260, 90))
    save = g.add("SaveVideo", [prefix, "auto", "auto"], (x + 300, 0), (360, 360))
    g.link(source, "frames", create, "images")
    g.link(source, "fps", create, "fps")
    g.link(create, "VIDEO", save, "video")


def keypoint_poses(g, name: str, pose_stream_widgets: list, preview_title: str):
    """Load Pose Keypoints -> Pose Stream (+ a preview of the drawn poses)."""
    keypoints = g.add("RainLoadPoseKeypoints", [name, 0.0], (360, 300), (320, 120))
    poses = g.add("RainPoseStream", pose_stream_widgets, (720, 300), (320, 480))
    preview = g.add("PreviewImage", [], (720, 820), (320, 260), title=preview_title)
    g.link(keypoints, "pose_keypoint", poses, "pose_keypoint")
    g.link(keypoints, "fps", poses, "fps")
    g.link(poses, "pose_preview", preview, "images")
    return poses


def animate_pose_video():
    """(1) Reference image + rendered pose video -> animation file at the video's frame rate."""
    g = Graph()
    g.note("Reference image + pose video -> animation. Runs as it is: the built-in tiny-rain model (64 px) and the "
           "example inputs the pack copied into ComfyUI/input (anyone-1.png, anyone-video-1_kps.mp4: a rendered "
           "DWPose skeleton video, 30 fps). Pick your own character and skeleton video in the two loaders. The "
           "frame rate travels from the video through Pose Stream and RAIN Sampler to Create Video. For the "
           "released RAIN weights choose them in Load RAIN Model (width/height 0 = the model's own size). The "
           "video is written to output/rain/.", (0, -300), (460, 260))
    model = model_loader(g)
    reference = g.add("LoadImage", ["anyone-1.png", "image"], (0, 300), (320, 360))
    video = g.add("LoadVideo", ["anyone-video-1_kps.mp4", "image"], (360, 300), (320, 360))
    poses = g.add("RainPoseStream", pose_stream(), (720, 300), (320, 480))
    rain = g.add("RainSampler", sampler(flush=True, stream_id="pose-video"), (1080, 0), (320, 380))
    g.link(video, "VIDEO", poses, "video")
    feed_sampler(g, model, reference, poses, rain)
    save_video(g, rain, "rain/animation", 1440)
    return g.workflow()


def keypoints_to_animation():
    """(2) OpenPose / POSE_KEYPOINT JSON -> RAIN -> animation (the keypoints are drawn at the stream's size)."""
    g = Graph()
    g.note("Pose keypoints (OpenPose / POSE_KEYPOINT JSON) -> animation. Runs as it is: rain-dance-keypoints.json "
           "is a procedural 2 s dance at 30 fps that the pack copied into ComfyUI/input (made by "
           "examples/make_keypoints.py, not captured from a person). Keypoints from comfyui_controlnet_aux's "
           "DWPose Estimator (POSE_KEYPOINT) or from OpenPose connect to Pose Stream's pose_keypoint the same way. "
           "Saved at the keypoints' frame rate to output/rain/.", (0, -300), (460, 260))
    model = model_loader(g)
    reference = g.add("LoadImage", ["anyone-2.png", "image"], (0, 300), (320, 360))
    poses = keypoint_poses(g, "rain-dance-keypoints.json", pose_stream(smoothing=0.3), "Pose preview")
    rain = g.add("RainSampler", sampler(flush=True, stream_id="keypoints"), (1080, 0), (320, 380))
    feed_sampler(g, model, reference, poses, rain)
    save_video(g, rain, "rain/keypoints", 1440)
    return g.workflow()


def live_preview():
    """(3) A looping pose video as a live source under Auto Queue -> Frame Queue preview."""
    g = Graph()
    g.note("Live stream. Turn on Auto Queue (Run button menu -> Run (Instant)). Every run Pose Stream reads the next "
           "4 frames of the looping pose video (a live source: it always re-runs), RAIN Sampler continues the "
           "stream 'live', and Frame Queue paces the frames at the video's frame rate and shows them with fps and "
           "latency. Each browser tab has its own stream. The first runs warm the stream up: the nodes after the "
           "sampler skip them. Choose 'webcam' in video_path for a camera once the DWPose files are installed. "
           "Toggle reset on the sampler for one run to restart the stream.", (0, -300), (460, 280))
    model = model_loader(g)
    reference = g.add("LoadImage", ["anyone-1.png", "image"], (0, 300), (320, 360))
    poses = g.add("RainPoseStream", pose_stream(video_path="anyone-video-1_kps.mp4", frames_per_run=4, loop=True),
                  (360, 300), (320, 480))
    rain = g.add("RainSampler", sampler(stream_id="live"), (720, 0), (320, 380))
    queue = g.add("RainFrameQueue", ["pace", 16.0, 64, "drop oldest", False, True], (1080, 0), (320, 420))
    feed_sampler(g, model, reference, poses, rain)
    g.link(rain, "frames", queue, "frames")
    g.link(rain, "fps", queue, "fps")
    return g.workflow()


def face_morph_portrait():
    """(4) Face morph: face landmarks -> anime face dots -> RAIN (the authors' live demo), from shipped keypoints."""
    g = Graph()
    g.note("Anime face morph (the RAIN authors' live demo). Runs as it is: rain-face-keypoints.json is a procedural "
           "talking, blinking, turning face (68 landmarks, 30 fps; examples/make_keypoints.py) the pack copied into "
           "ComfyUI/input. Pose Stream remaps the landmarks toward anime proportions (the sliders) and draws 26 "
           "dots; the reference should be an upper-body anime portrait. Face landmarks of a real video come from "
           "comfyui_controlnet_aux's DWPose Estimator (face on) into pose_keypoint. The built-in tiny-rain model "
           "was not trained on faces: use the released RAIN weights for a meaningful result.", (0, -300),
           (460, 280))
    model = model_loader(g)
    reference = g.add("LoadImage", ["anime-portrait.png", "image"], (0, 300), (320, 360))
    poses = keypoint_poses(g, "rain-face-keypoints.json", pose_stream(mode="face-morph", smoothing=0.3), "Face dots")
    rain = g.add("RainSampler", sampler(flush=True, stream_id="face-morph", guidance=2.5), (1080, 0), (320, 380))
    queue = g.add("RainFrameQueue", ["collect", 16.0, 4096, "release now", True, True], (1440, 0), (320, 420))
    feed_sampler(g, model, reference, poses, rain)
    g.link(rain, "frames", queue, "frames")
    g.link(rain, "fps", queue, "fps")
    save_video(g, queue, "rain/face-morph", 1800)
    return g.workflow()


def thumbnail(path: Path, title: str, subtitle: str, pictures: list) -> None:
    """A 512x384 card for Browse Templates: the inputs side by side, the title large enough to read."""
    card = Image.new("RGB", (512, 384), (24, 26, 32))
    tiles = [p if isinstance(p, Image.Image) else Image.open(p).convert("RGB") for p in pictures]
    width = 512 // max(1, len(tiles))
    for index, tile in enumerate(tiles):
        tile = tile.copy()
        tile.thumbnail((width - 12, 250))
        card.paste(tile, (index * width + (width - tile.width) // 2, 8 + (250 - tile.height) // 2))
    draw = ImageDraw.Draw(card)
    draw.text((14, 270), title, fill=(240, 240, 240), font=ImageFont.load_default(size=30))
    draw.text((14, 318), subtitle, fill=(170, 180, 200), font=ImageFont.load_default(size=18))
    card.save(path, quality=88)


def pose_frame(video: Path, index: int = 30) -> Image.Image:
    import cv2

    capture = cv2.VideoCapture(str(video))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = capture.read()
    capture.release()
    return Image.fromarray(bgr[..., ::-1]) if ok else Image.new("RGB", (64, 64))


def keypoint_frame(name: str, mode: str = "body", index: int = 10) -> Image.Image:
    """A frame of the example keypoints, drawn as Pose Stream draws it."""
    import sys

    sys.path.insert(0, str(HERE.parent))
    from rain_core import pose

    frames = pose.from_pose_keypoint(json.loads((DATA / "keypoints" / name).read_text())["frames"])
    frame = frames[index].letterboxed(352, 256)
    if mode == "face-morph":
        return Image.fromarray(pose.FaceMorpher(pose.FaceMorphParams())(frame, 352, 256))
    return Image.fromarray(pose.render_pose(frame, 352, 256))


# file stem (the title Browse Templates shows) -> (builder, subtitle, pictures)
WORKFLOWS = {
    "RAIN 1 - Pose video to animation": (
        animate_pose_video, "reference + skeleton video -> video file",
        lambda: [DATA / "anyone-1.png", pose_frame(DATA / "anyone-video-1_kps.mp4")]),
    "RAIN 2 - Pose keypoints to animation": (
        keypoints_to_animation, "OpenPose / POSE_KEYPOINT JSON -> video file",
        lambda: [DATA / "anyone-2.png", keypoint_frame("rain-dance-keypoints.json")]),
    "RAIN 3 - Live preview (Auto Queue)": (
        live_preview, "looping pose video -> Frame Queue, live",
        lambda: [DATA / "anyone-1.png", pose_frame(DATA / "anyone-video-1_kps.mp4", 10)]),
    "RAIN 4 - Anime face morph": (
        face_morph_portrait, "face landmarks -> anime face dots -> video",
        lambda: [DATA / "anime-portrait.png", keypoint_frame("rain-face-keypoints.json", "face-morph")]),
}


def main() -> None:
    for old in list(HERE.glob("*.json")) + list(HERE.glob("*.jpg")):
        if old.stem not in WORKFLOWS:
            old.unlink()
    for name, (build, subtitle, pictures) in WORKFLOWS.items():
        (HERE / f"{name}.json").write_text(json.dumps(build(), indent=1) + "\n")
        thumbnail(HERE / f"{name}.jpg", name.split(" - ", 1)[1], subtitle, pictures())
        print("wrote", HERE / f"{name}.json")


if __name__ == "__main__":
    main()
