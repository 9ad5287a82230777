"""numba kernels for rotated BEV box overlap (CPU path of :mod:`pointwin.ops.boxes`).

Boxes here are float64 arrays (M, 5) ``(x, y, dx, dy, yaw)``. Overlap is the exact area of the
intersection of two rectangles, by Sutherland-Hodgman clipping of one rectangle against the four
edges of the other (both convex, counter-clockwise). Coordinates are shifted to the first box's
centre before clipping so that far-away boxes keep full precision.
"""

from __future__ import annotations

import numba
import numpy as np

_CAP = 16  # an intersection of two quadrilaterals has at most 8 vertices; room for rounding noise


@numba.njit(cache=True, inline="always")
def _corners(box, cx, cy, out):
    """Write the 4 CCW corners of ``box`` relative to (cx, cy) into out (4, 2)."""
    c, s = np.cos(box[4]), np.sin(box[4])
    hx, hy = box[2] / 2.0, box[3] / 2.0
    x, y = box[0] - cx, box[1] - cy
    sx = (1.0, -1.0, -1.0, 1.0)
    sy = (1.0, 1.0, -1.0, -1.0)
    for k in range(4):
        lx, ly = sx[k] * hx, sy[k] * hy
        out[k, 0] = x + lx * c - ly * s
        out[k, 1] = y + lx * s + ly * c


@numba.njit(cache=True)
def _pair_area(a, b, pa, pb, buf0, buf1):
    """Intersection area of boxes a and b (rows of 5); pa/pb (4,2) and buf0/buf1 (_CAP,2) are scratch."""
    if a[2] <= 0.0 or a[3] <= 0.0 or b[2] <= 0.0 or b[3] <= 0.0:
        return 0.0
    ra = 0.5 * np.sqrt(a[2] * a[2] + a[3] * a[3])
    rb = 0.5 * np.sqrt(b[2] * b[2] + b[3] * b[3])
    dx, dy = b[0] - a[0], b[1] - a[1]
    if dx * dx + dy * dy > (ra + rb) * (ra + rb):
        return 0.0
    _corners(a, a[0], a[1], pa)
    _corners(b, a[0], a[1], pb)
    n = 4
    for k in range(4):
        buf0[k, 0], buf0[k, 1] = pa[k, 0], pa[k, 1]
    src, dst = buf0, buf1
    for e in range(4):
        e0x, e0y = pb[e, 0], pb[e, 1]
        ex, ey = pb[(e + 1) % 4, 0] - e0x, pb[(e + 1) % 4, 1] - e0y
        m = 0
        for i in range(n):
            j = i + 1 if i + 1 < n else 0
            di = ex * (src[i, 1] - e0y) - ey * (src[i, 0] - e0x)
            dj = ex * (src[j, 1] - e0y) - ey * (src[j, 0] - e0x)
            if di >= 0.0 and m < _CAP:
                dst[m, 0], dst[m, 1] = src[i, 0], src[i, 1]
                m += 1
            if (di >= 0.0) != (dj >= 0.0) and m < _CAP:
                t = di / (di - dj)
                dst[m, 0] = src[i, 0] + t * (src[j, 0] - src[i, 0])
                dst[m, 1] = src[i, 1] + t * (src[j, 1] - src[i, 1])
                m += 1
        n = m
        src, dst = dst, src
        if n < 3:
            return 0.0
    area = 0.0
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        area += src[i, 0] * src[j, 1] - src[j, 0] * src[i, 1]
    area = abs(area) * 0.5
    return min(area, a[2] * a[3], b[2] * b[3])


@numba.njit(cache=True)
def inter_area_matrix(a, b):
    """(M, K) intersection areas of every box of a (M, 5) with every box of b (K, 5)."""
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    pa, pb = np.empty((4, 2)), np.empty((4, 2))
    buf0, buf1 = np.empty((_CAP, 2)), np.empty((_CAP, 2))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = _pair_area(a[i], b[j], pa, pb, buf0, buf1)
    return out


@numba.njit(cache=True)
def inter_area_aligned(a, b):
    """(M,) intersection areas of a[i] with b[i]."""
    out = np.zeros(a.shape[0], dtype=np.float64)
    pa, pb = np.empty((4, 2)), np.empty((4, 2))
    buf0, buf1 = np.empty((_CAP, 2)), np.empty((_CAP, 2))
    for i in range(a.shape[0]):
        out[i] = _pair_area(a[i], b[i], pa, pb, buf0, buf1)
    return out


@numba.njit(cache=True)
def nms_sorted(boxes, iou_threshold, post_max):
    """Greedy rotated NMS over boxes (N, 5) already sorted by descending score.

    Box j is suppressed by an earlier kept box i when IoU(i, j) > iou_threshold. Returns the kept
    positions (at most ``post_max`` when post_max > 0), IoUs are computed lazily.
    """
    n = boxes.shape[0]
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    nk = 0
    pa, pb = np.empty((4, 2)), np.empty((4, 2))
    buf0, buf1 = np.empty((_CAP, 2)), np.empty((_CAP, 2))
    for i in range(n):
        if suppressed[i]:
            continue
        keep[nk] = i
        nk += 1
        if post_max > 0 and nk >= post_max:
            break
        area_i = boxes[i, 2] * boxes[i, 3]
        for j in range(i + 1, n):
            if suppressed[j]:
                continue
            inter = _pair_area(boxes[i], boxes[j], pa, pb, buf0, buf1)
            if inter <= 0.0:
                continue
            union = area_i + boxes[j, 2] * boxes[j, 3] - inter
            if union > 0.0 and inter / union > iou_threshold:
                suppressed[j] = True
    return keep[:nk]


@numba.njit(cache=True)
def greedy_from_overlap(overlap, post_max):
    """Greedy NMS from a precomputed (N, N) bool "i suppresses j" matrix over score-sorted boxes."""
    n = overlap.shape[0]
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    nk = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[nk] = i
        nk += 1
        if post_max > 0 and nk >= post_max:
            break
        for j in range(i + 1, n):
            if overlap[i, j]:
                suppressed[j] = True
    return keep[:nk]


@numba.njit(cache=True)
def circle_nms_sorted(centers, radius, post_max):
    """Greedy centre-distance NMS over centres (N, 2) sorted by descending score: j is suppressed by a
    kept i when ``|c_i - c_j| <= radius``."""
    n = centers.shape[0]
    r2 = radius * radius
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    nk = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[nk] = i
        nk += 1
        if post_max > 0 and nk >= post_max:
            break
        for j in range(i + 1, n):
            if not suppressed[j]:
                dx, dy = centers[i, 0] - centers[j, 0], centers[i, 1] - centers[j, 1]
                if dx * dx + dy * dy <= r2:
                    suppressed[j] = True
    return keep[:nk]
