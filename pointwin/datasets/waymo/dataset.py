"""Dataset over converted Waymo frames (see :mod:`pointwin.datasets.waymo.convert`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ...errors import DataError
from ...structures import Boxes3D, Sample
from ..base import DATASETS, PointDataset

__all__ = ["WAYMO_SEG_CLASSES", "WAYMO_TYPES", "WaymoDataset"]

#: Waymo Label.Type of each class name used in the infos.
WAYMO_TYPES = {"Unknown": 0, "Vehicle": 1, "Pedestrian": 2, "Sign": 3, "Cyclist": 4}

# Waymo's 22 lidar segmentation classes (Segmentation.Type 1..22; 0 = TYPE_UNDEFINED is ignored).
WAYMO_SEG_CLASSES = ("car", "truck", "bus", "other_vehicle", "motorcyclist", "bicyclist", "pedestrian", "sign",
                     "traffic_light", "pole", "construction_cone", "bicycle", "motorcycle", "building", "vegetation",
                     "tree_trunk", "curb", "road", "lane_marker", "other_ground", "walkable", "sidewalk")


@DATASETS.register()
class WaymoDataset(PointDataset):
    """Frames of a converted Waymo split as :class:`~pointwin.structures.Sample`.

    Args:
        root: the converter's output folder (``lidar_path`` entries are relative to it).
        info_path: a JSON info list (default ``root/waymo_infos.json``).
        class_names: classes kept as boxes, by Waymo name ("Vehicle", "Pedestrian", "Cyclist", "Sign").
        channels: point channels to keep, by name, from x, y, z, intensity, elongation, nlz.
        drop_nlz_points: drop points flagged as inside a no-label zone.
        min_points_in_box: drop boxes with fewer lidar points (Waymo's evaluation ignores empty boxes).
        with_velocity: boxes (M, 9) with vx, vy instead of (M, 7).
        intensity_tanh: apply tanh to intensity (Waymo intensities are unbounded).
        with_segmentation: return ``point_labels`` = semantic class - 1 (indices into ``WAYMO_SEG_CLASSES``;
            -1 for undefined/unlabelled points); frames without labels raise.
        transforms, aug_seed: augmentations, see :class:`~pointwin.datasets.base.PointDataset`.
    """

    def __init__(self, root: str | os.PathLike, info_path: str | os.PathLike | None = None,
                 class_names: tuple[str, ...] = ("Vehicle", "Pedestrian", "Cyclist"),
                 channels: tuple[str, ...] = ("x", "y", "z", "intensity", "elongation"),
                 drop_nlz_points: bool = True, min_points_in_box: int = 1, with_velocity: bool = False,
                 intensity_tanh: bool = True, with_segmentation: bool = False, transforms=None,
                 aug_seed: int = 0) -> None:
        super().__init__(transforms, aug_seed)
        self.root = Path(root)
        path = Path(info_path) if info_path is not None else self.root / "waymo_infos.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run create_waymo_infos / merge_waymo_infos first")
        self.infos = json.loads(path.read_text())
        if not isinstance(self.infos, list):
            raise DataError(f"{path}: expected a JSON list of frame infos, got {type(self.infos).__name__}")
        self.class_names = tuple(class_names)
        self.channels = tuple(channels)
        self.drop_nlz_points, self.min_points_in_box = drop_nlz_points, min_points_in_box
        self.with_velocity, self.intensity_tanh = with_velocity, intensity_tanh
        self.with_segmentation = with_segmentation

    def __len__(self) -> int:
        return len(self.infos)

    def get_sample(self, index: int) -> Sample:
        info = self.infos[index]
        stored = tuple(info["channels"])
        missing = [c for c in self.channels if c not in stored]
        if missing:
            raise DataError(f"frame {info['frame_id']}: channels {missing} not among the stored {stored}")
        path = self.root / info["lidar_path"]
        from ..base import load_points

        pts = load_points(path, len(stored), stored)  # DataError naming the file and column on bad values
        point_labels = None
        if self.with_segmentation:
            if not info.get("seg_path"):
                raise DataError(f"frame {info['frame_id']} has no segmentation labels (seg_path is empty)")
            seg = np.load(self.root / info["seg_path"], allow_pickle=False)
            if seg.shape != (len(pts), 2):
                raise DataError(f"{info['seg_path']}: expected ({len(pts)}, 2) labels, got {seg.shape}")
            semantic = seg[:, 1].astype(np.int64)
            point_labels = np.where(semantic > 0, semantic - 1, -1)
        if self.drop_nlz_points:
            keep_pts = pts[:, stored.index("nlz")] <= 0
            pts = pts[keep_pts]
            if point_labels is not None:
                point_labels = point_labels[keep_pts]
        if self.intensity_tanh:
            pts = pts.copy()
            pts[:, stored.index("intensity")] = np.tanh(pts[:, stored.index("intensity")])
        pts = pts[:, [stored.index(c) for c in self.channels]]
        annos = info["annos"]
        boxes = np.asarray(annos["boxes"], dtype=np.float32).reshape(-1, 9)
        keep = np.array([n in self.class_names for n in annos["names"]], dtype=bool)
        keep &= np.asarray(annos["num_lidar_points_in_box"], dtype=np.int64) >= self.min_points_in_box
        labels = np.array([self.class_names.index(n) for n, k in zip(annos["names"], keep) if k], dtype=np.int64)
        boxes = boxes[keep] if self.with_velocity else boxes[keep, :7]
        return Sample(points=torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)), channels=self.channels,
                      frame_id=info["frame_id"], boxes=Boxes3D(torch.from_numpy(boxes)),
                      labels=torch.from_numpy(labels),
                      point_labels=None if point_labels is None else torch.from_numpy(point_labels),
                      meta={"timestamp_micros": info["timestamp_micros"], "context_name": info["context_name"],
                            "difficulty": [d for d, k in zip(annos["difficulty"], keep) if k],
                            "num_lidar_pts": [d for d, k in zip(annos["num_lidar_points_in_box"], keep) if k],
                            "pose": info["pose"]})

    # ---- evaluation -------------------------------------------------------------------------------
    def _objects(self, results: Sequence | None):
        from ...evaluation.waymo import WaymoObjects

        if results is not None and len(results) != len(self.infos):
            raise ValueError(f"WaymoDataset.evaluate: {len(results)} results for {len(self.infos)} frames")
        gt = {"frame": [], "boxes": [], "types": [], "num_points": [], "difficulty": []}
        pred = {"frame": [], "boxes": [], "types": [], "scores": []}
        for i, info in enumerate(self.infos):
            a = info["annos"]
            n = len(a["names"])
            gt["frame"] += [i] * n
            gt["boxes"].append(np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 9)[:, :7])
            gt["types"] += [WAYMO_TYPES.get(name, 0) for name in a["names"]]
            gt["num_points"] += list(a["num_lidar_points_in_box"])
            gt["difficulty"] += list(a["difficulty"])
            if results is None:
                continue
            det = results[i]
            types = [WAYMO_TYPES.get(self.class_names[int(k)], 0) for k in det.labels.tolist()]
            pred["frame"] += [i] * len(types)
            pred["boxes"].append(det.boxes.tensor[:, :7].detach().cpu().double().numpy())
            pred["types"] += types
            pred["scores"].append(det.scores.detach().cpu().float().numpy().clip(0.0, 1.0))
        keys = [(info["context_name"], info["timestamp_micros"]) for info in self.infos]
        gt_objs = WaymoObjects(np.asarray(gt["frame"], np.int64), np.concatenate(gt["boxes"]) if gt["boxes"] else
                               np.zeros((0, 7)), np.asarray(gt["types"], np.int64), None,
                               np.asarray(gt["num_points"], np.int64), np.asarray(gt["difficulty"], np.int64),
                               frame_keys=keys)
        if results is None:
            return gt_objs, None
        pred_objs = WaymoObjects(np.asarray(pred["frame"], np.int64),
                                 np.concatenate(pred["boxes"]) if pred["boxes"] else np.zeros((0, 7)),
                                 np.asarray(pred["types"], np.int64),
                                 np.concatenate(pred["scores"]) if pred["scores"] else np.zeros(0), frame_keys=keys)
        return gt_objs, pred_objs

    def evaluate(self, results: Sequence, **kwargs) -> dict[str, float]:
        """Waymo AP/APH (LEVEL_1, LEVEL_2) of ``results`` (one Detections per frame, vehicle frame, labels
        indexing ``class_names``) against the infos' labels, in memory.

        Returns ``"<Class>/L1/mAP"``, ``"<Class>/L1/mAPH"``, ... for the dataset's classes and their means
        ``"mAP/L2"``, ``"mAPH/L2"`` (the leaderboard's main number).
        """
        from ...evaluation.waymo import evaluate as waymo_evaluate

        gt, pred = self._objects(results)
        res = waymo_evaluate(pred, gt, breakdowns=("OBJECT_TYPE",), **kwargs)
        out: dict[str, float] = {}
        for name in self.class_names:
            per = res.get(name.upper())
            if per is None:
                continue
            for level in ("L1", "L2"):
                for metric in ("mAP", "mAPH"):
                    out[f"{name}/{level}/{metric}"] = float(per[level][metric])
        for level in ("L1", "L2"):
            for metric in ("mAP", "mAPH"):
                vals = [out[f"{n}/{level}/{metric}"] for n in self.class_names if f"{n}/{level}/{metric}" in out]
                if vals:
                    out[f"{metric}/{level}"] = float(np.mean(vals))
        return out

    def format_results(self, results: Sequence, path: str | os.PathLike) -> Path:
        """Write ``results`` as an official ``metrics.Objects`` ``.bin`` submission at ``path``."""
        from ...evaluation.waymo import write_predictions

        _, pred = self._objects(results)
        names = [self.infos[f]["context_name"] for f in pred.frame]
        stamps = [self.infos[f]["timestamp_micros"] for f in pred.frame]
        write_predictions(path, pred.boxes, pred.types, pred.scores, names, stamps)
        return Path(path)
