"""Flattened window groups (FlatFormer): serpentine window order, snake inside, equal-size groups."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import (
    check_axis,
    check_coords,
    check_key_budget,
    check_shape,
    check_window,
    equal_groups,
    sample_sizes_of,
    stable_order,
)
from .base import Partition


def flattened_order_key(coords: torch.Tensor, spatial_shape: Sequence[int], window: Sequence[int],
                        axis: str = "x", shift: bool = False) -> torch.Tensor:
    """int64 (N,) sort key of FlatFormer's order (batch first); sorting by it gives the flattened sequence.

    For ``axis="x"``, with ``(x, y)`` shifted by ``(wx // 2, wy // 2)`` when ``shift``:
    rows of windows ``y // wy`` ascending; window columns ``x // wx`` ascending on even rows and
    descending on odd rows; inside a window local x major, local y ascending on even local x and
    descending on odd local x, and this whole inside order reversed when the window row is odd.
    ``axis="y"`` swaps the roles of x and y. Voxels of one pillar (same b, y, x) follow z ascending.
    """
    Z, Y, X = check_shape(spatial_shape)
    wx, wy = check_window("window", window, 2)
    c = coords.long()
    b, z, y, x = c.unbind(1)
    if shift:
        x, y = x + wx // 2, y + wy // 2
    nwx = (X - 1 + (wx // 2 if shift else 0)) // wx + 1
    nwy = (Y - 1 + (wy // 2 if shift else 0)) // wy + 1
    if axis == "y":  # y-major variant: the same order with x and y exchanged
        x, y, wx, wy, nwx, nwy = y, x, wy, wx, nwy, nwx
    row, col = y // wy, x // wx
    lx, ly = x % wx, y % wy
    odd_row = (row % 2) == 1
    col = torch.where(odd_row, nwx - 1 - col, col)
    inner = lx * wy + torch.where((lx % 2) == 1, wy - 1 - ly, ly)
    inner = torch.where(odd_row, wx * wy - 1 - inner, inner)
    B = int(b.max()) + 1 if b.numel() else 1
    check_key_budget("flattened_windows", (B, nwy, nwx, wx * wy, Z))
    return (((b * nwy + row) * nwx + col) * (wx * wy) + inner) * Z + z


def flattened_windows(coords: torch.Tensor, spatial_shape: Sequence[int], window: int | Sequence[int] = (12, 12),
                      group_size: int = 144, axis: str = "x", shift: bool = False) -> Partition:
    """FlatFormer's equal-size groups over the flattened window order.

    Args:
        coords: int32 (N, 4) voxel rows ``(b, z, y, x)`` of a pillar grid.
        spatial_shape: ``(Z, Y, X)``.
        window: ``(wx, wy)`` in voxels (an int means square).
        group_size: G, the voxels per group.
        axis: ``"x"`` or ``"y"``: which variant of the order (see :func:`flattened_order_key`).
        shift: add ``(wx // 2, wy // 2)`` to ``(x, y)`` first (the shifted block of FlatFormer).

    Returns:
        Partition with ``size = G``: each sample's sorted sequence cut into groups of G; the last
        group of a sample is its last G voxels (overlap owned by the earlier group); a sample with
        fewer than G voxels forms one group repeating its own voxels (``key_pad`` marks repeats).
        Groups never mix samples.
    """
    G = int(group_size)
    if G < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    check_axis(axis)
    shape = check_shape(spatial_shape)
    with torch.no_grad():
        c = check_coords("flattened_windows coords", coords, shape)
        key = flattened_order_key(c, shape, window, axis=axis, shift=shift)
        _, order = stable_order(key)
        sizes = sample_sizes_of(c[order, 0])
        return equal_groups(order, sizes, G, tail="last")
