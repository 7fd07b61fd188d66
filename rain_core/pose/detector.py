"""Optional whole-body pose detector: DWPose through onnxruntime (YOLOX person box + RTMPose-style
SimCC whole-body keypoints, 133 COCO-WholeBody points), returning `PoseFrame`s.

onnxruntime and the ONNX files are optional: `import rain_core.pose` never imports onnxruntime, and
building a `DWPoseDetector` without them raises `DetectorUnavailable` saying what to install and which
file goes where. Sessions are cached per (file, providers), so one InferenceSession serves every call
and every detector built on the same file.

Pipeline, as DWPose does it: the RGB image is resized to fit the detector input (top-left, grey 114
padding); YOLOX outputs are decoded on the stride 8/16/32 grids, scored objectness × class, person boxes
above 0.3 kept after NMS; by default only the largest person is posed (the authors' choice), with the
whole image as the box when nobody is found; each box (padded 1.25×, fixed to the pose input's aspect)
is warped to the pose input, normalised with ImageNet mean/std, and the SimCC argmax (÷2) is mapped back
to the image. The 133 points become OpenPose order (neck = shoulders' midpoint) and a `Person`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from .keypoints import Person, PoseFrame

DEFAULT_FOLDER = Path("models") / "rain" / "dwpose"
DETECTOR_FILES = ("yolox_l.onnx", "yolox_s.onnx")
POSE_FILES = ("dw-ll_ucoco_384.onnx", "dw-ll_ucoco-384.onnx", "dw-mm_ucoco.onnx")
WHERE_TO_GET = (
    "yolox_l.onnx and dw-ll_ucoco_384.onnx from https://huggingface.co/yzd-v/DWPose, or the lighter "
    "dw-mm_ucoco.onnx from https://huggingface.co/hr16/UnJIT-DWPose and yolox_s.onnx from "
    "https://github.com/Megvii-BaseDetection/YOLOX/releases/tag/0.1.1rc0"
)

PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0

# COCO-WholeBody index of each OpenPose body point (neck, 1, is computed from the shoulders 5 and 6).
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FEET, FACE, LEFT_HAND, RIGHT_HAND = slice(17, 23), slice(23, 91), slice(91, 112), slice(112, 133)


class DetectorUnavailable(RuntimeError):
    """The optional detector cannot run here; the message says what to install or download."""


# ---------------------------------------------------------------------------------------------------
# detector (YOLOX) processing


def detector_preprocess(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """uint8 RGB (H, W, 3) → ((1, 3, h, w) float32 network input, resize ratio). Top-left placed, 114 padding."""
    in_h, in_w = input_size
    ratio = min(in_h / image.shape[0], in_w / image.shape[1])
    new_w, new_h = int(image.shape[1] * ratio), int(image.shape[0] * ratio)
    padded = np.full((in_h, in_w, 3), 114, dtype=np.uint8)
    padded[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression by OpenCV, with pixel-inclusive areas like YOLOX's reference code:
    an xyxy box spans x1 - x0 + 1 pixels, hence the (w + 1, h + 1) rectangles. Best first."""
    rects = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + 1], axis=1)
    keep = cv2.dnn.NMSBoxes(rects.tolist(), scores.tolist(), 0.0, threshold)
    return [int(i) for i in np.asarray(keep).reshape(-1)]


