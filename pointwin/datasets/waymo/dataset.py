"""Dataset over converted Waymo frames (see :mod:`pointwin.datasets.waymo.convert`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ...structures import Boxes3D, Sample
from ..base import DATASETS, PointDataset

__all__ = ["WAYMO_SEG_CLASSES", "WaymoDataset"]

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
            raise ValueError(f"{path}: expected a JSON list of frame infos, got {type(self.infos).__name__}")
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
            raise KeyError(f"frame {info['frame_id']}: channels {missing} not among the stored {stored}")
        path = self.root / info["lidar_path"]
        pts = np.load(path, allow_pickle=False)
        if pts.ndim != 2 or pts.shape[1] != len(stored):
            raise ValueError(f"{path}: expected (N, {len(stored)}) points, got shape {pts.shape}")
        point_labels = None
        if self.with_segmentation:
            if not info.get("seg_path"):
                raise KeyError(f"frame {info['frame_id']} has no segmentation labels (seg_path is empty)")
            seg = np.load(self.root / info["seg_path"], allow_pickle=False)
            if seg.shape != (len(pts), 2):
                raise ValueError(f"{info['seg_path']}: expected ({len(pts)}, 2) labels, got {seg.shape}")
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
