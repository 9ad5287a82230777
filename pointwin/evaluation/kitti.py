"""The official KITTI object-detection metric: 2D (image box), BEV and 3D AP, AOS, easy/moderate/hard, R11/R40.

Written from the definition of the KITTI devkit (``cpp/evaluate_object.cpp``) and its usual Python port
(``kitti_object_eval_python`` in OpenPCDet / mmdetection3d), which agree on every rule below:

* **Difficulties.** A ground truth (GT) of the evaluated class counts at a difficulty when its image box is
  taller than the minimum height (strictly: ``height <= 40/25/25`` px is ignored), its occlusion level is at
  most 0/1/2 and its truncation at most 0.15/0.30/0.50 (easy/moderate/hard). A GT that fails these, and a
  GT of the *neighbouring* class (Van for Car, Person_sitting for Pedestrian), is "ignored": a detection
  matched to it is neither a TP nor a FP. GT of other classes play no part. A detection whose image box is
  lower than the minimum height (``< 40/25/25`` px) is ignored likewise (it may absorb a GT, never counts).
* **DontCare.** In the 2D evaluation, an unmatched detection whose image box lies inside a DontCare region
  by more than the class's IoU threshold (intersection over the detection's own area) is not a FP. In BEV
  and 3D the official DontCare rows carry placeholder boxes that never overlap anything, so they have no
  effect there; this module does the same by applying them to the 2D evaluation only.
* **Matching** (per image, GT in file order): each GT takes, among the not-yet-assigned detections above
  the score cut-off whose overlap is strictly greater than the threshold, the one with the greatest
  overlap that is not height-ignored; a height-ignored detection only when nothing else overlaps.
* **Cut-offs.** A first pass matches with no cut-off, each GT taking its highest-scored overlapping
  detection; the scores of the true positives, sorted descending, give at most 41 cut-offs: a score is
  kept when its recall ``(i + 1) / n_gt`` is the closest to the next of the recall targets 0, 1/40, ...,
  1 (the last score is always kept).
* **Curve.** At each cut-off: precision ``TP / (TP + FP)``, orientation similarity ``sum((1 + cos(d)) / 2)
  / (TP + FP)`` over the TPs' observation-angle (alpha) differences d; both made non-increasing from the
  right over the 41 slots (slots past the last cut-off are 0). **R11** is the mean of slots 0, 4, ..., 40
  (the original 11 recall points), **R40** the mean of slots 1..40 (KITTI's current leaderboard), times 100.
* **Thresholds.** Car/Van/Truck 0.7, Pedestrian/Person_sitting/Cyclist 0.5 for every metric ("strict");
  the "loose" variant keeps the 2D thresholds and uses 0.5 / 0.25 for BEV and 3D.
* **AOS** is computed with the 2D matching, as the official tool does.

Geometry: boxes stay in the rectified camera frame, as in the official code (BEV = the x-z plane, height
along -y). They are handed to :func:`pointwin.ops.boxes_iou_bev` / :func:`~pointwin.ops.boxes_iou3d` through a
fixed axis permutation of that frame, ``(x, y, z)_cam -> (z, -x, -y)``, a proper rotation that needs no
calibration: centre ``(z, -x, -y + h/2)``, sizes ``(l, w, h)``, yaw ``-ry - pi/2``. IoU is invariant under a
rotation, so the values equal the official camera-frame IoUs exactly, whatever the frame's calibration
(converting to the real LiDAR frame would tilt the boxes by the small calibration rotations instead).

Detections and ground truths are :class:`pointwin.datasets.kitti.KittiObject` rows (as read from
``label_2`` files); :func:`detections_to_kitti` turns pointwin's LiDAR-frame detections into such rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import torch

from ..datasets.kitti import KittiCalib, KittiObject, lidar_boxes_to_camera

DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.30, 0.50)
METRICS = ("bbox", "bev", "3d")
#: GT of these classes are ignored (not missed) when evaluating the key class.
NEIGHBOURS = {"car": "van", "pedestrian": "person_sitting"}
#: IoU thresholds per class and metric: "strict" is the leaderboard's, "loose" the common 0.5 / 0.25 variant.
OVERLAPS = {
    "strict": {c: {"bbox": t, "bev": t, "3d": t} for c, t in
               (("car", 0.7), ("van", 0.7), ("truck", 0.7), ("pedestrian", 0.5), ("person_sitting", 0.5),
                ("cyclist", 0.5))},
    "loose": {c: {"bbox": t2d, "bev": t, "3d": t} for c, t2d, t in
              (("car", 0.7, 0.5), ("van", 0.7, 0.5), ("truck", 0.7, 0.5), ("pedestrian", 0.5, 0.25),
               ("person_sitting", 0.5, 0.25), ("cyclist", 0.5, 0.25))},
}
N_SAMPLE_PTS = 41
#: Image size (width, height) assumed when projecting detections without an image at hand (KITTI images are
#: 1224-1242 x 370-376 px).
DEFAULT_IMAGE_SIZE = (1242, 375)


# ---------------------------------------------------------------------------------------------------
# frames as arrays
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Frame:
    names: np.ndarray  # lower-case class names
    truncated: np.ndarray
    occluded: np.ndarray
    alpha: np.ndarray
    bbox: np.ndarray  # (N, 4) x1, y1, x2, y2
    boxes: np.ndarray  # (N, 7) camera boxes in pointwin's convention after the axis permutation
    score: np.ndarray


def camera_to_permuted(dimensions_hwl: np.ndarray, location: np.ndarray, rotation_y: np.ndarray) -> np.ndarray:
    """(N, 7) boxes ``(x, y, z, dx, dy, dz, yaw)`` of KITTI camera boxes after ``(x, y, z) -> (z, -x, -y)``.

    ``location`` is the bottom centre in the rectified camera frame (y down), ``dimensions`` are (h, w, l).
    """
    hwl = np.asarray(dimensions_hwl, np.float64).reshape(-1, 3)
    loc = np.asarray(location, np.float64).reshape(-1, 3)
    ry = np.asarray(rotation_y, np.float64).reshape(-1)
    return np.stack([loc[:, 2], -loc[:, 0], -loc[:, 1] + hwl[:, 0] / 2, hwl[:, 2], hwl[:, 1], hwl[:, 0],
                     -ry - math.pi / 2], 1)


def _frame(objects: Sequence[KittiObject], where: str, need_score: bool) -> _Frame:
    n = len(objects)
    if need_score:
        missing = [i for i, o in enumerate(objects) if o.score is None]
        if missing:
            raise ValueError(f"{where}: detection row {missing[0]} ({objects[missing[0]].type}) has no score "
                             f"(a KITTI result row has 16 fields, the last one the score)")
    return _Frame(
        names=np.array([o.type.lower() for o in objects], dtype=object),
        truncated=np.array([o.truncated for o in objects], np.float64),
        occluded=np.array([o.occluded for o in objects], np.int64),
        alpha=np.array([o.alpha for o in objects], np.float64),
        bbox=np.array([o.bbox for o in objects], np.float64).reshape(n, 4),
        boxes=camera_to_permuted([o.dimensions for o in objects], [o.location for o in objects],
                                 [o.rotation_y for o in objects]) if n else np.zeros((0, 7)),
        score=np.array([o.score if o.score is not None else 0.0 for o in objects], np.float64))


def image_box_overlap(a: np.ndarray, b: np.ndarray, over_a: bool = False) -> np.ndarray:
    """(M, K) IoU of image boxes (x1, y1, x2, y2), no +1 pixel convention; ``over_a``: intersection / area(a)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    denom = area_a[:, None] if over_a else area_a[:, None] + area_b[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(denom > 0, denom, 1.0), 0.0)


