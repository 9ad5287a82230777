"""Cubic (Swin-3D style) windows: fixed-origin 3D windows, variable-length groups."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import check_coords, check_key_budget, check_shape, check_window, stable_order, variable_groups
from .base import Partition


def cubic_windows(coords: torch.Tensor, spatial_shape: Sequence[int], window: int | Sequence[int] = (8, 8, 8),
                  shift: int | Sequence[int] = (0, 0, 0)) -> Partition:
    """Group voxels by cubic window ``(b, (z+sz)//wz, (y+sy)//wy, (x+sx)//wx)``.

    Args:
        coords: int32 (N, 4) rows ``(b, z, y, x)``.
        spatial_shape: ``(Z, Y, X)``.
        window: ``(wx, wy, wz)`` in voxels (an int means a cube).
        shift: ``(sx, sy, sz)`` added before dividing (an int means the same on every axis).

    Returns:
        Partition with variable-length groups (``size`` None, no ``key_pad``), groups ordered by
        ``(b, window z, y, x index)``, voxels inside a window by ``(z, y, x)``. Every voxel sits in exactly
        one slot; the partition depends on coords only (fixed origin).
    """
    shape = check_shape(spatial_shape)
    wx, wy, wz = check_window("window", window, 3)
    sx, sy, sz = (int(shift),) * 3 if isinstance(shift, int) else tuple(int(s) for s in shift)
    if min(sx, sy, sz) < 0:
        raise ValueError(f"cubic_windows shift must be >= 0, got {(sx, sy, sz)}")
    with torch.no_grad():
        c = check_coords("cubic_windows coords", coords, shape)
        b, z, y, x = c.unbind(1)
        Z, Y, X = shape
        nwz, nwy, nwx = (Z - 1 + sz) // wz + 1, (Y - 1 + sy) // wy + 1, (X - 1 + sx) // wx + 1
        B = int(b.max()) + 1 if b.numel() else 1
        check_key_budget("cubic_windows", (B, nwz, nwy, nwx, Z, Y, X))
        win = ((b * nwz + (z + sz) // wz) * nwy + (y + sy) // wy) * nwx + (x + sx) // wx
        sorted_key, order = stable_order(((win * Z + z) * Y + y) * X + x)
        return variable_groups(order, sorted_key // (Z * Y * X))
