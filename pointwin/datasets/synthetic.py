"""Synthetic LiDAR scenes: the embedded default dataset (no download).

A scene is a street seen by a spinning LiDAR at the origin of the LiDAR frame, ``height`` metres above
a gently sloped ground plane: a road with lanes (optionally a cross street), parked and moving cars,
pedestrians on the sidewalks and crossing, cyclists, buildings and walls along the sidewalks, poles,
trees, bushes and street clutter (bins, benches, trucks). Objects are built from a few boxes (a car is
four wheels, a body and a cabin; a pedestrian legs, torso, arms and head) inside their labelled box.

The sensor casts one ray per (beam, azimuth column) and keeps the nearest hit (occlusion), with
Gaussian range noise, random dropout and an intensity from the surface's reflectivity and the
incidence angle. A box is labelled only when at least ``min_points`` returns lie inside it; its
``num_lidar_pts`` is exactly that count (points inside the box, faces inclusive).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same scene.

Example::

    scene = generate_scene(7)                        # SyntheticScene: points (N, 4), boxes (M, 7), ...
    ds = SyntheticDataset("train", num_frames=200)  # generates on the fly, deterministic per index
    create_synthetic("data/synthetic", num_train=200, num_val=50)  # or write them to disk
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..structures import Boxes3D, Sample
from . import _raycast as rc
from ._geometry import bev_overlap
from .base import DATASETS, InfoDataset, PointDataset, atomic_write_json, read_json, save_points

CLASS_NAMES = ("Car", "Pedestrian", "Cyclist")
SEG_CLASSES = ("ground", "car", "pedestrian", "cyclist", "building", "wall", "pole", "vegetation", "other")
CHANNELS = ("x", "y", "z", "intensity")
SPLITS = {"train": 0, "val": 1, "test": 2}

_SEG = {name: i for i, name in enumerate(SEG_CLASSES)}


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LidarConfig:
    """A spinning LiDAR (defaults: a 32-beam HDL-32E-like sensor).

    Attributes:
        num_beams: number of lasers, spread uniformly over ``elevation_range``.
        elevation_range: (lowest, highest) beam elevation in degrees.
        azimuth_resolution: degrees between two firings of one laser (360 / columns).
        height: sensor height above the ground at the origin, metres (ground at z = -height).
        min_range, max_range: returns outside [min_range, max_range) metres are dropped.
        range_noise: std of the Gaussian range noise, metres.
        dropout: probability that a return is lost.
        intensity_noise: std of the Gaussian noise added to intensities (which lie in [0, 1]).
    """

    num_beams: int = 32
    elevation_range: tuple[float, float] = (-30.0, 10.0)
    azimuth_resolution: float = 0.2
    height: float = 1.8
    min_range: float = 1.0
    max_range: float = 70.0
    range_noise: float = 0.02
    dropout: float = 0.05
    intensity_noise: float = 0.03

    def __post_init__(self) -> None:
        lo, hi = self.elevation_range
        if self.num_beams < 1 or not lo < hi:
            raise ValueError(f"LidarConfig: need num_beams >= 1 and elevation_range (low, high) with low < high, "
                             f"got {self.num_beams} beams over {self.elevation_range}")
        if not 0 < self.azimuth_resolution <= 10:
            raise ValueError(f"LidarConfig.azimuth_resolution must be in (0, 10] degrees, "
                             f"got {self.azimuth_resolution}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LidarConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_columns(self) -> int:
        return int(round(360.0 / self.azimuth_resolution))

    def elevations(self) -> np.ndarray:
        """float64 (num_beams,) beam elevations in radians, lowest first."""
        lo, hi = self.elevation_range
        if self.num_beams == 1:
            return np.radians([(lo + hi) / 2.0])
        return np.radians(np.linspace(lo, hi, self.num_beams))


HDL64 = LidarConfig(num_beams=64, elevation_range=(-24.9, 2.0), azimuth_resolution=0.17, height=1.73)
HDL32 = LidarConfig()


@dataclass(frozen=True)
class SceneConfig:
    """What a scene contains. Counts are inclusive (low, high) ranges drawn uniformly per scene.

    Attributes:
        extent: objects are labelled when their centre lies in [-extent, extent]^2 (metres, BEV).
        min_points: a box is labelled only with at least this many returns inside it.
        max_slope: largest ground slope (rise per metre) along x and along y.
        lidar: the sensor (:class:`LidarConfig` or a dict of its fields).
    """

    extent: float = 40.0
    num_cars: tuple[int, int] = (8, 18)
    num_pedestrians: tuple[int, int] = (3, 10)
    num_cyclists: tuple[int, int] = (1, 5)
    num_poles: tuple[int, int] = (4, 12)
    num_trees: tuple[int, int] = (2, 8)
    num_clutter: tuple[int, int] = (4, 12)
    cross_street_prob: float = 0.5
    min_points: int = 8
    max_slope: float = 0.02
    lidar: LidarConfig = field(default_factory=LidarConfig)

    def __post_init__(self) -> None:
        if isinstance(self.lidar, dict):
            object.__setattr__(self, "lidar", LidarConfig(**_tuples(self.lidar)))
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("num_"):
                if isinstance(v, list):
                    v = tuple(v)
                    object.__setattr__(self, f.name, v)
                if not (isinstance(v, tuple) and len(v) == 2 and 0 <= v[0] <= v[1]):
                    raise ValueError(f"SceneConfig.{f.name} must be a (low, high) pair with 0 <= low <= high, "
                                     f"got {v!r}")
        if self.extent <= 5:
            raise ValueError(f"SceneConfig.extent must be > 5 metres, got {self.extent}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | SceneConfig | None) -> SceneConfig:
        if d is None:
            return cls()
        if isinstance(d, SceneConfig):
            return d
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SceneConfig: unknown key(s) {unknown}; valid: {sorted(known)}")
        return cls(**_tuples(d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


# ---------------------------------------------------------------------------------------------------
# scene layout
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Item:
    """A placed thing in the road frame: ``box`` (x, y, 0, dx, dy, dz, yaw) is its footprint and height."""

    kind: str
    box: np.ndarray
    attrs: dict[str, float] = field(default_factory=dict)


@dataclass
class SyntheticScene:
    """One generated frame.

    Attributes:
        points: float32 (N, 4) x, y, z, intensity in the LiDAR frame.
        point_labels: int64 (N,) index into :data:`SEG_CLASSES`.
        boxes: float32 (M, 7) labelled boxes (objects with >= min_points returns inside).
        labels: int64 (M,) index into :data:`CLASS_NAMES`.
        num_lidar_pts: int64 (M,) returns inside each labelled box.
        seed: the scene's seed (an int or a tuple of ints for ``numpy.random.default_rng``).
        ground: (g0, gx, gy): the ground plane z = g0 + gx * x + gy * y.
    """

    points: np.ndarray
    point_labels: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    num_lidar_pts: np.ndarray
    seed: Any
    ground: tuple[float, float, float]


class _Layout:
    """Rejection-samples non-overlapping footprints in the road frame."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.items: list[_Item] = []
        self._boxes = np.zeros((0, 7))

    def try_add(self, kind: str, box: np.ndarray, margin: float = 0.25, **attrs: float) -> bool:
        box = np.asarray(box, dtype=np.float64)
        if len(self._boxes):
            # bounding circles first; the exact separating-axis test only for the few that may touch
            reach = np.hypot(self._boxes[:, 3] + margin, self._boxes[:, 4] + margin) / 2
            near = np.hypot(self._boxes[:, 0] - box[0], self._boxes[:, 1] - box[1]) <= (
                reach + math.hypot(box[3] + margin, box[4] + margin) / 2)
            if near.any() and bev_overlap(box[None], self._boxes[near], margin=margin).any():
                return False
        self.items.append(_Item(kind, box, attrs))
        self._boxes = np.concatenate([self._boxes, box[None]])
        return True


