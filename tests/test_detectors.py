"""The models themselves: the person detector on real video, edges, and YOLO decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import vtest_frames
from detectors import ModelLoadError, ModelRegistry
from detectors.yolo import YoloDetector, letterbox, nms
from pipeline.overlay import render
from sources.synthetic import SyntheticSource


@pytest.fixture(scope="module")
def person():
    return ModelRegistry(threshold=0.5).load("person")


def test_person_finds_people_in_at_least_90_of_100_vtest_frames(person, vtest):
    frames = vtest_frames(vtest, 100)
    hits = 0
    for frame in frames:
        out, found = person.process(frame)
        assert out is frame  # a detector leaves the pixels alone
        hits += bool(found)
        for d in found:
            assert d.label == "person" and 0.5 <= d.score <= 1
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    assert hits >= 90, hits


def test_person_finds_nobody_in_blank_or_synthetic_frames(person):
    for value in (0, 128, 255):
        assert person.process(np.full((480, 640, 3), value, np.uint8))[1] == []
    source = SyntheticSource(640, 480, 30)
    source.open()
    for _ in range(30):
        assert person.process(source.read())[1] == []


def test_edges_changes_pixels_and_finds_nothing(vtest):
    edges = ModelRegistry(threshold=0.5).load("edges")
    frame = vtest_frames(vtest, 1)[0]
    out, found = edges.process(frame)
    assert found == [] and out.shape == frame.shape
    assert set(np.unique(out)) <= {0, 255} and 0.01 < (out > 0).mean() < 0.5


def yolo_onnx(path: Path, output: np.ndarray, side: int = 64) -> Path:
    """A YOLOv8-shaped ONNX graph ([1,3,S,S] in, [1,4+C,N] out) whose output is `output`."""
    const = numpy_helper.from_array(output.astype(np.float32), "pred_const")
    nodes = [
        # 0 * mean(images) + constant: the output depends on the input, as in a real model
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["pred_const", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "fake_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[const, numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def yolo_output() -> np.ndarray:
    # columns: cx, cy, w, h, score(class0), score(class1), score(class2); in 64x64 input pixels
    preds = np.array([
        [32, 32, 20, 10, 0.05, 0.90, 0.01],  # kept: class 1
        [33, 32, 20, 10, 0.05, 0.80, 0.01],  # same class, overlaps the first: removed by NMS
        [33, 32, 20, 10, 0.70, 0.10, 0.01],  # class 0, same place: kept (NMS is per class)
        [10, 20, 4, 4, 0.01, 0.02, 0.30],    # below the threshold: dropped
        [60, 50, 10, 10, 0.01, 0.02, 0.60],  # class 2, partly outside the picture: clipped
    ], np.float32)
    padding = np.zeros((15, 7), np.float32)  # more boxes than channels, as in a real model
    return np.concatenate([preds, padding]).T[None]  # [1, 7, 20]


def test_yolo_letterbox_decode_nms_and_scaling(tmp_path):
    model = yolo_onnx(tmp_path / "yolo.onnx", yolo_output())
    labels = tmp_path / "labels.txt"
    labels.write_text("Helmet\nvest\nforklift\n")
    yolo = YoloDetector(model, labels, threshold=0.5)
    assert yolo.size == 64 and yolo.labels == ["helmet", "vest", "forklift"]
    frame = np.zeros((480, 640, 3), np.uint8)
    out, found = yolo.process(frame)
    assert out is frame
    # 640x480 into 64x64: scale 0.1, padded 8 px top and bottom
    by_label = {d.label: d for d in found}
    assert sorted(by_label) == ["forklift", "helmet", "vest"]
    assert by_label["vest"].box == (220, 190, 420, 290) and by_label["vest"].score == pytest.approx(0.9)
    assert by_label["helmet"].box == (230, 190, 430, 290)
    assert by_label["forklift"].box == (550, 370, 640, 470)  # x2 clipped to the frame
    assert len(found) == 3


def test_yolo_accepts_transposed_output_and_default_coco_labels(tmp_path):
    model = yolo_onnx(tmp_path / "yolo.onnx", yolo_output().transpose(0, 2, 1))  # [1, N, 4+C]
    yolo = YoloDetector(model, None, threshold=0.5)
    labels = sorted(d.label for d in yolo.process(np.zeros((480, 640, 3), np.uint8))[1])
    assert labels == ["bicycle", "car", "person"]  # COCO names of classes 0, 1, 2


def test_letterbox_and_nms_helpers():
    img, r, dx, dy = letterbox(np.zeros((480, 640, 3), np.uint8), 320)
    assert img.shape == (320, 320, 3) and r == 0.5 and (dx, dy) == (0, 40)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.45) == [0, 2]


def test_registry_states_and_load_errors(tmp_path):
    reg = ModelRegistry(threshold=0.5)
    assert {m["name"]: m["state"] for m in reg.info()} == {
        "none": "not_loaded", "edges": "not_loaded", "person": "not_loaded", "yolo": "error"}
    # without MODEL_PATH, yolo says so from the start (nothing is tried), in plain words
    assert {m["name"]: m["error"] for m in reg.info()}["yolo"] == "needs MODEL_PATH"
    with pytest.raises(ModelLoadError, match="MODEL_PATH"):
        reg.load("yolo")
    # a MODEL_PATH that is not there: said at once, in plain words (not onnxruntime's NO_SUCHFILE)
    missing = ModelRegistry(threshold=0.5, model_path=tmp_path / "nope.onnx")
    yolo = {m["name"]: m for m in missing.info()}["yolo"]
    assert yolo["state"] == "error" and yolo["error"] == "MODEL_PATH 'nope.onnx' was not found"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    broken = ModelRegistry(threshold=0.5, model_path=bad)
    with pytest.raises(ModelLoadError):
        broken.load("yolo")
    info = {m["name"]: m for m in broken.info()}
    assert info["yolo"]["state"] == "error" and info["yolo"]["error"]
    assert "Error:" not in info["yolo"]["error"], info["yolo"]["error"]  # no Python class name
    reg.load("person")
    assert {m["name"]: m for m in reg.info()}["person"]["labels"] == ["person"]


def test_boxes_and_notice_are_drawn():
    from detectors import Detection

    frame = np.full((480, 640, 3), 128, np.uint8)
    plain = render(frame, [], "12:00:00")
    boxed = render(frame, [Detection("person", 0.9, (100, 100, 200, 300))], "12:00:00")
    noticed = render(frame, [], "12:00:00", "model yolo unavailable")
    assert (boxed[100, 150] != plain[100, 150]).any()  # top edge of the box
    assert (boxed[200, 150] == plain[200, 150]).all()  # inside the box untouched
    band = slice(440, 480)
    assert not np.array_equal(noticed[band], plain[band])
    assert np.array_equal(plain[:400], frame[:400])  # overlay text sits in the bottom band
