"""ops."""

from .attention import (  # noqa: F401
    group_attention,
    group_attention_reference,
    scattered_linear_attention,
    scattered_linear_attention_reference,
)
from .boxes import (  # noqa: F401
    boxes_iou3d,
    boxes_iou_bev,
    boxes_overlap_bev,
    circle_nms,
    nms_bev,
    points_in_boxes,
)
from .sparse_conv import (  # noqa: F401
    SparseConv3d,
    SparseInverseConv3d,
    SubMConv3d,
    sparse_conv3d,
    sparse_inverse_conv3d,
    subm_conv3d,
)
from .voxelize import Voxelization, grid_shape, voxel_pool, voxelize  # noqa: F401