def _layout(rng: np.random.Generator, cfg: SceneConfig) -> tuple[list[_Item], float]:
    """Place everything in the road frame (road along x); returns the items and the road's rotation."""
    lay = _Layout(rng)
    reach = cfg.extent * 1.45  # the road frame is rotated into the sensor frame: cover the corners
    u = rng.uniform
    theta = u(-math.pi, math.pi) if u() < 0.25 else u(-0.2, 0.2)
    road_c = u(-3.0, 3.0)  # road centre line (y) relative to the sensor
    lanes_per_side = 2 if u() < 0.6 else 1
    half_road = lanes_per_side * 3.5 + u(0.3, 1.5)
    walk = (half_road + 0.5, half_road + 4.5)  # sidewalk band, distance from the road centre
    cross_x = u(-0.6, 0.6) * cfg.extent if u() < cfg.cross_street_prob else None
    # the ego vehicle's footprint (no primitive, only keeps objects off the sensor)
    lay.try_add("ego", np.array([0.5, 0.0, 0.0, 5.0, 2.2, 1.6, -theta]), margin=0.5)
    if cross_x is not None:  # keep buildings off the cross street
        lay.try_add("cross_street", np.array([cross_x, 0.0, 0.0, 2 * half_road, 4 * reach, 0.0, 0.0]), margin=0.0)

    def lane_y(side: int) -> float:
        return road_c + side * (3.5 * rng.integers(0, lanes_per_side) + 1.75)

    # ---- cars ----
    n = int(rng.integers(cfg.num_cars[0], cfg.num_cars[1] + 1))
    for _ in range(n):
        length = float(np.clip(rng.normal(4.5, 0.3), 3.8, 5.4))
        width = float(np.clip(rng.normal(1.85, 0.08), 1.6, 2.1))
        height = float(np.clip(rng.normal(1.55, 0.1), 1.35, 1.95))
        attrs = dict(cabin_len=u(0.45, 0.6), cabin_off=u(-0.12, 0.0), paint=u(0.15, 0.9))
        for _try in range(15):
            mode = u()
            side = 1 if u() < 0.5 else -1
            if mode < 0.4:  # driving in a lane, right-hand traffic
                x, y, yaw = u(-reach, reach), lane_y(side) + rng.normal(0, 0.2), (0.0 if side < 0 else math.pi)
                yaw += rng.normal(0, 0.04)
            elif mode < 0.75:  # parked at the curb
                x, y = u(-reach, reach), road_c + side * (half_road - 1.1 + rng.normal(0, 0.1))
                yaw = (0.0 if u() < 0.7 else math.pi) + (0.0 if side < 0 else math.pi) + rng.normal(0, 0.05)
            elif mode < 0.87 and cross_x is not None:  # on the cross street
                x, y = cross_x + side * 1.75 + rng.normal(0, 0.2), u(-reach, reach)
                yaw = side * math.pi / 2 + rng.normal(0, 0.04)
            else:  # driveways, lots: anywhere, any heading
                x, y, yaw = u(-reach, reach), u(-reach, reach), u(-math.pi, math.pi)
            if lay.try_add("car", np.array([x, y, 0.0, length, width, height, yaw]), **attrs):
                break

    # ---- pedestrians (some in small groups, which occlude each other) ----
    n = int(rng.integers(cfg.num_pedestrians[0], cfg.num_pedestrians[1] + 1))
    anchor = None
    for _ in range(n):
        dims = (u(0.6, 0.95), u(0.55, 0.8), float(np.clip(rng.normal(1.72, 0.1), 1.5, 1.95)))
        attrs = dict(stride=u(0.0, 0.35), refl=u(0.2, 0.6))
        for _try in range(15):
            side = 1 if u() < 0.5 else -1
            if anchor is not None and u() < 0.5:
                x, y = anchor[0] + rng.normal(0, 1.2), anchor[1] + rng.normal(0, 1.2)
                yaw = anchor[2] + rng.normal(0, 0.3)
            elif u() < 0.8:
                x, y = u(-reach, reach), road_c + side * u(*walk)
                yaw = (0.0 if u() < 0.5 else math.pi) + rng.normal(0, 0.3) if u() < 0.7 else u(-math.pi, math.pi)
            else:  # crossing the road
                x, y = u(-reach, reach), road_c + u(-half_road, half_road)
                yaw = side * math.pi / 2 + rng.normal(0, 0.2)
            if lay.try_add("pedestrian", np.array([x, y, 0.0, *dims, yaw]), margin=0.1, **attrs):
                anchor = (x, y, yaw)
                break

    # ---- cyclists ----
    n = int(rng.integers(cfg.num_cyclists[0], cfg.num_cyclists[1] + 1))
    for _ in range(n):
        dims = (u(1.6, 1.95), u(0.55, 0.8), u(1.6, 1.85))
        attrs = dict(refl=u(0.2, 0.6))
        for _try in range(15):
            side = 1 if u() < 0.5 else -1
            if u() < 0.75:
                x, y = u(-reach, reach), road_c + side * (half_road - u(0.4, 2.5))
                yaw = (0.0 if side < 0 else math.pi) + rng.normal(0, 0.08)
            else:
                x, y, yaw = u(-reach, reach), road_c + side * u(*walk), u(-math.pi, math.pi)
            if lay.try_add("cyclist", np.array([x, y, 0.0, *dims, yaw]), **attrs):
                break

    # ---- trucks (unlabelled, large) ----
    for _ in range(int(rng.integers(0, 2))):
        side = 1 if u() < 0.5 else -1
        box = np.array([u(-reach, reach), lane_y(side), 0.0, u(6.5, 10.0), u(2.3, 2.6), u(2.8, 3.6),
                        (0.0 if side < 0 else math.pi) + rng.normal(0, 0.03)])
        lay.try_add("truck", box, refl=u(0.3, 0.8))

    # ---- buildings and walls along both sides ----
    for side in (-1, 1):
        x = -reach - u(0, 10)
        while x < reach:
            x += u(0.0, 6.0)  # gap
            length = u(6.0, 25.0)
            setback = walk[1] + u(0.2, 4.0)
            if u() < 0.7:
                depth, height, kind = u(6.0, 14.0), u(3.5, 15.0), "building"
            else:
                depth, height, kind = u(0.2, 0.4), u(1.0, 2.5), "wall"
            y = road_c + side * (setback + depth / 2)
            lay.try_add(kind, np.array([x + length / 2, y, 0.0, length, depth, height, 0.0]), margin=0.1,
                        refl=u(0.15, 0.7))
            x += length

    # ---- poles at the curb ----
    for _ in range(int(rng.integers(cfg.num_poles[0], cfg.num_poles[1] + 1))):
        side = 1 if u() < 0.5 else -1
        r = u(0.07, 0.2)
        box = np.array([u(-reach, reach), road_c + side * (walk[0] + u(0.0, 0.6)), 0.0, 2 * r, 2 * r, u(3.0, 9.0), 0.0])
        lay.try_add("pole", box, margin=0.1, refl=u(0.3, 0.9))

    # ---- trees on the sidewalk ----
    for _ in range(int(rng.integers(cfg.num_trees[0], cfg.num_trees[1] + 1))):
        side = 1 if u() < 0.5 else -1
        crown = u(1.0, 2.5)
        box = np.array([u(-reach, reach), road_c + side * u(*walk), 0.0, 0.5, 0.5, u(2.0, 3.5) + 2 * crown, 0.0])
        lay.try_add("tree", box, margin=0.1, trunk=u(0.12, 0.3), crown=crown, refl=u(0.1, 0.35))

    # ---- clutter: bushes, bins, benches, boxes ----
    for _ in range(int(rng.integers(cfg.num_clutter[0], cfg.num_clutter[1] + 1))):
        side = 1 if u() < 0.5 else -1
        y = road_c + side * u(walk[0], walk[1] + 6.0) if u() < 0.7 else u(-reach, reach)
        kind = ("bush", "bin", "bench", "crate")[int(rng.integers(0, 4))]
        lo, hi = {"bush": ((1.0, 1.0, 0.6), (4.0, 2.5, 1.8)), "bin": ((0.5, 0.5, 0.9), (0.8, 0.8, 1.3)),
                  "bench": ((1.5, 0.4, 0.7), (2.2, 0.6, 0.9)), "crate": ((0.5, 0.5, 0.4), (1.5, 1.5, 1.4))}[kind]
        dims = rng.uniform(lo, hi)
        yaw = 0.0 if kind == "bush" else u(-math.pi, math.pi)
        lay.try_add(kind, np.array([u(-reach, reach), y, 0.0, *dims, yaw]), margin=0.1, refl=u(0.1, 0.7),
                    blobs=float(rng.integers(2, 6)))
    return lay.items, theta


