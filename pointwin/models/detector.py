"""3D object detector: points -> VFE -> 3D backbone -> BEV scatter -> 2D backbone -> CenterPoint head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..structures import Batch, Detections, Points
from .bev import PillarScatter


class Detector(nn.Module):
    """A CenterPoint-style detector assembled from config mappings.

    Args:
        class_names: detection classes; ``Detections.labels`` index into this list.
        point_cloud_range: (x0, y0, z0, x1, y1, z1) metres.
        voxel_size: (vx, vy, vz) metres (pillar VFEs use only vx, vy).
        vfe, backbone, backbone_2d, head: ``{type: ..., **kwargs}`` mappings for the registries in
            :mod:`pointwin.models.builder`; ``in_channels``, grid geometry and class names are filled in.

    Stages pass typed objects: Points -> SparseVoxels -> SparseVoxels -> (B, C, H, W) BEV tensor ->
    :class:`~pointwin.models.heads.centerpoint.CenterHeadOutput` -> list of Detections.
    """

    def __init__(self, class_names: Sequence[str], point_cloud_range: Sequence[float], voxel_size: Sequence[float],
                 vfe: Mapping[str, Any], backbone: Mapping[str, Any], head: Mapping[str, Any],
                 backbone_2d: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        from .builder import BACKBONES, HEADS, NECKS, VFES

        if len(point_cloud_range) != 6:
            raise ConfigError(f"model.point_cloud_range must have 6 numbers, got {list(point_cloud_range)}")
        self.class_names = list(class_names)
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.vfe = VFES.build(vfe, "model.vfe", voxel_size=self.voxel_size,
                              point_cloud_range=self.point_cloud_range)
        self.backbone = BACKBONES.build(backbone, "model.backbone", in_channels=self.vfe.out_channels)
        grid = self.backbone.output_grid(self.vfe.spatial_shape) if hasattr(self.backbone, "output_grid") \
            else self.vfe.spatial_shape
        bev_stride = self.vfe.spatial_shape[2] / grid[2]
        self.scatter = PillarScatter(self.backbone.out_channels, grid[0])
        if backbone_2d is not None:
            self.backbone_2d = NECKS.build(backbone_2d, "model.backbone_2d", in_channels=self.scatter.out_channels)
            channels, stride = self.backbone_2d.out_channels, bev_stride * self.backbone_2d.out_stride
        else:
            self.backbone_2d = nn.Identity()
            channels, stride = self.scatter.out_channels, bev_stride
        self.head = HEADS.build(head, "model.head", in_channels=channels, class_names=self.class_names,
                                point_cloud_range=self.point_cloud_range, voxel_size=self.voxel_size[:2],
                                feature_stride=stride)

    def bev_features(self, points: Points) -> torch.Tensor:
        """(B, C, H, W) BEV features of a batch of points."""
        voxels = self.vfe(points)
        voxels = self.backbone(voxels)
        return self.backbone_2d(self.scatter(voxels))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in the 3D backbone, when it supports it (timm convention)."""
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)

    def forward(self, batch: Batch):
        """Head outputs (a :class:`CenterHeadOutput`) for ``batch``."""
        return self.head(self.bev_features(batch.points))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar losses; ``"loss"`` is the total to back-propagate."""
        if batch.boxes is None or batch.labels is None:
            raise ValueError("Detector.loss needs a labelled batch (batch.boxes and batch.labels are None)")
        return self.head.loss(self(batch), batch.boxes, batch.labels)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """One :class:`Detections` per sample, boxes in the LiDAR frame, labels into ``class_names``."""
        return self.head.predict(self(batch))
