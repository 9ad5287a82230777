"""ops."""

from .voxelize import Voxelization, grid_shape, voxel_pool, voxelize  # noqa: F401
