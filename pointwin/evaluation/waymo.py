"""Waymo Open Dataset 3D detection metrics (AP / APH at LEVEL_1 and LEVEL_2) without TensorFlow.

Implements the definition of the official ``compute_detection_metrics_main`` tool (Waymo metrics
library, see :mod:`pointwin.evaluation.detection` for the matching and AP rules):

* classes VEHICLE (IoU 0.7), PEDESTRIAN (0.5), SIGN (0.5), CYCLIST (0.5); 7-DOF upright 3D IoU
  (IoU 0 when a box side is <= 1 cm or >= 1e6 m);
* ground truths with ``num_lidar_points_in_box <= 0`` are dropped; those without a human difficulty
  (unset / UNKNOWN) are LEVEL_2 with <= 5 points, else LEVEL_1;
* Hungarian matching per frame at each of the 101 score cut-offs 0.00 .. 1.00;
* breakdowns OBJECT_TYPE and RANGE ([0, 30), [30, 50), [50, inf) m from the origin, 3D distance of
  the box centre; predictions and ground truths are binned by their own centre and only match
  inside a bin, as in the library).

Frames are keyed by ``(context_name, camera_name, frame_timestamp_micros)`` like the official tool.
Predictions flagged ``overlap_with_nlz`` are never false positives (the tool cannot test no-label
zone polygons itself, neither does this module).

Checked against the official tool's documented output on its own fixtures (``fake_predictions.bin``,
``fake_ground_truths.bin``, see tests/test_eval_waymo.py): 28 of the 32 OBJECT_TYPE / RANGE values
agree to the printed 6 digits. VEHICLE (0.20968 vs 0.20828 L1 AP) and RANGE VEHICLE [30, 50) come out
higher here because of one prediction that is an exact copy of its ground truth with the heading
turned by pi: exact clipping gives IoU 1 (a TP), the official tool evidently does not match it (its
polygon clipping of two coincident rectangles); with that one prediction unmatched, all VEHICLE
values and the [30, 50) APH agree to every printed digit, and the [30, 50) AP is 0.27200 vs 0.27302
(L1), a remaining 1e-3 gap that is not explained. An independent reference (shapely polygons, a full
assignment per frame and cut-off) reproduces pointwin's counts exactly.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EvaluationError, PointwinWarning
from ..fileio import write_bytes
from .detection import (
    SCORE_CUTOFFS,
    candidate_pairs,
    cutoff_counts,
    heading_accuracy,
    match_counts,
    pair_iou,
    precision_recall,
    waymo_average_precision,
)

#: Label.Type values of the Waymo protos, and the classes evaluated (index = type).
CLASS_NAMES = ("UNKNOWN", "VEHICLE", "PEDESTRIAN", "SIGN", "CYCLIST")
#: IoU threshold per Label.Type, the official 3D detection configuration.
IOU_THRESHOLDS = (0.0, 0.7, 0.5, 0.5, 0.5)
RANGE_NAMES = ("[0, 30)", "[30, 50)", "[50, +inf)")
LEVEL_2_MAX_POINTS = 5
_MIN_BOX_DIM, _MAX_BOX_DIM = 1e-2, 1e6


@dataclass
class WaymoObjects:
    """Flat arrays of N objects (predictions or ground truths) over many frames.

    Attributes:
        frame: int64 (N,) frame index.
        boxes: float64 (N, 7) ``(x, y, z, length, width, height, heading)`` = pointwin ``(x, y, z, dx, dy, dz, yaw)``.
        types: int64 (N,) Label.Type (1 VEHICLE, 2 PEDESTRIAN, 3 SIGN, 4 CYCLIST; 0 is never evaluated).
        scores: float32 (N,) confidences (ground truths: 1).
        num_points: int64 (N,) lidar points in the box (ground truths), or None when unknown.
        difficulty: int64 (N,) detection difficulty (0 unset, 1 LEVEL_1, 2 LEVEL_2).
        overlap_nlz: bool (N,) prediction overlaps a no-label zone.
        frame_keys: optional names of the frames, indexed by ``frame``.
    """

    frame: np.ndarray
    boxes: np.ndarray
    types: np.ndarray
    scores: np.ndarray | None = None
    num_points: np.ndarray | None = None
    difficulty: np.ndarray | None = None
    overlap_nlz: np.ndarray | None = None
    frame_keys: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 7) if np.size(self.boxes) else np.zeros((0, 7))
        n = len(self.boxes)
        self.frame = _vector("frame", self.frame, n, np.int64)
        self.types = _vector("types", self.types, n, np.int64)
        self.scores = _vector("scores", np.ones(n) if self.scores is None else self.scores, n, np.float32)
        if self.num_points is not None:
            self.num_points = _vector("num_points", self.num_points, n, np.int64)
        self.difficulty = _vector("difficulty", np.zeros(n) if self.difficulty is None else self.difficulty, n,
                                  np.int64)
        self.overlap_nlz = _vector("overlap_nlz", np.zeros(n) if self.overlap_nlz is None else self.overlap_nlz, n,
                                   bool)
        if not np.isfinite(self.boxes).all():
            raise ValueError("WaymoObjects.boxes holds NaN or inf")
        if n and (self.boxes[:, 3:6] < 0).any():
            raise ValueError("WaymoObjects.boxes has a negative size (length, width, height must be >= 0)")

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, mask: np.ndarray) -> WaymoObjects:
        return WaymoObjects(self.frame[mask], self.boxes[mask], self.types[mask], self.scores[mask],
                            None if self.num_points is None else self.num_points[mask], self.difficulty[mask],
                            self.overlap_nlz[mask], self.frame_keys)


def _vector(name: str, x, n: int, dtype) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if arr.shape != (n,):
        raise ValueError(f"WaymoObjects.{name} must have shape ({n},) like the boxes, got {arr.shape}")
    return arr.astype(dtype, copy=False)


def ground_truth_levels(gt: WaymoObjects) -> tuple[np.ndarray, np.ndarray]:
    """(keep, level): drop boxes with no lidar point; unset difficulty -> LEVEL_2 if <= 5 points else LEVEL_1.

    Without ``num_points`` nothing is dropped and an unset difficulty means LEVEL_1.
    """
    if gt.num_points is None:
        keep = np.ones(len(gt), bool)
        default = np.ones(len(gt), np.int64)
    else:
        keep = gt.num_points > 0
        default = np.where(gt.num_points <= LEVEL_2_MAX_POINTS, 2, 1)
    level = np.where(gt.difficulty == 0, default, gt.difficulty)
    return keep, level


def upright_iou3d_pairs(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """(E,) 7-DOF upright 3D IoU of aligned box pairs, with the Waymo library's size rules."""
    iou = pair_iou(pred_boxes, gt_boxes, "3d")
    if len(iou) == 0:
        return iou
    dims = np.concatenate([pred_boxes[:, 3:6], gt_boxes[:, 3:6]], 1)
    valid = (dims > _MIN_BOX_DIM).all(1) & (dims < _MAX_BOX_DIM).all(1)
    return np.where(valid, np.clip(iou, 0.0, 1.0), 0.0)


