"""Typed objects passed between pointwin's stages."""

from .boxes import Boxes3D, Detections, limit_period
from .points import Points
from .sample import Batch, Sample, collate
from .voxels import SparseVoxels

__all__ = ["Batch", "Boxes3D", "Detections", "Points", "Sample", "SparseVoxels", "collate", "limit_period"]
