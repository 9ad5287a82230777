"""nuScenes detection metrics: mAP over centre distances, TP errors (ATE, ASE, AOE, AVE, AAE) and NDS.

The definition of the nuScenes devkit (``nuscenes.eval.detection``) with its ``detection_cvpr_2019``
configuration, computed on flat arrays:

* boxes are filtered per class by their xy distance to the ego vehicle (``class_range``), ground
  truths without any lidar or radar point are dropped, and bicycles / motorcycles whose centre lies
  in a bicycle rack are dropped (when the racks are given);
* per class and distance threshold (0.5, 1, 2, 4 m): predictions sorted by descending score (ties:
  later box first) are matched greedily to the nearest free ground truth of their sample (xy centre
  distance, strictly below the threshold); precision is interpolated at 101 recalls; AP is the mean
  of ``max(precision - 0.1, 0) / 0.9`` over recalls above 0.1;
* TP errors at the 2 m threshold: translation (xy), scale (1 - aligned 3D IoU), orientation (yaw
  difference, period pi for barriers), velocity (xy) and attribute (1 - accuracy) errors, each a
  running mean over the matches, read at the recalls 0.11 .. max recall; 1 when the max recall is
  below 0.11; undefined (NaN, left out of the class mean) for the traffic-cone attribute, velocity and
  orientation, and the barrier attribute and velocity;
* NDS = (5 mAP + sum over the five errors of max(0, 1 - mean error)) / 10.

Matching is one numba loop per class and threshold; everything else is numpy.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from ..errors import EvaluationError
from ..fileio import write_json

DETECTION_CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle",
                     "traffic_cone", "barrier")
ATTRIBUTE_NAMES = ("pedestrian.moving", "pedestrian.sitting_lying_down", "pedestrian.standing", "cycle.with_rider",
                   "cycle.without_rider", "vehicle.moving", "vehicle.parked", "vehicle.stopped")
TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
TP_METRIC_SHORT = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE",
                   "attr_err": "mAAE"}
# TP errors that are undefined for a class (the devkit sets them to NaN)
_UNDEFINED_TP = {"traffic_cone": ("attr_err", "vel_err", "orient_err"), "barrier": ("attr_err", "vel_err")}
_NELEM = 101


@dataclass(frozen=True)
class DetectionConfig:
    """Evaluation settings; the defaults are the official ``detection_cvpr_2019`` values."""

    class_range: dict = field(default_factory=lambda: {
        "car": 50.0, "truck": 50.0, "bus": 50.0, "trailer": 50.0, "construction_vehicle": 50.0,
        "pedestrian": 40.0, "motorcycle": 40.0, "bicycle": 40.0, "traffic_cone": 30.0, "barrier": 30.0})
    dist_ths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    dist_th_tp: float = 2.0
    min_recall: float = 0.1
    min_precision: float = 0.1
    max_boxes_per_sample: int = 500
    mean_ap_weight: float = 5.0


DETECTION_CVPR_2019 = DetectionConfig()


@dataclass
class NuScenesBoxes:
    """N boxes in the nuScenes global frame (ground truths or predictions) over many samples.

    Attributes:
        sample: int64 (N,) index into ``sample_tokens``.
        translation: float64 (N, 3) box centre (x, y, z) in metres.
        size: float64 (N, 3) (width, length, height) in metres (nuScenes order).
        rotation: float64 (N, 4) quaternion (w, x, y, z).
        velocity: float64 (N, 2) (vx, vy) in m/s (NaN allowed for predictions).
        labels: int64 (N,) index into :data:`DETECTION_CLASSES`.
        scores: float64 (N,) confidences (predictions), or None for ground truths.
        attributes: int64 (N,) index into :data:`ATTRIBUTE_NAMES`, -1 for none.
        ego_dist: float64 (N,) xy distance from the ego vehicle (for the class range filter).
        num_pts: int64 (N,) lidar + radar points in the box (ground truths), -1 when unknown.
        sample_tokens: the sample token of each sample index.
    """

    sample: np.ndarray
    translation: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    velocity: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    attributes: np.ndarray | None = None
    ego_dist: np.ndarray | None = None
    num_pts: np.ndarray | None = None
    sample_tokens: list = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(np.asarray(self.labels).reshape(-1))
        self.labels = _arr("labels", self.labels, (n,), np.int64)
        self.sample = _arr("sample", self.sample, (n,), np.int64)
        self.translation = _arr("translation", self.translation, (n, 3), np.float64)
        self.size = _arr("size", self.size, (n, 3), np.float64)
        self.rotation = _arr("rotation", self.rotation, (n, 4), np.float64)
        self.velocity = _arr("velocity", self.velocity, (n, 2), np.float64)
        if self.scores is not None:
            self.scores = _arr("scores", self.scores, (n,), np.float64)
            if np.isnan(self.scores).any():
                raise ValueError("NuScenesBoxes.scores holds NaN")
        self.attributes = _arr("attributes", np.full(n, -1) if self.attributes is None else self.attributes, (n,),
                               np.int64)
        if self.ego_dist is None:
            raise ValueError("NuScenesBoxes.ego_dist is required (xy distance of each box to the ego vehicle)")
        self.ego_dist = _arr("ego_dist", self.ego_dist, (n,), np.float64)
        self.num_pts = _arr("num_pts", np.full(n, -1) if self.num_pts is None else self.num_pts, (n,), np.int64)
        if n and (self.labels.min() < 0 or self.labels.max() >= len(DETECTION_CLASSES)):
            raise ValueError(f"NuScenesBoxes.labels must index DETECTION_CLASSES (0..{len(DETECTION_CLASSES) - 1})")
        if n and (self.attributes.min() < -1 or self.attributes.max() >= len(ATTRIBUTE_NAMES)):
            raise ValueError("NuScenesBoxes.attributes must index ATTRIBUTE_NAMES or be -1")
        if n and (self.size <= 0).any():
            raise ValueError("NuScenesBoxes.size must be > 0 (width, length, height)")

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, mask: np.ndarray) -> NuScenesBoxes:
        return NuScenesBoxes(self.sample[mask], self.translation[mask], self.size[mask], self.rotation[mask],
                             self.velocity[mask], self.labels[mask],
                             None if self.scores is None else self.scores[mask], self.attributes[mask],
                             self.ego_dist[mask], self.num_pts[mask], self.sample_tokens)


def _arr(name: str, x, shape: tuple[int, ...], dtype) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=dtype)
    if a.size == 0 and shape[0] == 0:
        return a.reshape(shape)
    if a.shape != shape:
        raise ValueError(f"NuScenesBoxes.{name} must have shape {shape}, got {a.shape}")
    return a


def quaternion_yaw(q: np.ndarray) -> np.ndarray:
    """(N,) yaw of quaternions (N, 4) (w, x, y, z): the heading of the rotated x axis in the xy plane."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2 * (x * y + w * z), 1 - 2 * (y * y + z * z))