# ---------------------------------------------------------------------------------------------------
# primitives
# ---------------------------------------------------------------------------------------------------
class _Prims:
    """Collects primitives in the sensor frame."""

    def __init__(self) -> None:
        self.types: list[int] = []
        self.params: list[list[float]] = []
        self.bound: list[tuple[float, float, float]] = []
        self.seg: list[int] = []

    def box(self, cx: float, cy: float, z0: float, l: float, w: float, h: float, yaw: float, refl: float,
            seg: int) -> None:
        self.types.append(rc.BOX)
        self.params.append([cx, cy, z0 + h / 2, l / 2, w / 2, h / 2, math.cos(yaw), math.sin(yaw), refl])
        self.bound.append((cx, cy, math.hypot(l, w) / 2))
        self.seg.append(seg)

    def part(self, pose: tuple[float, float, float, float], ox: float, oy: float, z0: float, l: float, w: float,
             h: float, refl: float, seg: int) -> None:
        """A box at local offset (ox, oy) of an object at pose (x, y, ground z, yaw); z0 above its bottom."""
        x, y, gz, yaw = pose
        c, s = math.cos(yaw), math.sin(yaw)
        self.box(x + c * ox - s * oy, y + s * ox + c * oy, gz + z0, l, w, h, yaw, refl, seg)

    def cylinder(self, cx: float, cy: float, r: float, z0: float, z1: float, refl: float, seg: int) -> None:
        self.types.append(rc.CYLINDER)
        self.params.append([cx, cy, r, z0, z1, 0.0, 0.0, 0.0, refl])
        self.bound.append((cx, cy, r))
        self.seg.append(seg)

    def ellipsoid(self, cx: float, cy: float, cz: float, rx: float, ry: float, rz: float, refl: float,
                  seg: int) -> None:
        self.types.append(rc.ELLIPSOID)
        self.params.append([cx, cy, cz, rx, ry, rz, 0.0, 0.0, refl])
        self.bound.append((cx, cy, max(rx, ry)))
        self.seg.append(seg)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k = len(self.types)
        return (np.asarray(self.types, np.int64).reshape(k), np.asarray(self.params, np.float64).reshape(k, 9),
                np.asarray(self.bound, np.float64).reshape(k, 3), np.asarray(self.seg, np.int64).reshape(k))


