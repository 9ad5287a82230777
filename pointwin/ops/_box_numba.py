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
def _corners(x, y, dx, dy, yaw, out):
    """Write the 4 CCW corners of box (x, y, dx, dy, yaw) into out (4, 2), starting front-left."""
    c, s = np.cos(yaw), np.sin(yaw)
    hx, hy = dx / 2.0, dy / 2.0
    out[0, 0], out[0, 1] = x + hx * c - hy * s, y + hx * s + hy * c
    out[1, 0], out[1, 1] = x - hx * c - hy * s, y - hx * s + hy * c
    out[2, 0], out[2, 1] = x - hx * c + hy * s, y - hx * s - hy * c
    out[3, 0], out[3, 1] = x + hx * c + hy * s, y + hx * s - hy * c


@numba.njit(cache=True)
def _clip_area(a, i, b, j, pa, pb, buf):
    """Intersection area of boxes a[i] and b[j] (rows of 5, positive sizes, bounding circles meeting).

    pa/pb (4, 2) and buf (2, _CAP, 2) are scratch buffers.
    """
    cx, cy = a[i, 0], a[i, 1]
    _corners(0.0, 0.0, a[i, 2], a[i, 3], a[i, 4], pa)
    _corners(b[j, 0] - cx, b[j, 1] - cy, b[j, 2], b[j, 3], b[j, 4], pb)
    # buf[0] and buf[1] alternate as source and destination polygons (no array-reference swapping).
    n = 4
    for k in range(4):
        buf[0, k, 0], buf[0, k, 1] = pa[k, 0], pa[k, 1]
    src = 0
    for e in range(4):
        e0x, e0y = pb[e, 0], pb[e, 1]
        e1 = e + 1 if e < 3 else 0
        ex, ey = pb[e1, 0] - e0x, pb[e1, 1] - e0y
        dst = 1 - src
        m = 0
        dk = ex * (buf[src, 0, 1] - e0y) - ey * (buf[src, 0, 0] - e0x)
        d0 = dk
        for k in range(n):
            l = k + 1 if k + 1 < n else 0
            dl = d0 if l == 0 else ex * (buf[src, l, 1] - e0y) - ey * (buf[src, l, 0] - e0x)
            if dk >= 0.0 and m < _CAP:
                buf[dst, m, 0], buf[dst, m, 1] = buf[src, k, 0], buf[src, k, 1]
                m += 1
            if (dk >= 0.0) != (dl >= 0.0) and m < _CAP:
                t = dk / (dk - dl)
                buf[dst, m, 0] = buf[src, k, 0] + t * (buf[src, l, 0] - buf[src, k, 0])
                buf[dst, m, 1] = buf[src, k, 1] + t * (buf[src, l, 1] - buf[src, k, 1])
                m += 1
            dk = dl
        n = m
        src = dst
        if n < 3:
            return 0.0
    area = 0.0
    for k in range(n):
        l = k + 1 if k + 1 < n else 0
        area += buf[src, k, 0] * buf[src, l, 1] - buf[src, l, 0] * buf[src, k, 1]
    area = abs(area) * 0.5
    return min(area, a[i, 2] * a[i, 3], b[j, 2] * b[j, 3])


@numba.njit(cache=True)
def _radii(boxes):
    """Half diagonals (bounding-circle radii); -1 for zero-area boxes so that they never overlap."""
    r = np.empty(boxes.shape[0])
    for i in range(boxes.shape[0]):
        if boxes[i, 2] > 0.0 and boxes[i, 3] > 0.0:
            r[i] = 0.5 * np.sqrt(boxes[i, 2] ** 2 + boxes[i, 3] ** 2)
        else:
            r[i] = -1.0
    return r


@numba.njit(cache=True, inline="always")
def _may_overlap(a, i, ra, b, j, rb):
    if ra < 0.0 or rb < 0.0:
        return False
    dx, dy = b[j, 0] - a[i, 0], b[j, 1] - a[i, 1]
    return dx * dx + dy * dy <= (ra + rb) * (ra + rb)


@numba.njit(cache=True)
def inter_area_matrix(a, b):
    """(M, K) intersection areas of every box of a (M, 5) with every box of b (K, 5)."""
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    ra, rb = _radii(a), _radii(b)
    pa, pb = np.empty((4, 2)), np.empty((4, 2))
    buf = np.empty((2, _CAP, 2))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            if _may_overlap(a, i, ra[i], b, j, rb[j]):
                out[i, j] = _clip_area(a, i, b, j, pa, pb, buf)
    return out


@numba.njit(cache=True)
def inter_area_aligned(a, b):
    """(M,) intersection areas of a[i] with b[i]."""
    out = np.zeros(a.shape[0], dtype=np.float64)
    ra, rb = _radii(a), _radii(b)
    pa, pb = np.empty((4, 2)), np.empty((4, 2))
    buf = np.empty((2, _CAP, 2))
    for i in range(a.shape[0]):
        if _may_overlap(a, i, ra[i], b, i, rb[i]):
            out[i] = _clip_area(a, i, b, i, pa, pb, buf)
    return out


@numba.njit(cache=True)
def nms_sorted(boxes, iou_threshold, post_max):
    """Greedy rotated NMS over boxes (N, 5) already sorted by descending score.

    Box j is suppressed by an earlier kept box i when IoU(i, j) > iou_threshold. Returns the kept
    positions (at most ``post_max`` when post_max > 0); IoUs are computed lazily.
    """
    n = boxes.shape[0]
    r = _radii(boxes)
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    nk = 0
    pa, pb = np.empty((4, 2)), np.empty((4, 2))
    buf = np.empty((2, _CAP, 2))
    for i in range(n):
        if suppressed[i]:
            continue
        keep[nk] = i
        nk += 1
        if post_max > 0 and nk >= post_max:
            break
        area_i = boxes[i, 2] * boxes[i, 3]
        for j in range(i + 1, n):
            if suppressed[j] or not _may_overlap(boxes, i, r[i], boxes, j, r[j]):
                continue
            inter = _clip_area(boxes, i, boxes, j, pa, pb, buf)
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
