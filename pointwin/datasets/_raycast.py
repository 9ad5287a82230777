"""Numba kernels behind the synthetic LiDAR: ray casting against simple primitives, points in boxes.

The sensor sits at the origin of the LiDAR frame. A scene is a ground plane ``z = g0 + gx * x + gy * y``
plus K primitives, each a row of ``params`` (float64, 9 columns) with a type code:

- ``BOX`` (upright oriented box): cx, cy, cz, hx, hy, hz, cos(yaw), sin(yaw), reflectivity
- ``CYLINDER`` (vertical, e.g. a pole or a trunk): cx, cy, radius, z0, z1, -, -, -, reflectivity
- ``ELLIPSOID`` (axis-aligned, e.g. a bush): cx, cy, cz, rx, ry, rz, -, -, reflectivity

Rays are grouped by azimuth column; each primitive is listed only in the columns its bird's-eye
bounding circle can cover, so a ray tests a handful of primitives instead of all of them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
GROUND = -1  # owner id of ground hits
_EPS = 1e-6


@njit(cache=True)
def build_columns(bound: np.ndarray, num_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of the primitives each azimuth column may hit.

    Args:
        bound: float64 (K, 3) bird's-eye bounding circles (cx, cy, r) in the sensor frame.
        num_cols: azimuth columns over 360 degrees; column a spans [a, a + 1) * 2 pi / num_cols.

    Returns:
        offsets int64 (num_cols + 1,), items int64 (sum of list lengths,).
    """
    k_total = bound.shape[0]
    res = 2.0 * math.pi / num_cols
    lo = np.empty(k_total, np.int64)
    hi = np.empty(k_total, np.int64)
    counts = np.zeros(num_cols + 1, np.int64)
    for k in range(k_total):
        cx, cy, r = bound[k, 0], bound[k, 1], bound[k, 2]
        d = math.sqrt(cx * cx + cy * cy)
        if d <= r + 1e-3:
            lo[k], hi[k] = 0, num_cols - 1
        else:
            c = math.atan2(cy, cx)
            if c < 0.0:
                c += 2.0 * math.pi
            half = math.asin(min(r / d, 1.0))
            a0 = int(math.floor((c - half) / res)) - 1
            a1 = int(math.floor((c + half) / res)) + 1
            if a1 - a0 + 1 >= num_cols:
                a0, a1 = 0, num_cols - 1
            lo[k], hi[k] = a0, a1
        for a in range(lo[k], hi[k] + 1):
            counts[((a % num_cols) + num_cols) % num_cols + 1] += 1
    offsets = np.cumsum(counts)
    items = np.empty(offsets[-1], np.int64)
    fill = offsets[:-1].copy()
    for k in range(k_total):
        for a in range(lo[k], hi[k] + 1):
            col = ((a % num_cols) + num_cols) % num_cols
            items[fill[col]] = k
            fill[col] += 1
    return offsets, items


@njit(cache=True)
def _hit_box(p, dx, dy, dz):
    """Entry distance and |cos incidence| of a ray from the origin into an upright oriented box."""
    c, s = p[6], p[7]
    # ray origin and direction in the box frame (origin is the sensor, translated by -centre)
    ox, oy, oz = -p[0], -p[1], -p[2]
    lox, loy = c * ox + s * oy, -s * ox + c * oy
    ldx, ldy = c * dx + s * dy, -s * dx + c * dy
    o = (lox, loy, oz)
    d = (ldx, ldy, dz)
    h = (p[3], p[4], p[5])
    tnear, tfar = -1e30, 1e30
    axis = -1
    for i in range(3):
        if abs(d[i]) < 1e-12:
            if o[i] < -h[i] or o[i] > h[i]:
                return -1.0, 0.0
            continue
        t1 = (-h[i] - o[i]) / d[i]
        t2 = (h[i] - o[i]) / d[i]
        if t1 > t2:
            t1, t2 = t2, t1
        if t1 > tnear:
            tnear, axis = t1, i
        tfar = min(tfar, t2)
        if tnear > tfar:
            return -1.0, 0.0
    if tnear <= _EPS or axis < 0:  # behind the sensor, or the sensor is inside the box
        return -1.0, 0.0
    return tnear, abs(d[axis])


