"""Augmentations keep points, boxes, labels and per-box meta consistent; hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointwin.config import ConfigError
from pointwin.datasets.synthetic import LidarConfig, SceneConfig, SyntheticDataset
from pointwin.datasets.transforms import (
    Compose,
    GlobalRotation,
    GlobalScaling,
    GlobalTranslation,
    PointRangeFilter,
    RandomFlip,
    ShufflePoints,
    build_transforms,
    flip,
    rotate,
    scale,
    translate,
)
from pointwin.ops import points_in_boxes
from pointwin.structures import Boxes3D, Sample


def _toy() -> Sample:
    points = torch.tensor([[1.0, 2.0, 3.0, 0.5], [-4.0, 0.5, -1.0, 0.25], [0.0, 0.0, 0.0, 1.0]])
    boxes = Boxes3D(torch.tensor([[1.0, 2.0, 3.0, 4.0, 2.0, 1.5, 0.3, 1.0, -2.0],
                                  [-4.0, 0.5, -1.0, 1.0, 1.0, 1.0, -0.2, 0.0, 0.5]]))
    return Sample(points=points, channels=("x", "y", "z", "intensity"), frame_id="toy", boxes=boxes,
                  labels=torch.tensor([0, 2]), point_labels=torch.tensor([5, 6, 7]),
                  meta={"num_lidar_pts": [1, 1], "difficulty": [0, 2], "ground": [-1.8, 0.0, 0.0]})


def test_flip_hand_worked():
    s = flip(_toy(), "y")
    torch.testing.assert_close(s.points[0], torch.tensor([1.0, -2.0, 3.0, 0.5]))
    torch.testing.assert_close(s.boxes.tensor[0], torch.tensor([1.0, -2.0, 3.0, 4.0, 2.0, 1.5, -0.3, 1.0, 2.0]))
    s = flip(_toy(), "x")
    torch.testing.assert_close(s.points[1], torch.tensor([4.0, 0.5, -1.0, 0.25]))
    want = torch.tensor([-1.0, 2.0, 3.0, 4.0, 2.0, 1.5, math.pi - 0.3, -1.0, -2.0])
    torch.testing.assert_close(s.boxes.tensor[0], want)
    for axis in ("x", "y"):
        twice = flip(flip(_toy(), axis), axis)
        torch.testing.assert_close(twice.points, _toy().points, rtol=0, atol=0)
        # pi - (pi - yaw) in float32 is within an ulp or two of yaw
        torch.testing.assert_close(twice.boxes.tensor, _toy().boxes.tensor, rtol=0, atol=1e-6)
    assert flip(_toy(), "y").meta["num_lidar_pts"] == _toy().meta["num_lidar_pts"]


def test_rotate_scale_translate_hand_worked():
    s = rotate(_toy(), math.pi / 2)
    torch.testing.assert_close(s.points[0], torch.tensor([-2.0, 1.0, 3.0, 0.5]))
    want = torch.tensor([-2.0, 1.0, 3.0, 4.0, 2.0, 1.5, 0.3 + math.pi / 2, 2.0, 1.0])
    torch.testing.assert_close(s.boxes.tensor[0], want)
    s = scale(_toy(), 2.0)
    torch.testing.assert_close(s.points[0], torch.tensor([2.0, 4.0, 6.0, 0.5]))  # intensity untouched
    torch.testing.assert_close(s.boxes.tensor[0], torch.tensor([2.0, 4.0, 6.0, 8.0, 4.0, 3.0, 0.3, 2.0, -4.0]))
    s = translate(_toy(), (1.0, -1.0, 0.5))
    torch.testing.assert_close(s.points[2], torch.tensor([1.0, -1.0, 0.5, 1.0]))
    torch.testing.assert_close(s.boxes.tensor[1, :3], torch.tensor([-3.0, -0.5, -0.5]))
    # the generators draw from their ranges: a zero-width range is deterministic
    r = GlobalRotation((0.7, 0.7))(_toy(), np.random.default_rng(0))
    torch.testing.assert_close(r.points, rotate(_toy(), 0.7).points)


def test_point_range_filter_keeps_boxes_labels_and_meta_aligned():
    s = PointRangeFilter((-2, -2, -2, 2, 3, 4))(_toy())
    torch.testing.assert_close(s.points, _toy().points[[0, 2]])
    assert s.point_labels.tolist() == [5, 7]
    assert len(s.boxes) == 1 and s.labels.tolist() == [0]
    assert s.meta["num_lidar_pts"] == [1] and s.meta["difficulty"] == [0]
    assert s.meta["ground"] == [-1.8, 0.0, 0.0]  # not a per-box list
    # upper bounds are exclusive
    s = PointRangeFilter((-5, -5, -5, 1.0, 5, 5))(_toy())
    assert s.points[:, 0].tolist() == [-4.0, 0.0]
    with pytest.raises(ValueError, match="x0 < x1"):
        PointRangeFilter((1, 0, 0, 0, 1, 1))


def test_shuffle_keeps_point_label_pairs():
    s = ShufflePoints()(_toy(), np.random.default_rng(3))
    perm = np.random.default_rng(3).permutation(3)
    torch.testing.assert_close(s.points, _toy().points[perm])
    torch.testing.assert_close(s.point_labels, _toy().point_labels[perm])


@pytest.fixture(scope="module")
def scene_sample() -> Sample:
    cfg = SceneConfig(lidar=LidarConfig(num_beams=32, azimuth_resolution=0.4))
    return SyntheticDataset("train", num_frames=1, scene=cfg).get_sample(0)


def _counts(s: Sample) -> list[int]:
    return points_in_boxes(s.points, s.boxes).sum(1).tolist()


@pytest.mark.parametrize("transform", [
    RandomFlip(axes=("x", "y"), prob=1.0), GlobalRotation((-math.pi, math.pi)), GlobalScaling((0.9, 1.1)),
    GlobalTranslation((0.5, 0.5, 0.2)), ShufflePoints(),
])
def test_points_in_boxes_counts_preserved(scene_sample, transform):
    before = _counts(scene_sample)
    assert before == scene_sample.meta["num_lidar_pts"]
    out = transform(scene_sample, np.random.default_rng(11))
    assert _counts(out) == before
    assert len(out.points) == len(scene_sample.points)
    assert out.points is not scene_sample.points


def test_compose_from_configs_is_seeded(scene_sample):
    cfgs = [{"type": "RandomFlip", "axes": ["x", "y"]}, {"type": "GlobalRotation", "angle": 0.78},
            {"type": "GlobalScaling", "scale": [0.95, 1.05]}, {"type": "PointRangeFilter",
                                                                "point_range": [-30, -30, -3, 30, 30, 1]},
            {"type": "ShufflePoints"}]
    aug = build_transforms(cfgs)
    assert isinstance(aug, Compose) and build_transforms([]) is None
    a = aug(scene_sample, np.random.default_rng(1))
    b = aug(scene_sample, np.random.default_rng(1))
    c = aug(scene_sample, np.random.default_rng(2))
    torch.testing.assert_close(a.points, b.points, rtol=0, atol=0)
    assert not torch.equal(a.boxes.tensor, c.boxes.tensor)
    assert _counts(a) == a.meta["num_lidar_pts"]
    assert a.boxes.in_range_bev((-30, -30, -3, 30, 30, 1)).all()
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    torch.testing.assert_close(aug(scene_sample, g1).points, aug(scene_sample, g2).points, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="unknown transform type 'Flip'"):
        build_transforms([{"type": "Flip"}])
    with pytest.raises(ValueError, match="generator or an int seed"):
        aug(scene_sample, None)


def test_ground_plane_follows_the_points(scene_sample):
    g0, gx, gy = scene_sample.meta["ground"]
    ground = scene_sample.point_labels == 0

    def residual(s):
        g0, gx, gy = s.meta["ground"]
        p = s.points[ground].double()
        return float((p[:, 2] - (g0 + gx * p[:, 0] + gy * p[:, 1])).abs().max())

    assert residual(scene_sample) < 0.15  # range noise only
    # hand-worked: rotating by 90 deg turns the gradient (gx, gy) into (-gy, gx)
    r = rotate(scene_sample, math.pi / 2)
    assert r.meta["ground"] == pytest.approx([g0, -gy, gx])
    t = translate(scene_sample, (1.0, 2.0, 0.5))
    assert t.meta["ground"] == pytest.approx([g0 + 0.5 - gx - 2 * gy, gx, gy])
    for fn in (lambda s: flip(s, "x"), lambda s: flip(s, "y"), lambda s: rotate(s, 0.9), lambda s: scale(s, 1.07),
               lambda s: translate(s, (0.3, -0.4, 0.2))):
        assert residual(fn(scene_sample)) < 0.17