def _emit(item: _Item, pose: tuple[float, float, float, float], rng: np.random.Generator, prims: _Prims) -> None:
    """Add the primitives of one item at pose (x, y, ground z, yaw) in the sensor frame."""
    l, w, h = (float(v) for v in item.box[3:6])
    a = item.attrs
    x, y, gz, yaw = pose
    if item.kind == "car":
        seg, paint = _SEG["car"], a["paint"]
        wheel = min(0.68, 0.42 * h)
        for sx in (-1, 1):
            for sy in (-1, 1):
                prims.part(pose, sx * (l / 2 - 0.85), sy * (w / 2 - 0.13), 0.0, wheel, 0.24, wheel, 0.06, seg)
        body_top = 0.6 * h
        prims.part(pose, 0.0, 0.0, 0.3, l, w, body_top - 0.3, paint, seg)
        cl = a["cabin_len"] * l
        prims.part(pose, a["cabin_off"] * l, 0.0, body_top, cl, 0.9 * w, h - body_top, 0.12, seg)
    elif item.kind == "pedestrian":
        seg, refl = _SEG["pedestrian"], a["refl"]
        prims.part(pose, 0.0, 0.0, 0.0, 0.22 + a["stride"], 0.34, 0.47 * h, refl, seg)  # legs
        prims.part(pose, 0.0, 0.0, 0.47 * h, 0.26, 0.46, 0.35 * h, refl, seg)  # torso
        arm_y = min(0.29, w / 2 - 0.06)
        for sy in (-1, 1):
            prims.part(pose, 0.0, sy * arm_y, 0.45 * h, 0.12, 0.1, 0.35 * h, refl, seg)
        prims.part(pose, 0.0, 0.0, 0.86 * h, 0.2, 0.18, 0.14 * h, 0.3, seg)  # head
    elif item.kind == "cyclist":
        seg, refl = _SEG["cyclist"], a["refl"]
        wheel = 0.66
        for sx in (-1, 1):
            prims.part(pose, sx * (l / 2 - wheel / 2), 0.0, 0.0, wheel, 0.06, wheel, 0.25, seg)
        prims.part(pose, 0.0, 0.0, 0.35, l - wheel, 0.07, 0.25, 0.5, seg)  # frame
        prims.part(pose, l / 2 - 0.4, 0.0, 0.55 * h, 0.08, min(0.55, w), 0.05 * h, 0.5, seg)  # handlebar
        prims.part(pose, -0.1, 0.0, 0.3 * h, 0.3, 0.32, 0.28 * h, refl, seg)  # legs
        prims.part(pose, 0.05, 0.0, 0.56 * h, 0.35, 0.42, 0.32 * h, refl, seg)  # torso
        prims.part(pose, 0.12, 0.0, 0.89 * h, 0.2, 0.18, 0.11 * h, 0.3, seg)  # head
    elif item.kind == "truck":
        seg, refl = _SEG["other"], a["refl"]
        cab = 2.0
        prims.part(pose, l / 2 - cab / 2, 0.0, 0.4, cab, w, 0.8 * h, refl, seg)
        prims.part(pose, -cab / 2, 0.0, 0.6, l - cab - 0.2, w, h - 0.6, refl * 0.8, seg)
    elif item.kind in ("building", "wall"):
        prims.part(pose, 0.0, 0.0, -0.2, l, w, h + 0.2, a["refl"], _SEG[item.kind])
    elif item.kind == "pole":
        prims.cylinder(x, y, l / 2, gz - 0.2, gz + h, a["refl"], _SEG["pole"])
    elif item.kind == "tree":
        crown = a["crown"]
        trunk_h = h - 2 * crown
        prims.cylinder(x, y, a["trunk"], gz - 0.2, gz + trunk_h + 0.5 * crown, 0.25, _SEG["vegetation"])
        prims.ellipsoid(x, y, gz + trunk_h + crown, crown, crown * rng.uniform(0.8, 1.2), crown * 0.9,
                        a["refl"], _SEG["vegetation"])
    elif item.kind == "bush":
        c, s = math.cos(yaw), math.sin(yaw)
        for _ in range(int(a["blobs"])):
            ox, oy = rng.uniform(-l / 4, l / 4), rng.uniform(-w / 4, w / 4)
            rx, ry, rz = rng.uniform(0.25, 0.5) * l, rng.uniform(0.3, 0.5) * w, rng.uniform(0.35, 0.5) * h
            prims.ellipsoid(x + c * ox - s * oy, y + s * ox + c * oy, gz + rz * 0.8, rx, ry, rz, a["refl"],
                            _SEG["vegetation"])
    elif item.kind == "bench":
        prims.part(pose, 0.0, 0.0, 0.4, l, w, 0.08, a["refl"], _SEG["other"])
        prims.part(pose, 0.0, -w / 2 + 0.04, 0.4, l, 0.08, h - 0.4, a["refl"], _SEG["other"])
        for sx in (-1, 1):
            prims.part(pose, sx * (l / 2 - 0.1), 0.0, 0.0, 0.08, w, 0.4, a["refl"], _SEG["other"])
    elif item.kind in ("bin", "crate"):
        prims.part(pose, 0.0, 0.0, 0.0, l, w, h, a["refl"], _SEG["other"])
    # "ego" and "cross_street" only reserve space


