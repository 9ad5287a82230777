"""Synthetic LiDAR scenes: ray casting against hand-worked hits, determinism, labels and their point counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointwin.datasets import _raycast as rc
from pointwin.datasets._geometry import bev_corners
from pointwin.datasets.synthetic import (
    CLASS_NAMES,
    SEG_CLASSES,
    LidarConfig,
    SceneConfig,
    SyntheticDataset,
    frame_seed,
    generate_scene,
    with_lidar,
)

from .conftest import Polygon

# a coarse sensor keeps the tests fast; the geometry code paths are the same
SMALL = SceneConfig(lidar=LidarConfig(num_beams=32, azimuth_resolution=0.4))


def _count_reference(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Points inside each box, float64, one box at a time (independent of pointwin.ops)."""
    p = points[:, :3].astype(np.float64)
    out = []
    for b in boxes.astype(np.float64):
        d = p[:, :2] - b[:2]
        c, s = math.cos(b[6]), math.sin(b[6])
        lx, ly, lz = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c, p[:, 2] - b[2]
        out.append(int(((np.abs(lx) <= b[3] / 2) & (np.abs(ly) <= b[4] / 2) & (np.abs(lz) <= b[5] / 2)).sum()))
    return np.array(out, np.int64)


def _cast(prims, elev_deg=(0.0,), num_cols=360, ground=(-100.0, 0.0, 0.0, 0.1), max_range=100.0):
    types = np.array([p[0] for p in prims], np.int64)
    params = np.array([p[1] for p in prims], np.float64).reshape(-1, 9)
    bound = np.array([p[2] for p in prims], np.float64).reshape(-1, 3)
    offsets, items = rc.build_columns(bound, num_cols)
    n = num_cols * len(elev_deg)
    return rc.cast_rays(np.radians(np.asarray(elev_deg, np.float64)), num_cols, types, params, offsets, items,
                        np.asarray(ground, np.float64), 0.5, max_range, np.zeros(n), np.ones(n, bool), np.zeros(n))


def _box(cx, cy, cz, l, w, h, yaw, refl=0.5):
    params = [cx, cy, cz, l / 2, w / 2, h / 2, math.cos(yaw), math.sin(yaw), refl]
    return (rc.BOX, params, (cx, cy, math.hypot(l, w) / 2))


def test_ray_hits_box_face_at_hand_worked_range():
    # box 2 x 2 x 2 centred at (10, 0, 0); the ray of column 0 has azimuth 0.5 deg and hits the face x = 9
    pts, owner = _cast([_box(10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0, refl=0.5)])
    first = pts[owner == 0]
    az = np.degrees(np.arctan2(first[:, 1], first[:, 0]))
    row = np.argmin(np.abs(az - 0.5))
    assert first[row, 0] == pytest.approx(9.0, abs=1e-5)
    assert first[row, 1] == pytest.approx(9.0 * math.tan(math.radians(0.5)), abs=1e-5)
    # normal incidence cos = cos(0.5 deg): intensity = 0.5 * (0.3 + 0.7 cos)
    assert first[row, 3] == pytest.approx(0.5 * (0.3 + 0.7 * math.cos(math.radians(0.5))), abs=1e-6)
    # the box spans azimuths within +-atan(1/9) = +-6.34 deg (its near corners): rays at 0.5..5.5 and 354.5..359.5
    cols = sorted(int(np.floor(a if a > 0 else a + 360)) for a in az)
    assert cols == [0, 1, 2, 3, 4, 5, 354, 355, 356, 357, 358, 359]