def _overlaps(dt: _Frame, gt: _Frame, metric: str) -> np.ndarray:
    """(D, G) float64 overlaps of detections and GT for one metric."""
    if metric == "bbox":
        return image_box_overlap(dt.bbox, gt.bbox)
    if not len(dt.boxes) or not len(gt.boxes):
        return np.zeros((len(dt.boxes), len(gt.boxes)))
    from ..ops.boxes import boxes_iou3d, boxes_iou_bev

    fn = boxes_iou_bev if metric == "bev" else boxes_iou3d
    return fn(torch.from_numpy(dt.boxes), torch.from_numpy(gt.boxes), backend="numba").numpy()


@dataclass
class _Flat:
    """Every frame's rows concatenated: GT rows ``gt_off[f]:gt_off[f+1]`` and detections ``dt_off[f]:...``."""

    gt: _Frame
    dt: _Frame
    gt_off: np.ndarray
    dt_off: np.ndarray


def _concat(frames: Sequence[_Frame]) -> tuple[_Frame, np.ndarray]:
    off = np.zeros(len(frames) + 1, np.int64)
    off[1:] = np.cumsum([len(f.names) for f in frames])
    cat = _Frame(*(np.concatenate([getattr(f, k) for f in frames]) if frames else getattr(_frame([], "", False), k)
                   for k in ("names", "truncated", "occluded", "alpha", "bbox", "boxes", "score")))
    return cat, off