_LABELLED = {"car": 0, "pedestrian": 1, "cyclist": 2}


def generate_scene(seed: Any, config: SceneConfig | dict[str, Any] | None = None) -> SyntheticScene:
    """Generate one scene. ``seed`` is anything ``numpy.random.default_rng`` accepts (int or int tuple)."""
    cfg = SceneConfig.from_dict(config)
    lidar = cfg.lidar
    rng = np.random.default_rng(seed)
    items, theta = _layout(rng, cfg)
    g0 = -lidar.height + rng.normal(0.0, 0.03)
    gx, gy = rng.uniform(-cfg.max_slope, cfg.max_slope, size=2)
    ground = (float(g0), float(gx), float(gy))

    ct, st = math.cos(theta), math.sin(theta)
    prims = _Prims()
    obj_boxes, obj_labels = [], []
    for item in items:
        rx, ry = item.box[0], item.box[1]
        x, y = ct * rx - st * ry, st * rx + ct * ry
        yaw = float(item.box[6]) + theta
        gz = g0 + gx * x + gy * y
        _emit(item, (x, y, gz, yaw), rng, prims)
        if item.kind in _LABELLED and abs(x) <= cfg.extent and abs(y) <= cfg.extent:
            l, w, h = item.box[3:6]
            obj_boxes.append([x, y, gz + h / 2, l, w, h, math.atan2(math.sin(yaw), math.cos(yaw))])
            obj_labels.append(_LABELLED[item.kind])

    types, params, bound, seg = prims.arrays()
    num_cols = lidar.num_columns
    offsets, col_items = rc.build_columns(bound, num_cols)
    n_rays = num_cols * lidar.num_beams
    range_noise = rng.normal(0.0, lidar.range_noise, n_rays) if lidar.range_noise > 0 else np.zeros(n_rays)
    keep = rng.random(n_rays) >= lidar.dropout
    int_noise = rng.normal(0.0, lidar.intensity_noise, n_rays) if lidar.intensity_noise > 0 else np.zeros(n_rays)
    ground_arr = np.array([g0, gx, gy, rng.uniform(0.08, 0.2)], np.float64)
    points, owner = rc.cast_rays(lidar.elevations(), num_cols, types, params, offsets, col_items, ground_arr,
                                 float(lidar.min_range), float(lidar.max_range), range_noise, keep, int_noise)
    point_labels = np.where(owner < 0, _SEG["ground"], seg[np.maximum(owner, 0)] if len(seg) else 0).astype(np.int64)

    boxes = np.asarray(obj_boxes, np.float32).reshape(-1, 7)
    counts = _count_in_boxes(points, boxes)
    keep_box = counts >= cfg.min_points
    return SyntheticScene(points=points, point_labels=point_labels, boxes=boxes[keep_box],
                          labels=np.asarray(obj_labels, np.int64).reshape(-1)[keep_box],
                          num_lidar_pts=counts[keep_box].astype(np.int64), seed=seed, ground=ground)