def yaw_quaternion(yaw: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (w, x, y, z) of rotations by ``yaw`` about +z."""
    yaw = np.asarray(yaw, np.float64)
    return np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], -1)


def _angle_diff(x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    d = np.remainder(x - y + period / 2, period) - period / 2
    return np.where(d > math.pi, d - 2 * math.pi, d)


# ---- filtering -------------------------------------------------------------------------------------------------
def filter_boxes(boxes: NuScenesBoxes, cfg: DetectionConfig = DETECTION_CVPR_2019,
                 bike_racks: dict[int, np.ndarray] | None = None) -> NuScenesBoxes:
    """The devkit's ``filter_eval_boxes``: class range, boxes with 0 points, bicycles in bike racks.

    Args:
        bike_racks: optional ``{sample index: (R, 10) racks (x, y, z, w, l, h, qw, qx, qy, qz)}``.
    """
    ranges = np.array([cfg.class_range[c] for c in DETECTION_CLASSES])
    keep = boxes.ego_dist < ranges[boxes.labels]
    keep &= boxes.num_pts != 0
    if bike_racks:
        cycle = np.isin(boxes.labels, [DETECTION_CLASSES.index("bicycle"), DETECTION_CLASSES.index("motorcycle")])
        for s, racks in bike_racks.items():
            racks = np.asarray(racks, np.float64).reshape(-1, 10)
            idx = np.flatnonzero(keep & cycle & (boxes.sample == s))
            if len(idx) and len(racks):
                keep[idx[_centres_in_racks(boxes.translation[idx], racks)]] = False
    return boxes.select(keep)


def _centres_in_racks(centres: np.ndarray, racks: np.ndarray) -> np.ndarray:
    """(M,) bool: centre inside (or on the surface of) any rack box (devkit ``points_in_box``)."""
    inside = np.zeros(len(centres), bool)
    for r in racks:
        w, l, h = r[3:6]
        q = r[6:10] / np.linalg.norm(r[6:10])
        qw, qx, qy, qz = q
        rot = np.array([[1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
                        [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
                        [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)]])
        local = (centres - r[:3]) @ rot  # rows: coordinates along the box's x (length), y (width), z axes
        inside |= (np.abs(local[:, 0]) <= l / 2) & (np.abs(local[:, 1]) <= w / 2) & (np.abs(local[:, 2]) <= h / 2)
    return inside


# ---- matching and metric data ------------------------------------------------------------------------------------
@numba.njit(cache=True)
def _greedy_match(order, pred_sample, pred_xy, gt_start, gt_stop, gt_xy, dist_th):  # pragma: no cover - numba
    """For predictions in ``order``: the nearest free ground truth of the same sample if closer than dist_th."""
    taken = np.zeros(gt_xy.shape[0], dtype=np.bool_)
    match = np.full(order.shape[0], -1, dtype=np.int64)
    for k in range(order.shape[0]):
        i = order[k]
        s = pred_sample[i]
        best = np.inf
        best_j = -1
        for j in range(gt_start[s], gt_stop[s]):
            if taken[j]:
                continue
            dx = pred_xy[i, 0] - gt_xy[j, 0]
            dy = pred_xy[i, 1] - gt_xy[j, 1]
            d = np.sqrt(dx * dx + dy * dy)
            if d < best:
                best = d
                best_j = j
        if best < dist_th:
            taken[best_j] = True
            match[k] = best_j
    return match


@dataclass
class MetricData:
    """PR curve at 101 recalls and the TP errors along it (the devkit's ``DetectionMetricData``)."""

    recall: np.ndarray
    precision: np.ndarray
    confidence: np.ndarray
    errors: dict

    @classmethod
    def no_predictions(cls) -> MetricData:
        return cls(np.linspace(0, 1, _NELEM), np.zeros(_NELEM), np.zeros(_NELEM),
                   {m: np.ones(_NELEM) for m in TP_METRICS})

    @property
    def max_recall_ind(self) -> int:
        nz = np.flatnonzero(self.confidence)
        return int(nz[-1]) if len(nz) else 0


def _cummean(x: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(x)
    if not valid.any():
        return np.ones(len(x))
    sums = np.cumsum(np.where(valid, x, 0.0))
    counts = np.cumsum(valid)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts != 0)


def accumulate(gt: NuScenesBoxes, pred: NuScenesBoxes, class_index: int, dist_th: float) -> MetricData:
    """PR curve and TP errors of one class at one centre-distance threshold (filtered boxes)."""
    g = gt.select(gt.labels == class_index)
    npos = len(g)
    if npos == 0:
        return MetricData.no_predictions()
    p = pred.select(pred.labels == class_index)
    if len(p) == 0:
        return MetricData.no_predictions()
    # descending score; equal scores: the later box first (the devkit sorts (score, index) and reverses)
    order = np.lexsort((np.arange(len(p)), p.scores))[::-1].astype(np.int64)
    num_samples = int(max(g.sample.max(initial=-1), p.sample.max(initial=-1))) + 1
    gsort = np.argsort(g.sample, kind="stable")
    gs = g.sample[gsort]
    gt_start = np.searchsorted(gs, np.arange(num_samples), "left").astype(np.int64)
    gt_stop = np.searchsorted(gs, np.arange(num_samples), "right").astype(np.int64)
    match = _greedy_match(order, p.sample, np.ascontiguousarray(p.translation[:, :2]), gt_start, gt_stop,
                          np.ascontiguousarray(g.translation[gsort, :2]), float(dist_th))
    is_tp = match >= 0
    if not is_tp.any():
        return MetricData.no_predictions()
    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    conf = p.scores[order]
    prec = tp / (fp + tp)
    rec = tp / float(npos)
    rec_interp = np.linspace(0, 1, _NELEM)
    prec = np.interp(rec_interp, rec, prec, right=0)
    conf_i = np.interp(rec_interp, rec, conf, right=0)

    pi = order[is_tp]
    gj = gsort[match[is_tp]]
    name = DETECTION_CLASSES[class_index]
    errors = {
        "trans_err": np.linalg.norm(p.translation[pi, :2] - g.translation[gj, :2], axis=1),
        "vel_err": np.linalg.norm(p.velocity[pi] - g.velocity[gj], axis=1),
        "scale_err": 1 - _scale_iou(g.size[gj], p.size[pi]),
        "orient_err": np.abs(_angle_diff(quaternion_yaw(g.rotation[gj]), quaternion_yaw(p.rotation[pi]),
                                         math.pi if name == "barrier" else 2 * math.pi)),
        "attr_err": np.where(g.attributes[gj] < 0, np.nan, 1.0 - (g.attributes[gj] == p.attributes[pi])),
    }
    match_conf = conf[is_tp]
    for key in TP_METRICS:
        tmp = _cummean(errors[key])
        errors[key] = np.interp(conf_i[::-1], match_conf[::-1], tmp[::-1])[::-1]
    return MetricData(rec_interp, prec, conf_i, errors)


def _scale_iou(gt_size: np.ndarray, pred_size: np.ndarray) -> np.ndarray:
    inter = np.prod(np.minimum(gt_size, pred_size), axis=1)
    return inter / (np.prod(gt_size, axis=1) + np.prod(pred_size, axis=1) - inter)


def calc_ap(md: MetricData, min_recall: float, min_precision: float) -> float:
    prec = md.precision[round(100 * min_recall) + 1:] - min_precision
    return float(np.mean(np.clip(prec, 0, None))) / (1.0 - min_precision)


def calc_tp(md: MetricData, min_recall: float, metric: str) -> float:
    first = round(100 * min_recall) + 1
    last = md.max_recall_ind
    if last < first:
        return 1.0
    return float(np.mean(md.errors[metric][first:last + 1]))


# ---- the whole evaluation ----------------------------------------------------------------------------------------
def evaluate(pred: NuScenesBoxes, gt: NuScenesBoxes, cfg: DetectionConfig = DETECTION_CVPR_2019,
             bike_racks: dict[int, np.ndarray] | None = None, filtered: bool = False) -> dict:
    """nuScenes detection metrics of predictions against ground truths (same ``sample`` indexing).

    Args:
        bike_racks: optional racks per sample index for the bicycle filter (see :func:`filter_boxes`).
        filtered: the boxes were already filtered (skip :func:`filter_boxes`).

    Returns:
        ``{"mean_ap", "nd_score", "tp_errors": {metric: err}, "tp_scores", "mean_dist_aps": {class: ap},
        "label_aps": {class: {dist_th: ap}}, "label_tp_errors": {class: {metric: err}}}`` (devkit names).
    """
    if pred.scores is None:
        raise ValueError("evaluate: predictions need scores")
    if len(pred):
        per_sample = np.bincount(pred.sample)
        if per_sample.max() > cfg.max_boxes_per_sample:
            raise ValueError(f"evaluate: a sample has {per_sample.max()} predictions; at most "
                             f"{cfg.max_boxes_per_sample} are allowed")
    if not filtered:
        gt = filter_boxes(gt, cfg, bike_racks)
        pred = filter_boxes(pred, cfg, bike_racks)
    label_aps: dict = {}
    label_tp: dict = {}
    for ci, name in enumerate(DETECTION_CLASSES):
        label_aps[name] = {}
        for th in cfg.dist_ths:
            md = accumulate(gt, pred, ci, th)
            label_aps[name][th] = calc_ap(md, cfg.min_recall, cfg.min_precision)
            if th == cfg.dist_th_tp:
                md_tp = md
        if cfg.dist_th_tp not in cfg.dist_ths:
            md_tp = accumulate(gt, pred, ci, cfg.dist_th_tp)
        label_tp[name] = {m: (float("nan") if m in _UNDEFINED_TP.get(name, ()) else
                              calc_tp(md_tp, cfg.min_recall, m)) for m in TP_METRICS}
    mean_dist_aps = {c: float(np.mean(list(v.values()))) for c, v in label_aps.items()}
    mean_ap = float(np.mean(list(mean_dist_aps.values())))
    tp_errors = {m: float(np.nanmean([label_tp[c][m] for c in DETECTION_CLASSES])) for m in TP_METRICS}
    tp_scores = {m: max(0.0, 1.0 - e) for m, e in tp_errors.items()}
    nds = (cfg.mean_ap_weight * mean_ap + sum(tp_scores.values())) / (cfg.mean_ap_weight + len(tp_scores))
    return {"mean_ap": mean_ap, "nd_score": float(nds), "tp_errors": tp_errors, "tp_scores": tp_scores,
            "mean_dist_aps": mean_dist_aps, "label_aps": label_aps, "label_tp_errors": label_tp}


def format_table(result: dict) -> str:
    """The devkit's summary: mAP, the five mean errors, NDS, then a per-class table."""
    lines = [f"mAP: {result['mean_ap']:.4f}"]
    lines += [f"{TP_METRIC_SHORT[m]}: {result['tp_errors'][m]:.4f}" for m in TP_METRICS]
    lines.append(f"NDS: {result['nd_score']:.4f}")
    lines.append("")
    lines.append(f"{'Object Class':<22}{'AP':>7}{'ATE':>8}{'ASE':>8}{'AOE':>8}{'AVE':>8}{'AAE':>8}")
    for c in DETECTION_CLASSES:
        e = result["label_tp_errors"][c]
        lines.append(f"{c:<22}{result['mean_dist_aps'][c]:7.3f}"
                     + "".join(f"{e[m]:8.3f}" for m in TP_METRICS))
    return "\n".join(lines)


# ---- submission JSON -----------------------------------------------------------------------------------------------
def write_submission(path: str | os.PathLike, boxes: NuScenesBoxes, meta: dict | None = None) -> None:
    """Write predictions as the official results JSON (``{"meta": ..., "results": {token: [box, ...]}}``).

    Every sample token of ``boxes.sample_tokens`` gets an entry (possibly empty). Written atomically.
    """
    if boxes.scores is None:
        raise ValueError("write_submission: predictions need scores")
    if len(boxes) and boxes.sample.max() >= len(boxes.sample_tokens):
        raise ValueError("write_submission: boxes.sample indexes past boxes.sample_tokens")
    results: dict = {tok: [] for tok in boxes.sample_tokens}
    for i in range(len(boxes)):
        tok = boxes.sample_tokens[boxes.sample[i]]
        results[tok].append({
            "sample_token": tok,
            "translation": boxes.translation[i].tolist(),
            "size": boxes.size[i].tolist(),
            "rotation": boxes.rotation[i].tolist(),
            "velocity": boxes.velocity[i].tolist(),
            "detection_name": DETECTION_CLASSES[boxes.labels[i]],
            "detection_score": float(boxes.scores[i]),
            "attribute_name": ATTRIBUTE_NAMES[boxes.attributes[i]] if boxes.attributes[i] >= 0 else "",
        })
    meta = meta or {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                    "use_external": False}
    write_json(path, {"meta": meta, "results": results})


def read_submission(path: str | os.PathLike, ego_translation: dict[str, np.ndarray] | None = None,
                    sample_tokens: list[str] | None = None) -> tuple[NuScenesBoxes, dict]:
    """Read an official results JSON into :class:`NuScenesBoxes` (and its ``meta``).

    Args:
        ego_translation: ``{sample token: ego position (3,)}`` in the global frame to compute ``ego_dist``;
            without it ``ego_dist`` is 0 (no range filter possible).
        sample_tokens: fix the sample indexing (e.g. to that of the ground truth); unknown tokens are an error.
    """
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{path}: not valid JSON ({e})", path=path, line=e.lineno) from None
    if not isinstance(data, dict) or "results" not in data or not isinstance(data["results"], dict):
        raise EvaluationError(f"{path}: expected an object with a 'results' mapping of sample tokens to box lists",
                              path=path)
    tokens = list(sample_tokens) if sample_tokens is not None else list(data["results"])
    index = {t: i for i, t in enumerate(tokens)}
    rows = []
    for tok, lst in data["results"].items():
        if tok not in index:
            raise EvaluationError(f"{path}: sample token {tok!r} is not one of the evaluated samples", path=path,
                                  key=f"results[{tok!r}]")
        for k, b in enumerate(lst):
            try:
                name = b["detection_name"]
                attr = b.get("attribute_name", "")
                rows.append((index[tok], b["translation"], b["size"], b["rotation"], b.get("velocity", [0.0, 0.0]),
                             DETECTION_CLASSES.index(name), float(b["detection_score"]),
                             ATTRIBUTE_NAMES.index(attr) if attr else -1))
            except (KeyError, ValueError, TypeError) as e:
                raise EvaluationError(f"{path}: results[{tok!r}][{k}] is not a valid detection box ({e!r})",
                                      path=path, key=f"results[{tok!r}][{k}]") from None
            problem = _box_problem(rows[-1])
            if problem:
                raise EvaluationError(f"{path}: results[{tok!r}][{k}]: {problem}", path=path,
                                      key=f"results[{tok!r}][{k}]")
    n = len(rows)
    sample = np.array([r[0] for r in rows], np.int64)
    trans = np.array([r[1] for r in rows], np.float64).reshape(n, 3)
    ego = np.zeros((n, 3))
    if ego_translation is not None:
        for i in range(n):
            ego[i] = ego_translation[tokens[sample[i]]]
    boxes = NuScenesBoxes(sample, trans, np.array([r[2] for r in rows], np.float64).reshape(n, 3),
                          np.array([r[3] for r in rows], np.float64).reshape(n, 4),
                          np.array([r[4] for r in rows], np.float64).reshape(n, 2),
                          np.array([r[5] for r in rows], np.int64), np.array([r[6] for r in rows], np.float64),
                          np.array([r[7] for r in rows], np.int64),
                          np.hypot(trans[:, 0] - ego[:, 0], trans[:, 1] - ego[:, 1]), None, tokens)
    return boxes, data.get("meta", {})


def _box_problem(row: tuple) -> str:
    """What is wrong with one parsed submission box (translation, size, rotation, velocity, score), or ''."""
    _, trans, size, rot, vel, _, score, _ = row
    for name, value, n in (("translation", trans, 3), ("size", size, 3), ("rotation", rot, 4), ("velocity", vel, 2)):
        arr = np.asarray(value, np.float64).reshape(-1)
        if arr.size != n:
            return f"{name} must have {n} numbers, got {arr.size}"
        if name != "velocity" and not np.isfinite(arr).all():  # the devkit allows NaN velocity (unknown)
            return f"{name} {arr.tolist()} is not finite"
    if (np.asarray(size, np.float64) <= 0).any():
        return f"size (w, l, h) = {list(size)}; every size must be > 0"
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        return f"detection_score = {score}; scores must be finite numbers in [0, 1]"
    return ""


def from_eval_boxes(eval_boxes, sample_tokens: list[str] | None = None) -> NuScenesBoxes:
    """Convert a devkit ``EvalBoxes`` of ``DetectionBox`` (with ego_translation set) to arrays."""
    tokens = list(sample_tokens) if sample_tokens is not None else list(eval_boxes.sample_tokens)
    index = {t: i for i, t in enumerate(tokens)}
    rows = [(index[b.sample_token], b.translation, b.size, b.rotation, b.velocity,
             DETECTION_CLASSES.index(b.detection_name), b.detection_score,
             ATTRIBUTE_NAMES.index(b.attribute_name) if b.attribute_name else -1, b.ego_dist, b.num_pts)
            for tok in eval_boxes.sample_tokens for b in eval_boxes[tok]]
    n = len(rows)
    col = list(zip(*rows)) if rows else [[] for _ in range(10)]
    return NuScenesBoxes(np.array(col[0], np.int64), np.array(col[1], np.float64).reshape(n, 3),
                         np.array(col[2], np.float64).reshape(n, 3), np.array(col[3], np.float64).reshape(n, 4),
                         np.array(col[4], np.float64).reshape(n, 2), np.array(col[5], np.int64),
                         np.array(col[6], np.float64), np.array(col[7], np.int64), np.array(col[8], np.float64),
                         np.array(col[9], np.int64), tokens)


def evaluate_files(result_path: str | os.PathLike, dataroot: str | os.PathLike, version: str = "v1.0-trainval",
                   eval_set: str = "val", cfg: DetectionConfig = DETECTION_CVPR_2019) -> dict:
    """Evaluate a results JSON against the nuScenes tables under ``dataroot`` (needs nuscenes-devkit).

    Ground truth, ego poses and bicycle racks are read with the devkit's table loaders; the metrics are
    computed by :func:`evaluate`.
    """
    try:
        from nuscenes import NuScenes
        from nuscenes.eval.common.loaders import add_center_dist, load_gt
        from nuscenes.eval.detection.data_classes import DetectionBox
    except ImportError as e:
        raise ImportError("evaluate_files needs nuscenes-devkit (pip install 'pointwin[nuscenes]')") from e
    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    gt_eval = add_center_dist(nusc, load_gt(nusc, eval_set, DetectionBox, verbose=False))
    tokens = list(gt_eval.sample_tokens)
    ego = {}
    racks = {}
    for i, tok in enumerate(tokens):
        sample = nusc.get("sample", tok)
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego[tok] = np.asarray(nusc.get("ego_pose", sd["ego_pose_token"])["translation"], np.float64)
        recs = [nusc.get("sample_annotation", a) for a in sample["anns"]]
        rack = [r["translation"] + r["size"] + r["rotation"] for r in recs
                if r["category_name"] == "static_object.bicycle_rack"]
        if rack:
            racks[i] = np.asarray(rack, np.float64)
    pred, _ = read_submission(result_path, ego, tokens)
    missing = set(tokens) - set(json.loads(Path(result_path).read_text())["results"])
    if missing:
        raise EvaluationError(f"{result_path}: {len(missing)} samples of the {eval_set} split have no entry "
                         "(the devkit requires every sample)")
    return evaluate(pred, from_eval_boxes(gt_eval, tokens), cfg, bike_racks=racks)
