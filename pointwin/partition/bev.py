"""BEV windows (ScatterFormer): variable-length groups, one per (sample, window row, window column)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import check_coords, check_key_budget, check_shape, check_window, stable_order, variable_groups
from .base import Partition


def bev_windows(coords: torch.Tensor, window: int | Sequence[int] = 12,
                spatial_shape: Sequence[int] | None = None) -> Partition:
    """Group voxels by BEV window ``(b, y // wy, x // wx)`` over the whole z extent.

    Args:
        coords: int32 (N, 4) rows ``(b, z, y, x)``.
        window: ``w`` or ``(wx, wy)`` in voxels.
        spatial_shape: optional ``(Z, Y, X)``, only used to validate coords.

    Returns:
        Partition with variable-length groups (``size`` None, no ``key_pad``), groups ordered by
        ``(b, y // wy, x // wx)``; inside a group voxels follow ``(z, y, x)`` ascending (the order does
        not matter to linear attention, but it is fixed so results are reproducible). Every voxel sits
        in exactly one slot.
    """
    wx, wy = check_window("window", window, 2)
    shape = None if spatial_shape is None else check_shape(spatial_shape)
    with torch.no_grad():
        c = check_coords("bev_windows coords", coords, shape)
        b, z, y, x = c.unbind(1)
        if c.shape[0]:
            B, Zr, Yr, Xr = (int(v) + 1 for v in c.amax(0).tolist())
        else:
            B = Zr = Yr = Xr = 1
        # The digits' radices come from the data, but the order they give is lexicographic in
        # (b, wy_idx, wx_idx, z, y, x) whatever the radices, so the partition depends on coords only.
        nwy, nwx = (Yr - 1) // wy + 1, (Xr - 1) // wx + 1
        check_key_budget("bev_windows", (B, nwy, nwx, Zr, Yr, Xr))
        win = (b * nwy + y // wy) * nwx + x // wx
        sorted_key, order = stable_order(((win * Zr + z) * Yr + y) * Xr + x)
        return variable_groups(order, sorted_key // (Zr * Yr * Xr))
