"""Task heads: CenterPoint detection and per-point segmentation."""

from .centerpoint import CenterHeadOutput, CenterPointHead, TaskPrediction, TaskTargets
from .seg import SegHead, lovasz_softmax

__all__ = ["CenterHeadOutput", "CenterPointHead", "SegHead", "TaskPrediction", "TaskTargets", "lovasz_softmax"]