def evaluate(pred: WaymoObjects, gt: WaymoObjects, breakdowns: tuple[str, ...] = ("OBJECT_TYPE", "RANGE"),
             iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS, levels: tuple[int, ...] = (1, 2),
             score_cutoffs: np.ndarray = SCORE_CUTOFFS, max_recall_delta: float = 0.05) -> dict:
    """Waymo AP/APH of predictions against ground truths held in memory.

    Returns:
        ``{"VEHICLE": {"L1": {"mAP": ap, "mAPH": aph}, "L2": {...}}, "PEDESTRIAN": ..., "SIGN": ...,
        "CYCLIST": ...}`` for OBJECT_TYPE, plus ``"RANGE": {"VEHICLE_[0, 30)": {"L1": ..., ...}, ...}``
        when the RANGE breakdown is requested.
    """
    for b in breakdowns:
        if b not in ("OBJECT_TYPE", "RANGE"):
            raise ValueError(f"unknown breakdown {b!r}; supported: OBJECT_TYPE, RANGE")
    keep, gt_level = ground_truth_levels(gt)
    gt = gt.select(keep)
    gt_level = gt_level[keep]
    num_types = len(CLASS_NAMES)
    thr = np.asarray(iou_thresholds, np.float64)
    if thr.shape != (num_types,):
        raise ValueError(f"iou_thresholds must give one value per Label.Type {CLASS_NAMES}, got {iou_thresholds}")
    p_valid = (pred.types >= 1) & (pred.types < num_types)
    g_valid = (gt.types >= 1) & (gt.types < num_types)

    # Candidate pairs: same frame, same type, boxes that can overlap; then their exact IoU.
    ep, eg = candidate_pairs(np.where(p_valid, pred.frame * num_types + pred.types, -1),
                             np.where(g_valid, gt.frame * num_types + gt.types, -2), pred.boxes, gt.boxes)
    iou = upright_iou3d_pairs(pred.boxes[ep], gt.boxes[eg])
    ok = iou >= thr[pred.types[ep]]
    ok &= iou > 0  # an IoU of 0 never matches (quantised weight 0)
    ep, eg, iou = ep[ok], eg[ok], iou[ok]
    ha = heading_accuracy(pred.boxes[ep, 6], gt.boxes[eg, 6])
    active = cutoff_counts(pred.scores, score_cutoffs)
    names = [f"L{lv}" for lv in levels]
    result: dict = {}

    def metrics(counts, shard_names):
        out = {}
        for li, lname in enumerate(names):
            p, p_ha, r = precision_recall(counts, li)
            for si, sname in enumerate(shard_names):
                out.setdefault(sname, {})[lname] = {
                    "mAP": waymo_average_precision(p[si], r[si], max_recall_delta),
                    "mAPH": waymo_average_precision(p_ha[si], r[si], max_recall_delta)}
        return out

    if "OBJECT_TYPE" in breakdowns:
        counts = match_counts(num_types - 1, len(score_cutoffs), levels, np.where(p_valid, pred.types - 1, -1),
                              active, pred.overlap_nlz, np.where(g_valid, gt.types - 1, -1), gt_level, ep, eg, iou,
                              ha)
        result.update(metrics(counts, CLASS_NAMES[1:]))
    if "RANGE" in breakdowns:
        p_shard = np.where(p_valid, 3 * (pred.types - 1) + _range_bin(pred.boxes), -1)
        g_shard = np.where(g_valid, 3 * (gt.types - 1) + _range_bin(gt.boxes), -1)
        same = p_shard[ep] == g_shard[eg]
        counts = match_counts(3 * (num_types - 1), len(score_cutoffs), levels, p_shard, active, pred.overlap_nlz,
                              g_shard, gt_level, ep[same], eg[same], iou[same], ha[same])
        result["RANGE"] = metrics(counts, [f"{c}_{r}" for c in CLASS_NAMES[1:] for r in RANGE_NAMES])
    return result


