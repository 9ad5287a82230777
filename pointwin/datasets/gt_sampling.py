"""Ground-truth sampling ("copy-paste"): a database of labelled objects cut from a dataset, pasted into
other frames with bird's-eye collision checks.

Database folder (no pickle)::

    <db>/gt_database.json    {"format": "pointwin.gt_database", "version": 1, "channels": [...],
                              "class_names": [...], "objects": [{"class": "Car", "path": "points/....npy",
                              "box": [x, y, z, dx, dy, dz, yaw(, vx, vy)], "num_points": 37,
                              "frame_id": "...", "ground": [g0, gx, gy] (optional), "meta": {...}}, ...]}
    <db>/points/<frame_id>_<k>_<class>.npy   float32 (n, C): the object's points minus the box centre
    <db>/frames/<frame_id>.json              per-frame records (what makes an interrupted build resumable)

Pasting keeps each object where it was recorded (same sensor, same range and viewing angle). When
both the database entry and the frame carry a ground plane (``meta["ground"] = (g0, gx, gy)`` meaning
z = g0 + gx x + gy y, as synthetic scenes do), the object is moved vertically to stand on the frame's
ground. Scene points inside a pasted box are removed before the object's points are added.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..structures import Boxes3D, Sample
from ._geometry import bev_overlap
from ._raycast import points_in_boxes_np
from .base import PER_BOX_META_KEYS, atomic_write_json, read_json, save_points
from .transforms import TRANSFORMS, RandomState, as_numpy_rng

DB_FORMAT = "pointwin.gt_database"
DB_VERSION = 1


def _points_in_boxes(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(M, N) bool, the same test as :func:`pointwin.ops.points_in_boxes` (numba on the CPU for float32)."""
    if points.dtype == torch.float32 and boxes.dtype == torch.float32 and points.device.type == "cpu":
        return torch.from_numpy(points_in_boxes_np(points.numpy(), boxes.numpy()))
    from ..ops.boxes import points_in_boxes

    return points_in_boxes(points, boxes)