def detector_postprocess(output: np.ndarray, input_size: tuple[int, int], ratio: float,
                         score_threshold: float = 0.3, nms_threshold: float = 0.45,
                         candidate_threshold: float = 0.1) -> np.ndarray:
    """YOLOX raw output (1, anchors, 5 + classes) → person boxes (K, 4) xyxy in image pixels, best first."""
    in_h, in_w = input_size
    grids, strides = [], []
    for stride in (8, 16, 32):
        ys, xs = np.meshgrid(np.arange(in_h // stride), np.arange(in_w // stride), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((xs.size, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    predictions = np.asarray(output, dtype=np.float64)[0]
    if predictions.shape[0] != len(grid) or predictions.shape[1] < 6:
        raise ValueError(
            f"YOLOX output: expected (1, {len(grid)}, 5 + classes) for a {in_h}x{in_w} input, found {output.shape}"
        )
    centers = (predictions[:, :2] + grid) * stride
    sizes = np.exp(np.minimum(predictions[:, 2:4], 50.0)) * stride
    person_scores = predictions[:, 4] * predictions[:, 5]  # objectness × class 0 (person)
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1) / ratio
    # YOLOX's multiclass NMS runs per class; the person class is the only one kept, so NMS it alone.
    candidates = person_scores > candidate_threshold
    boxes, scores = boxes[candidates], person_scores[candidates]
    if not len(boxes):
        return np.zeros((0, 4))
    keep = _nms(boxes, scores, nms_threshold)
    keep = [i for i in keep if scores[i] > score_threshold]
    return boxes[keep]


# ---------------------------------------------------------------------------------------------------
# pose (SimCC) processing


def box_center_scale(box: np.ndarray, aspect: float, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box → (centre, (w, h) size) padded and widened/heightened to the pose input's w/h aspect."""
    x0, y0, x1, y1 = (float(v) for v in box)
    center = np.array([x0 + x1, y0 + y1]) * 0.5
    w, h = (x1 - x0) * padding, (y1 - y0) * padding
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h])


def pose_preprocess(image: np.ndarray, box: np.ndarray, input_size: tuple[int, int]):
    """Crop `box` of uint8 RGB `image` to the pose input (h, w): ((1, 3, h, w) float32, centre, size)."""
    in_h, in_w = input_size
    center, size = box_center_scale(box, in_w / in_h)
    zoom = in_w / size[0]
    warp = np.array([[zoom, 0.0, in_w / 2 - zoom * center[0]], [0.0, zoom, in_h / 2 - zoom * center[1]]])
    crop = cv2.warpAffine(image, warp, (in_w, in_h), flags=cv2.INTER_LINEAR)
    normalised = (crop - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32), center, size