def _range_bin(boxes: np.ndarray) -> np.ndarray:
    dist = np.sqrt(boxes[:, 0] ** 2 + boxes[:, 1] ** 2 + boxes[:, 2] ** 2)
    return np.where(dist < 30.0, 0, np.where(dist < 50.0, 1, 2))


def objects_from_detections(results, label_to_type, frame_keys: list | None = None) -> WaymoObjects:
    """Predictions as :class:`WaymoObjects` from one :class:`pointwin.structures.Detections` per frame.

    Args:
        results: per frame, Detections in the Waymo vehicle frame (boxes ``(x, y, z, dx, dy, dz, yaw)``).
        label_to_type: Label.Type of each label index, e.g. ``(1, 2, 4)`` for (Vehicle, Pedestrian, Cyclist);
            labels mapped to 0 are dropped.
        frame_keys: optional frame names (e.g. ``(context_name, 0, timestamp_micros)``), one per frame.
    """
    lut = np.asarray(label_to_type, np.int64)
    frames, boxes, types, scores = [], [], [], []
    for i, det in enumerate(results):
        b = det.boxes.tensor.detach().cpu().double().numpy()[:, :7]
        lab = det.labels.detach().cpu().numpy().astype(np.int64)
        if len(lab) and (lab.min() < 0 or lab.max() >= len(lut)):
            raise ValueError(f"results[{i}]: label {lab.max()} has no entry in label_to_type (size {len(lut)})")
        t = lut[lab]
        keep = t > 0
        frames.append(np.full(int(keep.sum()), i, np.int64))
        boxes.append(b[keep])
        types.append(t[keep])
        scores.append(det.scores.detach().cpu().float().numpy()[keep])
    if frame_keys is not None and len(frame_keys) != len(frames):
        raise ValueError(f"{len(frame_keys)} frame_keys for {len(frames)} frames")
    cat = [np.concatenate(x) if x else np.zeros(0) for x in (frames, types, scores)]
    return WaymoObjects(cat[0], np.concatenate(boxes) if boxes else np.zeros((0, 7)), cat[1], cat[2],
                        frame_keys=list(frame_keys or []))


