"""KITTI object detection: raw velodyne ``.bin`` scans, ``label_2`` labels and ``calib`` files.

For quick checks on real data. Labels are camera-frame boxes (rectified camera 0 coordinates):
``location`` is the bottom centre, ``dimensions`` are (height, width, length) and ``rotation_y`` turns
the object about the camera's y axis (pointing down). They are converted to pointwin boxes in the
LiDAR frame with the frame's own calibration::

    p_rect = R0_rect @ Tr_velo_to_cam @ p_velo        (homogeneous, 4 x 4 each)

so the gravity centre is ``inv(R0_rect @ Tr_velo_to_cam) @ (location - (0, h/2, 0))`` and the heading
is the object's +x axis ``(cos ry, 0, -sin ry)`` carried into the LiDAR frame (about ``-ry - pi/2``).
"DontCare" rows are dropped.

Folder layout (either the object-detection release or a flat folder)::

    root/[training/]velodyne/000000.bin   root/[training/]label_2/000000.txt   root/[training/]calib/000000.txt
    root/ImageSets/{train,val,test,trainval}.txt   (optional frame lists)
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, PointwinWarning, did_you_mean
from ..structures import Boxes3D, Sample
from ._raycast import points_in_boxes_np
from .base import DATASETS, PointDataset, atomic_write_json, read_raw_points

KITTI_CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
CHANNELS = ("x", "y", "z", "intensity")
# KITTI difficulty levels: (min 2-D box height px, max occlusion level, max truncation)
_DIFFICULTY = ((40.0, 0, 0.15), (25.0, 1, 0.30), (25.0, 2, 0.50))


@dataclass
class KittiCalib:
    """A frame's calibration: projection matrices (3, 4) and the two 4 x 4 transforms used for boxes."""

    P2: np.ndarray
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray

    @property
    def velo_to_rect(self) -> np.ndarray:
        """(4, 4) LiDAR -> rectified camera."""
        return self.R0_rect @ self.Tr_velo_to_cam

    def rect_to_lidar(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) rectified-camera points -> LiDAR frame (float64)."""
        pts = np.asarray(points, np.float64).reshape(-1, 3)
        hom = np.concatenate([pts, np.ones((len(pts), 1))], 1)
        return np.linalg.solve(self.velo_to_rect, hom.T).T[:, :3]

    def lidar_to_rect(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, np.float64).reshape(-1, 3)
        return (pts @ self.velo_to_rect[:3, :3].T) + self.velo_to_rect[:3, 3]


def read_calib(path: str | os.PathLike) -> KittiCalib:
    """Parse a KITTI object ``calib/*.txt`` (keys P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo)."""
    path = Path(path)
    values: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise DataError(f"{path}:{lineno}: expected 'key: numbers', got {line!r}", path=path, line=lineno)
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()], np.float64)
        except ValueError:
            raise DataError(f"{path}:{lineno}: {key.strip()} has a non-numeric value", path=path, line=lineno,
                            key=key.strip()) from None

    def need(key: str, n: int) -> np.ndarray:
        if key not in values:
            raise DataError(f"{path}: missing {key} (found {sorted(values)})", path=path, key=key)
        if values[key].size != n:
            raise DataError(f"{path}: {key} must have {n} numbers, got {values[key].size}", path=path, key=key)
        return values[key]

    p2 = need("P2", 12).reshape(3, 4)
    r0 = np.eye(4)
    r0[:3, :3] = need("R0_rect", 9).reshape(3, 3)
    tr = np.eye(4)
    tr[:3] = need("Tr_velo_to_cam", 12).reshape(3, 4)
    return KittiCalib(P2=p2, R0_rect=r0, Tr_velo_to_cam=tr)


@dataclass
class KittiObject:
    """One ``label_2`` row (15 fields, a 16th score for detection results)."""

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: tuple[float, float, float, float]
    dimensions: tuple[float, float, float]  # height, width, length (m)
    location: tuple[float, float, float]  # bottom centre, rectified camera frame (m)
    rotation_y: float
    score: float | None = None

    @property
    def difficulty(self) -> int:
        """0 easy, 1 moderate, 2 hard, -1 none of them (KITTI's definitions)."""
        height = self.bbox[3] - self.bbox[1]
        for level, (min_h, max_occ, max_trunc) in enumerate(_DIFFICULTY):
            if height >= min_h and self.occluded <= max_occ and self.truncated <= max_trunc:
                return level
        return -1


def read_label(path: str | os.PathLike, unknown: list[tuple[str, int, str]] | None = None) -> list[KittiObject]:
    """Parse a ``label_2/*.txt`` file; rows need 15 fields (16 with a score).

    A row whose class is neither a KITTI class nor ``DontCare`` (a typo such as ``Pedestrain``) is kept
    (no dataset class matches it, so it is dropped later); it is appended to ``unknown`` as
    ``(file, line, class)`` when a list is given, else a :class:`~pointwin.errors.PointwinWarning` names it.
    """
    path = Path(path)
    objs = []
    found: list[tuple[str, int, str]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) not in (15, 16):
            raise DataError(f"{path}:{lineno}: a KITTI label row has 15 fields (16 with score), got {len(f)}",
                            path=path, line=lineno)
        try:
            v = [float(x) for x in f[1:]]
        except ValueError:
            raise DataError(f"{path}:{lineno}: non-numeric field in {line!r}", path=path, line=lineno) from None
        if f[0] not in KITTI_CLASSES and f[0] != "DontCare":
            found.append((str(path), lineno, f[0]))
        objs.append(KittiObject(type=f[0], truncated=v[0], occluded=int(v[1]), alpha=v[2], bbox=tuple(v[3:7]),
                                dimensions=tuple(v[7:10]), location=tuple(v[10:13]), rotation_y=v[13],
                                score=v[14] if len(v) == 15 else None))
    if unknown is not None:
        unknown.extend(found)
    elif found:
        warnings.warn(_unknown_class_message(found), PointwinWarning, stacklevel=2)
    return objs


def _unknown_class_message(found: list[tuple[str, int, str]]) -> str:
    counts = Counter(name for _, _, name in found)
    names = ", ".join(f"{n!r} x{c}{did_you_mean(n, KITTI_CLASSES)}" for n, c in counts.items())
    files = sorted({p for p, _, _ in found})
    first = f"{found[0][0]}:{found[0][1]}"
    return (f"{len(found)} KITTI label row(s) in {len(files)} file(s) have an unknown class and are dropped: "
            f"{names}; first at {first} (KITTI classes: {', '.join(KITTI_CLASSES)}, DontCare)")


def read_velodyne(path: str | os.PathLike) -> np.ndarray:
    """float32 (N, 4) x, y, z, reflectance from a raw velodyne ``.bin``."""
    return read_raw_points(path, 4, np.float32, CHANNELS)


def camera_boxes_to_lidar(objects: Sequence[KittiObject], calib: KittiCalib) -> np.ndarray:
    """float64 (M, 7) pointwin boxes (x, y, z, dx=length, dy=width, dz=height, yaw) in the LiDAR frame."""
    if not objects:
        return np.zeros((0, 7))
    hwl = np.array([o.dimensions for o in objects], np.float64)
    loc = np.array([o.location for o in objects], np.float64)
    ry = np.array([o.rotation_y for o in objects], np.float64)
    centre_rect = loc - np.stack([np.zeros_like(ry), hwl[:, 0] / 2, np.zeros_like(ry)], 1)  # camera y points down
    centre = calib.rect_to_lidar(centre_rect)
    heading_rect = np.stack([np.cos(ry), np.zeros_like(ry), -np.sin(ry)], 1)
    rot_inv = np.linalg.inv(calib.velo_to_rect[:3, :3])
    heading = heading_rect @ rot_inv.T
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    return np.concatenate([centre, hwl[:, [2, 1, 0]], yaw[:, None]], 1)


def lidar_boxes_to_camera(boxes: np.ndarray, calib: KittiCalib) -> np.ndarray:
    """Inverse of :func:`camera_boxes_to_lidar`: (M, 7) rows (x, y, z bottom centre, h, w, l, rotation_y)."""
    b = np.atleast_2d(np.asarray(boxes, np.float64))
    centre = calib.lidar_to_rect(b[:, :3])
    loc = centre + np.stack([np.zeros(len(b)), b[:, 5] / 2, np.zeros(len(b))], 1)
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))], 1) @ calib.velo_to_rect[:3, :3].T
    ry = np.arctan2(-heading[:, 2], heading[:, 0])
    return np.concatenate([loc, b[:, [5, 4, 3]], ry[:, None]], 1)


def _find_split_dir(root: Path, split: str | None) -> Path:
    sub = "testing" if split == "test" else "training"
    for cand in (root / sub, root):
        if (cand / "velodyne").is_dir():
            return cand
    raise FileNotFoundError(f"{root}: no velodyne/ folder (looked in {root / sub} and {root})")


@DATASETS.register()
class KittiDataset(PointDataset):
    """KITTI frames read straight from the release files.

    Args:
        root: folder with ``velodyne/``, ``label_2/``, ``calib/`` (or their ``training``/``testing`` parent).
        split: name of an ``ImageSets/<split>.txt`` list; None uses every scan in ``velodyne/``.
        class_names: classes kept as labelled boxes (others, and DontCare, are dropped).
        frame_ids: explicit frame list (overrides ``split``'s list).
        transforms, aug_seed: see :class:`pointwin.datasets.base.PointDataset`.

    ``meta`` holds per-box ``difficulty`` (0/1/2/-1), ``truncated``, ``occluded``, ``alpha``, ``bbox`` and
    ``num_lidar_pts`` is not given (KITTI does not annotate it).
    """

    channels = CHANNELS

    def __init__(self, root: str | os.PathLike, split: str | None = None,
                 class_names: Sequence[str] = ("Car", "Pedestrian", "Cyclist"), frame_ids: Sequence[str] | None = None,
                 transforms: Any = None, aug_seed: int = 0) -> None:
        super().__init__(transforms, aug_seed)
        self.root = Path(root)
        self.dir = _find_split_dir(self.root, split)
        self.class_names = tuple(class_names)
        unknown = [c for c in self.class_names if c not in KITTI_CLASSES]
        if unknown:
            raise ValueError(f"KittiDataset: unknown class name(s) {unknown}; KITTI classes are {KITTI_CLASSES}")
        if frame_ids is None:
            list_file = self.root / "ImageSets" / f"{split}.txt"
            if split is not None and list_file.is_file():
                frame_ids = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
            else:
                frame_ids = sorted(p.stem for p in (self.dir / "velodyne").glob("*.bin"))
        self.frame_ids = list(frame_ids)
        self.has_labels = (self.dir / "label_2").is_dir()
        #: (file, line, class) of label rows with an unknown class; None: warn per file as they are read
        self.unknown_labels: list[tuple[str, int, str]] | None = None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def get_sample(self, index: int) -> Sample:
        fid = self.frame_ids[index]
        points = read_velodyne(self.dir / "velodyne" / f"{fid}.bin")
        boxes = labels = None
        meta: dict[str, Any] = {}
        if self.has_labels:
            calib = read_calib(self.dir / "calib" / f"{fid}.txt")
            objs = [o for o in read_label(self.dir / "label_2" / f"{fid}.txt", self.unknown_labels)
                    if o.type in self.class_names]
            arr = camera_boxes_to_lidar(objs, calib).astype(np.float32)
            boxes = Boxes3D(torch.from_numpy(arr.reshape(-1, 7)))
            labels = torch.tensor([self.class_names.index(o.type) for o in objs], dtype=torch.long)
            meta = {"difficulty": [o.difficulty for o in objs], "truncated": [o.truncated for o in objs],
                    "occluded": [o.occluded for o in objs], "alpha": [o.alpha for o in objs],
                    "bbox": [list(o.bbox) for o in objs]}
        return Sample(points=torch.from_numpy(points), channels=CHANNELS, frame_id=fid, boxes=boxes, labels=labels,
                      meta=meta)

    def evaluate(self, results: Sequence, **kwargs) -> dict[str, float]:
        """The official KITTI metric of ``results`` (one Detections per frame, LiDAR frame, labels indexing
        ``class_names``) against the frames' whole ``label_2`` files: keys
        ``"<Class>/<bbox|bev|3d|aos>@<iou>/<easy|moderate|hard>/<R11|R40>"`` and
        ``"mAP/<metric>@strict/moderate/<R11|R40>"``, in percent (see :mod:`pointwin.evaluation.kitti`)."""
        from ..evaluation.kitti import evaluate_dataset

        return evaluate_dataset(self, results, **kwargs)

    def format_results(self, results: Sequence, path: str | os.PathLike) -> Path:
        """Write ``results`` as KITTI result files ``<path>/<frame_id>.txt`` (16 fields, the score last)."""
        from ..evaluation.kitti import dataset_detections, write_kitti_results

        return write_kitti_results(dataset_detections(self, results), path)


def create_kitti_infos(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                       split: str | None = None, progress: bool = True) -> dict[str, Path]:
    """Write pointwin info files (JSON, see :mod:`pointwin.datasets.base`) for KITTI.

    One ``kitti_infos_<split>.json`` per ``ImageSets/<split>.txt`` list found (train, val, trainval,
    test), or one ``kitti_infos_all.json`` over every scan when there are no lists (or for
    ``split="all"``). Points stay where they are (paths are relative to ``out_dir``). Every labelled
    class except DontCare is kept, with ``num_lidar_pts`` (points inside each box) and the KITTI
    difficulty in ``meta``; :class:`~pointwin.datasets.base.InfoDataset` picks classes when reading.
    """
    from tqdm import tqdm

    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    if split is not None:
        splits = [split]
    else:
        splits = [s for s in ("train", "val", "trainval", "test") if (root / "ImageSets" / f"{s}.txt").is_file()]
        splits = splits or ["all"]
    written = {}
    for sp in splits:
        ds = KittiDataset(root, split=None if sp == "all" else sp, class_names=KITTI_CLASSES)
        frames = []
        ds.unknown_labels = []
        for i in tqdm(range(len(ds)), desc=f"kitti {sp}", disable=not progress):
            sample = ds.get_sample(i)
            velo = ds.dir / "velodyne" / f"{ds.frame_ids[i]}.bin"
            frame = {"frame_id": sample.frame_id, "points_path": Path(os.path.relpath(velo, out)).as_posix(),
                     "num_points": len(sample.points)}
            if sample.boxes is not None:
                boxes = sample.boxes.tensor.numpy()
                counts = points_in_boxes_np(sample.points.numpy(), boxes).sum(1) if len(boxes) else np.zeros(0)
                frame["boxes"] = boxes.tolist()
                frame["labels"] = [KITTI_CLASSES[k] for k in sample.labels.tolist()]
                frame["meta"] = {**sample.meta, "num_lidar_pts": [int(c) for c in counts]}
            frames.append(frame)
        if ds.unknown_labels:
            warnings.warn(f"kitti {sp}: " + _unknown_class_message(ds.unknown_labels), PointwinWarning, stacklevel=2)
        path = out / f"kitti_infos_{sp}.json"
        atomic_write_json(path, {"format": "pointwin.infos", "version": 1, "dataset": "kitti", "split": sp,
                                 "class_names": list(KITTI_CLASSES), "channels": list(CHANNELS), "frames": frames})
        written[sp] = path
    return written


def yaw_from_rotation_y(ry: float) -> float:
    """The usual approximation of the LiDAR yaw of a KITTI box (exact when the sensors are axis-aligned)."""
    return math.atan2(math.sin(-ry - math.pi / 2), math.cos(-ry - math.pi / 2))
