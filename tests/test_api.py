"""One-call inference (pointwin.load_detector / load_segmentor) and `pointwin predict`, on real scans."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pointwin
from pointwin.cli import main
from pointwin.config import load_config
from pointwin.engine.checkpoint import save_checkpoint
from pointwin.models import build_model
from pointwin.structures import Batch, Points

from .conftest import shared_file

KITTI_SCAN = "kitti/full/velodyne/000000.bin"
NUSCENES_SCAN = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"


@pytest.fixture
def detector_ckpt(tmp_path):
    """A checkpoint of the tiny synthetic FlatFormer (random weights, the config embedded, as training writes
    it) and the model it came from."""
    cfg = load_config("configs/synthetic/flatformer_tiny.yaml", ["model.head.score_threshold=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg["model"]).eval()
    path = save_checkpoint(tmp_path / "ff.pth", model, config=cfg.dump())
    return path, model


def test_readme_python_api_example(detector_ckpt, capsys, one_thread):
    """The README's example, run as written (paths substituted)."""
    ckpt, model = detector_ckpt
    scan = shared_file(KITTI_SCAN)
    detector = pointwin.load_detector(ckpt, device="cpu")
    result = detector.predict(scan)
    for box, score, name in zip(result.boxes, result.scores, result.label_names, strict=True):
        print(name, round(float(score), 2), box[:3])
    # against the model called by hand on the same points
    points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
    with torch.no_grad():
        (expected,) = model.predict(Batch(Points.from_list([torch.from_numpy(points)]), ["x"]))
    assert len(result) == len(expected) > 0
    order = expected.scores.argsort(descending=True)
    np.testing.assert_allclose(result.scores, expected.scores[order].numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.boxes, expected.boxes.tensor[order].numpy(), rtol=1e-5, atol=1e-5)
    assert result.label_names[0] in model.class_names
    assert len(capsys.readouterr().out.splitlines()) == len(result)
    # the same cloud as an array, as a tensor, and in a batch of two
    np.testing.assert_array_equal(detector.predict(points).scores, result.scores)
    np.testing.assert_array_equal(detector.predict(torch.from_numpy(points)).scores, result.scores)
    both = detector.predict([points, points[: len(points) // 2]])
    assert len(both) == 2
    np.testing.assert_allclose(both[0].scores, result.scores, rtol=1e-5, atol=1e-6)


def test_point_width_and_task_errors(detector_ckpt, tmp_path):
    ckpt, _ = detector_ckpt
    detector = pointwin.load_detector(ckpt, device="cpu")
    with pytest.raises(ValueError, match=r"expected \(N, >= 4\) points .*num_point_features is 4.*\(100, 3\)"):
        detector.predict(np.zeros((100, 3), np.float32))
    # a nuScenes scan has 5 columns: read with dims=5, the extra column is dropped
    result = detector.predict(shared_file(NUSCENES_SCAN), dims=5)
    assert isinstance(result, pointwin.DetectionResult)
    with pytest.raises(ValueError, match="not a segmentor"):
        pointwin.load_segmentor(ckpt, device="cpu")
    torch.save({"model": torch.load(ckpt, weights_only=True)["model"]}, tmp_path / "plain.pth")
    with pytest.raises(Exception, match="carries no config"):
        pointwin.load_detector(tmp_path / "plain.pth")
    assert len(pointwin.load_detector(tmp_path / "plain.pth", device="cpu",
                                      config="configs/synthetic/flatformer_tiny.yaml").class_names) == 3


def test_segmentor_from_config(one_thread):
    seg = pointwin.load_segmentor("configs/synthetic/sphereseg_tiny.yaml", device="cpu")
    points = np.fromfile(shared_file(KITTI_SCAN), dtype=np.float32).reshape(-1, 4)[:20000]
    result = seg.predict(points)
    assert isinstance(result, pointwin.SegmentationResult) and result.labels.shape == (20000,)
    assert result.labels.min() >= -1 and result.labels.max() < len(seg.class_names)
    assert sum(result.to_json()["counts"].values()) + result.to_json()["outside_grid"] == 20000


def test_predict_command_writes_per_frame_json(detector_ckpt, tmp_path, capsys, one_thread):
    ckpt, _ = detector_ckpt
    scan = shared_file(KITTI_SCAN)
    out = tmp_path / "pred"
    assert main(["predict", str(ckpt), str(scan), "--out", str(out), "--score-threshold", "0.05", "--png",
                 "--device", "cpu"]) == 0
    data = json.loads((out / "000000.json").read_text())
    direct = pointwin.load_detector(ckpt, device="cpu").predict(scan).above(0.05)
    assert len(data["objects"]) == len(direct) and data["class_names"] == direct.class_names
    if len(direct):
        assert data["objects"][0]["label"] == direct.label_names[0]
        np.testing.assert_allclose(data["objects"][0]["box"], direct.boxes[0], rtol=1e-5)
    assert all(o["score"] >= 0.05 for o in data["objects"])
    assert (out / "000000.png").stat().st_size > 1000
    assert f"for 1 files to {out}" in capsys.readouterr().out
    assert main(["predict", str(ckpt), str(scan), "--out", str(out), "--dims", "3", "--device", "cpu"]) == 2
    assert "size 1846144 bytes is not a multiple of 12 bytes per point (3 x float32)" in capsys.readouterr().err
    np.save(tmp_path / "xyz.npy", np.zeros((10, 3), np.float32))
    assert main(["predict", str(ckpt), str(tmp_path / "xyz.npy"), "--out", str(out), "--device", "cpu"]) == 2
    assert "xyz.npy: expected (N, >= 4) points" in capsys.readouterr().err
