"""Typed objects passed between pointwin's stages."""

from .boxes import Boxes3D, Detections, limit_period
from .points import Points
from .voxels import SparseVoxels

__all__ = ["Boxes3D", "Detections", "Points", "SparseVoxels", "limit_period"]
