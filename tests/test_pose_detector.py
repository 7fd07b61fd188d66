"""DWPose detector: pre/post-processing on crafted arrays, and the whole path on tiny ONNX models exported from
torch with the real input/output signatures (YOLOX: image → (1, anchors, 6); pose: image → SimCC x (1, 133, 2w),
SimCC y (1, 133, 2h)) whose outputs are planted: two people and a duplicate box, so every keypoint the detector
returns is known in advance."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from rain_core.pose.detector import (
    DetectorUnavailable,
    DWPoseDetector,
    _nms,
    detector_postprocess,
    detector_preprocess,
    pose_postprocess,
    pose_preprocess,
    wholebody_to_person,
)

DETECTOR_SIZE = (64, 64)
POSE_SIZE = (32, 24)  # (h, w), the real model's 256x192 shrunk
ANCHORS = 8 * 8 + 4 * 4 + 2 * 2  # stride 8, 16 and 32 grids of a 64x64 input
IMAGE_SIZE = 128  # a 128x128 image: the detector sees it at ratio 0.5


def planted_yolox_output() -> torch.Tensor:
    """Raw YOLOX output (1, anchors, 6) = [dx, dy, log(w/8), log(h/8), objectness, person] on the stride-8 grid.
    Person A: centre (20, 28), 16x32 in the input → box (24, 24, 56, 88) in the image, score 0.81.
    A's duplicate one cell right (centre 22, 28), score 0.64: suppressed by NMS.
    Person B: centre (52, 12), 8x8 → box (96, 16, 112, 32), score 0.9025: first by score, smaller by area."""
    raw = torch.zeros(1, ANCHORS, 6)
    raw[0, 3 * 8 + 2] = torch.tensor([0.5, 0.5, np.log(2.0), np.log(4.0), 0.9, 0.9])
    raw[0, 3 * 8 + 3] = torch.tensor([-0.75, 0.5, np.log(2.0), np.log(4.0), 0.8, 0.8])
    raw[0, 1 * 8 + 6] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.95, 0.95])
    return raw


def planted_simcc_outputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Every keypoint at the centre of the crop (x 12 of 24, y 16 of 32) with score 0.9, except the nose (0) at
    its top-left corner (0, 0) with score 0.6."""
    simcc_x, simcc_y = torch.zeros(1, 133, POSE_SIZE[1] * 2), torch.zeros(1, 133, POSE_SIZE[0] * 2)
    simcc_x[0, 1:, POSE_SIZE[1]] = 0.9
    simcc_y[0, 1:, POSE_SIZE[0]] = 0.9
    simcc_x[0, 0, 0] = simcc_y[0, 0, 0] = 0.6
    return simcc_x, simcc_y


class PlantedOutputs(torch.nn.Module):
    """Returns fixed tensors whatever the image (the image still flows in, so the graph keeps its input)."""

    def __init__(self, *outputs):
        super().__init__()
        for i, output in enumerate(outputs):
            self.register_buffer(f"out{i}", output)
        self.count = len(outputs)

    def forward(self, image):
        zero = image.sum() * 0.0
        outputs = tuple(getattr(self, f"out{i}") + zero for i in range(self.count))
        return outputs if self.count > 1 else outputs[0]


def write_tiny_dwpose(folder):
    """Tiny YOLOX + SimCC ONNX files with planted outputs under the real DWPose file names in `folder`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PlantedOutputs(planted_yolox_output()).eval(), (torch.zeros(1, 3, *DETECTOR_SIZE),),
                          str(folder / "yolox_l.onnx"), input_names=["images"], output_names=["output"], dynamo=False)
        torch.onnx.export(PlantedOutputs(*planted_simcc_outputs()).eval(), (torch.zeros(1, 3, *POSE_SIZE),),
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


def test_nms_uses_pixel_inclusive_areas_like_yolox():
    boxes = np.array([[0.0, 0.0, 5.0, 5.0], [2.0, 0.0, 7.0, 5.0], [40.0, 40.0, 50.0, 50.0]])
    # 6x6-pixel boxes overlapping 4x6: IoU 24/48 = 0.5 counted in pixels (0.43 as continuous areas)
    assert _nms(boxes, np.array([0.8, 0.9, 0.7]), 0.45) == [1, 2]
    assert _nms(boxes, np.array([0.8, 0.9, 0.7]), 0.5) == [1, 0, 2]


# (box, nose, centre) in image pixels of the planted people. The pose crop is the box padded 1.25x and fitted to
# the pose input's 3:4 aspect: A 40x80 → 60x80 (widened), nose at its top-left corner (40 - 30, 56 - 40);
# B 20x20 → 20x26.67 (heightened), nose at (104 - 10, 24 - 13.33).
PERSON_B = ([96, 16, 112, 32], (94.0, 24 - 40 / 3), (104.0, 24.0))
PERSON_A = ([24, 24, 56, 88], (10.0, 16.0), (40.0, 56.0))


def test_detector_finds_the_planted_people_and_their_keypoints(tiny_models):
    detector = DWPoseDetector(tiny_models, providers=("CPUExecutionProvider",), max_people=None)
    assert detector.detector_size == DETECTOR_SIZE and detector.pose_size == POSE_SIZE
    image = (np.random.default_rng(0).random((IMAGE_SIZE, IMAGE_SIZE, 3)) * 255).astype(np.uint8)
    boxes = detector.boxes(image)  # B first by score, then A; A's duplicate suppressed
    np.testing.assert_allclose(boxes, [PERSON_B[0], PERSON_A[0]], atol=1e-5)  # float32 log sizes
    frame = detector(image)
    assert (frame.canvas_width, frame.canvas_height) == (IMAGE_SIZE, IMAGE_SIZE) and len(frame.people) == 2
    for person, (_, nose, centre) in zip(frame.people, (PERSON_B, PERSON_A)):
        nose, centre = np.array(nose) / IMAGE_SIZE, np.array(centre) / IMAGE_SIZE
        np.testing.assert_allclose(person.body[0], [*nose, 0.6], atol=1e-5)
        np.testing.assert_allclose(person.body[1], [*centre, 1.0], atol=1e-5)  # neck: mid-shoulders
        np.testing.assert_allclose(person.body[2:], np.tile([*centre, 0.9], (16, 1)), atol=1e-5)
        np.testing.assert_allclose(person.right_hand, np.tile([*centre, 0.9], (21, 1)), atol=1e-5)


def test_detector_poses_only_the_largest_person_by_default_and_keeps_one_session(tiny_models):
    detector = DWPoseDetector(tiny_models, providers=("CPUExecutionProvider",))
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    frame = detector(image)
    assert len(frame.people) == 1  # A: lower score than B, but the larger box
    np.testing.assert_allclose(frame.people[0].body[1, :2], np.array(PERSON_A[2]) / IMAGE_SIZE, atol=1e-5)
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
