"""Radial windows (SphereFormer): narrow in azimuth and polar angle, long in range.

Also the exponential split of the range difference used by SphereFormer's relative-position
encoding along the radial axis (fine near zero, coarse far away), and the official model's per-pair
relative-position table index (:func:`radial_rpe_index`).

Two window origins (``origin``):

* ``"fixed"`` (pointwin): cell = floor(value / window) of (azimuth in [0, 360), polar, range) in float64.
  A sample's windows never depend on the rest of the batch.
* ``"batch_min"`` (the official SphereFormer grid, sptr ``get_indices_params`` with ``shift_win`` off):
  azimuth = atan2(y, x) + 180 deg in [0, 360], values in float32 as the reference computes them, and
  cell = floor((value - m) / window) with m the minimum of each of the three values over **every row of
  the batch**. A sample's windows then change with its batch mates; reproduces the official windows.
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


ORIGINS = ("fixed", "batch_min")


def sphereformer_spherical(xyz: torch.Tensor) -> torch.Tensor:
    """float32 (N, 3) ``(azimuth deg in [0, 360], polar deg from +z, range m)`` as the official SphereFormer
    computes them: azimuth = atan2(y, x) + 180 deg (so +x is 180 deg), float32 arithmetic throughout."""
    p = xyz[:, :3].to(torch.float32)
    x, y, z = p.unbind(1)
    az = (torch.atan2(y, x) + math.pi) * 180 / math.pi
    polar = torch.atan2(torch.sqrt(x ** 2 + y ** 2), z) * 180 / math.pi
    rng = torch.sqrt(x ** 2 + y ** 2 + z ** 2)
    return torch.stack([az, polar, rng], 1)


def _check_origin(origin: str) -> str:
    if origin not in ORIGINS:
        raise ValueError(f"radial window origin must be one of {ORIGINS}, got {origin!r}")
    return origin


def radial_values(xyz: torch.Tensor, origin: str = "fixed") -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, start)``: the (azimuth, polar, range) of each row and the origin cells are counted from.

    ``"fixed"``: :func:`spherical_coords` (float64) and start 0. ``"batch_min"``:
    :func:`sphereformer_spherical` (float32) and start = the per-axis minimum over all rows given.
    """
    if _check_origin(origin) == "fixed":
        v = spherical_coords(xyz)
        return v, torch.zeros(3, dtype=v.dtype, device=v.device)
    v = sphereformer_spherical(xyz)
    start = v.amin(0) if v.shape[0] else torch.zeros(3, dtype=v.dtype, device=v.device)
    return v, start


def radial_cells(xyz: torch.Tensor, window: Sequence[float], origin: str = "fixed") -> torch.Tensor:
    """int64 (N, 3) cell ``floor((value - start) / window)`` of (azimuth, polar, range) per point.

    See :func:`radial_values` for the value convention and ``start`` of each ``origin``.
    """
    v, start = radial_values(xyz, origin)
    w = torch.tensor([float(x) for x in window], dtype=v.dtype, device=xyz.device)
    return torch.floor((v - start) / w).long()


def radial_windows(xyz: torch.Tensor, batch_idx: torch.Tensor,
                   window: Sequence[float] = (2.0, 2.0, 120.0), origin: str = "fixed") -> Partition:
    """Group points (or voxel centres) by radial window.

    Args:
        xyz: (N, >=3) float positions in the sensor frame (the origin is the window centre).
        batch_idx: int (N,) sample of each row.
        window: ``(d_azimuth_deg, d_polar_deg, d_range_m)``.
        origin: ``"fixed"`` (cells from 0: batch-independent, pointwin's choice) or ``"batch_min"`` (cells
            from the batch-wide minimum, the official SphereFormer grid); see the module docstring.

    Returns:
        Partition with variable-length groups (``size`` None, no ``key_pad``), groups ordered by
        ``(b, azimuth cell, polar cell, range cell)`` with cell = floor((value - start) / window) per axis;
        inside a group rows keep their input order. With ``origin="fixed"`` the cells do not depend on the
        rest of the batch.
    """
    _check_origin(origin)
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
        cells = radial_cells(xyz, window, origin)
        n_az = math.floor(360.0 / float(window[0])) + 2
        n_pol = math.floor(180.0 / float(window[1])) + 2
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