def _clean(flat: _Flat, cls: str, difficulty: int) -> tuple[np.ndarray, np.ndarray, int]:
    """ignored_gt (0 counts, 1 ignored, -1 other class) and ignored_dt (same) of all rows, valid GT count."""
    gt, dt = flat.gt, flat.dt
    height = gt.bbox[:, 3] - gt.bbox[:, 1]
    own = gt.names == cls
    neighbour = gt.names == NEIGHBOURS.get(cls, "\0")
    hard = ((gt.occluded > MAX_OCCLUSION[difficulty]) | (gt.truncated > MAX_TRUNCATION[difficulty])
            | (height <= MIN_HEIGHT[difficulty]))
    ig_gt = np.full(len(gt.names), -1, np.int64)
    ig_gt[own & ~hard] = 0
    ig_gt[neighbour | (own & hard)] = 1
    dt_height = np.abs(dt.bbox[:, 3] - dt.bbox[:, 1])
    ig_dt = np.where(dt.names == cls, 0, -1).astype(np.int64)
    ig_dt[dt_height < MIN_HEIGHT[difficulty]] = 1
    return ig_gt, ig_dt, int((ig_gt == 0).sum())


# ---------------------------------------------------------------------------------------------------
# matching (numba): one image, one score cut-off
# ---------------------------------------------------------------------------------------------------
@numba.njit(cache=True)
def _image_stats(ov, ig_gt, ig_dt, scores, gt_alpha, dt_alpha, dc_ov, min_ov, cutoff, with_fp, tp_scores):
    """Match one image; returns (tp, fp, fn, similarity, number of TP scores written to ``tp_scores``).

    ``ov`` is (D, G); ``dc_ov`` (D, C) detection-over-DontCare overlaps (C = 0 outside the 2D metric);
    ``with_fp`` False is the first pass (no cut-off, the highest-scored overlapping detection wins).
    """
    n_dt, n_gt = ov.shape
    taken = np.zeros(n_dt, np.bool_)
    below = np.zeros(n_dt, np.bool_)
    if with_fp:
        for j in range(n_dt):
            below[j] = scores[j] < cutoff
    tp = 0
    fp = 0
    fn = 0
    n_scores = 0
    sim = 0.0
    for i in range(n_gt):
        if ig_gt[i] == -1:
            continue
        best = -1
        found = False
        best_score = -np.inf
        best_ov = 0.0
        best_is_ignored = False
        for j in range(n_dt):
            if ig_dt[j] == -1 or taken[j] or below[j]:
                continue
            o = ov[j, i]
            if o <= min_ov:
                continue
            if not with_fp:
                if scores[j] > best_score:
                    best, best_score, found = j, scores[j], True
            elif ig_dt[j] == 0:
                if o > best_ov or best_is_ignored:
                    best, best_ov, found, best_is_ignored = j, o, True, False
            elif not found:  # a height-ignored detection, only while nothing else was found
                best, found, best_is_ignored = j, True, True
        if not found:
            if ig_gt[i] == 0:
                fn += 1
        elif ig_gt[i] == 1 or ig_dt[best] == 1:
            taken[best] = True
        else:
            tp += 1
            tp_scores[n_scores] = scores[best]
            n_scores += 1
            sim += (1.0 + math.cos(gt_alpha[i] - dt_alpha[best])) / 2.0
            taken[best] = True
    if with_fp:
        for j in range(n_dt):
            if not (taken[j] or ig_dt[j] != 0 or below[j]):
                fp += 1
        for c in range(dc_ov.shape[1]):
            for j in range(n_dt):
                if taken[j] or ig_dt[j] != 0 or below[j]:
                    continue
                if dc_ov[j, c] > min_ov:
                    taken[j] = True
                    fp -= 1
    return tp, fp, fn, sim, n_scores