def test_rotated_box_cylinder_ellipsoid_and_occlusion():
    yaw = math.radians(30)
    prims = [
        _box(0.0, 10.0, 0.0, 4.0, 2.0, 2.0, yaw),  # rotated box on +y
        (rc.CYLINDER, [-10.0, 0.0, 0.5, -1.0, 1.0, 0, 0, 0, 0.4], (-10.0, 0.0, 0.5)),  # pole on -x
        (rc.ELLIPSOID, [0.0, -10.0, 0.0, 1.0, 2.0, 1.0, 0, 0, 0.3], (0.0, -10.0, 2.0)),  # blob on -y
        _box(0.0, -20.0, 0.0, 8.0, 4.0, 4.0, 0.0),  # partly hidden behind the blob along -y
    ]
    pts, owner = _cast(prims)
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0])) % 360
    rng = np.hypot(pts[:, 0], pts[:, 1])
    for deg, who in ((90.5, 0), (180.5, 1), (270.5, 2)):
        i = int(np.argmin(np.abs(az - deg)))
        assert owner[i] == who
        d = np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg))])
        if who == 0:  # slab test by hand in the box frame
            c, s = math.cos(yaw), math.sin(yaw)
            o = np.array([c * 0 + s * -10.0, -s * 0 + c * -10.0])  # origin - centre, rotated by -yaw
            dl = np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1]])
            t = max(min((-2 - o[0]) / dl[0], (2 - o[0]) / dl[0]), min((-1 - o[1]) / dl[1], (1 - o[1]) / dl[1]))
        elif who == 1:  # |t d - c| = r
            b = -2 * (d @ np.array([-10.0, 0.0]))
            t = (-b - math.sqrt(b * b - 4 * (100 - 0.25))) / 2
        else:  # (x/1)^2 + ((y+10)/2)^2 = 1 along the ray
            a = d[0] ** 2 + d[1] ** 2 / 4
            b = 2 * d[1] * 10 / 4
            t = (-b - math.sqrt(b * b - 4 * a * (100 / 4 - 1))) / (2 * a)
        assert rng[i] == pytest.approx(t, abs=1e-4)
    # the box at y = -20 spans +-atan(4 / 18) = +-12.5 deg around -y; the blob's tangents from the sensor
    # are at +-atan(1 / sqrt(96)) = +-5.83 deg, so only rays 6.5 .. 12.5 deg off -y reach the box (12.53)
    off = np.abs(az[owner == 3] - 270.0)
    assert off.min() == pytest.approx(6.5, abs=1e-3) and off.max() == pytest.approx(12.5, abs=1e-3)


def test_ground_plane_range_and_beam_elevations():
    # ground z = -2 + 0.1 x seen by a beam at -10 deg: hit where -r sin10 = -2 + 0.1 r cos10 cos(az) ...
    ground = (-2.0, 0.1, 0.0, 0.2)
    pts, owner = _cast([], elev_deg=(-10.0, 5.0), num_cols=36, ground=ground)
    assert (owner == rc.GROUND).all() and len(pts) == 36  # the upward beam hits nothing
    az = np.radians((np.arange(36) + 0.5) * 10)
    e = math.radians(-10)
    t = -2.0 / (math.sin(e) - 0.1 * math.cos(e) * np.cos(az))
    np.testing.assert_allclose(np.linalg.norm(pts[:, :3], axis=1), t, rtol=1e-5)
    np.testing.assert_allclose(pts[:, 2], -2.0 + 0.1 * pts[:, 0], atol=1e-4)


