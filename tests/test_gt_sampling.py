"""GT-sampling database and copy-paste with BEV collision checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointwin.datasets._geometry import bev_corners, bev_overlap
from pointwin.datasets.base import PointDataset
from pointwin.datasets.gt_sampling import GTSampling, build_gt_database, read_gt_database
from pointwin.datasets.synthetic import LidarConfig, SceneConfig, SyntheticDataset
from pointwin.datasets.transforms import build_transform
from pointwin.ops import points_in_boxes
from pointwin.structures import Boxes3D, Sample

from .conftest import Polygon

CH = ("x", "y", "z", "intensity")


class _Toy(PointDataset):
    """One frame: a car box holding 3 points, a pedestrian box holding 2, and one stray point."""

    class_names = ("Car", "Pedestrian")
    channels = CH

    def __len__(self):
        return 1

    def get_sample(self, index):
        pts = torch.tensor([[10.0, 0.0, -1.0, 0.1], [11.0, 0.5, -0.5, 0.2], [9.0, -0.5, -1.5, 0.3],
                            [0.0, 10.0, -1.0, 0.4], [0.1, 10.2, -0.8, 0.5], [30.0, 30.0, 0.0, 0.6]])
        boxes = torch.tensor([[10.0, 0.0, -1.0, 4.0, 2.0, 1.6, 0.0], [0.0, 10.0, -1.0, 0.8, 0.8, 1.8, 0.5]])
        return Sample(points=pts, channels=CH, frame_id="toy/0", boxes=Boxes3D(boxes), labels=torch.tensor([0, 1]),
                      meta={"num_lidar_pts": [3, 2]})


def test_bev_overlap_matches_shapely():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(-5, 5, (40, 2)), np.zeros((40, 1)), rng.uniform(0.5, 4, (40, 3)),
                        rng.uniform(-3.2, 3.2, (40, 1))], 1)
    got = bev_overlap(a, a)
    polys = [Polygon(c) for c in bev_corners(a)]
    ref = np.array([[p.intersects(q) for q in polys] for p in polys])
    np.testing.assert_array_equal(got, ref)


def test_database_from_toy_and_hand_worked_paste(tmp_path):
    path = build_gt_database(_Toy(), tmp_path / "db", progress=False)
    db = read_gt_database(path)
    assert [(o["class"], o["num_points"]) for o in db["objects"]] == [("Car", 3), ("Pedestrian", 2)]
    car = np.load(tmp_path / "db" / db["objects"][0]["path"])
    np.testing.assert_allclose(car, [[0, 0, 0, 0.1], [1, 0.5, 0.5, 0.2], [-1, -0.5, -0.5, 0.3]], atol=1e-6)

    # the target frame has a car box overlapping the database car, 2 scene points inside the database
    # pedestrian's box, and a point elsewhere
    scene = Sample(points=torch.tensor([[9.0, 1.5, -1.0, 0.9], [0.0, 10.1, -1.0, 0.9], [-0.1, 9.9, -0.5, 0.9],
                                        [-20.0, 0.0, -1.0, 0.9]]),
                   channels=CH, frame_id="scene", boxes=Boxes3D(torch.tensor([[9.0, 2.0, -1.0, 4.0, 2.0, 1.6, 0.1]])),
                   labels=torch.tensor([0]), meta={"num_lidar_pts": [1]})
    paste = GTSampling(tmp_path / "db", class_names=("Car", "Pedestrian"), sample_groups={"Car": 2, "Pedestrian": 1},
                       min_points=1)
    out = paste(scene, np.random.default_rng(0))
    # the car collides (its BEV box overlaps the scene's car): only the pedestrian is pasted
    assert out.labels.tolist() == [0, 1]
    torch.testing.assert_close(out.boxes.tensor[1], torch.tensor([0.0, 10.0, -1.0, 0.8, 0.8, 1.8, 0.5]))
    # scene points inside the pedestrian box are gone, its 2 points are in
    expected = torch.tensor([[9.0, 1.5, -1.0, 0.9], [-20.0, 0.0, -1.0, 0.9], [0.0, 10.0, -1.0, 0.4],
                             [0.1, 10.2, -0.8, 0.5]])
    torch.testing.assert_close(out.points, expected)
    assert out.meta["num_lidar_pts"] == [1, 2]
    # a frame that already has its quota gets nothing
    full = paste(out, np.random.default_rng(0))
    assert full.labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown class"):
        GTSampling(tmp_path / "db", class_names=("Car",), sample_groups={"Truck": 3})


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory):
    cfg = SceneConfig(lidar=LidarConfig(num_beams=32, azimuth_resolution=0.4))
    ds = SyntheticDataset("train", num_frames=4, scene=cfg)
    root = tmp_path_factory.mktemp("gtdb")
    build_gt_database(ds, root, min_points=5, progress=False)
    return ds, root, cfg


def test_database_objects_are_the_points_in_their_boxes(synthetic_db):
    ds, root, _ = synthetic_db
    db = read_gt_database(root)
    assert db["channels"] == list(CH) and len(db["objects"]) > 10
    first = ds.get_sample(0)
    objs = [o for o in db["objects"] if o["frame_id"] == first.frame_id]
    inside = points_in_boxes(first.points, first.boxes)
    assert len(objs) == int((inside.sum(1) >= 5).sum())
    for o in objs:
        k = int(o["path"].split("_")[-2])
        box = first.boxes.tensor[k]
        pts = np.load(root / o["path"])
        pts[:, :3] += box[:3].numpy()
        np.testing.assert_allclose(pts, first.points[inside[k]].numpy(), atol=1e-5)
        assert o["num_points"] == first.meta["num_lidar_pts"][k] and o["ground"] == first.meta["ground"]
    # rebuilding reuses the per-frame records and gives the same index
    before = json.loads((root / "gt_database.json").read_text())
    stamp = (root / "frames" / f"{first.frame_id}.json").stat().st_mtime_ns
    build_gt_database(ds, root, min_points=5, progress=False)
    assert json.loads((root / "gt_database.json").read_text()) == before
    assert (root / "frames" / f"{first.frame_id}.json").stat().st_mtime_ns == stamp


def test_paste_into_synthetic_frame(synthetic_db):
    _, root, cfg = synthetic_db
    scene = SyntheticDataset("val", num_frames=1, scene=cfg).get_sample(0)
    aug = build_transform({"type": "GTSampling", "db_path": str(root), "class_names": ["Car", "Pedestrian", "Cyclist"],
                           "sample_groups": {"Car": 25, "Pedestrian": 12, "Cyclist": 8}, "min_points": 5,
                           "point_labels": {"Car": 1}})
    out = aug(scene, np.random.default_rng(7))
    again = aug(scene, np.random.default_rng(7))
    torch.testing.assert_close(out.points, again.points, rtol=0, atol=0)
    n_old = len(scene.boxes)
    assert len(out.boxes) > n_old + 3
    torch.testing.assert_close(out.boxes.tensor[:n_old], scene.boxes.tensor)
    # no two boxes overlap in BEV (shapely reference)
    polys = [Polygon(c) for c in bev_corners(out.boxes.tensor.numpy())]
    for i in range(len(polys)):
        for j in range(i + 1, len(polys)):
            assert polys[i].intersection(polys[j]).area < 1e-9
    # every box holds exactly its recorded points: old scene points inside pasted boxes were removed
    counts = points_in_boxes(out.points, out.boxes).sum(1).tolist()
    assert counts == out.meta["num_lidar_pts"]
    assert len(out.meta["num_lidar_pts"]) == len(out.labels) == len(out.boxes)
    # pasted boxes stand on this frame's ground plane
    g0, gx, gy = scene.meta["ground"]
    b = out.boxes.tensor[n_old:].double()
    torch.testing.assert_close(b[:, 2] - b[:, 5] / 2, g0 + gx * b[:, 0] + gy * b[:, 1], atol=1e-5, rtol=0)
    # per-point labels follow: pasted car points get 1, others -1
    assert out.point_labels.shape == (len(out.points),)
    pasted = points_in_boxes(out.points, out.boxes.tensor[n_old:])
    for k, lab in enumerate(out.labels[n_old:].tolist()):
        assert set(out.point_labels[pasted[k]].tolist()) == {1 if lab == 0 else -1}
