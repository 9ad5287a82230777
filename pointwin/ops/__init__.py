"""ops."""

from .voxelize import Voxelization, grid_shape, voxel_pool, voxelize  # noqa: F401
from .attention import (  # noqa: F401
    group_attention,
    group_attention_reference,
    scattered_linear_attention,
    scattered_linear_attention_reference,
)
