"""Semantic segmentation metrics: a confusion matrix accumulated over a dataset, per-class IoU and mIoU.

IoU of class c = TP_c / (TP_c + FP_c + FN_c) from the confusion matrix summed over every evaluated
point of the dataset (not averaged per frame), the definition used by the nuScenes lidarseg and
SemanticKITTI benchmarks. Points whose ground-truth label is the ignore index do not count at all;
a prediction equal to the ignore index (or out of range) on a labelled point counts as a miss (FN).
A class that never occurs in the ground truth and is never predicted has an undefined IoU (NaN) and
is left out of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# The 16 evaluation classes of the nuScenes lidarseg challenge, in their official index order 1..16
# (index 0, "noise", is ignored); pointwin labels them 0..15.
NUSCENES_LIDARSEG_CLASSES = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian", "traffic_cone",
    "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain", "manmade", "vegetation",
)

# The 19 evaluation classes of SemanticKITTI (learning map, 0 = unlabelled is ignored); labelled 0..18.
SEMANTICKITTI_CLASSES = (
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist", "road",
    "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk", "terrain", "pole",
    "traffic-sign",
)


def _as_int64_numpy(name: str, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False).reshape(-1)


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """Confusion matrix of one batch of points.

    Args:
        pred: int (N,) predicted class per point (numpy or torch).
        target: int (N,) ground-truth class per point; ``ignore_index`` marks unlabelled points.
        num_classes: C.
        ignore_index: label value excluded from evaluation.

    Returns:
        int64 (C, C + 1): rows are ground truth, columns predictions; the extra last column counts
        labelled points whose prediction is outside ``[0, C)`` (a miss for the ground-truth class).
    """
    p = _as_int64_numpy("pred", pred)
    t = _as_int64_numpy("target", target)
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} labels but target has {t.size}; they must match point for point")
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target labels must be in [0, {num_classes}) or equal ignore_index={ignore_index}, "
                         f"got range [{t.min()}, {t.max()}]")
    p = np.where((p < 0) | (p >= num_classes), num_classes, p)
    return np.bincount(t * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1)).reshape(
        num_classes, num_classes + 1)


@dataclass
class SegmentationResult:
    """Per-class IoU (NaN where undefined), its mean over defined classes and overall accuracy."""

    class_names: tuple[str, ...]
    iou: np.ndarray
    miou: float
    accuracy: float

    def as_dict(self) -> dict[str, float]:
        out = {"mIoU": self.miou, "accuracy": self.accuracy}
        out.update({f"IoU/{n}": float(v) for n, v in zip(self.class_names, self.iou)})
        return out

    def table(self) -> str:
        width = max(len(n) for n in self.class_names + ("mIoU",))
        lines = [f"{'class':<{width}}  IoU"]
        lines += [f"{n:<{width}}  {'  n/a' if np.isnan(v) else f'{100 * v:5.1f}'}"
                  for n, v in zip(self.class_names, self.iou)]
        lines.append(f"{'mIoU':<{width}}  {100 * self.miou:5.1f}")
        return "\n".join(lines)


class SegmentationEvaluator:
    """Accumulates a confusion matrix over a dataset, then reports per-class IoU and mIoU.

    >>> ev = SegmentationEvaluator(SEMANTICKITTI_CLASSES)
    >>> ev.update(pred_labels, point_labels)   # once per sample or batch
    >>> ev.compute().miou
    """

    def __init__(self, class_names: tuple[str, ...] | list[str], ignore_index: int = -1) -> None:
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred, target) -> None:
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> SegmentationResult:
        return segmentation_metrics(self.matrix, self.class_names)


def segmentation_metrics(matrix: np.ndarray, class_names: tuple[str, ...] | list[str]) -> SegmentationResult:
    """IoU per class from a (C, C) or (C, C + 1) confusion matrix (rows: ground truth)."""
    m = np.asarray(matrix, dtype=np.float64)
    c = len(class_names)
    if m.ndim != 2 or m.shape[0] != c or m.shape[1] not in (c, c + 1):
        raise ValueError(f"confusion matrix must be ({c}, {c}) or ({c}, {c + 1}) for {c} classes, got {m.shape}")
    tp = np.diag(m[:, :c])
    gt_total = m.sum(1)
    pred_total = m[:, :c].sum(0)
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    defined = ~np.isnan(iou)
    miou = float(iou[defined].mean()) if defined.any() else float("nan")
    total = m.sum()
    accuracy = float(tp.sum() / total) if total > 0 else float("nan")
    return SegmentationResult(tuple(class_names), iou, miou, accuracy)