def test_same_seed_same_scene_and_splits_differ():
    a, b = generate_scene((0, 0, 3), SMALL), generate_scene((0, 0, 3), SMALL)
    for f in ("points", "point_labels", "boxes", "labels", "num_lidar_pts"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = generate_scene(frame_seed("val", 3), SMALL)
    assert frame_seed("val", 3) != frame_seed("train", 3)
    assert len(c.points) != len(a.points) or not np.array_equal(c.points, a.points)
    with pytest.raises(ValueError, match="split"):
        frame_seed("training", 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxes_contain_their_recorded_hit_counts(seed):
    cfg = SMALL
    s = generate_scene(seed, cfg)
    assert len(s.boxes) >= 3
    np.testing.assert_array_equal(s.num_lidar_pts, _count_reference(s.points, s.boxes))
    from pointwin.ops import points_in_boxes

    counted = points_in_boxes(torch.from_numpy(s.points), torch.from_numpy(s.boxes)).sum(1).numpy()
    np.testing.assert_array_equal(s.num_lidar_pts, counted)
    assert (s.num_lidar_pts >= cfg.min_points).all()
    assert np.abs(s.boxes[:, :2]).max() <= cfg.extent
    # labelled objects do not overlap in BEV (shapely reference)
    polys = [Polygon(c) for c in bev_corners(s.boxes)]
    for i in range(len(polys)):
        for j in range(i + 1, len(polys)):
            assert polys[i].intersection(polys[j]).area < 1e-9
    # sizes are those of their class
    for box, lab in zip(s.boxes, s.labels):
        name = CLASS_NAMES[lab]
        lo, hi = {"Car": ((3.8, 1.6, 1.35), (5.4, 2.1, 1.95)), "Pedestrian": ((0.6, 0.55, 1.5), (0.95, 0.8, 1.95)),
                  "Cyclist": ((1.6, 0.55, 1.6), (1.95, 0.8, 1.85))}[name]
        assert (box[3:6] >= np.array(lo) - 1e-5).all() and (box[3:6] <= np.array(hi) + 1e-5).all()
    # boxes stand on the ground plane
    g0, gx, gy = s.ground
    bottom = s.boxes[:, 2] - s.boxes[:, 5] / 2
    np.testing.assert_allclose(bottom, g0 + gx * s.boxes[:, 0] + gy * s.boxes[:, 1], atol=1e-4)


def test_points_are_physical():
    cfg = SMALL
    s = generate_scene(5, cfg)
    r = np.linalg.norm(s.points[:, :3], axis=1)
    assert r.min() >= cfg.lidar.min_range - 0.2 and r.max() < cfg.lidar.max_range + 0.2
    assert s.points[:, 3].min() >= 0 and s.points[:, 3].max() <= 1
    g0, gx, gy = s.ground
    ground = s.point_labels == SEG_CLASSES.index("ground")
    p = s.points[ground]
    assert ground.mean() > 0.3
    assert np.abs(p[:, 2] - (g0 + gx * p[:, 0] + gy * p[:, 1])).max() < 0.15  # range noise 2 cm, 7 sigma
    # elevation angles of returns stay inside the beam fan
    elev = np.degrees(np.arcsin(s.points[:, 2] / r))
    lo, hi = cfg.lidar.elevation_range
    assert elev.min() > lo - 0.5 and elev.max() < hi + 0.5
    # several kinds of surface are seen
    assert len(np.unique(s.point_labels)) >= 5
    # about (1 - dropout) of the ground-facing rays return at most
    assert len(s.points) < cfg.lidar.num_columns * cfg.lidar.num_beams * (1 - cfg.lidar.dropout) * 1.02


def test_min_points_and_sensor_presets():
    strict = SceneConfig(min_points=200, lidar=SMALL.lidar)
    s = generate_scene(1, strict)
    loose = generate_scene(1, SMALL)
    np.testing.assert_array_equal(s.points, loose.points)  # labelling does not change the cloud
    assert (s.num_lidar_pts >= 200).all() and len(s.boxes) < len(loose.boxes)
    dense = generate_scene(1, with_lidar(SMALL, num_beams=64, elevation_range=(-24.9, 2.0)))
    assert len(dense.points) > 1.5 * len(loose.points)
    with pytest.raises(ValueError, match="num_cars"):
        SceneConfig(num_cars=(5, 2))
    with pytest.raises(ValueError, match="unknown key"):
        SceneConfig.from_dict({"num_car": (1, 2)})
    assert SceneConfig.from_dict({"lidar": {"num_beams": 64}, "num_cars": [2, 3]}).lidar.num_beams == 64


def test_dataset_yields_samples():
    ds = SyntheticDataset("val", num_frames=3, scene=SMALL)
    assert len(ds) == 3
    s = ds[2]
    assert s.channels == ("x", "y", "z", "intensity")
    assert s.points.dtype == torch.float32 and s.points.shape[1] == 4
    assert s.frame_id == "synthetic_val_s0_000002"
    assert len(s.boxes) == len(s.labels) == len(s.meta["num_lidar_pts"])
    assert s.point_labels.shape == (len(s.points),)
    ref = generate_scene(frame_seed("val", 2), SMALL)
    np.testing.assert_array_equal(s.points.numpy(), ref.points)
    with pytest.raises(IndexError):
        ds.get_sample(3)
