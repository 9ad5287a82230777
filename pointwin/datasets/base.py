"""Dataset base class, the on-disk info format, and file I/O (no pickle anywhere).

On-disk format (version 1), written by the converters and read by :class:`InfoDataset`::

    <root>/<name>_infos_<split>.json
      {"format": "pointwin.infos", "version": 1, "dataset": "synthetic", "split": "train",
       "class_names": ["Car", ...], "channels": ["x", "y", "z", "intensity"],
       "frames": [{"frame_id": "...", "points_path": "points/train/0001.npy",   # relative to the info file
                   "num_points": 51234,                                        # optional check
                   "point_labels_path": "...",                                 # optional
                   "boxes": [[x, y, z, dx, dy, dz, yaw(, vx, vy)], ...],       # optional (unlabelled)
                   "labels": ["Car", ...],                                     # class names, one per box
                   "meta": {"num_lidar_pts": [...], ...}}, ...]}

Points are ``.npy`` (any float dtype, (N, C)) or ``.bin`` (raw float32, C = len(channels)).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..fileio import atomic_write
from ..registry import Registry
from ..structures import Boxes3D, Sample

DATASETS = Registry("dataset")

# meta keys holding one entry per box: transforms that drop, add or reorder boxes keep them aligned
PER_BOX_META_KEYS = ("num_lidar_pts", "num_radar_pts", "difficulty", "truncated", "occluded", "alpha", "bbox",
                     "tokens", "instance_tokens", "attributes", "names", "gt_names")

INFO_FORMAT = "pointwin.infos"
INFO_VERSION = 1


# ---------------------------------------------------------------------------------------------------
# file I/O
# ---------------------------------------------------------------------------------------------------
def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as compact JSON to a temporary file next to ``path``, then rename it over ``path``."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})", path=path, line=e.lineno) from None


def save_points(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array atomically: ``.npy`` (dtype and shape kept, no pickle) or ``.bin`` (raw float32)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if path.suffix not in (".npy", ".bin"):
        raise ValueError(f"{path}: point files must end in .npy or .bin")
    with atomic_write(path, "wb") as f:
        if path.suffix == ".npy":
            np.save(f, array, allow_pickle=False)
        else:
            f.write(array.astype(np.float32).tobytes())


#: Largest plausible |x|, |y|, |z| of a LiDAR point in metres. Beyond it the file was read with the wrong
#: dtype or column count (a float64 file read as float32 gives values like 3.7e19).
MAX_ABS_COORD = 1e4


def read_raw_points(path: str | os.PathLike, num_channels: int, dtype: Any = np.float32,
                    channels: Sequence[str] | None = None, max_abs_coord: float | None = MAX_ABS_COORD) -> np.ndarray:
    """A raw point file (``.bin``: ``num_channels`` values of ``dtype`` per point, no header) as (N, C) ``dtype``.

    Raises :class:`~pointwin.errors.DataError` naming the file when its size in bytes is not a multiple of
    ``itemsize * num_channels``, and (see :func:`check_points`) when a value is non-finite or a coordinate
    is implausible.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: point file not found")
    dt = np.dtype(dtype)
    row = dt.itemsize * int(num_channels)
    size = path.stat().st_size
    if size % row:
        names = f" ({', '.join(channels)})" if channels else ""
        raise DataError(f"size {size} bytes is not a multiple of {row} bytes per point ({num_channels} x "
                        f"{dt.name}{names}); {size % row} trailing byte(s): the file is truncated or has another "
                        f"layout", path=path, offset=size - size % row)
    arr = np.fromfile(path, dtype=dt).reshape(-1, num_channels)
    check_points(arr, path, channels, max_abs_coord, dtype_note=f"{dt.name} x {num_channels}")
    return arr


def check_points(arr: np.ndarray, path: str | os.PathLike, channels: Sequence[str] | None = None,
                 max_abs_coord: float | None = MAX_ABS_COORD, dtype_note: str | None = None) -> None:
    """Every value finite and ``|x|, |y|, |z| <= max_abs_coord``; else a DataError naming file, row and column."""
    if arr.size == 0:
        return
    names = list(channels) if channels is not None else ["x", "y", "z"] + [f"column {i}" for i in
                                                                         range(3, arr.shape[1])]
    finite = np.isfinite(arr)
    if not finite.all():
        r, c = (int(v) for v in np.argwhere(~finite)[0])
        count = int((~finite).sum())
        raise DataError(f"column {names[c]!r} of point {r} is {arr[r, c]} ({count} non-finite value(s) in the "
                        f"file); expected finite numbers", path=path, key=names[c])
    if max_abs_coord is not None:
        big = np.abs(arr[:, :3]) > max_abs_coord
        if big.any():
            r, c = (int(v) for v in np.argwhere(big)[0])
            read = f" read as {dtype_note}" if dtype_note else ""
            raise DataError(f"point {r} has {names[c]} = {float(arr[r, c]):.6g}, beyond the plausible "
                            f"+-{max_abs_coord:g} m ({int(big.any(1).sum())} such point(s)); the file{read} probably "
                            f"has another dtype (e.g. float64) or column count", path=path, key=names[c])