def _count_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """int64 (M,) points inside each box; bit-identical to :func:`pointwin.ops.points_in_boxes` (float32)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    return rc.points_in_boxes_np(points, boxes).sum(1).astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------
def frame_seed(split: str, index: int, seed: int = 0) -> tuple[int, int, int]:
    """The ``default_rng`` seed of frame ``index`` of ``split``: (split code, seed, index).

    Different splits (or base seeds) never share a seed, whatever the number of frames.
    """
    if split not in SPLITS:
        raise ValueError(f"synthetic split must be one of {sorted(SPLITS)}, got {split!r}")
    if index < 0 or seed < 0:
        raise ValueError(f"synthetic frame index and seed must be >= 0, got index {index}, seed {seed}")
    return (SPLITS[split], int(seed), int(index))


def scene_to_sample(scene: SyntheticScene, frame_id: str) -> Sample:
    meta = {"num_lidar_pts": scene.num_lidar_pts.tolist(), "seed": list(np.atleast_1d(scene.seed).tolist()),
            "ground": list(scene.ground)}
    return Sample(points=torch.from_numpy(scene.points), channels=CHANNELS, frame_id=frame_id,
                  boxes=Boxes3D(torch.from_numpy(scene.boxes)), labels=torch.from_numpy(scene.labels),
                  point_labels=torch.from_numpy(scene.point_labels), meta=meta)


@DATASETS.register()
class SyntheticDataset(PointDataset):
    """Synthetic LiDAR frames, generated on the fly (deterministic per index) or read from disk.

    Args:
        split: "train", "val" or "test"; splits use disjoint seeds (see :func:`frame_seed`).
        num_frames: frames in the split (ignored when reading from ``data_root``).
        seed: base seed; change it for a different but equally distributed dataset.
        scene: :class:`SceneConfig` or a dict of its fields.
        data_root: when given, read the frames written by :func:`create_synthetic` there instead.
        transforms: callable ``(Sample, numpy Generator) -> Sample`` applied in ``__getitem__``.
        aug_seed: seed of the per-item augmentation generators.
    """

    class_names = CLASS_NAMES
    channels = CHANNELS

    def __init__(self, split: str = "train", num_frames: int = 100, seed: int = 0,
                 scene: SceneConfig | dict[str, Any] | None = None, data_root: str | os.PathLike | None = None,
                 transforms: Any = None, aug_seed: int = 0) -> None:
        super().__init__(transforms=transforms, aug_seed=aug_seed)
        frame_seed(split, 0, seed)  # validates split and seed
        self.split, self.seed = split, int(seed)
        self.scene = SceneConfig.from_dict(scene)
        self._disk: InfoDataset | None = None
        if data_root is not None:
            self._disk = InfoDataset(Path(data_root) / f"synthetic_infos_{split}.json")
            self.num_frames = len(self._disk)
        else:
            if num_frames < 0:
                raise ValueError(f"SyntheticDataset.num_frames must be >= 0, got {num_frames}")
            self.num_frames = int(num_frames)

    def __len__(self) -> int:
        return self.num_frames

    def frame_id(self, index: int) -> str:
        return f"synthetic_{self.split}_s{self.seed}_{index:06d}"

    def get_sample(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"SyntheticDataset({self.split}) index {index} out of range [0, {len(self)})")
        if self._disk is not None:
            return self._disk.get_sample(index)
        scene = generate_scene(frame_seed(self.split, index, self.seed), self.scene)
        return scene_to_sample(scene, self.frame_id(index))


def _write_frame(out: Path, split: str, index: int, seed: int, cfg: SceneConfig, points_format: str,
                 frame_id: str) -> dict[str, Any]:
    """Generate one frame, write its points, point labels and info file; return the info."""
    scene = generate_scene(frame_seed(split, index, seed), cfg)
    rel = Path("points") / split / f"{frame_id}.{points_format}"
    rel_lab = Path("point_labels") / split / f"{frame_id}.npy"
    save_points(out / rel, scene.points)
    save_points(out / rel_lab, scene.point_labels.astype(np.uint8))
    info = {"frame_id": frame_id, "points_path": rel.as_posix(), "num_points": int(len(scene.points)),
            "point_labels_path": rel_lab.as_posix(),
            "boxes": scene.boxes.tolist(), "labels": [CLASS_NAMES[k] for k in scene.labels],
            "meta": {"num_lidar_pts": scene.num_lidar_pts.tolist(), "seed": list(frame_seed(split, index, seed)),
                     "ground": list(scene.ground)}}
    atomic_write_json(out / "frames" / split / f"{frame_id}.json", info)
    return info


def create_synthetic(out_dir: str | os.PathLike, num_train: int = 200, num_val: int = 50, seed: int = 0,
                     scene: SceneConfig | dict[str, Any] | None = None, points_format: str = "npy",
                     workers: int = 0, progress: bool = True) -> dict[str, Path]:
    """Write synthetic frames and their infos to ``out_dir``; returns the info file of each split.

    Layout: ``points/<split>/<frame_id>.npy`` (float32 (N, 4)), ``point_labels/<split>/<frame_id>.npy``
    (uint8), ``frames/<split>/<frame_id>.json`` (per-frame info) and ``synthetic_infos_<split>.json``.
    Every file is written to a temporary name and renamed, so an interrupted run resumes where it
    stopped: frames whose info file exists are skipped. A different config in an existing folder is
    refused rather than mixed in. ``workers > 1`` generates frames in that many processes (the output
    does not depend on it).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    out = Path(out_dir)
    cfg = SceneConfig.from_dict(scene)
    if points_format not in ("npy", "bin"):
        raise ValueError(f"create_synthetic: points_format must be 'npy' or 'bin', got {points_format!r}")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"seed": int(seed), "scene": cfg.to_dict(), "points_format": points_format}
    settings_path = out / "synthetic_settings.json"
    if settings_path.exists():
        old = read_json(settings_path)
        if json.loads(json.dumps(old)) != json.loads(json.dumps(settings)):
            raise DataError(f"{settings_path} was written with different settings; use a new out_dir "
                             f"(old: {old}, new: {settings})")
    else:
        atomic_write_json(settings_path, settings)

    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    written = {}
    try:
        for split, n in (("train", num_train), ("val", num_val)):
            ds = SyntheticDataset(split, num_frames=n, seed=seed, scene=cfg)
            frames: list[Any] = []
            for i in range(n):
                fid = ds.frame_id(i)
                info_path = out / "frames" / split / f"{fid}.json"
                if info_path.exists():
                    frames.append(read_json(info_path))
                elif pool is not None:
                    frames.append(pool.submit(_write_frame, out, split, i, seed, cfg, points_format, fid))
                else:
                    frames.append((i, fid))
            for j, fr in enumerate(tqdm(frames, desc=f"synthetic {split}", disable=not progress)):
                if isinstance(fr, tuple):
                    frames[j] = _write_frame(out, split, fr[0], seed, cfg, points_format, fr[1])
                elif not isinstance(fr, dict):
                    frames[j] = fr.result()
            path = out / f"synthetic_infos_{split}.json"
            atomic_write_json(path, {"format": "pointwin.infos", "version": 1, "dataset": "synthetic",
                                     "split": split, "class_names": list(CLASS_NAMES), "channels": list(CHANNELS),
                                     "point_label_names": list(SEG_CLASSES), "frames": frames})
            written[split] = path
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return written


def with_lidar(config: SceneConfig, **changes: Any) -> SceneConfig:
    """A copy of ``config`` with some :class:`LidarConfig` fields changed."""
    return replace(config, lidar=replace(config.lidar, **changes))