@numba.njit(cache=True)
def _all_frames(ov_flat, ov_off, dc_flat, dc_off, gt_off, dt_off, ig_gt, ig_dt, scores, gt_alpha, dt_alpha, min_ov,
                cutoffs, with_fp):
    """Sum (tp, fp, fn, similarity) over every frame per cut-off -> (T, 4); and the first pass's TP scores."""
    table = np.zeros((len(cutoffs), 4))
    tp_scores = np.zeros(len(ig_gt))
    n_scores = 0
    for f in range(len(gt_off) - 1):
        g0, g1, d0, d1 = gt_off[f], gt_off[f + 1], dt_off[f], dt_off[f + 1]
        ov = ov_flat[ov_off[f]:ov_off[f + 1]].reshape((d1 - d0, g1 - g0))
        dc = dc_flat[dc_off[f]:dc_off[f + 1]].reshape((d1 - d0, -1)) if d1 > d0 else \
            np.zeros((0, 0))
        for t in range(len(cutoffs)):
            tp, fp, fn, sim, k = _image_stats(ov, ig_gt[g0:g1], ig_dt[d0:d1], scores[d0:d1], gt_alpha[g0:g1],
                                              dt_alpha[d0:d1], dc, min_ov, cutoffs[t], with_fp,
                                              tp_scores[n_scores:])
            if not with_fp:
                n_scores += k
            table[t, 0] += tp
            table[t, 1] += fp
            table[t, 2] += fn
            table[t, 3] += sim
    return table, tp_scores[:n_scores]


def score_cutoffs(tp_scores: np.ndarray, num_gt: int, num_points: int = N_SAMPLE_PTS) -> np.ndarray:
    """The official cut-offs: TP scores (descending) whose recall is nearest the next recall target."""
    s = np.sort(np.asarray(tp_scores, np.float64))[::-1]
    out = []
    target = 0.0
    for i, score in enumerate(s):
        last = i == len(s) - 1
        here, nxt = (i + 1) / num_gt, (i + 2) / num_gt
        if not last and (nxt - target) < (target - here):
            continue
        out.append(score)
        target += 1.0 / (num_points - 1)
    return np.asarray(out[:num_points], np.float64)


@dataclass
class KittiCurves:
    """precision / recall / AOS over the 41 slots per (class, metric, overlap set, difficulty)."""

    precision: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict)
    recall: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict)
    aos: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict)
    thresholds: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    num_gt: dict[tuple[str, str], int] = field(default_factory=dict)


def ap_r11(precision: np.ndarray) -> float:
    """Mean of the 11 slots 0, 4, ..., 40 of a 41-slot curve, in percent."""
    return float(np.asarray(precision)[0:N_SAMPLE_PTS:4].sum() / 11 * 100)


def ap_r40(precision: np.ndarray) -> float:
    """Mean of the slots 1..40 of a 41-slot curve (recall 0 excluded), in percent."""
    return float(np.asarray(precision)[1:N_SAMPLE_PTS].sum() / 40 * 100)


