"""Data augmentation and filtering on :class:`~pointwin.structures.Sample` objects.

Every transform is a callable ``t(sample, rng) -> Sample`` that returns a new sample (the input is not
modified) with points, boxes, labels, per-point labels, per-box meta (``PER_BOX_META_KEYS``) and the
ground plane ``meta["ground"]`` (z = g0 + gx x + gy y, when present) kept consistent. ``rng`` is a
``numpy.random.Generator``, a ``torch.Generator`` or an int seed; all randomness comes from it.

Example (a config list builds the same thing through :data:`TRANSFORMS`)::

    aug = Compose([RandomFlip(axes=("y",)), GlobalRotation((-0.785, 0.785)), GlobalScaling((0.95, 1.05)),
                   PointRangeFilter((-40, -40, -3, 40, 40, 1)), ShufflePoints()])
    sample = aug(sample, np.random.default_rng(0))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..registry import Registry
from ..structures import Boxes3D, Sample
from .base import PER_BOX_META_KEYS

TRANSFORMS = Registry("transform")
RandomState = np.random.Generator | torch.Generator | int | None


def as_numpy_rng(rng: RandomState) -> np.random.Generator:
    """A numpy Generator from a numpy Generator (returned as is), a torch Generator (a seed drawn from
    it, advancing it) or an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng)))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    if rng is None:
        raise ValueError("transforms need a seeded generator or an int seed, got None")
    raise TypeError(f"rng must be a numpy Generator, torch Generator or int seed, got {type(rng).__name__}")


# ---------------------------------------------------------------------------------------------------
# helpers that keep a sample consistent
# ---------------------------------------------------------------------------------------------------
def select_points(sample: Sample, keep: torch.Tensor) -> Sample:
    """Keep (or reorder, with an index tensor) points and their per-point labels."""
    return dataclasses.replace(sample, points=sample.points[keep],
                               point_labels=None if sample.point_labels is None else sample.point_labels[keep])


def select_boxes(sample: Sample, keep: torch.Tensor) -> Sample:
    """Keep boxes by a bool mask or index tensor, with their labels and per-box meta lists."""
    if sample.boxes is None:
        return sample
    idx = torch.as_tensor(keep)
    if idx.dtype == torch.bool:
        idx = idx.nonzero().flatten()
    idx_list = idx.tolist()
    meta = dict(sample.meta)
    n = len(sample.boxes)
    for key in PER_BOX_META_KEYS:
        if isinstance(meta.get(key), list) and len(meta[key]) == n:
            meta[key] = [meta[key][i] for i in idx_list]
    return dataclasses.replace(sample, boxes=Boxes3D(sample.boxes.tensor[idx]),
                               labels=None if sample.labels is None else sample.labels[idx], meta=meta)


def _with_geometry(sample: Sample, xyz: torch.Tensor, boxes: Boxes3D | None,
                   ground: tuple[float, float, float] | None = None) -> Sample:
    points = sample.points.clone()
    points[:, :3] = xyz.to(points.dtype)
    meta = sample.meta
    if ground is not None:
        meta = {**meta, "ground": [float(v) for v in ground]}
    return dataclasses.replace(sample, points=points, boxes=boxes, meta=meta)


def _ground(sample: Sample) -> tuple[float, float, float] | None:
    """The frame's ground plane z = g0 + gx x + gy y from ``meta["ground"]``, if it has one.

    Transforms carry the plane along with the points, so that later steps (GT sampling) still find it.
    """
    g = sample.meta.get("ground")
    return None if g is None else (float(g[0]), float(g[1]), float(g[2]))


def _pair(value: float | Sequence[float], name: str, symmetric: bool = True) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return (-float(value), float(value)) if symmetric else (float(value), float(value))
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name}: range ({lo}, {hi}) has low > high")
    return lo, hi


# ---------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------
@TRANSFORMS.register()
class Compose:
    """Apply transforms in order; entries may be transforms or config dicts (``{"type": ..., ...}``)."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = [build_transform(t, where=f"transforms[{i}]") for i, t in enumerate(transforms)]

    def __call__(self, sample: Sample, rng: RandomState) -> Sample:
        rng = as_numpy_rng(rng)
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


@TRANSFORMS.register()
class RandomFlip:
    """Mirror the scene: for each axis name, with probability ``prob`` negate that coordinate.

    "y" negates y (left-right mirror: yaw -> -yaw), "x" negates x (front-back: yaw -> pi - yaw).
    """

    def __init__(self, axes: Sequence[str] = ("y",), prob: float = 0.5) -> None:
        bad = [a for a in axes if a not in ("x", "y")]
        if bad or not 0 <= prob <= 1:
            raise ValueError(f"RandomFlip: axes must be 'x'/'y' and prob in [0, 1], got axes={axes}, prob={prob}")
        self.axes, self.prob = tuple(axes), float(prob)

    def __call__(self, sample: Sample, rng: RandomState) -> Sample:
        rng = as_numpy_rng(rng)
        for axis in self.axes:
            if rng.random() < self.prob:
                sample = flip(sample, axis)
        return sample


def flip(sample: Sample, axis: str) -> Sample:
    """Deterministic mirror of ``sample`` by negating coordinate ``axis`` ("x" or "y")."""
    col = {"x": 0, "y": 1}[axis]
    xyz = sample.points[:, :3].clone()
    xyz[:, col] = -xyz[:, col]
    boxes = None if sample.boxes is None else sample.boxes.flip(axis)
    g = _ground(sample)
    if g is not None:
        g = (g[0], -g[1], g[2]) if axis == "x" else (g[0], g[1], -g[2])
    return _with_geometry(sample, xyz, boxes, g)


@TRANSFORMS.register()
class GlobalRotation:
    """Rotate the scene about the z axis by an angle drawn uniformly from ``angle`` (radians; a number
    a means (-a, a))."""

    def __init__(self, angle: float | Sequence[float] = (-math.pi / 4, math.pi / 4)) -> None:
        self.angle = _pair(angle, "GlobalRotation.angle")

    def __call__(self, sample: Sample, rng: RandomState) -> Sample:
        return rotate(sample, float(as_numpy_rng(rng).uniform(*self.angle)))


def rotate(sample: Sample, angle: float) -> Sample:
    """Rotate points and boxes counter-clockwise about z by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    p = sample.points[:, :3].double()
    xyz = torch.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1], p[:, 2]], 1)
    boxes = None if sample.boxes is None else sample.boxes.rotate(angle)
    g = _ground(sample)
    if g is not None:  # the plane's gradient turns with the scene
        g = (g[0], c * g[1] - s * g[2], s * g[1] + c * g[2])
    return _with_geometry(sample, xyz, boxes, g)


