"""DWPose detector: pre/post-processing on crafted arrays, and the whole path on tiny random ONNX models
exported from torch with the real input/output signatures (YOLOX: image → (1, anchors, 6); pose: image
→ SimCC x (1, 133, 2w), SimCC y (1, 133, 2h))."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from rain_core.pose.detector import (
    DetectorUnavailable,
    DWPoseDetector,
    detector_postprocess,
    detector_preprocess,
    pose_postprocess,
    pose_preprocess,
    wholebody_to_person,
)

DETECTOR_SIZE = (64, 64)
POSE_SIZE = (32, 24)  # (h, w), the real model's 256x192 shrunk


class TinyYolox(torch.nn.Module):
    """Three strided heads (8, 16, 32) flattened and concatenated like YOLOX's decoded-free output."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.down16 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.down32 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(8, 6, 1)

    def forward(self, image):
        p8 = self.stem(image / 255.0)
        p16 = self.down16(p8)
        p32 = self.down32(p16)
        return torch.cat([self.head(p).flatten(2) for p in (p8, p16, p32)], dim=2).transpose(1, 2)


class TinySimcc(torch.nn.Module):
    def __init__(self, height, width):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4, padding=1), torch.nn.AdaptiveAvgPool2d(2))
        self.to_x = torch.nn.Linear(16, 133 * width * 2)
        self.to_y = torch.nn.Linear(16, 133 * height * 2)
        self.height, self.width = height, width

    def forward(self, image):
        feature = self.features(image).flatten(1)
        return self.to_x(feature).view(-1, 133, self.width * 2), self.to_y(feature).view(-1, 133, self.height * 2)


def write_tiny_dwpose(folder):
    """Tiny random YOLOX + SimCC ONNX files under the real DWPose file names in `folder`."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyYolox().eval(), (torch.zeros(1, 3, *DETECTOR_SIZE),), str(folder / "yolox_l.onnx"),
                          input_names=["images"], output_names=["output"], dynamo=False)
        torch.onnx.export(TinySimcc(*POSE_SIZE).eval(), (torch.zeros(1, 3, *POSE_SIZE),),
                          str(folder / "dw-ll_ucoco_384.onnx"), input_names=["input"],
                          output_names=["simcc_x", "simcc_y"], dynamo=False)
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return write_tiny_dwpose(tmp_path_factory.mktemp("dwpose"))


def test_detector_preprocess_resizes_top_left_and_pads_with_114():
    image = np.full((32, 64, 3), 200, dtype=np.uint8)
    batch, ratio = detector_preprocess(image, (64, 64))
    assert batch.shape == (1, 3, 64, 64) and batch.dtype == np.float32 and ratio == 1.0
    assert (batch[0, :, :32] == 200).all() and (batch[0, :, 32:] == 114).all()


def test_detector_postprocess_decodes_grid_boxes_and_suppresses_overlaps():
    anchors = 8 * 8 + 4 * 4 + 2 * 2
    raw = np.full((1, anchors, 6), -0.0)
    raw[0, :, 4:] = 0.0  # scores 0
    cell = 3 * 8 + 2  # stride-8 grid cell (x=2, y=3)
    raw[0, cell] = [0.5, 0.5, np.log(2.0), np.log(4.0), 0.9, 0.9]  # centre (20, 28), size 16x32
    raw[0, cell + 1] = [-0.25, 0.5, np.log(2.0), np.log(4.0), 0.8, 0.8]  # next cell, box 2 px right: suppressed
    boxes = detector_postprocess(raw, (64, 64), ratio=0.5)
    assert boxes.tolist() == [[24.0, 24.0, 56.0, 88.0]]  # (12, 12, 28, 44) in the input, / ratio


def test_pose_preprocess_puts_the_box_centre_at_the_crop_centre():
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    image[48:52, 28:32] = 255  # a bright dot at (30, 50)
    batch, center, size = pose_preprocess(image, np.array([20.0, 30.0, 40.0, 70.0]), POSE_SIZE)
    assert center.tolist() == [30.0, 50.0] and size.tolist() == pytest.approx([37.5, 50.0])
    brightness = batch[0].mean(axis=0)
    y, x = np.unravel_index(brightness.argmax(), brightness.shape)
    assert abs(y - POSE_SIZE[0] / 2) <= 1 and abs(x - POSE_SIZE[1] / 2) <= 1


def test_pose_postprocess_maps_simcc_peaks_back_to_image_pixels():
    simcc_x, simcc_y = np.zeros((1, 133, 48)), np.zeros((1, 133, 64))
    simcc_x[0, :, 24] = 0.9  # x = 12 of 24 → the box centre column
    simcc_y[0, :, 0] = 0.7  # y = 0 → the top of the box
    simcc_x[0, 5] = 0.0  # no response: score 0
    keypoints, scores = pose_postprocess(simcc_x, simcc_y, POSE_SIZE, np.array([30.0, 50.0]), np.array([24.0, 32.0]))
    assert keypoints[0].tolist() == [30.0, 34.0] and scores[0] == pytest.approx(0.7) and scores[5] == 0


def test_wholebody_to_person_builds_openpose_order_with_neck():
    keypoints = np.tile(np.arange(133, dtype=np.float64)[:, None], (1, 2))
    scores = np.full(133, 0.9)
    scores[9] = 0.1  # left wrist below threshold
    person = wholebody_to_person(keypoints, scores, 1000, 1000)
    assert person.body[2, 0] == pytest.approx(0.006)  # OpenPose right shoulder = COCO 6
    assert person.body[1].tolist() == pytest.approx([0.0055, 0.0055, 1.0])  # neck: mid-shoulders
    assert person.body[7, 2] == 0  # OpenPose left wrist = COCO 9, dropped
    assert person.face[0, 0] == pytest.approx(0.023) and person.right_hand[20, 0] == pytest.approx(0.132)


def test_detector_runs_tiny_onnx_models_and_keeps_one_session(tiny_models):
    detector = DWPoseDetector(tiny_models, providers=("CPUExecutionProvider",))
    assert detector.detector_size == DETECTOR_SIZE and detector.pose_size == POSE_SIZE
    image = (np.random.default_rng(0).random((80, 60, 3)) * 255).astype(np.uint8)
    frame = detector(image)
    assert (frame.canvas_width, frame.canvas_height) == (60, 80) and len(frame.people) <= 1
    again = DWPoseDetector(tiny_models, providers=("CPUExecutionProvider",))
    assert again.pose is detector.pose and again.detector is detector.detector
    assert detector(image.astype(np.float32) / 255.0) == frame  # float input gives the same result


def test_missing_files_say_which_file_goes_where(tmp_path):
    with pytest.raises(DetectorUnavailable, match=r"yolox_l\.onnx.*dwpose_models.*huggingface\.co/yzd-v/DWPose"):
        DWPoseDetector(tmp_path / "dwpose_models")


def test_without_onnxruntime_the_error_says_pip_install(monkeypatch, tiny_models):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(DetectorUnavailable, match="pip install onnxruntime"):
        DWPoseDetector(tiny_models)


def test_importing_the_pose_package_does_not_import_onnxruntime():
    code = "import sys, rain_core.pose, rain_core.pose.detector; assert 'onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
