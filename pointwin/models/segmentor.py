"""Semantic segmentation: points -> voxel VFE -> sparse U-Net backbone -> per-voxel logits -> per-point logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..structures import Batch


class Segmentor(nn.Module):
    """Per-point semantic segmentation assembled from config mappings.

    Args:
        class_names: segmentation classes; predictions index into this list.
        point_cloud_range, voxel_size: the voxel grid.
        vfe, backbone, head: registry mappings (``in_channels`` / ``num_classes`` are filled in).

    Points outside ``point_cloud_range`` get no voxel: their logits are zero, their predicted class -1, and
    they are left out of the loss.
    """

    def __init__(self, class_names: Sequence[str], point_cloud_range: Sequence[float], voxel_size: Sequence[float],
                 vfe: Mapping[str, Any], backbone: Mapping[str, Any], head: Mapping[str, Any]) -> None:
        super().__init__()
        from .builder import BACKBONES, HEADS, VFES

        self.class_names = list(class_names)
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.vfe = VFES.build(vfe, "model.vfe", voxel_size=self.voxel_size, point_cloud_range=self.point_cloud_range)
        self.backbone = BACKBONES.build(backbone, "model.backbone", in_channels=self.vfe.out_channels)
        self.head = HEADS.build(head, "model.head", in_channels=self.backbone.out_channels,
                                num_classes=len(self.class_names))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in the 3D backbone, when it supports it (timm convention)."""
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point logits (N, K) (zeros for dropped points) and the (N,) bool mask of points with a voxel."""
        vox = self.vfe.voxelize(batch.points)
        voxels = self.backbone(self.vfe(batch.points, vox))
        return self.head(voxels, vox.point_voxel), vox.kept

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.point_labels is None:
            raise ValueError("Segmentor.loss needs batch.point_labels (per-point labels, ignore -1)")
        logits, kept = self(batch)
        labels = torch.where(kept, batch.point_labels.to(logits.device), torch.full_like(batch.point_labels, -1))
        return self.head.loss(logits, labels)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[torch.Tensor]:
        """Per-sample (N_i,) int64 class ids; -1 for points outside the grid."""
        logits, kept = self(batch)
        pred = torch.where(kept, logits.argmax(1), torch.full_like(kept, -1, dtype=torch.long))
        b = batch.points.batch_idx
        return [pred[b == i] for i in range(batch.batch_size)]
