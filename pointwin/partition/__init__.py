"""Window partitions: every scheme returns a :class:`Partition`."""

from .base import Partition
from .bev import bev_windows
from .cubic import cubic_windows
from .curve import CURVES, curve_patches, hilbert_encode, serialize, z_order_encode
from .flattened import flattened_order_key, flattened_windows
from .planes import PLANES, plane_windows
from .radial import exponential_split_edges, exponential_split_index, radial_windows, spherical_coords
from .rotated import rotated_sets

__all__ = [
    "CURVES",
    "PLANES",
    "Partition",
    "bev_windows",
    "cubic_windows",
    "curve_patches",
    "exponential_split_edges",
    "exponential_split_index",
    "flattened_order_key",
    "flattened_windows",
    "hilbert_encode",
    "plane_windows",
    "radial_windows",
    "rotated_sets",
    "serialize",
    "spherical_coords",
    "z_order_encode",
]