@TRANSFORMS.register()
class GlobalScaling:
    """Scale positions and box sizes by a factor drawn uniformly from ``scale``."""

    def __init__(self, scale: Sequence[float] = (0.95, 1.05)) -> None:
        self.scale = _pair(scale, "GlobalScaling.scale")
        if self.scale[0] <= 0:
            raise ValueError(f"GlobalScaling.scale must be positive, got {self.scale}")

    def __call__(self, sample: Sample, rng: RandomState) -> Sample:
        return scale(sample, float(as_numpy_rng(rng).uniform(*self.scale)))


def scale(sample: Sample, factor: float) -> Sample:
    xyz = sample.points[:, :3].double() * factor
    boxes = None if sample.boxes is None else sample.boxes.scale(factor)
    g = _ground(sample)
    if g is not None:
        g = (g[0] * factor, g[1], g[2])
    return _with_geometry(sample, xyz, boxes, g)


@TRANSFORMS.register()
class GlobalTranslation:
    """Shift the scene by a Gaussian offset with per-axis standard deviations ``std`` (metres)."""

    def __init__(self, std: Sequence[float] = (0.2, 0.2, 0.2)) -> None:
        self.std = tuple(float(v) for v in std)
        if len(self.std) != 3 or min(self.std) < 0:
            raise ValueError(f"GlobalTranslation.std must be three non-negative numbers, got {std}")

    def __call__(self, sample: Sample, rng: RandomState) -> Sample:
        return translate(sample, as_numpy_rng(rng).normal(0.0, self.std).tolist())


def translate(sample: Sample, offset: Sequence[float]) -> Sample:
    xyz = sample.points[:, :3].double() + torch.tensor(offset, dtype=torch.float64)
    boxes = None if sample.boxes is None else sample.boxes.translate(tuple(offset))
    g = _ground(sample)
    if g is not None:
        tx, ty, tz = (float(v) for v in offset)
        g = (g[0] + tz - g[1] * tx - g[2] * ty, g[1], g[2])
    return _with_geometry(sample, xyz, boxes, g)


@TRANSFORMS.register()
class PointRangeFilter:
    """Keep points with ``lo <= xyz < hi`` on every axis and boxes whose BEV centre is in range.

    Args:
        point_range: (x0, y0, z0, x1, y1, z1).
        filter_boxes: also drop boxes whose centre is outside (x0, x1) x (y0, y1).
    """

    def __init__(self, point_range: Sequence[float], filter_boxes: bool = True) -> None:
        if len(point_range) != 6 or any(point_range[i] >= point_range[i + 3] for i in range(3)):
            raise ValueError(f"PointRangeFilter.point_range must be (x0, y0, z0, x1, y1, z1) with x0 < x1 etc., "
                             f"got {point_range}")
        self.point_range = tuple(float(v) for v in point_range)
        self.filter_boxes = filter_boxes

    def __call__(self, sample: Sample, rng: RandomState = None) -> Sample:
        lo = torch.tensor(self.point_range[:3], dtype=sample.points.dtype)
        hi = torch.tensor(self.point_range[3:], dtype=sample.points.dtype)
        xyz = sample.points[:, :3]
        sample = select_points(sample, ((xyz >= lo) & (xyz < hi)).all(1))
        if self.filter_boxes and sample.boxes is not None:
            sample = select_boxes(sample, sample.boxes.in_range_bev(self.point_range))
        return sample


@TRANSFORMS.register()
class ShufflePoints:
    """Randomly permute the points (and per-point labels)."""

    def __call__(self, sample: Sample, rng: RandomState) -> Sample:
        perm = torch.from_numpy(as_numpy_rng(rng).permutation(len(sample.points)))
        return select_points(sample, perm)


@TRANSFORMS.register()
class FilterBoxesByPoints:
    """Drop boxes with fewer than ``min_points`` recorded in ``meta["num_lidar_pts"]`` (kept if absent)."""

    def __init__(self, min_points: int = 1) -> None:
        self.min_points = int(min_points)

    def __call__(self, sample: Sample, rng: RandomState = None) -> Sample:
        counts = sample.meta.get("num_lidar_pts")
        if sample.boxes is None or counts is None:
            return sample
        return select_boxes(sample, torch.tensor(counts, dtype=torch.long).reshape(-1) >= self.min_points)


def build_transform(cfg: Any, where: str = "transform") -> Any:
    """A transform from a config mapping ``{"type": name, ...}`` (callables pass through)."""
    if callable(cfg) and not isinstance(cfg, Mapping):
        return cfg
    return TRANSFORMS.build(cfg, where=where)


def build_transforms(cfgs: Sequence[Any] | None) -> Compose | None:
    """A :class:`Compose` from a list of configs, or None for an empty list."""
    if not cfgs:
        return None
    return Compose(list(cfgs))