def pose_postprocess(simcc_x: np.ndarray, simcc_y: np.ndarray, input_size: tuple[int, int], center: np.ndarray,
                     size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SimCC outputs (1, K, w·2), (1, K, h·2) → keypoints (K, 2) in image pixels and scores (K,)."""
    in_h, in_w = input_size
    simcc_x, simcc_y = np.asarray(simcc_x)[0], np.asarray(simcc_y)[0]
    locations = np.stack([simcc_x.argmax(axis=1), simcc_y.argmax(axis=1)], axis=1).astype(np.float64)
    scores = np.minimum(simcc_x.max(axis=1), simcc_y.max(axis=1)).astype(np.float64)
    locations[scores <= 0] = -1
    locations /= SIMCC_SPLIT_RATIO
    keypoints = locations / np.array([in_w, in_h]) * size + center - size / 2
    return keypoints, scores


def wholebody_to_person(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int,
                        threshold: float = 0.3) -> Person:
    """133 COCO-WholeBody points (pixels) → `Person` in OpenPose order, normalised, below-threshold dropped.

    The neck is the shoulders' midpoint, present (confidence 1) only when both shoulders pass the threshold.
    """
    points = np.concatenate([keypoints / np.array([width, height]), scores[:, None]], axis=1)
    points[~(points[:, 2] > threshold)] = 0.0
    body = np.zeros((18, 3))
    for openpose_index, coco_index in enumerate(OPENPOSE_FROM_COCO):
        if coco_index is not None:
            body[openpose_index] = points[coco_index]
    if points[5, 2] > 0 and points[6, 2] > 0:
        body[1] = [*(points[5, :2] + points[6, :2]) / 2, 1.0]
    return Person(body=body, feet=points[FEET], face=points[FACE], left_hand=points[LEFT_HAND],
                  right_hand=points[RIGHT_HAND])


# ---------------------------------------------------------------------------------------------------
# the detector


_SESSIONS: dict[tuple[str, tuple[str, ...]], object] = {}
_SESSIONS_LOCK = threading.Lock()


def _import_onnxruntime():
    try:
        import onnxruntime  # optional: the DWPose detector
    except ImportError as error:
        raise DetectorUnavailable(
            "DWPose detector needs onnxruntime, which is not installed: `pip install onnxruntime` "
            "(or onnxruntime-gpu for CUDA) in the Python that runs ComfyUI / rain. Pose images, POSE_KEYPOINT "
            "and pose videos work without it."
        ) from error
    return onnxruntime


def _session(path: Path, providers: tuple[str, ...] | None):
    ort = _import_onnxruntime()
    providers = tuple(providers) if providers else tuple(
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
    )
    key = (str(path.resolve()), providers)
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = ort.InferenceSession(str(path), providers=list(providers))
        return _SESSIONS[key]


def _find(folder: Path, explicit: str | None, candidates: tuple[str, ...], role: str) -> Path:
    names = (explicit,) if explicit else candidates
    for name in names:
        path = Path(name) if Path(name).is_absolute() else folder / name
        if path.is_file():
            return path
    raise DetectorUnavailable(
        f"DWPose {role} model not found: looked for {', '.join(names)} in {folder}. Put the ONNX file there "
        f"(folder configurable with folder=): {WHERE_TO_GET}."
    )


def _static_size(session, default: tuple[int, int]) -> tuple[int, int]:
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
        return int(shape[2]), int(shape[3])
    return default


class DWPoseDetector:
    """Image (H, W, 3) RGB, uint8 or float in [0, 1] → `PoseFrame` with DWPose whole-body keypoints.

    folder: where the ONNX files are (default models/rain/dwpose); detector_file / pose_file pick
    specific files. max_people: 1 poses only the largest person (the authors' setting); None poses all.
    """

    def __init__(self, folder=None, detector_file: str | None = None, pose_file: str | None = None,
                 providers: tuple[str, ...] | None = None, max_people: int | None = 1, threshold: float = 0.3):
        _import_onnxruntime()
        folder = Path(folder) if folder is not None else DEFAULT_FOLDER
        self.detector_path = _find(folder, detector_file, DETECTOR_FILES, "person-detector (YOLOX)")
        self.pose_path = _find(folder, pose_file, POSE_FILES, "whole-body pose (dw-*_ucoco)")
        self.detector = _session(self.detector_path, providers)
        self.pose = _session(self.pose_path, providers)
        self.detector_size = _static_size(self.detector, (640, 640))
        self.pose_size = _static_size(self.pose, (256, 192))
        self.max_people = max_people
        self.threshold = threshold

    def boxes(self, image: np.ndarray) -> np.ndarray:
        batch, ratio = detector_preprocess(image, self.detector_size)
        output = self.detector.run(None, {self.detector.get_inputs()[0].name: batch})[0]
        return detector_postprocess(output, self.detector_size, ratio)

    def __call__(self, image) -> PoseFrame:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"DWPoseDetector: expected an RGB image (H, W, 3), found shape {image.shape}")
        if image.dtype != np.uint8:
            image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        height, width = image.shape[:2]
        boxes = self.boxes(image)
        if len(boxes) and self.max_people is not None:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            boxes = boxes[np.argsort(-areas, kind="stable")[: self.max_people]]
        if not len(boxes):
            boxes = np.array([[0.0, 0.0, width, height]])  # nobody found: pose the whole image, as DWPose does
        people = []
        input_name = self.pose.get_inputs()[0].name
        for box in boxes:
            batch, center, size = pose_preprocess(image, box, self.pose_size)
            simcc_x, simcc_y = self.pose.run(None, {input_name: batch})[:2]
            keypoints, scores = pose_postprocess(simcc_x, simcc_y, self.pose_size, center, size)
            person = wholebody_to_person(keypoints, scores, width, height, self.threshold)
            if not person.is_empty():
                people.append(person)
        return PoseFrame(people, width, height)