def load_points(path: str | os.PathLike, num_channels: int | None = None,
                channels: Sequence[str] | None = None) -> np.ndarray:
    """Read a ``.npy`` array or a raw float32 ``.bin`` file of ``num_channels`` columns as float32 (N, C).

    The values are checked by :func:`check_points`: finite, and for raw ``.bin`` files (whose dtype is
    only assumed) coordinates within +-1e4 m; errors are :class:`~pointwin.errors.DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: point file not found")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"not a readable .npy array ({e})", path=path) from None
        if arr.ndim != 2 or (num_channels is not None and arr.shape[1] != num_channels):
            raise DataError(f"expected a 2-D array with {num_channels or 'C'} columns, got {arr.shape}", path=path)
        if not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"expected a numeric array, got dtype {arr.dtype}", path=path)
        arr = arr.astype(np.float32, copy=False)
        # a .npy header records its dtype, so no dtype mix-up can make coordinates implausible (and large
        # global-frame coordinates are legitimate there): only finiteness is checked
        check_points(arr, path, channels, max_abs_coord=None)
        return arr
    if path.suffix == ".bin":
        if num_channels is None:
            raise DataError("reading a .bin file needs num_channels", path=path)
        return read_raw_points(path, num_channels, np.float32, channels)
    raise DataError("point files must end in .npy or .bin", path=path)


def read_infos(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a pointwin info file (see the module docstring)."""
    path = Path(path)
    infos = read_json(path)
    if not isinstance(infos, dict) or infos.get("format") != INFO_FORMAT:
        raise DataError(f"{path}: not a pointwin info file (expected key 'format': {INFO_FORMAT!r})")
    if infos.get("version") != INFO_VERSION:
        raise DataError(f"{path}: info version {infos.get('version')!r} is not supported (expected {INFO_VERSION})")
    for key in ("class_names", "channels", "frames"):
        if not isinstance(infos.get(key), list):
            raise DataError(f"{path}: key {key!r} must be a list", path=path, key=key)
    for i, fr in enumerate(infos["frames"]):
        for key in ("frame_id", "points_path"):
            if key not in fr:
                raise DataError(f"{path}: frames[{i}] has no key {key!r}", path=path, key=f"frames[{i}].{key}")
        if "boxes" in fr and len(fr["boxes"]) != len(fr.get("labels", ())):
            raise DataError(f"{path}: frames[{i}] ({fr['frame_id']}) has {len(fr['boxes'])} boxes but "
                             f"{len(fr.get('labels', ()))} labels")
    return infos


# ---------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------
class PointDataset(Dataset):
    """Base class: subclasses implement ``__len__`` and ``get_sample(index) -> Sample``.

    ``transforms`` is a callable or a list of transform configs (``[{"type": "RandomFlip"}, ...]``).
    ``__getitem__`` applies ``transforms(sample, rng)`` with a numpy Generator seeded by
    (aug_seed, epoch, index), so an augmented item does not depend on which DataLoader worker loads
    it; call :meth:`set_epoch` each epoch for fresh augmentations.
    """

    class_names: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    def __init__(self, transforms: Callable[[Sample, np.random.Generator], Sample] | Sequence[Any] | None = None,
                 aug_seed: int = 0) -> None:
        if transforms is not None and not callable(transforms):  # a list of transform configs
            from .transforms import build_transforms

            transforms = build_transforms(list(transforms))
        self.transforms = transforms
        self.aug_seed = int(aug_seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get_sample(self, index: int) -> Sample:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        sample = self.get_sample(int(index))
        if self.transforms is not None:
            rng = np.random.default_rng([self.aug_seed, self.epoch, int(index)])
            sample = self.transforms(sample, rng)
        return sample


@DATASETS.register()
class InfoDataset(PointDataset):
    """Frames listed in a pointwin info file (see the module docstring).

    Args:
        info_path: the ``*_infos_<split>.json`` file; point paths are relative to its folder.
        class_names: keep only boxes of these classes (in this order); default: the file's class names.
        transforms, aug_seed: see :class:`PointDataset`.
    """

    def __init__(self, info_path: str | os.PathLike, class_names: Sequence[str] | None = None,
                 transforms: Any = None, aug_seed: int = 0) -> None:
        super().__init__(transforms, aug_seed)
        self.info_path = Path(info_path)
        self.infos = read_infos(self.info_path)
        self.root = self.info_path.parent
        self.frames = self.infos["frames"]
        self.class_names = tuple(class_names) if class_names is not None else tuple(self.infos["class_names"])
        self.channels = tuple(self.infos["channels"])
        self._class_index = {name: i for i, name in enumerate(self.class_names)}

    def __len__(self) -> int:
        return len(self.frames)

    def get_sample(self, index: int) -> Sample:
        fr = self.frames[index]
        ppath = self.root / fr["points_path"]
        points = load_points(ppath, len(self.channels), self.channels)
        if "num_points" in fr and len(points) != fr["num_points"]:
            raise DataError(f"{ppath}: has {len(points)} points but {self.info_path} says {fr['num_points']}")
        meta = dict(fr.get("meta", {}))
        boxes = labels = None
        if "boxes" in fr:
            names = fr.get("labels", [])
            keep = [i for i, name in enumerate(names) if name in self._class_index]
            arr = np.asarray(fr["boxes"], np.float32)
            arr = arr.reshape(-1, arr.shape[1] if arr.ndim == 2 else 7)[keep]
            boxes = Boxes3D(torch.from_numpy(arr))
            labels = torch.tensor([self._class_index[names[i]] for i in keep], dtype=torch.long)
            for key in PER_BOX_META_KEYS:  # per-box meta lists follow the box selection
                if isinstance(meta.get(key), list) and len(meta[key]) == len(names):
                    meta[key] = [meta[key][i] for i in keep]
        point_labels = None
        if "point_labels_path" in fr:
            lab_path = self.root / fr["point_labels_path"]
            lab = np.load(lab_path, allow_pickle=False)
            if lab.shape != (len(points),):
                raise DataError(f"{lab_path}: expected ({len(points)},) point labels, got {lab.shape}")
            point_labels = torch.from_numpy(lab.astype(np.int64))
        return Sample(points=torch.from_numpy(np.ascontiguousarray(points)), channels=self.channels,
                      frame_id=fr["frame_id"], boxes=boxes, labels=labels, point_labels=point_labels, meta=meta)