@njit(cache=True)
def _hit_cylinder(p, dx, dy, dz):
    cx, cy, r, z0, z1 = p[0], p[1], p[2], p[3], p[4]
    a = dx * dx + dy * dy
    if a < 1e-12:
        return -1.0, 0.0
    b = -2.0 * (dx * cx + dy * cy)
    cc = cx * cx + cy * cy - r * r
    disc = b * b - 4.0 * a * cc
    if disc < 0.0 or cc <= 0.0:
        return -1.0, 0.0
    t = (-b - math.sqrt(disc)) / (2.0 * a)
    if t <= _EPS:
        return -1.0, 0.0
    z = t * dz
    if z < z0 or z > z1:
        return -1.0, 0.0
    nx, ny = (t * dx - cx) / r, (t * dy - cy) / r
    return t, abs(nx * dx + ny * dy)


@njit(cache=True)
def _hit_ellipsoid(p, dx, dy, dz):
    ox, oy, oz = -p[0] / p[3], -p[1] / p[4], -p[2] / p[5]
    ex, ey, ez = dx / p[3], dy / p[4], dz / p[5]
    a = ex * ex + ey * ey + ez * ez
    b = 2.0 * (ox * ex + oy * ey + oz * ez)
    cc = ox * ox + oy * oy + oz * oz - 1.0
    disc = b * b - 4.0 * a * cc
    if disc < 0.0 or cc <= 0.0:
        return -1.0, 0.0
    t = (-b - math.sqrt(disc)) / (2.0 * a)
    if t <= _EPS:
        return -1.0, 0.0
    # gradient of the implicit function is the normal
    nx = (t * dx - p[0]) / (p[3] * p[3])
    ny = (t * dy - p[1]) / (p[4] * p[4])
    nz = (t * dz - p[2]) / (p[5] * p[5])
    nn = math.sqrt(nx * nx + ny * ny + nz * nz)
    return t, abs(nx * dx + ny * dy + nz * dz) / nn


@njit(cache=True)
def cast_rays(elevations: np.ndarray, num_cols: int, prim_type: np.ndarray, params: np.ndarray,
              col_offsets: np.ndarray, col_items: np.ndarray, ground: np.ndarray, min_range: float,
              max_range: float, range_noise: np.ndarray, keep: np.ndarray, intensity_noise: np.ndarray):
    """Cast one ray per (azimuth column, beam) and return the nearest hits.

    Args:
        elevations: float64 (B,) beam elevation angles in radians.
        num_cols: azimuth columns; the ray of column a points at azimuth (a + 0.5) * 2 pi / num_cols.
        prim_type: int64 (K,) type code per primitive; params: float64 (K, 9) (see module docstring).
        col_offsets, col_items: the CSR lists from :func:`build_columns`.
        ground: float64 (4,) g0, gx, gy, reflectivity of the ground plane.
        min_range, max_range: hits outside [min_range, max_range) metres are dropped.
        range_noise: float64 (num_cols * B,) metres added to each ray's range (ray index a * B + b).
        keep: bool (num_cols * B,) False drops that ray's return (dropout).
        intensity_noise: float64 (num_cols * B,) added to each return's intensity.

    Returns:
        points float32 (N, 4) x, y, z, intensity in [0, 1]; owner int64 (N,) primitive index or -1 (ground).
    """
    n_beams = elevations.shape[0]
    res = 2.0 * math.pi / num_cols
    out = np.empty((num_cols * n_beams, 4), np.float32)
    owner = np.empty(num_cols * n_beams, np.int64)
    g0, gx, gy, g_refl = ground[0], ground[1], ground[2], ground[3]
    g_norm = math.sqrt(gx * gx + gy * gy + 1.0)
    n = 0
    for a in range(num_cols):
        az = (a + 0.5) * res
        ca, sa = math.cos(az), math.sin(az)
        for b in range(n_beams):
            ray = a * n_beams + b
            if not keep[ray]:
                continue
            ce = math.cos(elevations[b])
            dx, dy, dz = ce * ca, ce * sa, math.sin(elevations[b])
            best, hit, cos_inc, refl = max_range, -2, 0.0, 0.0
            den = dz - gx * dx - gy * dy
            if den < -1e-9:
                t = g0 / den
                if 0.0 < t < best:
                    best, hit, cos_inc, refl = t, GROUND, abs(den) / g_norm, g_refl
            for j in range(col_offsets[a], col_offsets[a + 1]):
                k = col_items[j]
                kind = prim_type[k]
                if kind == BOX:
                    t, c = _hit_box(params[k], dx, dy, dz)
                elif kind == CYLINDER:
                    t, c = _hit_cylinder(params[k], dx, dy, dz)
                else:
                    t, c = _hit_ellipsoid(params[k], dx, dy, dz)
                if 0.0 < t < best:
                    best, hit, cos_inc, refl = t, k, c, params[k, 8]
            if hit == -2:
                continue
            r = best + range_noise[ray]
            if r < min_range or r >= max_range:
                continue
            inten = refl * (0.3 + 0.7 * cos_inc) + intensity_noise[ray]
            out[n, 0] = r * dx
            out[n, 1] = r * dy
            out[n, 2] = r * dz
            out[n, 3] = min(max(inten, 0.0), 1.0)
            owner[n] = hit
            n += 1
    return out[:n].copy(), owner[:n].copy()


