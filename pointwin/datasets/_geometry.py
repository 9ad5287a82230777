"""Small numpy box helpers shared by the synthetic scenes and GT sampling (bird's-eye view)."""

from __future__ import annotations

import numpy as np


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """(M, 4, 2) bird's-eye corners of boxes (x, y, z, dx, dy, dz, yaw, ...), counter-clockwise."""
    boxes = np.atleast_2d(np.asarray(boxes, dtype=np.float64))
    half = boxes[:, None, 3:5] / 2.0
    local = half * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s + boxes[:, None, 0]
    y = local[..., 0] * s + local[..., 1] * c + boxes[:, None, 1]
    return np.stack([x, y], -1)


def _separated(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, N) True where an edge normal of a's rectangles separates them from b's (a: (M,4,2), b: (N,4,2))."""
    edges = np.stack([a[:, 1] - a[:, 0], a[:, 2] - a[:, 1]], 1)  # (M, 2, 2): the two edge directions
    normals = np.stack([-edges[..., 1], edges[..., 0]], -1)  # (M, 2, 2)
    pa = np.einsum("mkd,mcd->mkc", normals, a)  # (M, 2 axes, 4 corners)
    pb = np.einsum("mkd,ncd->mnkc", normals, b)  # (M, N, 2, 4)
    a_lo, a_hi = pa.min(-1)[:, None], pa.max(-1)[:, None]  # (M, 1, 2)
    b_lo, b_hi = pb.min(-1), pb.max(-1)  # (M, N, 2)
    return ((b_hi < a_lo) | (b_lo > a_hi)).any(-1)


def bev_overlap(a: np.ndarray, b: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(M, N) bool: the bird's-eye rectangles of boxes a[i] and b[j] intersect (separating-axis test).

    ``margin`` metres are added to every box's length and width first (a safety gap).
    Touching rectangles (shared edge) count as overlapping.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1])
    b = np.asarray(b, dtype=np.float64).reshape(-1, np.shape(b)[-1])
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=bool)
    if margin:
        a = a.copy()
        b = b.copy()
        a[:, 3:5] += margin
        b[:, 3:5] += margin
    ca, cb = bev_corners(a), bev_corners(b)
    return ~(_separated(ca, cb) | _separated(cb, ca).T)
