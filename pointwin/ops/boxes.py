"""Rotated box overlap, NMS and point-in-box tests for boxes ``(x, y, z, dx, dy, dz, yaw[, vx, vy])``.

Two interchangeable backends compute the exact BEV intersection area of rotated rectangles:

* ``"numba"``: Sutherland-Hodgman clipping per pair in float64 (:mod:`pointwin.ops._box_numba`); the
  default for CPU tensors.
* ``"torch"``: the same clipping, batched over pairs with fixed-size vertex buffers; the default for
  CUDA tensors (also runs on the CPU). It computes in float64 when an input is float64, else float32,
  and is differentiable almost everywhere (e.g. for IoU losses).

Conventions: a zero-size box has zero area and IoU 0 with everything (never NaN); boxes that only
touch have IoU 0; NMS suppresses a box when its IoU with a kept, higher-scored box is strictly greater
than the threshold; ties in score keep the lower index first.
"""

from __future__ import annotations

import torch

from ..structures.boxes import Boxes3D

__all__ = ["boxes_iou3d", "boxes_iou_bev", "boxes_overlap_bev", "circle_nms", "nms_bev", "points_in_boxes"]

_PAIR_CHUNK = 1 << 20  # pairs per batched torch clipping step (bounds memory to ~200 MB in float32)


def _as_boxes(boxes: Boxes3D | torch.Tensor, name: str) -> torch.Tensor:
    t = boxes.tensor if isinstance(boxes, Boxes3D) else boxes
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[1] < 7:
        raise ValueError(f"{name} must be Boxes3D or a (M, >=7) tensor, got {type(t).__name__} "
                         f"{tuple(getattr(t, 'shape', ()))}")
    return t