# ---- protobuf .bin files ----------------------------------------------------------------------------------
def _frame_key(obj) -> tuple:
    return (obj.context_name, int(obj.camera_name), int(obj.frame_timestamp_micros))


def objects_from_proto(objects, frame_index: dict | None = None, path: str | os.PathLike | None = None,
                       role: str | None = None) -> WaymoObjects:
    """Arrays from a ``metrics.Objects`` message; ``frame_index`` (key -> int) is extended in place.

    Use the same ``frame_index`` for predictions and ground truths so that their frames line up. Every box
    must be finite with length, width and height > 0; with ``role="predictions"`` every score must be a
    finite number in [0, 1]. The first object breaking a rule raises :class:`EvaluationError` naming
    ``path``, the object's index and its frame.
    """
    frame_index = {} if frame_index is None else frame_index
    objs = objects.objects
    n = len(objs)
    frame = np.empty(n, np.int64)
    boxes = np.empty((n, 7), np.float64)
    types = np.empty(n, np.int64)
    scores = np.empty(n, np.float32)
    npts = np.empty(n, np.int64)
    diff = np.empty(n, np.int64)
    nlz = np.empty(n, bool)
    for i, o in enumerate(objs):
        key = _frame_key(o)
        f = frame_index.get(key)
        if f is None:
            f = frame_index[key] = len(frame_index)
        frame[i] = f
        lab = o.object
        b = lab.box
        boxes[i] = (b.center_x, b.center_y, b.center_z, b.length, b.width, b.height, b.heading)
        types[i] = lab.type
        scores[i] = o.score
        npts[i] = lab.num_lidar_points_in_box
        diff[i] = lab.detection_difficulty_level
        nlz[i] = o.overlap_with_nlz
    _check_objects(objs, boxes, scores if role == "predictions" else None, path or "<Objects message>",
                   role or "objects")
    keys = [None] * len(frame_index)
    for k, v in frame_index.items():
        keys[v] = k
    return WaymoObjects(frame, boxes, types, scores, npts, diff, nlz, keys)


