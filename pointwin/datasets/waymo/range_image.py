"""Waymo range images <-> points, in numpy (no TensorFlow).

A range image is ``(H, W, 4)`` float: range (m, <= 0 means no return), intensity, elongation, and the
is-in-no-label-zone flag. Row 0 is the top beam; column ``c`` has azimuth
``(1 - 2 (c + 0.5) / W) * pi - atan2(E[1, 0], E[0, 0])`` in the lidar frame, where ``E`` is the
lidar-to-vehicle extrinsic (the yaw correction makes column W/2 face the vehicle's +x for every lidar).
Beam inclinations come from the calibration or, when it has none, are uniform between
``beam_inclination_min`` and ``max`` (pixel centres); the calibration lists them bottom to top, so they
are reversed to match the rows.

The TOP lidar carries a per-pixel vehicle pose ``(roll, pitch, yaw, x, y, z)`` (vehicle -> world at the
moment the pixel was fired, 3-2-1 Euler angles): its points are moved through the world frame into the
frame's vehicle pose, which removes the rolling-shutter smear of the ego motion during the spin.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["FramePoints", "beam_inclinations", "decode_matrix", "encode_matrix", "euler_pose_to_matrix",
           "frame_to_points", "points_to_range_image", "range_image_to_points", "uniform_inclinations"]


def uniform_inclinations(inclination_min: float, inclination_max: float, height: int) -> np.ndarray:
    """(H,) float64 pixel-centre inclinations from min to max (ascending, bottom beam first)."""
    return (np.arange(height, dtype=np.float64) + 0.5) / height * (inclination_max - inclination_min) + inclination_min


def beam_inclinations(calibrated: np.ndarray | list[float] | None, inclination_min: float, inclination_max: float,
                      height: int) -> np.ndarray:
    """(H,) float64 inclination of each range-image row, row 0 the top beam.

    Args:
        calibrated: the calibration's ``beam_inclinations`` (bottom beam first) or empty/None for uniform.
    """
    if calibrated is not None and len(calibrated):
        inc = np.asarray(calibrated, dtype=np.float64)
        if inc.shape != (height,):
            raise ValueError(f"beam_inclinations has {inc.shape[0]} entries but the range image has {height} rows")
    else:
        inc = uniform_inclinations(inclination_min, inclination_max, height)
    return inc[::-1].copy()


def euler_pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """(..., 6) ``(roll, pitch, yaw, x, y, z)`` -> (..., 4, 4) transforms ``R = Rz(yaw) Ry(pitch) Rx(roll)``."""
    pose = np.asarray(pose, dtype=np.float64)
    roll, pitch, yaw = pose[..., 0], pose[..., 1], pose[..., 2]
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    m = np.zeros(pose.shape[:-1] + (4, 4))
    m[..., 0, 0], m[..., 0, 1], m[..., 0, 2] = cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr
    m[..., 1, 0], m[..., 1, 1], m[..., 1, 2] = sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr
    m[..., 2, 0], m[..., 2, 1], m[..., 2, 2] = -sp, cp * sr, cp * cr
    m[..., :3, 3] = pose[..., 3:6]
    m[..., 3, 3] = 1.0
    return m


def _azimuths(width: int, extrinsic: np.ndarray) -> np.ndarray:
    az_correction = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    return (1.0 - 2.0 * (np.arange(width, dtype=np.float64) + 0.5) / width) * np.pi - az_correction


def _check_transform(name: str, m: np.ndarray | None) -> np.ndarray | None:
    if m is None:
        return None
    m = np.asarray(m, dtype=np.float64)
    if m.shape == (16,):
        m = m.reshape(4, 4)
    if m.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 transform (or 16 row-major values), got shape {m.shape}")
    return m


def range_image_to_points(range_image: np.ndarray, extrinsic: np.ndarray, inclinations: np.ndarray,
                          pixel_pose: np.ndarray | None = None, frame_pose: np.ndarray | None = None,
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Convert one range image to points in the (frame) vehicle frame.

    Args:
        range_image: (H, W, C>=1) range, then features (Waymo: intensity, elongation, no-label-zone flag).
        extrinsic: (4, 4) lidar -> vehicle.
        inclinations: (H,) per-row inclination, row 0 the top beam (see :func:`beam_inclinations`).
        pixel_pose: optional (H, W, 6) per-pixel vehicle -> world pose (TOP lidar); needs ``frame_pose``.
        frame_pose: (4, 4) the frame's vehicle -> world pose.

    Returns:
        points: float32 (N, 3 + C - 1) x, y, z and the features of every pixel with range > 0.
        pixels: int64 (N, 2) the (row, col) of each point.
    """
    ri = np.asarray(range_image)
    if ri.ndim == 2:
        ri = ri[..., None]
    if ri.ndim != 3:
        raise ValueError(f"range_image must be (H, W, C), got shape {ri.shape}")
    h, w = ri.shape[:2]
    extrinsic = _check_transform("extrinsic", extrinsic)
    frame_pose = _check_transform("frame_pose", frame_pose)
    inclinations = np.asarray(inclinations, dtype=np.float64)
    if inclinations.shape != (h,):
        raise ValueError(f"inclinations must have shape ({h},) like the range image rows, got {inclinations.shape}")
    rows, cols = np.nonzero(ri[..., 0] > 0)
    rng = ri[rows, cols, 0].astype(np.float64)
    az = _azimuths(w, extrinsic)[cols]
    inc = inclinations[rows]
    sensor = np.stack([np.cos(inc) * np.cos(az) * rng, np.cos(inc) * np.sin(az) * rng, np.sin(inc) * rng], -1)
    xyz = sensor @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    if pixel_pose is not None:
        pixel_pose = np.asarray(pixel_pose)
        if pixel_pose.shape != (h, w, 6):
            raise ValueError(f"pixel_pose must be ({h}, {w}, 6) like the range image, got {pixel_pose.shape}")
        if frame_pose is None:
            raise ValueError("range_image_to_points: pixel_pose needs frame_pose (the frame's vehicle -> world)")
        world_from_vehicle = euler_pose_to_matrix(pixel_pose[rows, cols])
        world = np.einsum("nij,nj->ni", world_from_vehicle[:, :3, :3], xyz) + world_from_vehicle[:, :3, 3]
        frame_from_world = np.linalg.inv(frame_pose)
        xyz = world @ frame_from_world[:3, :3].T + frame_from_world[:3, 3]
    points = np.concatenate([xyz, ri[rows, cols, 1:].astype(np.float64)], 1).astype(np.float32)
    return points, np.stack([rows, cols], 1).astype(np.int64)


