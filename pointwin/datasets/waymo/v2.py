"""Waymo Open Dataset v2 (Parquet components) reader, with pyarrow and no TensorFlow.

Layout: ``<root>/<component>/<segment_context_name>.parquet``, one row per key. Columns are named
``key.<field>`` and ``[<ComponentClass>].<field>.<subfield>`` (e.g.
``[LiDARBoxComponent].box.center.x``). Components read here:

=====================  =====================================  =======================================
folder                 keys                                   fields used
=====================  =====================================  =======================================
lidar                  segment, frame_timestamp, laser_name   range_image_return{1,2}.{values,shape}
lidar_pose             segment, frame_timestamp, laser_name   range_image_return1.{values,shape}
lidar_calibration      segment, laser_name                    extrinsic.transform, beam_inclination.*
vehicle_pose           segment, frame_timestamp               world_from_vehicle.transform
lidar_box              segment, frame_timestamp, object_id    box.*, type, speed.*, acceleration.*, ...
lidar_segmentation     segment, frame_timestamp, laser_name   range_image_return{1,2}.{values,shape}
=====================  =====================================  =======================================

Values are converted from whatever type the file stores (the public sample ``vehicle_pose`` stores
float32 although the schema says double), never assumed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError
from .range_image import FramePoints, _Collector, beam_inclinations, range_image_to_points

__all__ = ["COMPONENTS", "LidarBoxes", "LidarCalibration", "V2Frame", "frame_points", "iter_lidar_frames",
           "list_segments", "read_component", "read_lidar_boxes", "read_lidar_calibrations",
           "read_lidar_segmentation", "read_vehicle_poses"]

COMPONENTS = {
    "lidar": "LiDARComponent",
    "lidar_pose": "LiDARPoseComponent",
    "lidar_calibration": "LiDARCalibrationComponent",
    "vehicle_pose": "VehiclePoseComponent",
    "lidar_box": "LiDARBoxComponent",
    "lidar_segmentation": "LiDARSegmentationLabelComponent",
}

_SEG, _TS, _LASER = "key.segment_context_name", "key.frame_timestamp_micros", "key.laser_name"


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading Waymo v2 Parquet files needs pyarrow: pip install 'pointwin[waymo]'") from e
    return pq


def component_path(root: str | os.PathLike, component: str, segment: str) -> Path:
    if component not in COMPONENTS:
        raise KeyError(f"unknown Waymo v2 component {component!r}; known: {sorted(COMPONENTS)}")
    return Path(root) / component / f"{segment}.parquet"


def list_segments(root: str | os.PathLike, component: str = "lidar") -> list[str]:
    """Sorted segment names that have a ``component`` file under ``root``."""
    folder = Path(root) / component
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist (expected a Waymo v2 '{component}' component folder)")
    return sorted(p.stem for p in folder.glob("*.parquet"))


def read_component(root: str | os.PathLike, component: str, segment: str, columns: list[str] | None = None):
    """The ``pyarrow.Table`` of one component file (optionally only ``columns``)."""
    path = component_path(root, component, segment)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (Waymo v2 component {component!r} of segment {segment})")
    pq = _pq()
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, ValueError, KeyError) as e:  # pyarrow.ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DataError(f"cannot read Waymo v2 component {component!r} of segment {segment} "
                        f"(columns {columns or 'all'}): {type(e).__name__}: {e}", path=path) from None
    return table


def _column(table, name: str, path: str):
    if name not in table.column_names:
        raise DataError(f"{path}: missing column {name!r}; columns are {table.column_names}", path=path, key=name)
    return table.column(name)


def _fixed_rows(column, width: int, name: str) -> np.ndarray:
    """A list-valued column with ``width`` entries per row -> float64 (N, width), whatever the stored type."""
    rows = column.to_pylist()
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise DataError(f"column {name!r}: expected {width} values per row, got array of shape {arr.shape}",
                        key=name)
    return arr


def read_vehicle_poses(root: str | os.PathLike, segment: str) -> dict[int, np.ndarray]:
    """``{frame_timestamp_micros: (4, 4) float64 world_from_vehicle}``."""
    name = f"[{COMPONENTS['vehicle_pose']}].world_from_vehicle.transform"
    table = read_component(root, "vehicle_pose", segment)
    path = str(component_path(root, "vehicle_pose", segment))
    ts = np.asarray(_column(table, _TS, path).to_pylist(), dtype=np.int64)
    mats = _fixed_rows(_column(table, name, path), 16, name).reshape(-1, 4, 4)
    return {int(t): m for t, m in zip(ts, mats)}


@dataclass
class LidarCalibration:
    """One lidar's calibration: ``extrinsic`` (4, 4) lidar -> vehicle; inclinations bottom beam first."""

    laser: int
    extrinsic: np.ndarray
    inclination_min: float
    inclination_max: float
    inclinations: np.ndarray | None

    def rows(self, height: int) -> np.ndarray:
        """(H,) inclination per range-image row, row 0 the top beam."""
        return beam_inclinations(self.inclinations, self.inclination_min, self.inclination_max, height)


