"""Window partitions: every scheme returns a :class:`Partition`."""

from .base import Partition
from .bev import bev_windows
from .cubic import cubic_windows
from .curve import CURVES, curve_patches, hilbert_encode, serialize, z_order_encode
from .flattened import flattened_order_key, flattened_windows
from .planes import PLANES, plane_windows
from .radial import (
    ORIGINS,
    exponential_split_edges,
    exponential_split_index,
    radial_rpe_index,
    radial_windows,
    sphereformer_range_bin,
    sphereformer_spherical,
    spherical_coords,
    window_rpe_index,
)
from .rotated import rotated_sets

__all__ = [
    "CURVES",
    "ORIGINS",
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
    "radial_rpe_index",
    "radial_windows",
    "rotated_sets",
    "serialize",
    "sphereformer_range_bin",
    "sphereformer_spherical",
    "spherical_coords",
    "window_rpe_index",
    "z_order_encode",
]