@njit(cache=True)
def points_in_boxes_f32(xyz: np.ndarray, boxes: np.ndarray, cos_yaw: np.ndarray, sin_yaw: np.ndarray) -> np.ndarray:
    """bool (M, N): point n inside box m, boundary included, in float32 arithmetic.

    Same operations, in the same order and precision, as :func:`pointwin.ops.points_in_boxes` on
    float32 inputs, so the two agree bit for bit; ``cos_yaw``/``sin_yaw`` (float32 (M,)) come from torch
    for the same reason. A conservative float64 bounding-circle test skips far points first.

    Args:
        xyz: float32 (N, 3); boxes: float32 (M, 7+).
    """
    m, n = boxes.shape[0], xyz.shape[0]
    mask = np.zeros((m, n), np.bool_)
    two = np.float32(2.0)
    for k in range(m):
        cx, cy, cz = boxes[k, 0], boxes[k, 1], boxes[k, 2]
        hx, hy, hz = boxes[k, 3] / two, boxes[k, 4] / two, boxes[k, 5] / two
        c, s = cos_yaw[k], sin_yaw[k]
        reach = math.sqrt(float(hx) * float(hx) + float(hy) * float(hy))
        reach += 1e-3 + 1e-6 * (abs(float(cx)) + abs(float(cy)))  # float32 rounding margin
        r2 = reach * reach
        for i in range(n):
            dx = xyz[i, 0] - cx
            dy = xyz[i, 1] - cy
            if float(dx) * float(dx) + float(dy) * float(dy) > r2:
                continue
            lx = dx * c + dy * s
            ly = -dx * s + dy * c
            lz = xyz[i, 2] - cz
            if abs(lx) <= hx and abs(ly) <= hy and abs(lz) <= hz:
                mask[k, i] = True
    return mask


def points_in_boxes_np(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """bool (M, N) for float32 numpy points (N, >=3) and boxes (M, 7+): see :func:`points_in_boxes_f32`."""
    import torch

    xyz = np.ascontiguousarray(points[:, :3], dtype=np.float32)
    b = np.ascontiguousarray(boxes, dtype=np.float32)
    yaw = torch.from_numpy(b[:, 6].copy())
    return points_in_boxes_f32(xyz, b, torch.cos(yaw).numpy(), torch.sin(yaw).numpy())
