"""Radial windows (SphereFormer): narrow in azimuth and polar angle, long in range.

Also the exponential split of the range difference used by SphereFormer's relative-position
encoding along the radial axis (fine near zero, coarse far away).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._common import check_key_budget, stable_order, variable_groups
from .base import Partition


def spherical_coords(xyz: torch.Tensor) -> torch.Tensor:
    """float64 (N, 3) ``(azimuth deg in [0, 360), polar deg from +z in [0, 180], range m)`` of (N, >=3) xyz.

    Computed in float64 so that cell boundaries agree between CPU and CUDA as closely as possible.
    The origin itself gets azimuth 0 and polar angle 0.
    """
    p = xyz[:, :3].to(torch.float64)
    x, y, z = p.unbind(1)
    az = torch.rad2deg(torch.atan2(y, x))
    az = torch.where(az < 0, az + 360.0, az)
    az = torch.where(az >= 360.0, az - 360.0, az)  # -tiny + 360 can round to 360
    rho = torch.hypot(x, y)
    polar = torch.rad2deg(torch.atan2(rho, z))
    rng = torch.sqrt(x * x + y * y + z * z)
    return torch.stack([az, polar, rng], 1)


def radial_cells(xyz: torch.Tensor, window: Sequence[float]) -> torch.Tensor:
    """int64 (N, 3) cell ``floor(value / window)`` of (azimuth, polar, range) per point (fixed origin)."""
    w = torch.tensor([float(v) for v in window], dtype=torch.float64, device=xyz.device)
    return torch.floor(spherical_coords(xyz) / w).long()


def radial_windows(xyz: torch.Tensor, batch_idx: torch.Tensor,
                   window: Sequence[float] = (2.0, 2.0, 120.0)) -> Partition:
    """Group points (or voxel centres) by radial window.

    Args:
        xyz: (N, >=3) float positions in the sensor frame (the origin is the window centre).
        batch_idx: int (N,) sample of each row.
        window: ``(d_azimuth_deg, d_polar_deg, d_range_m)``.

    Returns:
        Partition with variable-length groups (``size`` None, no ``key_pad``), groups ordered by
        ``(b, azimuth cell, polar cell, range cell)`` with cell = floor(value / window) per axis; inside a
        group rows keep their input order. The cells do not depend on the rest of the batch.
    """
    if not isinstance(xyz, torch.Tensor) or xyz.ndim != 2 or xyz.shape[1] < 3 or not xyz.is_floating_point():
        raise ValueError(f"radial_windows xyz must be a float (N, >=3) tensor, got "
                         f"{getattr(xyz, 'dtype', type(xyz))} {tuple(getattr(xyz, 'shape', ()))}")
    if not isinstance(batch_idx, torch.Tensor) or batch_idx.shape != (xyz.shape[0],) or batch_idx.is_floating_point():
        raise ValueError(f"radial_windows batch_idx must be an integer ({xyz.shape[0]},) tensor, got "
                         f"{getattr(batch_idx, 'dtype', type(batch_idx))} {tuple(getattr(batch_idx, 'shape', ()))}")
    if len(window) != 3 or min(float(v) for v in window) <= 0:
        raise ValueError(f"radial_windows window must be 3 positive numbers (deg, deg, m), got {window!r}")
    if xyz.numel() and not bool(torch.isfinite(xyz[:, :3]).all()):
        raise ValueError("radial_windows xyz contains NaN or Inf")
    with torch.no_grad():
        b = batch_idx.long()
        if b.numel() and int(b.min()) < 0:
            raise ValueError(f"radial_windows batch_idx has a negative sample id ({int(b.min())})")
        cells = radial_cells(xyz, window)
        n_az = math.floor(360.0 / float(window[0])) + 1
        n_pol = math.floor(180.0 / float(window[1])) + 1
        n_rng = int(cells[:, 2].max()) + 1 if b.numel() else 1
        B = int(b.max()) + 1 if b.numel() else 1
        check_key_budget("radial_windows", (B, n_az, n_pol, n_rng))
        key = ((b * n_az + cells[:, 0]) * n_pol + cells[:, 1]) * n_rng + cells[:, 2]
        sorted_key, order = stable_order(key)
        return variable_groups(order, sorted_key)


def exponential_split_edges(unit: float, num_bins: int) -> torch.Tensor:
    """float64 (num_bins,) magnitude edges ``unit * 2**k`` (k = 0..num_bins-1) of the exponential split.

    A range difference d gets bin m(|d|) = number of edges <= |d|:

        |d| in [0, unit)                      -> 0
        |d| in [unit * 2**(k-1), unit * 2**k) -> k     for 1 <= k < num_bins
        |d| >= unit * 2**(num_bins-1)          -> num_bins

    and the signed index sign(d) * m(|d|), symmetric in sign.
    """
    if num_bins < 1 or unit <= 0:
        raise ValueError(f"exponential split needs unit > 0 and num_bins >= 1, got unit={unit}, num_bins={num_bins}")
    return float(unit) * torch.pow(2.0, torch.arange(num_bins, dtype=torch.float64))


def exponential_split_index(delta_range: torch.Tensor, unit: float = 0.0125, num_bins: int = 12) -> torch.Tensor:
    """int64 table index in ``[0, 2 * num_bins]`` of range differences (query range minus key range, m).

    The signed bin ``sign(d) * m(|d|)`` (see :func:`exponential_split_edges`) shifted by ``num_bins``: so
    d = 0 maps to ``num_bins``, and ``index(-d) = 2 * num_bins - index(d)``. Bins are ``unit`` wide near
    zero and double in width each step outward, so close neighbours along a ray are told apart
    finely while points tens of metres apart share a coarse bin.
    """
    edges = exponential_split_edges(unit, num_bins).to(delta_range.device)
    d = delta_range.to(torch.float64)
    mag = torch.searchsorted(edges, d.abs(), right=True)
    return torch.where(d < 0, -mag, mag) + num_bins
