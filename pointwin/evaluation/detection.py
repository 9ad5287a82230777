"""Waymo-style detection AP: optimal matching at every score cut-off, PR envelope, trapezoid area.

This is the core shared by :mod:`pointwin.evaluation.waymo` (the official Waymo Open Dataset
definition) and by the generic evaluator used on the synthetic dataset. The definition follows the
Waymo metrics library (``metrics/detection_metrics.cc``, ``matcher.cc``, ``metrics_utils.cc``):

* Matching is done per frame and per breakdown shard (e.g. one object class, or one class within a
  range bin), separately at every score cut-off c (predictions with ``score >= c``): the Hungarian
  assignment that maximises the sum of IoUs quantised to ``round(IoU * 1e6)``, over the pairs whose
  IoU reaches the class threshold. Every matched prediction is a TP, whatever the difficulty of its
  ground truth. An unmatched prediction is a FP unless it is flagged as overlapping a no-label zone.
  An unmatched ground truth is a FN at difficulty level L only if its own level is <= L.
* Heading accuracy of a TP is ``1 - |d| / pi`` with d the wrapped heading difference in [0, pi];
  APH uses ``sum(heading accuracy) / (TP + FP)`` as precision and the plain recall.
* AP: precision set to 1 where recall is 0; the recall -> max precision map starts at (0, 1); it is
  walked from high to low recall keeping the running maximum (the monotone envelope), inserting a
  point every ``max_recall_delta`` (0.05) in recall gaps; the (0, 1) point takes the precision of the
  point before it; the area is the trapezoid sum.

Speed: matching decomposes into connected components of the "IoU >= threshold" graph. Isolated
predictions and ground truths and one-to-one pairs (the vast majority) are counted for all cut-offs
at once with numpy; only components with competing boxes are solved by an optimal assignment
once per distinct set of surviving predictions (at most one per member score, not one per cut-off),
with a Hungarian algorithm compiled by numba (tests check it against ``scipy.optimize.linear_sum_assignment``).
Components come from ``scipy.sparse.csgraph``. Where two assignments have exactly the same total IoU,
the one chosen may differ from the library's (TP/FP/FN counts are the same; APH can differ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

#: The 101 score cut-offs 0.00, 0.01, ..., 0.99, 1.00 of the official configuration (float32 like the proto).
SCORE_CUTOFFS = np.concatenate([np.arange(100, dtype=np.float64) * 0.01, [1.0]]).astype(np.float32)
#: IoUs are quantised to integers in [0, MAX_IOU] for the assignment, as in the Waymo matcher.
MAX_IOU = 1_000_000


def heading_accuracy(pred_heading: np.ndarray, gt_heading: np.ndarray) -> np.ndarray:
    """``1 - |d| / pi`` with d the heading difference wrapped to [-pi, pi]; 1 is perfect, 0 is opposite."""
    d = np.abs(np.remainder(np.asarray(pred_heading, np.float64) - gt_heading + math.pi, 2 * math.pi) - math.pi)
    return np.clip(1.0 - d / math.pi, 0.0, 1.0)


def cutoff_counts(scores: np.ndarray, cutoffs: np.ndarray = SCORE_CUTOFFS) -> np.ndarray:
    """(P,) int64: number of cut-offs c with ``score >= c`` (a prediction is active at cut-offs [0, n))."""
    if not np.all(np.diff(cutoffs) > 0):
        raise ValueError("score cut-offs must be strictly increasing")
    return np.searchsorted(np.asarray(cutoffs, np.float32), np.asarray(scores, np.float32), side="right").astype(
        np.int64)


@dataclass
class MatchCounts:
    """Matching outcome per shard and cut-off.

    Attributes:
        tp, fp: int64 (S, K) true / false positives per shard and cut-off.
        sum_ha: float64 (S, K) summed heading accuracy of the TPs.
        fn: int64 (S, L, K) false negatives per difficulty level (levels given to :func:`match_counts`).
    """

    tp: np.ndarray
    fp: np.ndarray
    sum_ha: np.ndarray
    fn: np.ndarray

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.tp + other.tp, self.fp + other.fp, self.sum_ha + other.sum_ha, self.fn + other.fn)


def match_counts(
    num_shards: int,
    num_cutoffs: int,
    levels: tuple[int, ...],
    pred_shard: np.ndarray,
    pred_active: np.ndarray,
    pred_ignore_fp: np.ndarray,
    gt_shard: np.ndarray,
    gt_level: np.ndarray,
    edge_pred: np.ndarray,
    edge_gt: np.ndarray,
    edge_iou: np.ndarray,
    edge_ha: np.ndarray,
) -> MatchCounts:
    """Count TP/FP/FN at every cut-off from the candidate matches of a whole dataset.

    Args:
        num_shards, num_cutoffs: S and K.
        levels: difficulty levels to report FNs for, e.g. (1, 2); a GT counts at level L if its level <= L.
        pred_shard: int (P,) shard of each prediction, -1 to leave it out.
        pred_active: int (P,) the prediction survives cut-offs [0, pred_active) (see :func:`cutoff_counts`).
        pred_ignore_fp: bool (P,) unmatched, it is not a FP (no-label zone).
        gt_shard: int (G,) shard of each ground truth, -1 to leave it out.
        gt_level: int (G,) difficulty level of each ground truth.
        edge_pred, edge_gt: int (E,) pairs that may match: same frame, same shard, IoU >= the class threshold.
        edge_iou: float (E,) their IoU; edge_ha: float (E,) their heading accuracy.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    s, k, nl = num_shards, num_cutoffs, len(levels)
    pred_shard = np.asarray(pred_shard, np.int64)
    gt_shard = np.asarray(gt_shard, np.int64)
    pred_active = np.minimum(np.asarray(pred_active, np.int64), k)
    pred_ignore_fp = np.asarray(pred_ignore_fp, bool)
    gt_level = np.asarray(gt_level, np.int64)
    edge_pred = np.asarray(edge_pred, np.int64)
    edge_gt = np.asarray(edge_gt, np.int64)
    weight = np.rint(np.asarray(edge_iou, np.float64) * MAX_IOU).astype(np.int64)
    edge_ha = np.asarray(edge_ha, np.float64)
    keep = (weight > 0) & (pred_shard[edge_pred] >= 0) & (pred_active[edge_pred] > 0)
    if keep.any() and np.any(pred_shard[edge_pred[keep]] != gt_shard[edge_gt[keep]]):
        raise ValueError("match_counts: an edge joins a prediction and a ground truth of different shards")
    edge_pred, edge_gt, weight, edge_ha = edge_pred[keep], edge_gt[keep], weight[keep], edge_ha[keep]
    n_pred, n_gt = len(pred_shard), len(gt_shard)
    gt_counts_at = (gt_level[:, None] <= np.asarray(levels)[None, :]).astype(np.int64)  # (G, L)

    # Difference arrays over cut-offs: add at the first cut-off of an interval, subtract after its last.
    d_tp = np.zeros((s, k + 1), np.int64)
    d_fp = np.zeros((s, k + 1), np.int64)
    d_ha = np.zeros((s, k + 1), np.float64)
    d_fn = np.zeros((s, nl, k + 1), np.int64)

    def add_interval(arr, idx, start, stop, value):
        np.add.at(arr, (*idx, start), value)
        np.add.at(arr, (*idx, stop), -value)

    graph = coo_matrix((np.ones(len(edge_pred)), (edge_pred, n_pred + edge_gt)), shape=(n_pred + n_gt,) * 2)
    _, comp = connected_components(graph, directed=False)
    comp = comp.astype(np.int64)  # labels come as int32; keys below multiply them
    deg = np.bincount(np.concatenate([edge_pred, n_pred + edge_gt]), minlength=n_pred + n_gt)
    comp_edges = np.bincount(comp[edge_pred], minlength=comp.max() + 1 if len(comp) else 0)

    # Predictions without any candidate: FP while active (unless in a no-label zone).
    lone_p = np.flatnonzero((deg[:n_pred] == 0) & (pred_shard >= 0) & ~pred_ignore_fp & (pred_active > 0))
    add_interval(d_fp, (pred_shard[lone_p],), np.zeros_like(lone_p), pred_active[lone_p], 1)
    # Ground truths without any candidate: FN at every cut-off.
    lone_g = np.flatnonzero((deg[n_pred:] == 0) & (gt_shard >= 0))
    for li in range(nl):
        add_interval(d_fn, (gt_shard[lone_g], np.full_like(lone_g, li)), np.zeros_like(lone_g),
                     np.full_like(lone_g, k), gt_counts_at[lone_g, li])
    # One-to-one components: matched while the prediction is active, then the GT becomes a FN.
    simple = (comp_edges[comp[edge_pred]] == 1) & (deg[edge_pred] == 1) & (deg[n_pred + edge_gt] == 1)
    sp, sg, sh = edge_pred[simple], edge_gt[simple], edge_ha[simple]
    zeros = np.zeros_like(sp)
    add_interval(d_tp, (pred_shard[sp],), zeros, pred_active[sp], 1)
    add_interval(d_ha, (pred_shard[sp],), zeros, pred_active[sp], sh)
    for li in range(nl):
        add_interval(d_fn, (gt_shard[sg], np.full_like(sg, li)), pred_active[sp], np.full_like(sg, k),
                     gt_counts_at[sg, li])

    # Components with competing boxes: optimal assignment per distinct set of surviving predictions.
    hard = ~simple
    if hard.any():
        he_p, he_g, he_w, he_h = edge_pred[hard], edge_gt[hard], weight[hard], edge_ha[hard]
        he_c = comp[he_p]
        order = np.argsort(he_c, kind="stable")
        he_p, he_g, he_w, he_h, he_c = he_p[order], he_g[order], he_w[order], he_h[order], he_c[order]
        comps, e_start = np.unique(he_c, return_index=True)
        e_start = np.append(e_start, len(he_c)).astype(np.int64)
        ci = np.searchsorted(comps, he_c)
        # members of each component, with local indices (the rows / columns of its weight matrix)
        up, local_p = np.unique(he_c * (n_pred + 1) + he_p, return_inverse=True)
        ug, local_g = np.unique(he_c * (n_gt + 1) + he_g, return_inverse=True)
        p_start = np.append(np.searchsorted(up // (n_pred + 1), comps), len(up)).astype(np.int64)
        g_start = np.append(np.searchsorted(ug // (n_gt + 1), comps), len(ug)).astype(np.int64)
        local_p = (local_p - p_start[ci]).astype(np.int64)
        local_g = (local_g - g_start[ci]).astype(np.int64)
        _hard_components(e_start, local_p, local_g, he_w.astype(np.float64), he_h, p_start,
                         (up % (n_pred + 1)).astype(np.int64), g_start, (ug % (n_gt + 1)).astype(np.int64),
                         pred_shard, pred_active, pred_ignore_fp, gt_counts_at, k, d_tp, d_fp, d_ha, d_fn)

    return MatchCounts(np.cumsum(d_tp, -1)[:, :k], np.cumsum(d_fp, -1)[:, :k], np.cumsum(d_ha, -1)[:, :k],
                       np.cumsum(d_fn, -1)[..., :k])


@numba.njit(cache=True)
def _max_weight_assignment(w):  # pragma: no cover - numba
    """Rows matched to columns maximising the summed weight of w (R, C) (Hungarian, potentials).

    Returns (R,) column per row (-1: none). Shortest augmenting paths on cost -w, rows <= columns
    (the caller transposes otherwise).
    """
    n, m = w.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, np.int64)
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, np.bool_)
        while True:
            used[j0] = True
            i0 = p[j0]
            delta = np.inf
            j1 = 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = -w[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta = minv[j]
                        j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    row_col = np.full(n, -1, np.int64)
    for j in range(1, m + 1):
        if p[j] != 0:
            row_col[p[j] - 1] = j - 1
    return row_col


@numba.njit(cache=True)
def _hard_components(e_start, local_p, local_g, weight, ha, p_start, preds, g_start, gts, pred_shard, pred_active,
                     pred_ignore_fp, gt_counts_at, k, d_tp, d_fp, d_ha, d_fn):  # pragma: no cover - numba
    """Counts of every component with competing boxes, added to the difference arrays.

    Component c has edges e_start[c]:e_start[c + 1] (local row / column indices), predictions
    preds[p_start[c]:p_start[c + 1]] and ground truths gts[g_start[c]:g_start[c + 1]].
    """
    num_levels = gt_counts_at.shape[1]
    for c in range(e_start.shape[0] - 1):
        npc = p_start[c + 1] - p_start[c]
        ngc = g_start[c + 1] - g_start[c]
        w = np.zeros((npc, ngc))
        h = np.zeros((npc, ngc))
        for e in range(e_start[c], e_start[c + 1]):
            w[local_p[e], local_g[e]] = weight[e]
            h[local_p[e], local_g[e]] = ha[e]
        pidx = preds[p_start[c]:p_start[c + 1]]
        gidx = gts[g_start[c]:g_start[c + 1]]
        shard = pred_shard[pidx[0]]
        act = pred_active[pidx]
        cuts = np.unique(np.concatenate((np.zeros(1, np.int64), act, np.full(1, k, np.int64))))
        for b in range(cuts.shape[0] - 1):
            start, stop = cuts[b], cuts[b + 1]
            alive = np.flatnonzero(act > start)
            gt_matched = np.zeros(ngc, np.bool_)
            if alive.shape[0] > 0:
                sub = w[alive]
                pred_matched = np.zeros(alive.shape[0], np.bool_)
                n_tp = 0
                sum_ha = 0.0
                if alive.shape[0] <= ngc:
                    rc = _max_weight_assignment(sub)
                    for r in range(alive.shape[0]):
                        j = rc[r]
                        if j >= 0 and sub[r, j] > 0:
                            pred_matched[r] = True
                            gt_matched[j] = True
                            n_tp += 1
                            sum_ha += h[alive[r], j]
                else:
                    cr = _max_weight_assignment(sub.T.copy())
                    for j in range(ngc):
                        r = cr[j]
                        if r >= 0 and sub[r, j] > 0:
                            pred_matched[r] = True
                            gt_matched[j] = True
                            n_tp += 1
                            sum_ha += h[alive[r], j]
                n_fp = 0
                for r in range(alive.shape[0]):
                    if not pred_matched[r] and not pred_ignore_fp[pidx[alive[r]]]:
                        n_fp += 1
                d_tp[shard, start] += n_tp
                d_tp[shard, stop] -= n_tp
                d_ha[shard, start] += sum_ha
                d_ha[shard, stop] -= sum_ha
                d_fp[shard, start] += n_fp
                d_fp[shard, stop] -= n_fp
            for j in range(ngc):
                if not gt_matched[j]:
                    for li in range(num_levels):
                        d_fn[shard, li, start] += gt_counts_at[gidx[j], li]
                        d_fn[shard, li, stop] -= gt_counts_at[gidx[j], li]


def precision_recall(counts: MatchCounts, level_index: int) -> tuple[np.ndarray, ...]:
    """(precision, precision_ha, recall), each (S, K), as the Waymo library defines them per cut-off."""
    tp = counts.tp.astype(np.float64)
    det = tp + counts.fp
    pos = tp + counts.fn[:, level_index]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(det > 0, tp / det, 0.0)
        precision_ha = np.where(det > 0, counts.sum_ha / det, 0.0)
        recall = np.where(pos > 0, tp / pos, 0.0)
    precision = np.where(recall == 0, 1.0, precision)
    precision_ha = np.where(recall == 0, 1.0, precision_ha)
    return precision, precision_ha, recall


def waymo_average_precision(precisions, recalls, max_recall_delta: float = 0.05) -> float:
    """Area under the PR curve the way the Waymo library integrates it (see module docstring).

    Args:
        precisions, recalls: (K,) one PR point per score cut-off.
        max_recall_delta: largest recall step between two integration points.
    """
    # float32 like the library (whether a gap of exactly k * delta gets a filler point depends on it).
    f32 = np.float32
    p = np.asarray(precisions, np.float64).astype(f32).reshape(-1)
    r = np.asarray(recalls, np.float64).astype(f32).reshape(-1)
    if p.shape != r.shape:
        raise ValueError(f"precisions {p.shape} and recalls {r.shape} must have the same shape")
    if not 0 < max_recall_delta <= 1:
        raise ValueError(f"max_recall_delta must be in (0, 1], got {max_recall_delta}")
    if p.size == 0:
        return 0.0
    # recall -> best precision at that recall, with the fake (0, 1) point.
    keys, inv = np.unique(np.concatenate([np.zeros(1, f32), r]), return_inverse=True)
    best = np.zeros(len(keys), f32)
    np.maximum.at(best, inv, np.concatenate([np.ones(1, f32), p]))
    # Walk from high to low recall: running max precision, filler points in gaps wider than the delta.
    delta, gap = f32(max_recall_delta), f32(max_recall_delta) + f32(1e-6)
    pts_p, pts_r = [], []
    last_r, max_p = keys[0], f32(0.0)
    for rk, pk in zip(keys[::-1], best[::-1]):
        while last_r - rk > gap:
            last_r = last_r - delta
            pts_p.append(max_p)
            pts_r.append(last_r)
        max_p = max(max_p, pk)
        pts_p.append(max_p)
        pts_r.append(rk)
        last_r = rk
    if len(pts_p) >= 2:
        pts_p[-1] = pts_p[-2]  # the (0, 1) point is fake: use the best real precision
    area = f32(0.0)
    for i in range(1, len(pts_p)):  # float32 running sum of double-precision trapezoids, as the library does
        area = f32(float(area) + 0.5 * float(pts_r[i - 1] - pts_r[i]) * float(pts_p[i - 1] + pts_p[i]))
    return min(float(area), 1.0)  # float32 rounding can overshoot a perfect 1 by one ulp


def candidate_pairs(pred_group: np.ndarray, gt_group: np.ndarray, pred_boxes: np.ndarray, gt_boxes: np.ndarray,
                    use_z: bool = True, chunk: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """All (prediction, ground truth) index pairs of the same group whose boxes can overlap.

    A pair survives when the BEV centres are closer than the sum of the half diagonals and, with
    ``use_z``, the height intervals touch. Vectorised over groups, in chunks of about ``chunk`` pairs.

    Args:
        pred_group, gt_group: int (P,), (G,) group id (e.g. frame * num_classes + class).
        pred_boxes, gt_boxes: float (P, 7), (G, 7) boxes ``(x, y, z, dx, dy, dz, yaw)``.

    Returns:
        Two int64 (E,) arrays of prediction and ground-truth indices.
    """
    pred_group = np.asarray(pred_group, np.int64)
    gt_group = np.asarray(gt_group, np.int64)
    po = np.argsort(pred_group, kind="stable")
    go = np.argsort(gt_group, kind="stable")
    pg, gg = pred_group[po], gt_group[go]
    groups = np.intersect1d(pg, gg)
    if len(groups) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    p0, p1 = np.searchsorted(pg, groups, "left"), np.searchsorted(pg, groups, "right")
    g0, g1 = np.searchsorted(gg, groups, "left"), np.searchsorted(gg, groups, "right")

    def radius(b):
        return 0.5 * np.hypot(b[:, 3], b[:, 4])

    pb, gb = np.asarray(pred_boxes, np.float64)[po], np.asarray(gt_boxes, np.float64)[go]
    pr, gr = radius(pb), radius(gb)
    n_g = g1 - g0
    pairs_per_group = (p1 - p0) * n_g
    out_p, out_g = [], []
    ends = np.cumsum(pairs_per_group)
    start_group = 0
    while start_group < len(groups):
        stop_group = int(np.searchsorted(ends, (ends[start_group - 1] if start_group else 0) + chunk, "right"))
        stop_group = max(stop_group, start_group + 1)
        sl = slice(start_group, stop_group)
        # every prediction of the chunk's groups, repeated once per ground truth of its group
        npred = p1[sl] - p0[sl]
        rows = _ranges(p0[sl], p1[sl])  # sorted prediction positions of the chunk
        reps = np.repeat(n_g[sl], npred)  # ground truths in the group of each of them
        gt_first = np.repeat(g0[sl], npred)
        pred_idx = np.repeat(rows, reps)
        gt_idx = _ranges(gt_first, gt_first + reps)
        d2 = (pb[pred_idx, 0] - gb[gt_idx, 0]) ** 2 + (pb[pred_idx, 1] - gb[gt_idx, 1]) ** 2
        ok = d2 < (pr[pred_idx] + gr[gt_idx]) ** 2
        if use_z:
            ok &= np.abs(pb[pred_idx, 2] - gb[gt_idx, 2]) <= 0.5 * (pb[pred_idx, 5] + gb[gt_idx, 5])
        out_p.append(po[pred_idx[ok]])
        out_g.append(go[gt_idx[ok]])
        start_group = stop_group
    return np.concatenate(out_p), np.concatenate(out_g)


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(a, b)`` for every (a, b) pair, vectorised."""
    lengths = np.asarray(stops, np.int64) - np.asarray(starts, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - offsets + np.repeat(np.asarray(starts, np.int64), lengths)


# ---- generic evaluator (synthetic data, KITTI-like sets) -------------------------------------------------------
def pair_iou(pred_boxes: np.ndarray, gt_boxes: np.ndarray, kind: str) -> np.ndarray:
    """(E,) exact rotated IoU of aligned box pairs, ``kind`` "bev" or "3d" (via :mod:`pointwin.ops.boxes`)."""
    import torch

    from pointwin.ops.boxes import boxes_iou3d, boxes_iou_bev

    if kind not in ("bev", "3d"):
        raise ValueError(f"IoU kind must be 'bev' or '3d', got {kind!r}")
    if len(pred_boxes) == 0:
        return np.zeros(0)
    fn = boxes_iou_bev if kind == "bev" else boxes_iou3d
    a = torch.from_numpy(np.ascontiguousarray(pred_boxes[:, :7], np.float64))
    b = torch.from_numpy(np.ascontiguousarray(gt_boxes[:, :7], np.float64))
    return fn(a, b, aligned=True).numpy()


def _frame_arrays(items, what: str):
    """Concatenate per-frame (boxes, labels[, scores]) into flat arrays plus a frame index."""
    boxes, labels, scores, frames = [], [], [], []
    for i, item in enumerate(items):
        if hasattr(item, "boxes") and hasattr(item, "scores"):  # Detections
            b, lab, s = item.boxes, item.labels, item.scores
        elif hasattr(item, "boxes") and hasattr(item, "labels"):  # Sample
            b, lab, s = item.boxes, item.labels, None
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
            b, lab, s = item[0], item[1], item[2] if len(item) == 3 else None
        else:
            raise TypeError(f"{what}[{i}] must be Detections, a Sample or a (boxes, labels[, scores]) tuple, "
                            f"got {type(item).__name__}")
        if b is None:
            b, lab = np.zeros((0, 7)), np.zeros(0, np.int64)
        t = getattr(b, "tensor", b)
        t = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        t = np.asarray(t, np.float64).reshape(-1, t.shape[-1] if t.ndim == 2 else 7)
        lab = np.asarray(lab.detach().cpu().numpy() if hasattr(lab, "detach") else lab, np.int64).reshape(-1)
        if len(lab) != len(t) or t.shape[1] < 7:
            raise ValueError(f"{what}[{i}]: {len(t)} boxes of {t.shape[1]} values (need >= 7) and {len(lab)} labels")
        boxes.append(t[:, :7])
        labels.append(lab)
        frames.append(np.full(len(t), i, np.int64))
        if s is not None:
            s = np.asarray(s.detach().cpu().numpy() if hasattr(s, "detach") else s, np.float64).reshape(-1)
            if len(s) != len(t):
                raise ValueError(f"{what}[{i}]: {len(s)} scores for {len(t)} boxes")
            scores.append(s)

    def cat(xs, shape):
        return np.concatenate(xs) if xs else np.zeros(shape)

    return (cat(boxes, (0, 7)), cat(labels, (0,)).astype(np.int64), cat(frames, (0,)).astype(np.int64),
            cat(scores, (0,)) if scores else None)


def evaluate_detections(results, gts, class_names, iou_thresholds: float | dict[str, float] = 0.5,
                        iou_types: tuple[str, ...] = ("bev", "3d"), max_recall_delta: float = 0.05,
                        **unused) -> dict[str, float]:
    """Waymo-style AP / APH per class for detections of any dataset (one difficulty level, no breakdown).

    Args:
        results: per frame, a :class:`pointwin.structures.Detections` (or ``(boxes, labels, scores)``);
            scores in [0, 1].
        gts: per frame, a :class:`pointwin.structures.Sample` with ``boxes``/``labels`` (or ``(boxes, labels)``).
        class_names: names of the label indices.
        iou_thresholds: one threshold for all classes or ``{class name: threshold}`` (missing classes: 0.5).
        iou_types: "bev" (rotated BEV IoU) and/or "3d" (upright 3D IoU).

    Returns:
        ``{"<Class>/AP_BEV": ap, "<Class>/APH_BEV": aph, ..., "mAP_BEV": mean over classes with ground
        truth, ...}`` (suffix ``_3D`` for 3D IoU); a class without ground truth reports AP 0 and is left
        out of the mean.
    """
    del unused  # evaluation config sections may carry keys meant for other evaluators
    if len(results) != len(gts):
        raise ValueError(f"evaluate_detections: {len(results)} results for {len(gts)} ground-truth frames")
    names = list(class_names)
    if isinstance(iou_thresholds, (int, float)):
        thr = np.full(len(names), float(iou_thresholds))
    else:
        unknown = set(iou_thresholds) - set(names)
        if unknown:
            raise ValueError(f"iou_thresholds names unknown classes {sorted(unknown)}; classes are {names}")
        thr = np.array([float(iou_thresholds.get(n, 0.5)) for n in names])
    pb, pl, pf, ps = _frame_arrays(results, "results")
    gb, gl, gf, _ = _frame_arrays(gts, "gts")
    if ps is None:
        ps = np.zeros(0)
    if len(ps) and (np.nanmin(ps) < 0 or np.nanmax(ps) > 1):
        raise ValueError("evaluate_detections: scores must lie in [0, 1] (AP is sampled at cut-offs 0.00 .. 1.00)")
    c = len(names)
    p_ok, g_ok = (pl >= 0) & (pl < c), (gl >= 0) & (gl < c)
    active = cutoff_counts(ps)
    out: dict[str, float] = {}
    for kind in iou_types:
        suffix = "BEV" if kind == "bev" else "3D"
        ep, eg = candidate_pairs(np.where(p_ok, pf * c + pl, -1), np.where(g_ok, gf * c + gl, -2), pb, gb,
                                 use_z=kind == "3d")
        iou = pair_iou(pb[ep], gb[eg], kind)
        ok = (iou >= thr[pl[ep]]) & (iou > 0)
        ep, eg, iou = ep[ok], eg[ok], iou[ok]
        counts = match_counts(c, len(SCORE_CUTOFFS), (1,), np.where(p_ok, pl, -1), active, np.zeros(len(pl), bool),
                              np.where(g_ok, gl, -1), np.ones(len(gl), np.int64), ep, eg, iou,
                              heading_accuracy(pb[ep, 6], gb[eg, 6]))
        p, p_ha, r = precision_recall(counts, 0)
        aps = []
        for k, name in enumerate(names):
            ap = waymo_average_precision(p[k], r[k], max_recall_delta)
            out[f"{name}/AP_{suffix}"] = ap
            out[f"{name}/APH_{suffix}"] = waymo_average_precision(p_ha[k], r[k], max_recall_delta)
            if np.any(gl[g_ok] == k):
                aps.append(ap)
        out[f"mAP_{suffix}"] = float(np.mean(aps)) if aps else 0.0
    return out


def format_ap_table(metrics: dict[str, float], iou_thresholds: float | dict[str, float] | None = None) -> str:
    """A small text table of :func:`evaluate_detections` output, one row per class."""
    classes = list(dict.fromkeys(k.split("/")[0] for k in metrics if "/" in k))
    kinds = [s for s in ("BEV", "3D") if any(k.endswith(f"_{s}") for k in metrics)]
    head = "class".ljust(14) + "".join(f"AP_{s}".rjust(9) + f"APH_{s}".rjust(10) for s in kinds)
    if iou_thresholds is not None:
        head += "  IoU thr"
    lines = [head]
    for cls in classes:
        row = cls.ljust(14) + "".join(f"{100 * metrics.get(f'{cls}/AP_{s}', float('nan')):9.2f}"
                                      f"{100 * metrics.get(f'{cls}/APH_{s}', float('nan')):10.2f}" for s in kinds)
        if iou_thresholds is not None:
            t = iou_thresholds if isinstance(iou_thresholds, (int, float)) else iou_thresholds.get(cls, 0.5)
            row += f"  {t:.2f}"
        lines.append(row)
    lines.append("mean".ljust(14) + "".join(f"{100 * metrics.get(f'mAP_{s}', float('nan')):9.2f}".ljust(19)
                                            for s in kinds).rstrip())
    return "\n".join(lines)
