"""Segmentation metrics against hand-worked values and a naive per-class count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointwin.evaluation.segmentation import (
    NUSCENES_LIDARSEG_CLASSES,
    SEMANTICKITTI_CLASSES,
    SegmentationEvaluator,
    confusion_matrix,
    segmentation_metrics,
)


def test_class_lists():
    assert len(NUSCENES_LIDARSEG_CLASSES) == 16 and len(set(NUSCENES_LIDARSEG_CLASSES)) == 16
    assert len(SEMANTICKITTI_CLASSES) == 19 and len(set(SEMANTICKITTI_CLASSES)) == 19
    assert NUSCENES_LIDARSEG_CLASSES[0] == "barrier" and NUSCENES_LIDARSEG_CLASSES[-1] == "vegetation"
    assert SEMANTICKITTI_CLASSES[0] == "car" and SEMANTICKITTI_CLASSES[-1] == "traffic-sign"


def test_hand_worked_three_classes():
    # gt:   0 0 0 1 1 2 -1 -1
    # pred: 0 0 1 1 2 2  0  5(out of range, on an ignored point)
    target = np.array([0, 0, 0, 1, 1, 2, -1, -1])
    pred = np.array([0, 0, 1, 1, 2, 2, 0, 5])
    res = segmentation_metrics(confusion_matrix(pred, target, 3), ("a", "b", "c"))
    # class 0: tp 2, fn 1, fp 0 -> 2/3; class 1: tp 1, fn 1, fp 1 -> 1/3; class 2: tp 1, fp 1 -> 1/2
    np.testing.assert_allclose(res.iou, [2 / 3, 1 / 3, 1 / 2])
    assert res.miou == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert res.accuracy == pytest.approx(4 / 6)


def test_absent_class_is_nan_and_out_of_range_prediction_is_a_miss():
    target = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 7, 1])  # 7 is no class: a miss for class 0, a false positive for nobody
    res = segmentation_metrics(confusion_matrix(pred, target, 3), ("a", "b", "c"))
    assert res.iou[0] == pytest.approx(0.5) and res.iou[1] == pytest.approx(1.0) and np.isnan(res.iou[2])
    assert res.miou == pytest.approx(0.75)


def test_accumulated_over_batches_matches_naive_loop():
    rng = np.random.default_rng(0)
    c = 5
    ev = SegmentationEvaluator([f"c{i}" for i in range(c)], ignore_index=255)
    all_p, all_t = [], []
    for _ in range(4):
        n = int(rng.integers(50, 200))
        t = rng.integers(0, c, n)
        t[rng.random(n) < 0.1] = 255
        p = np.where(rng.random(n) < 0.6, t, rng.integers(0, c, n))
        p[t == 255] = rng.integers(0, c, int((t == 255).sum()))
        ev.update(torch.from_numpy(p), torch.from_numpy(t))
        all_p.append(p)
        all_t.append(t)
    p, t = np.concatenate(all_p), np.concatenate(all_t)
    keep = t != 255
    p, t = p[keep], t[keep]
    expected = []
    for k in range(c):
        inter = float(np.sum((p == k) & (t == k)))
        union = float(np.sum((p == k) | (t == k)))
        expected.append(inter / union)
    res = ev.compute()
    np.testing.assert_allclose(res.iou, expected, rtol=0, atol=1e-12)
    assert res.miou == pytest.approx(np.mean(expected), abs=1e-12)
    assert "mIoU" in res.table() and res.as_dict()["IoU/c0"] == pytest.approx(expected[0])


def test_bad_input_errors():
    with pytest.raises(ValueError, match="must match"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(ValueError, match="target labels"):
        confusion_matrix(np.array([0]), np.array([3]), 2)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.array([0.5]), np.array([0]), 2)
