"""On-disk format (JSON infos + .npy/.bin points), the Dataset base class and collate."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from pointwin.datasets import DATASETS, InfoDataset, SyntheticDataset, create_synthetic, load_points, save_points
from pointwin.datasets.base import atomic_write_json, read_infos
from pointwin.datasets.synthetic import LidarConfig, SceneConfig
from pointwin.structures import collate

TINY = SceneConfig(lidar=LidarConfig(num_beams=16, azimuth_resolution=1.0))


def test_points_round_trip_npy_and_bin(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(6, 4) / 7
    save_points(tmp_path / "a.npy", arr)
    save_points(tmp_path / "a.bin", arr)
    np.testing.assert_array_equal(load_points(tmp_path / "a.npy", 4), arr)
    np.testing.assert_array_equal(load_points(tmp_path / "a.bin", 4), arr)
    assert (tmp_path / "a.bin").stat().st_size == 24 * 4
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    with pytest.raises(ValueError, match="a.bin: size 96 bytes is not a multiple of 20 bytes per point"):
        load_points(tmp_path / "a.bin", 5)
    with pytest.raises(ValueError, match="3 columns"):
        load_points(tmp_path / "a.npy", 3)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_points(tmp_path / "missing.bin", 4)
    with pytest.raises(ValueError, match=".npy or .bin"):
        save_points(tmp_path / "a.txt", arr)


def test_create_synthetic_matches_on_the_fly_and_resumes(tmp_path):
    paths = create_synthetic(tmp_path, num_train=2, num_val=1, seed=3, scene=TINY, progress=False)
    assert set(paths) == {"train", "val"}
    disk = SyntheticDataset("train", data_root=tmp_path)
    live = SyntheticDataset("train", num_frames=2, seed=3, scene=TINY)
    assert len(disk) == 2
    for i in range(2):
        a, b = disk[i], live[i]
        assert a.frame_id == b.frame_id
        torch.testing.assert_close(a.points, b.points, rtol=0, atol=0)
        torch.testing.assert_close(a.boxes.tensor, b.boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(a.labels, b.labels)
        torch.testing.assert_close(a.point_labels, b.point_labels)
        assert a.meta["num_lidar_pts"] == b.meta["num_lidar_pts"]
    # resume: a finished frame is not rewritten, a missing one is regenerated identically
    frames = sorted((tmp_path / "frames" / "train").iterdir())
    keep_mtime = frames[0].stat().st_mtime_ns
    lost = frames[1].read_text()
    frames[1].unlink()
    create_synthetic(tmp_path, num_train=2, num_val=1, seed=3, scene=TINY, progress=False)
    assert frames[0].stat().st_mtime_ns == keep_mtime
    assert json.loads(frames[1].read_text()) == json.loads(lost)
    with pytest.raises(ValueError, match="different settings"):
        create_synthetic(tmp_path, num_train=2, num_val=1, seed=4, scene=TINY, progress=False)
    # two worker processes write the same files
    par = tmp_path / "parallel"
    create_synthetic(par, num_train=2, num_val=1, seed=3, scene=TINY, workers=2, progress=False)
    for split in ("train", "val"):
        name = f"synthetic_infos_{split}.json"
        assert json.loads((par / name).read_text()) == json.loads((tmp_path / name).read_text())
        fid = json.loads((par / name).read_text())["frames"][0]["points_path"]
        np.testing.assert_array_equal(np.load(par / fid), np.load(tmp_path / fid))


def test_info_dataset_filters_classes_and_checks_files(tmp_path):
    pts = np.array([[1, 2, 3, 0.5], [4, 5, 6, 0.25]], np.float32)
    save_points(tmp_path / "p" / "f0.bin", pts)
    info = {"format": "pointwin.infos", "version": 1, "dataset": "toy", "split": "val",
            "class_names": ["Car", "Pedestrian"], "channels": ["x", "y", "z", "intensity"],
            "frames": [{"frame_id": "f0", "points_path": "p/f0.bin", "num_points": 2,
                        "boxes": [[0, 0, 0, 4, 2, 1.5, 0], [1, 1, 0, 1, 1, 2, 0.3]], "labels": ["Car", "Pedestrian"],
                        "meta": {"num_lidar_pts": [10, 3], "scene": "s"}}]}
    atomic_write_json(tmp_path / "infos.json", info)
    ds = InfoDataset(tmp_path / "infos.json", class_names=["Pedestrian"])
    s = ds[0]
    np.testing.assert_array_equal(s.points.numpy(), pts)
    assert s.boxes.tensor.tolist() == [pytest.approx([1, 1, 0, 1, 1, 2, 0.3])]
    assert s.labels.tolist() == [0] and s.meta["num_lidar_pts"] == [3] and s.meta["scene"] == "s"
    assert DATASETS.get("InfoDataset") is InfoDataset and DATASETS.get("SyntheticDataset") is SyntheticDataset

    info["frames"][0]["num_points"] = 3
    atomic_write_json(tmp_path / "bad.json", info)
    with pytest.raises(ValueError, match="has 2 points but"):
        InfoDataset(tmp_path / "bad.json")[0]
    info["frames"][0]["labels"] = ["Car"]
    atomic_write_json(tmp_path / "bad.json", info)
    with pytest.raises(ValueError, match=r"frames\[0\] \(f0\) has 2 boxes but 1 labels"):
        read_infos(tmp_path / "bad.json")
    (tmp_path / "notinfo.json").write_text('{"frames": []}')
    with pytest.raises(ValueError, match="not a pointwin info file"):
        read_infos(tmp_path / "notinfo.json")
    (tmp_path / "broken.json").write_text('{"frames": [')
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        read_infos(tmp_path / "broken.json")


def test_transforms_get_a_seeded_generator_per_item_and_epoch():
    seen = []

    def record(sample, rng):
        seen.append(float(rng.random()))
        return sample

    ds = SyntheticDataset("train", num_frames=2, scene=TINY, transforms=record, aug_seed=5)
    ds[1]
    ds[1]
    ds.set_epoch(1)
    ds[1]
    assert seen[0] == seen[1] != seen[2]
    assert seen[0] == np.random.default_rng([5, 0, 1]).random()


def test_collate_builds_points_batch():
    ds = SyntheticDataset("val", num_frames=2, scene=TINY)
    samples = [ds[0], ds[1]]
    batch = collate(samples)
    n0, n1 = len(samples[0].points), len(samples[1].points)
    assert batch.points.data.shape == (n0 + n1, 4) and batch.batch_size == 2
    assert batch.points.counts().tolist() == [n0, n1]
    torch.testing.assert_close(batch.points.sample(1), samples[1].points)
    assert batch.points.channels == ("x", "y", "z", "intensity")
    assert [len(b) for b in batch.boxes] == [len(s.boxes) for s in samples]
    assert batch.point_labels.shape == (n0 + n1,)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    (b2,) = list(loader)
    torch.testing.assert_close(b2.points.data, batch.points.data)


def test_build_from_config_with_transform_list():
    cfg = {"type": "SyntheticDataset", "split": "val", "num_frames": 2,
           "scene": {"lidar": {"num_beams": 16, "azimuth_resolution": 1.0}, "num_cars": [2, 4]},
           "transforms": [{"type": "PointRangeFilter", "point_range": [-10, -10, -3, 10, 10, 1]},
                          {"type": "ShufflePoints"}]}
    ds = DATASETS.build(cfg, where="data.train")
    assert ds.scene.num_cars == (2, 4) and ds.scene.lidar.num_beams == 16
    s = ds[0]
    assert s.points[:, :2].abs().max() < 10
    assert len(s.boxes) == 0 or bool(s.boxes.in_range_bev((-10, -10, -3, 10, 10, 1)).all())