def _curve(flat: _Flat, cls: str, difficulty: int, ov_args: tuple, min_ov: float):
    """(precision, recall, aos) 41-slot arrays and the valid GT count for one class/difficulty/metric."""
    ig_gt, ig_dt, n_gt = _clean(flat, cls, difficulty)
    prec, rec, aos = (np.zeros(N_SAMPLE_PTS) for _ in range(3))
    if n_gt == 0:
        return prec * np.nan, rec * np.nan, aos * np.nan, 0
    common = (*ov_args, flat.gt_off, flat.dt_off, ig_gt, ig_dt, flat.dt.score, flat.gt.alpha, flat.dt.alpha, min_ov)
    _, tp_scores = _all_frames(*common, np.zeros(1), False)
    cuts = score_cutoffs(tp_scores, n_gt)
    table, _ = _all_frames(*common, cuts, True)
    n = len(cuts)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec[:n] = table[:, 0] / (table[:, 0] + table[:, 1])
        rec[:n] = table[:, 0] / (table[:, 0] + table[:, 2])
        aos[:n] = table[:, 3] / (table[:, 0] + table[:, 1])
    for arr in (prec, rec, aos):
        arr[:] = np.maximum.accumulate(np.nan_to_num(arr)[::-1])[::-1]
    return prec, rec, aos, n_gt


def _flatten(mats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(mats) + 1, np.int64)
    off[1:] = np.cumsum([m.size for m in mats])
    flat = np.concatenate([m.ravel() for m in mats]) if mats else np.zeros(0)
    return np.ascontiguousarray(flat, np.float64), off


def evaluate_kitti(gt_frames: Sequence[Sequence[KittiObject]], dt_frames: Sequence[Sequence[KittiObject]],
                   classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"), metrics: Sequence[str] = METRICS,
                   overlap_sets: Sequence[str] = ("strict", "loose"), compute_aos: bool = True,
                   frame_ids: Sequence[str] | None = None) -> tuple[dict[str, float], KittiCurves]:
    """The KITTI metric of detections ``dt_frames`` against ``gt_frames`` (one list of rows per image).

    GT rows are ``label_2`` rows (DontCare and every class included); detection rows need a ``score``.
    ``metrics`` picks among ``bbox`` (image boxes), ``bev`` and ``3d``; AOS needs ``bbox`` (the official
    AOS uses the 2D matching). Returns ``(metrics, curves)`` with keys
    ``"<Class>/<metric>@<iou>/<difficulty>/<R11|R40>"`` (e.g. ``Car/3d@0.70/moderate/R40``), ``aos`` in place
    of the metric for AOS, and ``"mAP/<metric>@strict/moderate/R40"``, the mean over classes with GT at
    the strict thresholds. Values are in percent; NaN where a class has no valid GT at a difficulty.
    """
    if len(gt_frames) != len(dt_frames):
        raise ValueError(f"evaluate_kitti: {len(gt_frames)} ground-truth frames but {len(dt_frames)} detection "
                         "frames (one list per image, in the same order)")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"evaluate_kitti: unknown metric(s) {bad}; expected some of {METRICS}")
    bad = [s for s in overlap_sets if s not in OVERLAPS]
    if bad:
        raise ValueError(f"evaluate_kitti: unknown overlap set(s) {bad}; expected some of {tuple(OVERLAPS)}")
    lower = [c.lower() for c in classes]
    bad = [c for c, lc in zip(classes, lower) if lc not in OVERLAPS["strict"]]
    if bad:
        raise ValueError(f"evaluate_kitti: no KITTI IoU threshold for class(es) {bad}; known: "
                         f"{sorted(OVERLAPS['strict'])}")
    ids = list(frame_ids) if frame_ids is not None else [str(i) for i in range(len(gt_frames))]
    gts = [_frame(g, f"ground truth of frame {fid}", False) for g, fid in zip(gt_frames, ids)]
    dts = [_frame(d, f"detections of frame {fid}", True) for d, fid in zip(dt_frames, ids)]
    gt_cat, gt_off = _concat(gts)
    dt_cat, dt_off = _concat(dts)
    flat = _Flat(gt_cat, dt_cat, gt_off, dt_off)
    out: dict[str, float] = {}
    curves = KittiCurves()
    for metric in metrics:
        ovs = [_overlaps(d, g, metric) for g, d in zip(gts, dts)]
        if metric == "bbox":
            dc_ovs = [image_box_overlap(d.bbox, g.bbox[g.names == "dontcare"], over_a=True) for g, d in zip(gts, dts)]
        else:
            dc_ovs = [np.zeros((len(d.names), 0)) for d in dts]
        ov_args = (*_flatten(ovs), *_flatten(dc_ovs))
        for name, cls in zip(classes, lower):
            for oset in overlap_sets:
                min_ov = OVERLAPS[oset][cls][metric]
                for di, diff in enumerate(DIFFICULTIES):
                    prec, rec, aos, n_gt = _curve(flat, cls, di, ov_args, min_ov)
                    key = (name, metric, oset, diff)
                    curves.precision[key], curves.recall[key] = prec, rec
                    curves.thresholds[key] = min_ov
                    curves.num_gt[(name, diff)] = n_gt
                    for rname, fn in (("R11", ap_r11), ("R40", ap_r40)):
                        out[f"{name}/{metric}@{min_ov:.2f}/{diff}/{rname}"] = fn(prec) if n_gt else math.nan
                        if metric == "bbox" and compute_aos:
                            out[f"{name}/aos@{min_ov:.2f}/{diff}/{rname}"] = fn(aos) if n_gt else math.nan
                    if metric == "bbox" and compute_aos:
                        curves.aos[key] = aos
        for rname in ("R11", "R40"):
            vals = [out[f"{n}/{metric}@{OVERLAPS['strict'][c][metric]:.2f}/moderate/{rname}"]
                    for n, c in zip(classes, lower) if "strict" in overlap_sets]
            vals = [v for v in vals if not math.isnan(v)]
            if vals:
                out[f"mAP/{metric}@strict/moderate/{rname}"] = float(np.mean(vals))
    # the headline numbers (means over classes) first, then class by class
    out = {**{k: v for k, v in out.items() if k.startswith("mAP/")},
           **{k: v for k, v in out.items() if not k.startswith("mAP/")}}
    return out, curves