def read_lidar_calibrations(root: str | os.PathLike, segment: str) -> dict[int, LidarCalibration]:
    prefix = f"[{COMPONENTS['lidar_calibration']}]"
    table = read_component(root, "lidar_calibration", segment)
    path = str(component_path(root, "lidar_calibration", segment))
    lasers = _column(table, _LASER, path).to_pylist()
    ext = _fixed_rows(_column(table, f"{prefix}.extrinsic.transform", path), 16, "extrinsic").reshape(-1, 4, 4)
    lo = _column(table, f"{prefix}.beam_inclination.min", path).to_pylist()
    hi = _column(table, f"{prefix}.beam_inclination.max", path).to_pylist()
    vals_name = f"{prefix}.beam_inclination.values"
    vals = table.column(vals_name).to_pylist() if vals_name in table.column_names else [None] * len(lasers)
    return {int(laser): LidarCalibration(int(laser), e, float(a), float(b),
                                         None if not v else np.asarray(v, dtype=np.float64))
            for laser, e, a, b, v in zip(lasers, ext, lo, hi, vals)}


@dataclass
class LidarBoxes:
    """The labelled boxes of one frame (vehicle frame).

    Attributes:
        boxes: float64 (M, 7) x, y, z, length, width, height, heading (pointwin's box convention).
        speed: float64 (M, 3) vx, vy, vz in m/s (0 where missing).
        types: int64 (M,) Waymo ``Label.Type`` (1 vehicle, 2 pedestrian, 3 sign, 4 cyclist).
        ids: object ids.
        num_lidar_points: int64 (M,); num_top_lidar_points: int64 (M,).
        difficulty: int64 (M,) detection difficulty level; tracking_difficulty likewise.
    """

    boxes: np.ndarray
    speed: np.ndarray
    types: np.ndarray
    ids: list[str]
    num_lidar_points: np.ndarray
    num_top_lidar_points: np.ndarray
    difficulty: np.ndarray
    tracking_difficulty: np.ndarray


def read_lidar_boxes(root: str | os.PathLike, segment: str) -> dict[int, LidarBoxes]:
    """``{frame_timestamp_micros: LidarBoxes}`` from the ``lidar_box`` component."""
    p = f"[{COMPONENTS['lidar_box']}]"
    table = read_component(root, "lidar_box", segment)
    path = str(component_path(root, "lidar_box", segment))
    n = table.num_rows

    def num(name, default=0.0, dtype=np.float64):
        if name not in table.column_names:
            return np.full(n, default, dtype=dtype)
        return np.asarray([default if v is None else v for v in table.column(name).to_pylist()], dtype=dtype)

    cols = [f"{p}.box.center.x", f"{p}.box.center.y", f"{p}.box.center.z", f"{p}.box.size.x", f"{p}.box.size.y",
            f"{p}.box.size.z", f"{p}.box.heading"]
    for c in cols + [_TS, f"{p}.type"]:
        _column(table, c, path)
    boxes = np.stack([num(c) for c in cols], 1)
    speed = np.stack([num(f"{p}.speed.{a}") for a in "xyz"], 1)
    types = num(f"{p}.type", 0, np.int64)
    ids = (table.column("key.laser_object_id").to_pylist() if "key.laser_object_id" in table.column_names
           else [""] * n)
    npts = num(f"{p}.num_lidar_points_in_box", 0, np.int64)
    ntop = num(f"{p}.num_top_lidar_points_in_box", 0, np.int64)
    det = num(f"{p}.difficulty_level.detection", 0, np.int64)
    trk = num(f"{p}.difficulty_level.tracking", 0, np.int64)
    ts = np.asarray(table.column(_TS).to_pylist(), dtype=np.int64)
    out = {}
    for t in np.unique(ts):
        sel = np.nonzero(ts == t)[0]
        out[int(t)] = LidarBoxes(boxes[sel], speed[sel], types[sel], [ids[i] for i in sel], npts[sel], ntop[sel],
                                 det[sel], trk[sel])
    return out


def _list_value(column, i: int, dtype) -> np.ndarray | None:
    """Row ``i`` of a list-valued arrow column as a numpy array (no Python floats), or None if null."""
    scalar = column[i]
    if not scalar.is_valid:
        return None
    return np.asarray(scalar.values.to_numpy(zero_copy_only=False), dtype=dtype)