def _check_objects(objs, boxes: np.ndarray, scores: np.ndarray | None, path, role: str) -> None:
    """EvaluationError for the first object with a non-finite box, a size <= 0 or (predictions) a bad score."""
    bad_box = ~np.isfinite(boxes).all(1)
    bad_size = ~bad_box & (boxes[:, 3:6] <= 0).any(1)
    bad_score = np.zeros(len(boxes), bool) if scores is None else ~(np.isfinite(scores) & (scores >= 0)
                                                                      & (scores <= 1))
    bad = bad_box | bad_size | bad_score
    if not bad.any():
        return
    i = int(np.argmax(bad))
    key = _frame_key(objs[i])
    if bad_box[i]:
        what = f"box {boxes[i].tolist()} is not finite (expected finite center, size and heading)"
    elif bad_size[i]:
        what = (f"box size (length, width, height) = {boxes[i, 3:6].tolist()}; every size must be > 0")
    else:
        what = f"score = {float(scores[i])}; scores must be finite numbers in [0, 1]"
    counts = [f"{int(m.sum())} {name}" for m, name in ((bad_box, "non-finite box(es)"),
                                                       (bad_size, "size(s) <= 0"), (bad_score, "bad score(s)"))
              if m.any()]
    raise EvaluationError(f"{role}: object {i} (frame context_name={key[0]!r}, camera_name={key[1]}, "
                          f"timestamp_micros={key[2]}): {what} ({', '.join(counts)} of {len(boxes)} objects)",
                          path=path, key=f"objects[{i}]")


def read_objects(path: str | os.PathLike, frame_index: dict | None = None, role: str | None = None) -> WaymoObjects:
    """Read a ``metrics.Objects`` ``.bin`` file (official ``gt.bin`` or a submission).

    ``role="predictions"`` also checks the scores (see :func:`objects_from_proto`).
    """
    from google.protobuf.message import DecodeError

    from pointwin.datasets.waymo.proto import Objects

    data = Path(path).read_bytes()
    msg = Objects()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise EvaluationError(f"{path}: not a waymo.open_dataset.Objects protobuf ({e})", path=path) from None
    return objects_from_proto(msg, frame_index, path, role)


def input_warnings(pred: WaymoObjects, gt: WaymoObjects, pred_path: str | os.PathLike = "predictions",
                   gt_path: str | os.PathLike = "ground truth") -> list[str]:
    """What is accepted but probably wrong: prediction frames without ground truth, duplicated ground truth.

    Frames are compared by index, so ``pred`` and ``gt`` must share one frame index (as in
    :func:`evaluate_files`).
    """
    out = []
    p_frames, g_frames = np.unique(pred.frame), np.unique(gt.frame)
    orphan = np.setdiff1d(p_frames, g_frames)
    if len(orphan):
        first = pred.frame_keys[int(orphan[0])] if len(pred.frame_keys) > orphan[0] else int(orphan[0])
        out.append(f"{pred_path}: {len(p_frames) - len(orphan)} of {len(p_frames)} prediction frames match a "
                   f"ground-truth frame of {gt_path}; the predictions of the other {len(orphan)} "
                   f"(first: {first}) are all false positives")
    if len(gt):
        rows = np.concatenate([gt.frame[:, None].astype(np.float64), gt.types[:, None].astype(np.float64),
                               gt.boxes], 1)
        _, first_idx, counts = np.unique(rows, axis=0, return_index=True, return_counts=True)
        dup = int((counts - 1).sum())
        if dup:
            i = int(first_idx[np.argmax(counts > 1)])
            key = gt.frame_keys[int(gt.frame[i])] if len(gt.frame_keys) > gt.frame[i] else int(gt.frame[i])
            out.append(f"{gt_path}: {dup} ground-truth object(s) repeat another one exactly (same frame, type and "
                       f"box; first: object {i} in frame {key}); each copy counts as a separate ground truth")
    return out