# ---------------------------------------------------------------------------------------------------
# pointwin detections -> KITTI rows
# ---------------------------------------------------------------------------------------------------
def _corners_lidar(boxes: np.ndarray) -> np.ndarray:
    """(M, 8, 3) corners of LiDAR boxes (x, y, z, dx, dy, dz, yaw)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 7)
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
    lx, ly, lz = b[:, 3:4] * sx, b[:, 4:5] * sy, b[:, 5:6] * sz
    c, s = np.cos(b[:, 6:7]), np.sin(b[:, 6:7])
    return np.stack([b[:, 0:1] + c * lx - s * ly, b[:, 1:2] + s * lx + c * ly, b[:, 2:3] + lz], -1)


def project_boxes_to_image(boxes_lidar: np.ndarray, calib: KittiCalib,
                           image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Image boxes (M, 4) of LiDAR boxes (the 8 corners through ``P2``, clipped to the image) and a (M,) mask
    of boxes that are visible (some corner in front of the camera and a clipped box of positive area); only
    the corners in front of the camera span the box."""
    corners = _corners_lidar(boxes_lidar).reshape(-1, 3)
    rect = calib.lidar_to_rect(corners)
    hom = np.concatenate([rect, np.ones((len(rect), 1))], 1) @ calib.P2.T
    depth = hom[:, 2].reshape(-1, 8)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (hom[:, :2] / hom[:, 2:3]).reshape(-1, 8, 2)
    front = depth > 0
    w, h = image_size
    u = np.where(front, uv[..., 0], np.nan)
    v = np.where(front, uv[..., 1], np.nan)
    any_front = front.any(1)
    u[~any_front] = 0.0
    v[~any_front] = 0.0
    x1 = np.clip(np.nanmin(u, 1), 0, w - 1)
    y1 = np.clip(np.nanmin(v, 1), 0, h - 1)
    x2 = np.clip(np.nanmax(u, 1), 0, w - 1)
    y2 = np.clip(np.nanmax(v, 1), 0, h - 1)
    box = np.stack([x1, y1, x2, y2], 1)
    visible = any_front & (x2 > x1) & (y2 > y1)
    return box, visible