def _range_images(table_or_batch, values: str, shape: str, dtype) -> list[np.ndarray | None]:
    """Every row's range image of a ``values``/``shape`` column pair (None where absent)."""
    names = table_or_batch.schema.names
    n = table_or_batch.num_rows
    if values not in names or shape not in names:
        return [None] * n
    vcol, scol = table_or_batch.column(values), table_or_batch.column(shape)
    out: list[np.ndarray | None] = []
    for i in range(n):
        v, s = _list_value(vcol, i, dtype), _list_value(scol, i, np.int64)
        if v is None or s is None:
            out.append(None)
            continue
        if v.size != int(np.prod(s)):
            raise DataError(f"column {values!r} row {i}: {v.size} values do not fill shape {tuple(s.tolist())}",
                            key=values)
        out.append(v.reshape(tuple(int(x) for x in s)))
    return out


@dataclass
class V2Frame:
    """Range images of one frame: ``range_images[laser] = [return1, return2]`` (H, W, 4) float32 (or None);
    ``pixel_pose`` (H, W, 6) of the TOP lidar or None; ``pose`` (4, 4) world_from_vehicle or None."""

    segment: str
    timestamp: int
    range_images: dict[int, list[np.ndarray | None]]
    pixel_pose: np.ndarray | None
    pose: np.ndarray | None


def iter_lidar_frames(root: str | os.PathLike, segment: str, batch_size: int = 10) -> Iterator[V2Frame]:
    """Yield the frames of a segment in timestamp order, reading the ``lidar`` file in batches."""
    pq = _pq()
    p = f"[{COMPONENTS['lidar']}]"
    path = component_path(root, "lidar", segment)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (Waymo v2 'lidar' component of segment {segment})")
    poses = read_vehicle_poses(root, segment) if component_path(root, "vehicle_pose", segment).exists() else {}
    pixel_poses: dict[int, np.ndarray] = {}
    pose_path = component_path(root, "lidar_pose", segment)
    if pose_path.exists():
        pp = f"[{COMPONENTS['lidar_pose']}]"
        table = pq.read_table(pose_path)
        imgs = _range_images(table, f"{pp}.range_image_return1.values", f"{pp}.range_image_return1.shape", np.float64)
        for ts, laser, img in zip(_column(table, _TS, str(pose_path)).to_pylist(),
                                  _column(table, _LASER, str(pose_path)).to_pylist(), imgs):
            if img is not None and int(laser) == 1:
                pixel_poses[int(ts)] = img
    frames: dict[int, dict[int, list]] = {}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        ts_col, laser_col = _column(batch, _TS, str(path)).to_pylist(), _column(batch, _LASER, str(path)).to_pylist()
        r1, r2 = (_range_images(batch, f"{p}.range_image_return{r}.values", f"{p}.range_image_return{r}.shape",
                                np.float32) for r in (1, 2))
        for ts, laser, a, b in zip(ts_col, laser_col, r1, r2):
            frames.setdefault(int(ts), {})[int(laser)] = [a, b]
    for ts in sorted(frames):
        yield V2Frame(segment, ts, frames[ts], pixel_poses.get(ts), poses.get(ts))


def frame_points(frame: V2Frame, calibrations: dict[int, LidarCalibration], returns: tuple[int, ...] = (0, 1),
                 segmentation: dict[tuple[int, int], list[np.ndarray | None]] | None = None) -> FramePoints:
    """All lidars' points of a v2 frame in its vehicle frame (TOP with its per-pixel pose correction).

    ``segmentation``: the output of :func:`read_lidar_segmentation`, to label the points.
    """
    out = _Collector()
    for laser in sorted(frame.range_images):
        if laser not in calibrations:
            raise DataError(f"segment {frame.segment}: laser {laser} has no row in lidar_calibration")
        cal = calibrations[laser]
        seg_returns = (segmentation or {}).get((frame.timestamp, laser), [None, None])
        for r in returns:
            ri = frame.range_images[laser][r]
            if ri is None:
                continue
            use_pose = laser == 1 and frame.pixel_pose is not None and frame.pose is not None
            pts, pixels = range_image_to_points(ri, cal.extrinsic, cal.rows(ri.shape[0]),
                                                pixel_pose=frame.pixel_pose if use_pose else None,
                                                frame_pose=frame.pose if use_pose else None)
            out.add(pts, pixels, laser, r, seg_returns[r], ri.shape)
    return out.result()


def read_lidar_segmentation(root: str | os.PathLike, segment: str) -> dict[tuple[int, int], list[np.ndarray | None]]:
    """``{(frame_timestamp_micros, laser): [return1, return2]}`` int32 (H, W, 2) (instance id, semantic class)."""
    p = f"[{COMPONENTS['lidar_segmentation']}]"
    table = read_component(root, "lidar_segmentation", segment)
    path = str(component_path(root, "lidar_segmentation", segment))
    r1, r2 = (_range_images(table, f"{p}.range_image_return{r}.values", f"{p}.range_image_return{r}.shape", np.int32)
              for r in (1, 2))
    keys = zip(_column(table, _TS, path).to_pylist(), _column(table, _LASER, path).to_pylist())
    return {(int(t), int(la)): [a, b] for (t, la), a, b in zip(keys, r1, r2)}