def build_gt_database(dataset: Any, out_dir: str | os.PathLike, class_names: Sequence[str] | None = None,
                      min_points: int = 1, progress: bool = True) -> Path:
    """Cut every labelled object of ``dataset`` (its untransformed ``get_sample``) into ``out_dir``.

    Args:
        dataset: a :class:`~pointwin.datasets.base.PointDataset` with ``class_names``.
        out_dir: database folder (created). Frames already recorded there are skipped (resumable).
        class_names: classes to keep (default: all of the dataset's).
        min_points: objects with fewer points inside their box are not stored.

    Returns:
        the path of ``gt_database.json``.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    names = tuple(dataset.class_names)
    keep_names = set(class_names) if class_names is not None else set(names)
    objects: list[dict[str, Any]] = []
    channels = None
    for i in tqdm(range(len(dataset)), desc="gt database", disable=not progress):
        sample = dataset.get_sample(i)
        channels = channels or list(sample.channels)
        if list(sample.channels) != channels:
            raise ValueError(f"build_gt_database: frame {sample.frame_id} has channels {sample.channels}, "
                             f"expected {channels}")
        safe_id = sample.frame_id.replace("/", "_")
        record = out / "frames" / f"{safe_id}.json"
        if record.exists():
            objects.extend(read_json(record))
            continue
        entries = []
        if sample.boxes is not None and len(sample.boxes):
            inside = _points_in_boxes(sample.points, sample.boxes.tensor)
            for k in range(len(sample.boxes)):
                name = names[int(sample.labels[k])]
                n = int(inside[k].sum())
                if name not in keep_names or n < min_points:
                    continue
                box = sample.boxes.tensor[k].double()
                pts = sample.points[inside[k]].double().clone()
                pts[:, :3] -= box[:3]
                rel = Path("points") / f"{safe_id}_{k}_{name}.npy"
                save_points(out / rel, pts.float().numpy())
                meta = {key: sample.meta[key][k] for key in PER_BOX_META_KEYS
                        if isinstance(sample.meta.get(key), list) and len(sample.meta[key]) == len(sample.boxes)}
                meta["num_lidar_pts"] = n
                entry = {"class": name, "path": rel.as_posix(), "box": box.tolist(), "num_points": n,
                         "frame_id": sample.frame_id, "meta": meta}
                if "ground" in sample.meta:
                    entry["ground"] = [float(v) for v in sample.meta["ground"]]
                entries.append(entry)
        atomic_write_json(record, entries)
        objects.extend(entries)
    path = out / "gt_database.json"
    atomic_write_json(path, {"format": DB_FORMAT, "version": DB_VERSION, "channels": channels or [],
                             "class_names": list(names), "objects": objects})
    return path


def read_gt_database(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "gt_database.json"
    db = read_json(path)
    if not isinstance(db, dict) or db.get("format") != DB_FORMAT or db.get("version") != DB_VERSION:
        raise DataError(f"{path}: not a pointwin GT database version {DB_VERSION} (key 'format': {DB_FORMAT!r})")
    for i, obj in enumerate(db.get("objects", [])):
        for key in ("class", "path", "box", "num_points"):
            if key not in obj:
                raise DataError(f"{path}: objects[{i}] has no key {key!r}", path=path, key=key)
    db["_root"] = path.parent
    return db


@TRANSFORMS.register()
class GTSampling:
    """Paste database objects until each class has ``sample_groups[class]`` boxes (when it can).

    Args:
        db_path: the database folder or its ``gt_database.json``.
        class_names: the dataset's class names (label indices of pasted boxes follow this order).
        sample_groups: target number of boxes per class after pasting, e.g. ``{"Car": 15, "Pedestrian": 8}``.
        min_points: skip database objects with fewer points (an int, or per class).
        filter_difficulty: skip objects whose ``meta["difficulty"]`` is in this list (KITTI: ``[-1]``).
        point_labels: per-point label given to pasted points per class when the frame has point labels
            (default -1, the ignore index).
        margin: metres added to lengths and widths for the collision test.
    """

    def __init__(self, db_path: str | os.PathLike, class_names: Sequence[str], sample_groups: Mapping[str, int],
                 min_points: int | Mapping[str, int] = 5, filter_difficulty: Sequence[int] = (),
                 point_labels: Mapping[str, int] | None = None, margin: float = 0.0) -> None:
        self.db = read_gt_database(db_path)
        self.root: Path = self.db["_root"]
        self.class_names = tuple(class_names)
        unknown = [c for c in sample_groups if c not in self.class_names]
        if unknown:
            raise ValueError(f"GTSampling.sample_groups names unknown class(es) {unknown}; "
                             f"class_names are {self.class_names}")
        self.sample_groups = {c: int(n) for c, n in sample_groups.items()}
        self.point_labels = dict(point_labels or {})
        self.margin = float(margin)
        bad_diff = set(filter_difficulty)
        self.pools: dict[str, list[dict[str, Any]]] = {c: [] for c in self.sample_groups}
        for obj in self.db["objects"]:
            c = obj["class"]
            if c not in self.pools:
                continue
            need = min_points.get(c, 1) if isinstance(min_points, Mapping) else min_points
            if obj["num_points"] < need or obj.get("meta", {}).get("difficulty") in bad_diff:
                continue
            self.pools[c].append(obj)

    def __repr__(self) -> str:
        sizes = {c: len(p) for c, p in self.pools.items()}
        return f"GTSampling(groups={self.sample_groups}, pool sizes={sizes})"

    def _placed_box(self, obj: dict[str, Any], sample: Sample, width: int) -> np.ndarray:
        box = np.zeros(width)
        src = np.asarray(obj["box"], np.float64)
        box[: min(width, len(src))] = src[:width]
        if "ground" in obj and "ground" in sample.meta:
            g0, gx, gy = (float(v) for v in sample.meta["ground"])
            box[2] = g0 + gx * box[0] + gy * box[1] + box[5] / 2  # stand on this frame's ground
        return box

    def __call__(self, sample: Sample, rng: RandomState) -> Sample:
        rng = as_numpy_rng(rng)
        if sample.boxes is None or not self.sample_groups:
            return sample
        if list(sample.channels) != list(self.db["channels"]):
            raise ValueError(f"GTSampling: frame {sample.frame_id} has channels {sample.channels} but the database "
                             f"at {self.root} stores {self.db['channels']}")
        width = sample.boxes.tensor.shape[1]
        occupied = sample.boxes.tensor[:, :7].double().numpy()
        labels = sample.labels if sample.labels is not None else torch.zeros(len(sample.boxes), dtype=torch.long)
        chosen: list[tuple[str, dict[str, Any], np.ndarray]] = []
        for cls, target in self.sample_groups.items():
            pool = self.pools[cls]
            need = target - int((labels == self.class_names.index(cls)).sum())
            if need <= 0 or not pool:
                continue
            idx = rng.choice(len(pool), size=min(need, len(pool)), replace=False)
            cand = np.stack([self._placed_box(pool[i], sample, width) for i in idx])
            hits_existing = bev_overlap(cand[:, :7], occupied, margin=self.margin).any(1)
            accepted: list[int] = []
            for j in range(len(cand)):
                if hits_existing[j]:
                    continue
                if accepted and bev_overlap(cand[j:j + 1, :7], cand[accepted, :7], margin=self.margin).any():
                    continue
                accepted.append(j)
            if accepted:
                occupied = np.concatenate([occupied, cand[accepted, :7]])
                chosen.extend((cls, pool[idx[j]], cand[j]) for j in accepted)
        if not chosen:
            return sample

        new_boxes = torch.from_numpy(np.stack([b for _, _, b in chosen])).to(sample.boxes.tensor.dtype)
        outside = ~_points_in_boxes(sample.points, new_boxes).any(0)
        pieces = [sample.points[outside]]
        label_pieces = None if sample.point_labels is None else [sample.point_labels[outside]]
        for cls, obj, box in chosen:
            path = self.root / obj["path"]
            pts = np.load(path, allow_pickle=False)
            if pts.ndim != 2 or pts.shape[1] != sample.points.shape[1]:
                raise DataError(f"{path}: expected ({obj['num_points']}, {sample.points.shape[1]}) points, "
                                 f"got {pts.shape}")
            pts = torch.from_numpy(pts).double()
            pts[:, :3] += torch.from_numpy(box[:3])
            pieces.append(pts.to(sample.points.dtype))
            if label_pieces is not None:
                label_pieces.append(torch.full((len(pts),), self.point_labels.get(cls, -1),
                                               dtype=sample.point_labels.dtype))
        meta = dict(sample.meta)
        n_old = len(sample.boxes)
        for key in PER_BOX_META_KEYS:
            if isinstance(meta.get(key), list) and len(meta[key]) == n_old:
                meta[key] = list(meta[key]) + [obj.get("meta", {}).get(key) for _, obj, _ in chosen]
        if "num_lidar_pts" in meta:  # the pasted points are exactly the recorded ones
            meta["num_lidar_pts"][n_old:] = [int(obj["num_points"]) for _, obj, _ in chosen]
        new_labels = torch.tensor([self.class_names.index(c) for c, _, _ in chosen], dtype=labels.dtype)
        return dataclasses.replace(
            sample, points=torch.cat(pieces), boxes=Boxes3D(torch.cat([sample.boxes.tensor, new_boxes])),
            labels=torch.cat([labels, new_labels]),
            point_labels=None if label_pieces is None else torch.cat(label_pieces), meta=meta)


def create_kitti_gt_database(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                             split: str | None = None, min_points: int = 1, progress: bool = True) -> Path:
    """The GT-sampling database of a KITTI release: ``<out_dir>/kitti_gt_database`` (what ``configs/kitti`` read).

    Objects are cut from the ``train`` split (``ImageSets/train.txt``) when that list exists, else from every
    scan under ``velodyne/`` (``split`` overrides). Every labelled class except DontCare is stored, with its
    KITTI difficulty, truncation, occlusion, alpha and image box in ``meta`` (GTSampling's
    ``filter_difficulty: [-1]`` drops the objects outside the three levels). Resumable like
    :func:`build_gt_database`.
    """
    from .kitti import KITTI_CLASSES, KittiDataset

    root = Path(root)
    if split is None and (root / "ImageSets" / "train.txt").is_file():
        split = "train"
    dataset = KittiDataset(root, split=split, class_names=KITTI_CLASSES)
    out = Path(out_dir) if out_dir is not None else root
    return build_gt_database(dataset, out / "kitti_gt_database", min_points=min_points, progress=progress)
