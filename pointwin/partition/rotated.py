"""Rotated dynamic sets (DSVT): per-window x-major or y-major ranking cut into sets of equal size."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import (
    check_axis,
    check_coords,
    check_key_budget,
    check_shape,
    check_window,
    exclusive_cumsum,
    run_lengths,
    stable_order,
)
from .base import Partition


def window_of(coords: torch.Tensor, spatial_shape: Sequence[int], window: Sequence[int],
              shift: Sequence[int] = (0, 0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """(window id, local coords) of each voxel under DSVT's window rule.

    Args:
        coords: int64 (N, 4) rows ``(b, z, y, x)``.
        spatial_shape: ``(Z, Y, X)``.
        window: ``(wx, wy, wz)``.
        shift: ``(sx, sy, sz)`` added to ``(x, y, z)`` before dividing.

    Returns:
        int64 (N,) window id, lexicographic in ``(b, wz_idx, wy_idx, wx_idx)``; int64 (N, 3) local ``(lx, ly, lz)``.
    """
    Z, Y, X = check_shape(spatial_shape)
    wx, wy, wz = window
    sx, sy, sz = shift
    b, z, y, x = coords.long().unbind(1)
    x, y, z = x + sx, y + sy, z + sz
    nwx, nwy, nwz = (X - 1 + sx) // wx + 1, (Y - 1 + sy) // wy + 1, (Z - 1 + sz) // wz + 1
    B = int(b.max()) + 1 if b.numel() else 1
    check_key_budget("rotated_sets", (B, nwz, nwy, nwx, wx * wy * wz))
    win = ((b * nwz + z // wz) * nwy + y // wy) * nwx + x // wx
    return win, torch.stack([x % wx, y % wy, z % wz], 1)


def rotated_sets(coords: torch.Tensor, spatial_shape: Sequence[int], window: int | Sequence[int] = (12, 12, 1),
                 set_size: int = 36, axis: str = "x", shift: int | Sequence[int] = (0, 0, 0)) -> Partition:
    """DSVT's dynamic sets.

    The window of a voxel is ``(b, (x+sx)//wx, (y+sy)//wy, (z+sz)//wz)`` with local coords
    ``(lx, ly, lz) = ((x+sx) % wx, (y+sy) % wy, (z+sz) % wz)``. Inside a window voxels are ranked by
    ``lx*wy*wz + ly*wz + lz`` (axis "x", x-major) or ``ly*wx*wz + lx*wz + lz`` (axis "y", y-major).
    A window with n voxels gives K = ceil(n / S) sets; slot j of set k holds the voxel of rank
    ``floor((k*S + j) * n / (K*S))``. Each set is therefore a contiguous run of ranked voxels, padded by
    repeating its own members; ``key_pad`` is True where a slot holds the same voxel as the slot
    before it. Sets are ordered by (batch, window z, y, x index, k).

    Args:
        coords: int32 (N, 4) rows ``(b, z, y, x)``.
        spatial_shape: ``(Z, Y, X)``.
        window: ``(wx, wy, wz)`` (an int means ``(w, w, 1)``).
        set_size: S, slots per set.
        axis: ``"x"`` or ``"y"``, the ranking (the rotation).
        shift: ``(sx, sy, sz)`` (an int means ``(s, s, 0)``).

    Returns:
        Partition with ``size = S``; the owner of a voxel is the first slot holding it.
    """
    S = int(set_size)
    if S < 1:
        raise ValueError(f"set_size must be a positive int, got {set_size!r}")
    check_axis(axis)
    shape = check_shape(spatial_shape)
    if isinstance(window, int):
        window = (window, window, 1)
    if isinstance(shift, int):
        shift = (shift, shift, 0)
    wx, wy, wz = check_window("window", window, 3)
    shift = tuple(int(s) for s in shift)
    if len(shift) != 3 or min(shift) < 0:
        raise ValueError(f"shift must be 3 non-negative ints (sx, sy, sz), got {shift!r}")
    with torch.no_grad():
        c = check_coords("rotated_sets coords", coords, shape)
        device = c.device
        win, local = window_of(c, shape, (wx, wy, wz), shift)
        lx, ly, lz = local.unbind(1)
        rank_key = lx * (wy * wz) + ly * wz + lz if axis == "x" else ly * (wx * wz) + lx * wz + lz
        sorted_key, order = stable_order(win * (wx * wy * wz) + rank_key)
        n = run_lengths(sorted_key // (wx * wy * wz))  # voxels per non-empty window, in sorted order
        win_start = exclusive_cumsum(n)[:-1]
        K = (n + S - 1) // S
        T = K * S  # slots per window
        slot_start = exclusive_cumsum(T)
        M = int(slot_start[-1])
        w = torch.repeat_interleave(torch.arange(n.numel(), device=device), T, output_size=M)
        t = torch.arange(M, device=device) - slot_start[:-1][w]  # k*S + j
        rank = (t * n[w]) // T[w]
        index = order[win_start[w] + rank]
        key_pad = torch.zeros(M, dtype=torch.bool, device=device)
        if M > 1:
            key_pad[1:] = (t[1:] % S != 0) & (index[1:] == index[:-1])
        # Owner of rank r: the first slot t with floor(t*n/T) = r, i.e. t = ceil(r*T/n).
        N = c.shape[0]
        vw = torch.repeat_interleave(torch.arange(n.numel(), device=device), n, output_size=N)
        r = torch.arange(N, device=device) - win_start[vw]
        first_t = (r * T[vw] + n[vw] - 1) // n[vw]
        owner = torch.empty(N, dtype=torch.int64, device=device)
        owner[order] = slot_start[:-1][vw] + first_t
        offsets = torch.arange(0, M + 1, S, device=device, dtype=torch.int64)
        return Partition(index=index, offsets=offsets, owner=owner, size=S, key_pad=key_pad)