def points_to_range_image(points: np.ndarray, extrinsic: np.ndarray, inclinations: np.ndarray, width: int,
                          pixel_pose: np.ndarray | None = None, frame_pose: np.ndarray | None = None,
                          iterations: int = 10) -> np.ndarray:
    """Project vehicle-frame points into a range image (the inverse of :func:`range_image_to_points`).

    Each point goes to the pixel of nearest beam inclination and azimuth; when several points share a
    pixel the nearest one is kept. With a per-pixel pose the pixel a point lands in decides the pose used
    to bring it into the lidar frame, so the assignment is refined by fixed-point iterations (at most
    ``iterations``) until no point changes pixel.

    Args:
        points: (N, 3 + F) x, y, z in the frame's vehicle frame, then F features.
    Returns:
        float32 (H, W, 1 + F) range image (range 0 where no point landed).
    """
    points = np.asarray(points, dtype=np.float64)
    extrinsic = _check_transform("extrinsic", extrinsic)
    frame_pose = _check_transform("frame_pose", frame_pose)
    inclinations = np.asarray(inclinations, dtype=np.float64)
    h = inclinations.shape[0]
    vehicle_from_lidar_inv = np.linalg.inv(extrinsic)
    az_correction = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    xyz = points[:, :3]
    if pixel_pose is not None:
        if frame_pose is None:
            raise ValueError("points_to_range_image: pixel_pose needs frame_pose")
        world = xyz @ frame_pose[:3, :3].T + frame_pose[:3, 3]
        pixel_pose = np.asarray(pixel_pose, dtype=np.float64)
    order = np.argsort(inclinations)  # ascending for searchsorted
    sorted_inc = inclinations[order]

    def assign(vehicle: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sensor = vehicle @ vehicle_from_lidar_inv[:3, :3].T + vehicle_from_lidar_inv[:3, 3]
        az = np.arctan2(sensor[:, 1], sensor[:, 0])
        inc = np.arctan2(sensor[:, 2], np.hypot(sensor[:, 0], sensor[:, 1]))
        cols = np.mod(np.rint((1.0 - (az + az_correction) / np.pi) * width / 2.0 - 0.5).astype(np.int64), width)
        j = np.clip(np.searchsorted(sorted_inc, inc), 1, max(h - 1, 1))
        nearer_low = np.abs(inc - sorted_inc[j - 1]) <= np.abs(sorted_inc[np.minimum(j, h - 1)] - inc)
        rows = order[np.where(nearer_low, j - 1, np.minimum(j, h - 1))]
        return rows, cols, np.linalg.norm(sensor, axis=1)

    rows, cols, rng = assign(xyz)
    if pixel_pose is not None:
        # Fixed point: move each point into the vehicle frame of the pixel it lands in, re-project, and
        # repeat for the points whose pixel changed until none does.
        active = np.arange(len(xyz))
        for _ in range(iterations):
            m = euler_pose_to_matrix(pixel_pose[rows[active], cols[active]])
            vehicle = np.einsum("nji,nj->ni", m[:, :3, :3], world[active] - m[:, :3, 3])  # R^T (world - t)
            r2, c2, g2 = assign(vehicle)
            changed = (r2 != rows[active]) | (c2 != cols[active])
            rows[active], cols[active], rng[active] = r2, c2, g2
            active = active[changed]
            if not len(active):
                break
    image = np.zeros((h, width, 1 + points.shape[1] - 3), dtype=np.float32)
    # Nearest point wins: write far-to-near so the last write per pixel is the nearest.
    by_range = np.argsort(-rng, kind="stable")
    image[rows[by_range], cols[by_range], 0] = rng[by_range]
    image[rows[by_range], cols[by_range], 1:] = points[by_range, 3:]
    return image


# ---- protobuf matrices -----------------------------------------------------------------------------
def decode_matrix(compressed: bytes, kind: str = "float") -> np.ndarray:
    """Decode a zlib-compressed serialised ``MatrixFloat`` (kind "float") or ``MatrixInt32`` ("int32")."""
    from . import proto

    msg = proto.MatrixFloat() if kind == "float" else proto.MatrixInt32()
    msg.ParseFromString(zlib.decompress(compressed))
    data = np.asarray(msg.data, dtype=np.float32 if kind == "float" else np.int32)
    dims = tuple(msg.shape.dims)
    if int(np.prod(dims)) != data.size:
        raise ValueError(f"Matrix{kind.title()}: shape {dims} does not match its {data.size} values")
    return data.reshape(dims)


def encode_matrix(array: np.ndarray) -> bytes:
    """Zlib-compressed serialised ``MatrixFloat`` (float arrays) or ``MatrixInt32`` (integer arrays)."""
    from . import proto

    array = np.asarray(array)
    msg = proto.MatrixInt32() if np.issubdtype(array.dtype, np.integer) else proto.MatrixFloat()
    msg.data.extend(array.ravel().tolist())
    msg.shape.dims.extend(array.shape)
    return zlib.compress(msg.SerializeToString())


# ---- whole frames ------------------------------------------------------------------------------------
@dataclass
class FramePoints:
    """All lidar points of a frame in its vehicle frame.

    Attributes:
        points: float32 (N, 6) x, y, z, intensity, elongation, no-label-zone flag (Waymo stores 1 inside a
            no-label zone and -1 outside).
        laser: int8 (N,) ``LaserName`` of each point (1 TOP, 2 FRONT, 3 SIDE_LEFT, 4 SIDE_RIGHT, 5 REAR).
        return_index: int8 (N,) 0 for the first return, 1 for the second.
        segmentation: int32 (N, 2) (instance id, semantic class) from the range-image segmentation labels,
            -1 for points of range images without labels (only TOP is labelled, and not every frame);
            None when the frame has no segmentation labels at all.
    """

    points: np.ndarray
    laser: np.ndarray
    return_index: np.ndarray
    segmentation: np.ndarray | None = None

    channels = ("x", "y", "z", "intensity", "elongation", "nlz")


class _Collector:
    """Concatenates per-range-image outputs into a :class:`FramePoints`."""

    def __init__(self) -> None:
        self.points, self.laser, self.ret, self.seg = [], [], [], []
        self.any_seg = False

    def add(self, pts: np.ndarray, pixels: np.ndarray, laser: int, ret: int, seg: np.ndarray | None,
            image_shape: tuple[int, ...]) -> None:
        self.points.append(pts)
        self.laser.append(np.full(len(pts), laser, np.int8))
        self.ret.append(np.full(len(pts), ret, np.int8))
        if seg is not None:
            if seg.ndim != 3 or seg.shape[:2] != tuple(image_shape[:2]):
                raise ValueError(f"segmentation labels of laser {laser} return {ret + 1} have shape {seg.shape}; "
                                 f"expected ({image_shape[0]}, {image_shape[1]}, 2) like its range image")
            self.any_seg = True
            self.seg.append(seg[pixels[:, 0], pixels[:, 1], :2].astype(np.int32))
        else:
            self.seg.append(np.full((len(pts), 2), -1, np.int32))

    def result(self) -> FramePoints:
        if not self.points:
            return FramePoints(np.zeros((0, 6), np.float32), np.zeros(0, np.int8), np.zeros(0, np.int8))
        return FramePoints(np.concatenate(self.points), np.concatenate(self.laser), np.concatenate(self.ret),
                           np.concatenate(self.seg) if self.any_seg else None)


def frame_to_points(frame, returns: tuple[int, ...] = (0, 1), lasers: tuple[int, ...] | None = None) -> FramePoints:
    """Convert every laser's range images of a v1 ``Frame`` to points (both returns by default).

    The TOP lidar's first-return ``range_image_pose_compressed`` is used for both of its returns; each
    return's ``segmentation_label_compressed`` (when present) labels its points.
    """
    calibs = {c.name: c for c in frame.context.laser_calibrations}
    frame_pose = np.asarray(frame.pose.transform, dtype=np.float64).reshape(4, 4) if frame.pose.transform else None
    out = _Collector()
    for laser in sorted(frame.lasers, key=lambda la: la.name):
        if lasers is not None and laser.name not in lasers:
            continue
        if laser.name not in calibs:
            raise ValueError(f"frame {frame.context.name}@{frame.timestamp_micros}: laser {laser.name} has no "
                             "calibration in context.laser_calibrations")
        calib = calibs[laser.name]
        pixel_pose = None
        if laser.ri_return1.range_image_pose_compressed:
            pixel_pose = decode_matrix(laser.ri_return1.range_image_pose_compressed)
        for r in returns:
            ri_msg = laser.ri_return1 if r == 0 else laser.ri_return2
            if not ri_msg.range_image_compressed:
                continue
            ri = decode_matrix(ri_msg.range_image_compressed)
            inc = beam_inclinations(list(calib.beam_inclinations), calib.beam_inclination_min,
                                    calib.beam_inclination_max, ri.shape[0])
            pts, pixels = range_image_to_points(ri, np.asarray(calib.extrinsic.transform).reshape(4, 4), inc,
                                                pixel_pose=pixel_pose,
                                                frame_pose=frame_pose if pixel_pose is not None else None)
            seg = (decode_matrix(ri_msg.segmentation_label_compressed, "int32")
                   if ri_msg.segmentation_label_compressed else None)
            out.add(pts, pixels, laser.name, r, seg, ri.shape)
    return out.result()