def detections_to_kitti(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                        calib: KittiCalib, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> list[KittiObject]:
    """KITTI result rows of LiDAR-frame detections: camera box, ``alpha``, image box through ``P2``.

    The image box spans the projections of the corners in front of the camera, clipped to the image;
    detections with no corner in front of the camera or an empty clipped box are dropped: they cannot be in
    the image, where every KITTI label lies. ``alpha = ry - atan2(x, z)`` of the camera-frame
    centre (the observation angle).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, boxes.shape[-1] if np.ndim(boxes) == 2 else 7)[:, :7]
    if not len(boxes):
        return []
    cam = lidar_boxes_to_camera(boxes, calib)
    bbox, visible = project_boxes_to_image(boxes, calib, image_size)
    rows = []
    for k in np.flatnonzero(visible):
        x, y, z, h, w, length, ry = cam[k]
        ry = math.atan2(math.sin(ry), math.cos(ry))
        centre = calib.lidar_to_rect(boxes[k:k + 1, :3])[0]
        alpha = ry - math.atan2(centre[0], centre[2])
        alpha = math.atan2(math.sin(alpha), math.cos(alpha))
        rows.append(KittiObject(type=class_names[int(labels[k])], truncated=-1.0, occluded=-1, alpha=alpha,
                                bbox=tuple(float(v) for v in bbox[k]), dimensions=(h, w, length),
                                location=(x, y, z), rotation_y=ry, score=float(scores[k])))
    return rows


def image_size_of(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from a PNG header, None when the file is absent or not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def write_kitti_results(rows_per_frame: Mapping[str, Sequence[KittiObject]], out_dir: str | os.PathLike) -> Path:
    """Write one ``<frame_id>.txt`` per frame in the KITTI result format (16 fields, the score last)."""
    from ..fileio import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fid, rows in rows_per_frame.items():
        with atomic_write(out / f"{fid}.txt", "w") as f:
            for o in rows:
                f.write(f"{o.type} {o.truncated:.2f} {o.occluded:d} {o.alpha:.6f} "
                        + " ".join(f"{v:.4f}" for v in o.bbox) + " "
                        + " ".join(f"{v:.4f}" for v in o.dimensions) + " "
                        + " ".join(f"{v:.4f}" for v in o.location)
                        + f" {o.rotation_y:.6f} {o.score if o.score is not None else 1.0:.6f}\n")
    return out


def format_table(metrics: Mapping[str, float], classes: Sequence[str]) -> str:
    """A printable easy/moderate/hard table of the R40 and R11 values in ``metrics``."""
    lines = []
    for name in classes:
        keys = sorted({k.split("/")[1] for k in metrics if k.startswith(f"{name}/")})
        for m in keys:
            for rname in ("R11", "R40"):
                vals = [metrics.get(f"{name}/{m}/{d}/{rname}", math.nan) for d in DIFFICULTIES]
                lines.append(f"{name:<12} {m:<10} {rname}: " + " ".join(f"{v:6.2f}" for v in vals))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# the dataset hook
# ---------------------------------------------------------------------------------------------------
def _calib_and_size(dataset, fid: str) -> tuple[KittiCalib, tuple[int, int]]:
    from ..datasets.kitti import read_calib

    base = Path(dataset.dir)
    calib = read_calib(base / "calib" / f"{fid}.txt")
    return calib, image_size_of(base / "image_2" / f"{fid}.png") or DEFAULT_IMAGE_SIZE


def _rows(dataset, det, fid: str) -> list[KittiObject]:
    calib, size = _calib_and_size(dataset, fid)
    return detections_to_kitti(det.boxes.tensor.detach().cpu().double().numpy(),
                               det.scores.detach().cpu().double().numpy(), det.labels.detach().cpu().numpy(),
                               dataset.class_names, calib, size)


def _check_count(dataset, results: Sequence) -> None:
    if len(results) != len(dataset):
        raise ValueError(f"KITTI evaluation: {len(results)} results for {len(dataset)} frames of {dataset.dir}")


def dataset_detections(dataset, results: Sequence) -> dict[str, list[KittiObject]]:
    """KITTI result rows per frame id of ``results`` (one Detections per frame of ``dataset``, LiDAR frame)."""
    _check_count(dataset, results)
    return {fid: _rows(dataset, det, fid) for fid, det in zip(dataset.frame_ids, results)}


def evaluate_dataset(dataset, results: Sequence, metrics: Sequence[str] = METRICS,
                     overlap_sets: Sequence[str] = ("strict", "loose"), compute_aos: bool = True) -> dict[str, float]:
    """The KITTI metric of ``results`` on a :class:`~pointwin.datasets.kitti.KittiDataset` (its ``evaluate``).

    Ground truth: each frame's whole ``label_2`` file (DontCare and neighbouring classes included), so the
    official ignore rules apply whatever ``class_names`` keeps. Detections are projected into the image with
    the frame's ``P2`` (image size from ``image_2/<id>.png`` when present, else 1242 x 375) for their image box,
    the difficulty height rule and AOS.
    """
    from ..datasets.kitti import read_label

    _check_count(dataset, results)
    gts, dts = [], []
    for fid, det in zip(dataset.frame_ids, results):
        label_path = Path(dataset.dir) / "label_2" / f"{fid}.txt"
        if not label_path.is_file():
            raise FileNotFoundError(f"{label_path}: KITTI evaluation needs the frame's label_2 file")
        gts.append(read_label(label_path))
        dts.append(_rows(dataset, det, fid))
    m, _ = evaluate_kitti(gts, dts, classes=tuple(dataset.class_names), metrics=metrics, overlap_sets=overlap_sets,
                          compute_aos=compute_aos, frame_ids=list(dataset.frame_ids))
    return m


def evaluate_folders(label_dir: str | os.PathLike, result_dir: str | os.PathLike,
                     frame_ids: Sequence[str] | str | os.PathLike | None = None,
                     classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"), **kwargs) -> dict[str, float]:
    """The KITTI metric of a folder of result files (``<frame>.txt``, 16 fields) against ``label_2`` files.

    Frames: ``frame_ids`` (a list, or an ``ImageSets/*.txt`` file) where a missing result file means no
    detections; else, as the official tool does, the frames that have a result file. ``kwargs`` go to
    :func:`evaluate_kitti`.
    """
    from ..datasets.kitti import read_label

    label_dir, result_dir = Path(label_dir), Path(result_dir)
    for d, what in ((label_dir, "label folder"), (result_dir, "result folder")):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: KITTI {what} not found (expected a folder of <frame>.txt files)")
    if isinstance(frame_ids, (str, os.PathLike)):
        path = Path(frame_ids)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: frame list not found (expected one frame id per line)")
        frame_ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    ids = list(frame_ids) if frame_ids is not None else sorted(p.stem for p in result_dir.glob("*.txt"))
    if not ids:
        raise ValueError(f"{result_dir}: no result files (<frame>.txt) and no frame list given")
    missing = [f for f in ids if not (label_dir / f"{f}.txt").is_file()]
    if missing:
        raise FileNotFoundError(f"{label_dir}: no label file for {len(missing)} frame(s), first {missing[0]}.txt")
    gts = [read_label(label_dir / f"{f}.txt") for f in ids]
    dts = [read_label(result_dir / f"{f}.txt") if (result_dir / f"{f}.txt").is_file() else [] for f in ids]
    m, _ = evaluate_kitti(gts, dts, classes=classes, frame_ids=ids, **kwargs)
    return m