def _backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "torch" if device.type != "cpu" else "numba"
    if backend not in ("numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    return backend


def _bev5(t: torch.Tensor) -> torch.Tensor:
    return t[:, [0, 1, 3, 4, 6]]


# ---- batched torch clipping ----------------------------------------------------------------------------
def _rect_corners(b: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """(P, 4, 2) CCW corners of boxes b (P, 5) relative to (cx, cy) (P,)."""
    c, s = torch.cos(b[:, 4:5]), torch.sin(b[:, 4:5])
    sx = b.new_tensor([1.0, -1.0, -1.0, 1.0]) * b[:, 2:3] / 2
    sy = b.new_tensor([1.0, 1.0, -1.0, -1.0]) * b[:, 3:4] / 2
    x = (b[:, 0] - cx)[:, None] + sx * c - sy * s
    y = (b[:, 1] - cy)[:, None] + sx * s + sy * c
    return torch.stack([x, y], -1)


def _pair_area_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P,) intersection areas of boxes a[i], b[i] (P, 5) by batched Sutherland-Hodgman clipping."""
    P = a.shape[0]
    cap = 8
    poly = torch.zeros(P, cap, 2, dtype=a.dtype, device=a.device)
    poly[:, :4] = _rect_corners(a, a[:, 0], a[:, 1])
    count = torch.full((P,), 4, dtype=torch.long, device=a.device)
    clip = _rect_corners(b, a[:, 0], a[:, 1])
    slot = torch.arange(cap, device=a.device)
    for e in range(4):
        e0 = clip[:, e]
        edge = clip[:, (e + 1) % 4] - e0
        valid = slot[None] < count[:, None]
        nxt_idx = torch.where(slot[None] + 1 < count[:, None], slot[None] + 1, torch.zeros_like(slot[None]))
        nxt = poly.gather(1, nxt_idx[..., None].expand(-1, -1, 2))
        rel, rel_n = poly - e0[:, None], nxt - e0[:, None]
        d = edge[:, None, 0] * rel[..., 1] - edge[:, None, 1] * rel[..., 0]
        dn = edge[:, None, 0] * rel_n[..., 1] - edge[:, None, 1] * rel_n[..., 0]
        inside, inside_n = d >= 0, dn >= 0
        cross = inside != inside_n
        t = torch.where(cross, d / torch.where(cross, d - dn, torch.ones_like(d)), torch.zeros_like(d))
        hit = poly + t[..., None] * (nxt - poly)
        cand = torch.stack([poly, hit], 2).reshape(P, 2 * cap, 2)
        keep = torch.stack([valid & inside, valid & cross], 2).reshape(P, 2 * cap)
        # Compact the kept candidates to the front in order: kept k-th goes to slot k, the rest to a
        # spill slot `cap` that is dropped (also anything past cap, which exact geometry never produces).
        pos = torch.where(keep, (keep.cumsum(1) - 1).clamp(max=cap), torch.full_like(slot[:1], cap))
        out = poly.new_zeros(P, cap + 1, 2)
        out.scatter_(1, pos[..., None].expand(-1, -1, 2), cand)
        poly = out[:, :cap]
        count = keep.sum(1).clamp(max=cap)
    count = torch.where(count < 3, torch.zeros_like(count), count)
    valid = slot[None] < count[:, None]
    poly = torch.where(valid[..., None], poly, poly[:, :1])  # padding repeats vertex 0: zero-area edges
    nxt = poly.roll(-1, 1)
    area = 0.5 * (poly[..., 0] * nxt[..., 1] - nxt[..., 0] * poly[..., 1]).sum(1).abs()
    bound = torch.minimum(a[:, 2] * a[:, 3], b[:, 2] * b[:, 3])
    return torch.where(count > 0, torch.minimum(area, bound), torch.zeros_like(area))


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _radius(b: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.hypot(b[:, 2], b[:, 3])


def _overlap_torch(a: torch.Tensor, b: torch.Tensor, aligned: bool) -> torch.Tensor:
    dtype = _compute_dtype(a, b)
    a, b = a.to(dtype), b.to(dtype)
    if aligned:
        out = a.new_zeros(a.shape[0])
        for s in range(0, a.shape[0], _PAIR_CHUNK):
            out[s:s + _PAIR_CHUNK] = _pair_area_torch(a[s:s + _PAIR_CHUNK], b[s:s + _PAIR_CHUNK])
        return out
    out = a.new_zeros(a.shape[0], b.shape[0])
    if not out.numel():
        return out
    # Only pairs whose bounding circles meet (and with positive areas) are clipped.
    near = torch.cdist(a[:, :2], b[:, :2]) <= _radius(a)[:, None] + _radius(b)[None]
    near &= ((a[:, 2] > 0) & (a[:, 3] > 0))[:, None] & ((b[:, 2] > 0) & (b[:, 3] > 0))[None]
    ia, ib = near.nonzero(as_tuple=True)
    for s in range(0, ia.numel(), _PAIR_CHUNK):
        i, j = ia[s:s + _PAIR_CHUNK], ib[s:s + _PAIR_CHUNK]
        out[i, j] = _pair_area_torch(a[i], b[j])
    return out


def _overlap(a: torch.Tensor, b: torch.Tensor, aligned: bool, backend: str) -> torch.Tensor:
    """BEV intersection areas of (M, 5) and (K, 5) boxes, in float64 if an input is float64, else float32."""
    if aligned and a.shape[0] != b.shape[0]:
        raise ValueError(f"aligned overlap needs as many boxes in a ({a.shape[0]}) as in b ({b.shape[0]})")
    if _backend(backend, a.device) == "torch":
        return _overlap_torch(a, b, aligned)
    from . import _box_numba

    an = a.detach().to("cpu", torch.float64).contiguous().numpy()
    bn = b.detach().to("cpu", torch.float64).contiguous().numpy()
    fn = _box_numba.inter_area_aligned if aligned else _box_numba.inter_area_matrix
    return torch.from_numpy(fn(an, bn)).to(a.device, _compute_dtype(a, b))


def boxes_overlap_bev(a: Boxes3D | torch.Tensor, b: Boxes3D | torch.Tensor, aligned: bool = False,
                      backend: str = "auto") -> torch.Tensor:
    """Exact BEV intersection areas: (M, K), or (M,) with ``aligned=True`` (pairs a[i], b[i])."""
    ta, tb = _as_boxes(a, "boxes_overlap_bev a"), _as_boxes(b, "boxes_overlap_bev b")
    return _overlap(_bev5(ta), _bev5(tb), aligned, backend)


def boxes_iou_bev(a: Boxes3D | torch.Tensor, b: Boxes3D | torch.Tensor, aligned: bool = False,
                  backend: str = "auto") -> torch.Tensor:
    """Rotated BEV IoU of boxes a (M, 7+) and b (K, 7+): (M, K), or (M,) with ``aligned=True``.

    float64 if an input is float64, else float32 (the numba backend always computes in float64).
    """
    ta, tb = _as_boxes(a, "boxes_iou_bev a"), _as_boxes(b, "boxes_iou_bev b")
    inter = _overlap(_bev5(ta), _bev5(tb), aligned, backend)
    area_a = (ta[:, 3] * ta[:, 4]).to(inter.dtype)
    area_b = (tb[:, 3] * tb[:, 4]).to(inter.dtype)
    union = (area_a + area_b - inter) if aligned else (area_a[:, None] + area_b[None] - inter)
    return torch.where(inter > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def boxes_iou3d(a: Boxes3D | torch.Tensor, b: Boxes3D | torch.Tensor, aligned: bool = False,
                backend: str = "auto") -> torch.Tensor:
    """IoU of upright 3D boxes: BEV intersection area times z overlap over the union volume."""
    ta, tb = _as_boxes(a, "boxes_iou3d a"), _as_boxes(b, "boxes_iou3d b")
    inter = _overlap(_bev5(ta), _bev5(tb), aligned, backend)
    ta, tb = ta.to(inter.dtype), tb.to(inter.dtype)
    top_a, bot_a = ta[:, 2] + ta[:, 5] / 2, ta[:, 2] - ta[:, 5] / 2
    top_b, bot_b = tb[:, 2] + tb[:, 5] / 2, tb[:, 2] - tb[:, 5] / 2
    vol_a, vol_b = ta[:, 3:6].prod(1), tb[:, 3:6].prod(1)
    if aligned:
        dz = (torch.minimum(top_a, top_b) - torch.maximum(bot_a, bot_b)).clamp(min=0)
        union = vol_a + vol_b
    else:
        dz = (torch.minimum(top_a[:, None], top_b[None]) - torch.maximum(bot_a[:, None], bot_b[None])).clamp(min=0)
        union = vol_a[:, None] + vol_b[None]
    inter3d = inter * dz
    union = union - inter3d
    return torch.where(inter3d > 0, inter3d / union.clamp(min=torch.finfo(inter.dtype).tiny),
                       torch.zeros_like(inter3d))


def _sort_scores(scores: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if scores.shape != (n,):
        raise ValueError(f"{name}: scores must be ({n},) like the boxes, got {tuple(scores.shape)}")
    return torch.sort(scores, descending=True, stable=True).indices


def nms_bev(boxes: Boxes3D | torch.Tensor, scores: torch.Tensor, iou_threshold: float, pre_max: int | None = None,
            post_max: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Greedy rotated BEV NMS.

    Args:
        boxes: (N, 7+) boxes; scores: (N,).
        iou_threshold: a box is dropped when its BEV IoU with a kept higher-scored box is > this.
        pre_max: consider only the ``pre_max`` highest-scored boxes.
        post_max: keep at most this many.

    Returns:
        int64 indices into ``boxes`` of the kept boxes, by descending score.
    """
    t = _as_boxes(boxes, "nms_bev boxes")
    order = _sort_scores(scores, t.shape[0], "nms_bev")
    if pre_max is not None:
        order = order[:pre_max]
    post = 0 if post_max is None else int(post_max)
    if post_max is not None and post <= 0:
        return order[:0]
    bev = _bev5(t)[order]
    if _backend(backend, t.device) == "numba":
        from . import _box_numba

        keep = _box_numba.nms_sorted(bev.detach().to("cpu", torch.float64).contiguous().numpy(),
                                     float(iou_threshold), post)
    else:
        from . import _box_numba

        tb = bev.detach()
        inter = _overlap_torch(tb, tb, aligned=False)
        area = tb[:, 2].to(inter.dtype) * tb[:, 3].to(inter.dtype)
        union = (area[:, None] + area[None] - inter).clamp(min=torch.finfo(inter.dtype).tiny)
        over = (inter > 0) & (inter / union > iou_threshold)
        keep = _box_numba.greedy_from_overlap(over.cpu().numpy(), post)
    return order[torch.from_numpy(keep).to(order.device)]


def circle_nms(centers: torch.Tensor, scores: torch.Tensor, radius: float, post_max: int | None = None) -> torch.Tensor:
    """CenterPoint-style NMS by centre distance: a box is dropped when a kept higher-scored box's centre lies
    within ``radius`` metres (distance <= radius).

    CenterPoint's ``min_radius`` config values are compared with the *squared* distance; pass
    ``radius = sqrt(min_radius)`` to reproduce them.

    Args:
        centers: (N, >=2) centres (only x, y are used) or (N, 7+) boxes; scores: (N,).

    Returns:
        int64 indices of the kept boxes, by descending score.
    """
    if isinstance(centers, Boxes3D):
        centers = centers.tensor
    if not isinstance(centers, torch.Tensor) or centers.ndim != 2 or centers.shape[1] < 2:
        raise ValueError(f"circle_nms: centers must be a (N, >=2) tensor, got {tuple(getattr(centers, 'shape', ()))}")
    from . import _box_numba

    order = _sort_scores(scores, centers.shape[0], "circle_nms")
    post = 0 if post_max is None else int(post_max)
    if post_max is not None and post <= 0:
        return order[:0]
    xy = centers[order, :2].detach().to("cpu", torch.float64).contiguous().numpy()
    keep = _box_numba.circle_nms_sorted(xy, float(radius), post)
    return order[torch.from_numpy(keep).to(order.device)]


def _inside(xyz: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P,) bool: xyz[i] (P, 3) inside box b[i] (P, 7+), boundary included."""
    c, si = torch.cos(b[:, 6]), torch.sin(b[:, 6])
    dx = xyz[:, 0] - b[:, 0]
    dy = xyz[:, 1] - b[:, 1]
    lx = dx * c + dy * si
    ly = -dx * si + dy * c
    lz = xyz[:, 2] - b[:, 2]
    return (lx.abs() <= b[:, 3] / 2) & (ly.abs() <= b[:, 4] / 2) & (lz.abs() <= b[:, 5] / 2)


def points_in_boxes(points: torch.Tensor, boxes: Boxes3D | torch.Tensor, max_elements: int = 1 << 22) -> torch.Tensor:
    """(M, N) bool: point n lies in box m, boundary included (``|local| <= size / 2`` on every axis).

    Points are moved into each box's frame (translate, then rotate by -yaw) in float64 if either input
    is float64, else float32. Only candidate points are tested: points are bucketed into BEV cells
    (sorted by cell key); each box visits the cell rows its bounding circle (plus a rounding margin)
    covers, each row being one contiguous run of sorted points. At most about ``max_elements``
    candidate pairs are in flight at once.

    Args:
        points: (N, >=3) float, x, y, z first.
        boxes: (M, 7+) boxes.
    """
    t = _as_boxes(boxes, "points_in_boxes boxes")
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points_in_boxes: points must be a (N, >=3) tensor, got "
                         f"{tuple(getattr(points, 'shape', ()))}")
    dtype = _compute_dtype(points, t)
    xyz, t = points[:, :3].to(dtype), t.to(device=points.device, dtype=dtype)
    M, N = t.shape[0], xyz.shape[0]
    dev = points.device
    out = torch.zeros(M, N, dtype=torch.bool, device=dev)
    if M == 0 or N == 0:
        return out
    # BEV cells about the median box size, at most 4096 per axis.
    lo_xy = xyz[:, :2].amin(0)
    extent = float((xyz[:, :2].amax(0) - lo_xy).max())
    reach = 0.5 * torch.hypot(t[:, 3], t[:, 4])  # bounding-circle radius: |x - cx| <= reach inside
    cell = max(float(reach.median()), extent / 4096, 1e-3)
    cxy = torch.floor((xyz[:, :2] - lo_xy) / cell).long()
    W, H = int(cxy[:, 0].max()) + 1, int(cxy[:, 1].max()) + 1
    key = cxy[:, 1] * W + cxy[:, 0]
    skey, order = torch.sort(key)
    # Cell ranges of each box (a superset of its points is enough: the exact test follows).
    margin = 1e-3 + 8 * torch.finfo(dtype).eps * (t[:, :2].abs() + reach[:, None])
    bmin = torch.floor((t[:, :2] - reach[:, None] - margin - lo_xy) / cell).long()
    bmax = torch.floor((t[:, :2] + reach[:, None] + margin - lo_xy) / cell).long()
    limit = torch.tensor([W - 1, H - 1], device=dev)
    bmin, bmax = bmin.clamp(min=0).minimum(limit), bmax.clamp(min=0).minimum(limit)
    rows = bmax[:, 1] - bmin[:, 1] + 1
    range_box = torch.repeat_interleave(torch.arange(M, device=dev), rows)
    row = bmin[range_box, 1] + torch.arange(range_box.numel(), device=dev) - (torch.cumsum(rows, 0) - rows)[range_box]
    lo = torch.searchsorted(skey, row * W + bmin[range_box, 0])
    hi = torch.searchsorted(skey, row * W + bmax[range_box, 0], right=True)
    counts = hi - lo
    sizes = counts.tolist()
    R, start = len(sizes), 0
    while start < R:
        end, total = start, 0
        while end < R and (end == start or total + sizes[end] <= max_elements):
            total += sizes[end]
            end += 1
        if total:
            c = counts[start:end]
            rid = torch.repeat_interleave(torch.arange(start, end, device=dev), c)
            first = (torch.cumsum(c, 0) - c)[rid - start]
            pid = order[lo[rid] + torch.arange(total, device=dev) - first]
            box = range_box[rid]
            ok = _inside(xyz[pid], t[box])
            out[box[ok], pid[ok]] = True
        start = end
    return out
