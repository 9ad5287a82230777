"""Disassembled (tri-plane) windows of ConDaFormer: three one-voxel-thick plane windows instead of a cube.

Reference: Duan et al., "ConDaFormer: Disassembled Transformer with Local Structure Enhancement for 3D
Point Cloud Understanding" (NeurIPS 2023). A cubic window of side ``(wx, wy, wz)`` is replaced by the
plane windows ``(wx, wy, 1)`` ("xy"), ``(wx, 1, wz)`` ("xz") and ``(1, wy, wz)`` ("yz"); each is a
:func:`~pointwin.partition.cubic_windows` partition, so groups are variable-length with a fixed origin.
A shifted block moves the in-plane axes by half a window (``w // 2``); the thin axis never shifts (a
window one voxel thick groups the same voxels whatever the shift).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import check_window
from .base import Partition
from .cubic import cubic_windows

PLANES = ("xy", "xz", "yz")
_THIN_AXIS = {"xy": 2, "xz": 1, "yz": 0}  # index into (x, y, z) of the axis one voxel thick


def plane_window(window: int | Sequence[int], plane: str) -> tuple[int, int, int]:
    """``(wx, wy, wz)`` of ``plane`` ("xy", "xz" or "yz") cut from the cubic ``window``: the thin axis gets 1."""
    if plane not in _THIN_AXIS:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    w = list(check_window("plane window", window, 3))
    w[_THIN_AXIS[plane]] = 1
    return tuple(w)  # type: ignore[return-value]


def plane_shift(window: int | Sequence[int], plane: str, shifted: bool) -> tuple[int, int, int]:
    """``(sx, sy, sz)``: half the plane window (``w // 2``) on the in-plane axes when ``shifted``, else 0."""
    w = plane_window(window, plane)
    return tuple(wi // 2 for wi in w) if shifted else (0, 0, 0)  # type: ignore[return-value]


def plane_windows(coords: torch.Tensor, spatial_shape: Sequence[int], window: int | Sequence[int] = 8,
                  shifted: bool = False) -> tuple[Partition, Partition, Partition]:
    """The three plane partitions ``(xy, xz, yz)`` of the cubic ``window`` (see the module docstring).

    Args:
        coords: int32 (N, 4) rows ``(b, z, y, x)``.
        spatial_shape: ``(Z, Y, X)``.
        window: ``(wx, wy, wz)`` of the cube being disassembled (an int means a cube).
        shifted: shift the in-plane axes by half a window.

    Returns:
        Three Partitions (variable-length groups) in the order of :data:`PLANES`.
    """
    return tuple(cubic_windows(coords, spatial_shape, plane_window(window, p), plane_shift(window, p, shifted))
                 for p in PLANES)  # type: ignore[return-value]


def window_local_coords(coords: torch.Tensor, window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """int64 (N, 3) position ``((x + sx) % wx, (y + sy) % wy, (z + sz) % wz)`` of each voxel inside its window.

    Two voxels of one window differ in these by exactly their coordinate difference, which is what a
    relative-position table indexes.
    """
    c = coords.long()
    xyz = torch.stack([c[:, 3], c[:, 2], c[:, 1]], 1)
    w = torch.tensor([int(v) for v in window], device=c.device)
    s = torch.tensor([int(v) for v in shift], device=c.device)
    return (xyz + s) % w