def evaluate_files(pred_path: str | os.PathLike, gt_path: str | os.PathLike, **kwargs) -> dict:
    """Waymo AP/APH of a predictions ``.bin`` against a ground-truth ``.bin``; see :func:`evaluate`.

    Bad objects raise :class:`EvaluationError` (see :func:`objects_from_proto`); prediction frames without
    ground truth and duplicated ground truth are reported as :class:`~pointwin.errors.PointwinWarning`.
    """
    index: dict = {}
    gt = read_objects(gt_path, index, role="ground truth")
    pred = read_objects(pred_path, index, role="predictions")
    if len(gt) == 0:
        raise EvaluationError(f"{gt_path}: no ground-truth objects", path=gt_path)
    for msg in input_warnings(pred, gt, pred_path, gt_path):
        warnings.warn(msg, PointwinWarning, stacklevel=2)
    return evaluate(pred, gt, **kwargs)


def write_predictions(path: str | os.PathLike, boxes, types, scores, context_names, timestamps_micros,
                      overlap_nlz=None) -> None:
    """Write predictions as a ``metrics.Objects`` ``.bin`` submission file (atomically: temp file, rename).

    Args:
        boxes: float (N, 7) ``(x, y, z, length, width, height, heading)`` in the vehicle frame.
        types: int (N,) Label.Type; scores: float (N,) in [0, 1].
        context_names: (N,) str ``Context.name``; timestamps_micros: int (N,) ``Frame.timestamp_micros``.
        overlap_nlz: optional bool (N,).
    """
    from pointwin.datasets.waymo.proto import Objects

    objs = WaymoObjects(np.zeros(len(np.atleast_2d(boxes)) if np.size(boxes) else 0), boxes, types, scores,
                        overlap_nlz=overlap_nlz)
    n = len(objs)
    names = list(context_names)
    stamps = np.asarray(timestamps_micros, np.int64).reshape(-1)
    if len(names) != n or stamps.shape != (n,):
        raise ValueError(f"context_names ({len(names)}) and timestamps_micros ({stamps.shape[0]}) must have one "
                         f"entry per box ({n})")
    if n and ((objs.scores < 0) | (objs.scores > 1)).any():
        raise ValueError("scores must lie in [0, 1] (the Waymo score cut-offs are 0.00 .. 1.00)")
    msg = Objects()
    for i in range(n):
        o = msg.objects.add()
        x, y, z, length, width, height, heading = objs.boxes[i].tolist()
        b = o.object.box
        b.center_x, b.center_y, b.center_z = x, y, z
        b.length, b.width, b.height, b.heading = length, width, height, heading
        o.object.type = int(objs.types[i])
        o.score = float(objs.scores[i])
        o.context_name = str(names[i])
        o.frame_timestamp_micros = int(stamps[i])
        if objs.overlap_nlz[i]:
            o.overlap_with_nlz = True
    write_bytes(path, msg.SerializeToString())


def format_table(result: dict) -> str:
    """The metrics as lines in the official tool's naming, e.g. ``OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1: [mAP ..]``."""
    lines = []

    def row(name, levels):
        for lname, m in levels.items():
            lines.append(f"{name}_LEVEL_{lname[1:]}: [mAP {m['mAP']:.6g}] [mAPH {m['mAPH']:.6g}]")

    for cls in CLASS_NAMES[1:]:
        if cls in result:
            row(f"OBJECT_TYPE_TYPE_{cls}", result[cls])
    for shard, levels in result.get("RANGE", {}).items():
        row(f"RANGE_TYPE_{shard}", levels)
    # The leaderboard's headline number averages the classes except SIGN ("ALL_NS").
    main = ("VEHICLE", "PEDESTRIAN", "CYCLIST")
    if all(c in result for c in main):
        for lname in result["VEHICLE"]:
            ap = np.mean([result[c][lname]["mAP"] for c in main])
            aph = np.mean([result[c][lname]["mAPH"] for c in main])
            lines.append(f"MEAN_VEHICLE_PEDESTRIAN_CYCLIST_LEVEL_{lname[1:]}: [mAP {ap:.6g}] [mAPH {aph:.6g}]")
    return "\n".join(lines)