def sphereformer_range_bin(delta_range: torch.Tensor, a: float = 0.0125) -> torch.Tensor:
    """int64 signed bin of range differences (m) with the official SphereFormer exponential split.

    Two bins per doubling, in units of ``a``: ``|d| / a`` edges 1, 2, 4, 6, 10, 14, 22, 30, 46, ... (bin
    ``2j + 1`` starts at ``3 * 2**j - 2``, bin ``2j`` at ``2**(j + 1) - 2``); ``d`` in ``[0, a)`` is bin 0
    and the negative side is shifted by one: ``d`` in ``[-a, 0)`` is bin -1, ``[-2a, -a)`` is -2, so
    ``bin(-d) = -bin(d) - 1`` off the edges. Evaluated with the reference's formula in the input's dtype
    (float32 for the reference's float32 ranges): ``m = 2 floor(log2((|d| + 2a) / a)) - 2``, plus one where
    ``(3 * 2**(m // 2) - 2) a <= |d|``.
    """
    if a <= 0:
        raise ValueError(f"sphereformer_range_bin needs a > 0, got a={a}")
    d = delta_range if delta_range.is_floating_point() else delta_range.double()
    mag = d.abs()
    nonneg = (d >= 0).to(d.dtype)
    m = 2 * torch.floor(torch.log((mag + 2 * a) / a) / math.log(2)) - 2
    m = m + ((3 * torch.pow(2.0, torch.div(m, 2, rounding_mode="floor")) - 2) * a <= mag).to(d.dtype)
    return (m * (2 * nonneg - 1) + (nonneg - 1)).long()


def window_rpe_index(values: torch.Tensor, start: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                     window: Sequence[float], quant_grid_length: int = 24) -> torch.Tensor:
    """int64 (M, 3) table index of (query, key) pairs from quantised in-window positions.

    ``idx = floor(((v_q - start) mod w) / s) - floor(((v_k - start) mod w) / s) + L - 1`` per axis with
    quant size ``s = w / L`` (``L = quant_grid_length``): in ``[0, 2L - 2]`` for pairs in one window. The
    official sptr contextual RPE (``sparse_self_attention``) with ``start`` the batch-wide minimum.
    """
    w = torch.tensor([float(x) for x in window], dtype=values.dtype, device=values.device)
    quant = w / int(quant_grid_length)
    local = torch.div(torch.remainder(values - start, w), quant, rounding_mode="floor")
    return (local[query.long()] - local[key.long()]).long() + int(quant_grid_length) - 1


def radial_rpe_index(xyz: torch.Tensor, query: torch.Tensor, key: torch.Tensor, window: Sequence[float],
                     quant_grid_length: int = 24, a: float = 0.0125, origin: str = "batch_min") -> torch.Tensor:
    """int64 (M, 3) relative-position table index of the official SphereFormer radial heads.

    Columns (azimuth, polar, range). Azimuth and polar: :func:`window_rpe_index` of the radial values; range:
    :func:`sphereformer_range_bin` of ``r_q - r_k`` plus ``L``; then every column clamped to ``[0, 2L - 1]``
    (the tables have 2L rows). ``query`` / ``key`` are row indices into ``xyz`` (query first: d = r_q - r_k).
    ``origin`` as in :func:`radial_windows` (``"batch_min"``: start = minimum over all rows of ``xyz``, so
    pass the whole batch).
    """
    values, start = radial_values(xyz, origin)
    L = int(quant_grid_length)
    idx = window_rpe_index(values, start, query, key, window, L)
    rng = values[:, 2]
    idx[:, 2] = sphereformer_range_bin(rng[query.long()] - rng[key.long()], a) + L
    return idx.clamp_(0, 2 * L - 1)


def position_windows(xyz: torch.Tensor, batch_idx: torch.Tensor, window: Sequence[float],
                     origin: str = "fixed") -> tuple[Partition, torch.Tensor, torch.Tensor]:
    """Cubic windows on float positions (SphereFormer's cubic heads): cell = floor((p - start) / window).

    ``origin="batch_min"``: float32 positions and start = the per-axis minimum over all rows (the official
    sptr grid); ``"fixed"``: float64 and start 0 (batch-independent). Returns the partition (groups ordered by
    ``(b, x cell, y cell, z cell)``, rows in input order inside), the positions in the arithmetic used and
    ``start`` (both for :func:`window_rpe_index`).
    """
    _check_origin(origin)
    if len(window) != 3 or min(float(v) for v in window) <= 0:
        raise ValueError(f"position_windows window must be 3 positive lengths (m), got {window!r}")
    with torch.no_grad():
        if origin == "fixed":
            v = xyz[:, :3].to(torch.float64)
            start = torch.zeros(3, dtype=v.dtype, device=v.device)
        else:
            v = xyz[:, :3].to(torch.float32)
            start = v.amin(0) if v.shape[0] else torch.zeros(3, dtype=v.dtype, device=v.device)
        w = torch.tensor([float(x) for x in window], dtype=v.dtype, device=v.device)
        cells = torch.floor((v - start) / w).long()
        cells -= cells.amin(0) if cells.shape[0] else 0
        b = batch_idx.long()
        ext = (cells.amax(0) + 1).tolist() if cells.shape[0] else [1, 1, 1]
        B = int(b.max()) + 1 if b.numel() else 1
        check_key_budget("position_windows", (B, *ext))
        key = ((b * ext[0] + cells[:, 0]) * ext[1] + cells[:, 1]) * ext[2] + cells[:, 2]
        sorted_key, order = stable_order(key)
        return variable_groups(order, sorted_key), v, start
