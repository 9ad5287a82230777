"""`pointwin create-data kitti --gt-database` on the real KITTI scans in ../shared/data/kitti/full."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointwin.cli import main
from pointwin.config import load_config
from pointwin.datasets.gt_sampling import read_gt_database
from pointwin.datasets.kitti import KittiDataset, camera_boxes_to_lidar, read_calib, read_label, read_velodyne
from pointwin.engine.builders import build_dataset
from pointwin.ops import points_in_boxes
from tests.conftest import ROOT, shared_file


@pytest.fixture
def kitti_root():
    return shared_file("kitti/full/velodyne/000000.bin").parents[1]


def test_create_data_kitti_gt_database(kitti_root, tmp_path, capsys):
    out = tmp_path / "kitti"
    assert main(["create-data", "kitti", "--root", str(kitti_root), "--out", str(out), "--gt-database"]) == 0
    assert "gt database:" in capsys.readouterr().out
    assert (out / "kitti_infos_all.json").is_file()
    db = read_gt_database(out / "kitti_gt_database")
    # expected: every labelled object (DontCare excluded) with at least one point in its LiDAR box
    expected = []
    for fid in ("000000", "000001", "000002"):
        objs = [o for o in read_label(kitti_root / "label_2" / f"{fid}.txt") if o.type != "DontCare"]
        boxes = camera_boxes_to_lidar(objs, read_calib(kitti_root / "calib" / f"{fid}.txt"))
        pts = torch.from_numpy(read_velodyne(kitti_root / "velodyne" / f"{fid}.bin"))
        counts = points_in_boxes(pts, torch.from_numpy(boxes).float()).sum(1).tolist()
        expected += [(fid, o.type, n, o.difficulty) for o, n in zip(objs, counts) if n >= 1]
    got = [(o["frame_id"], o["class"], o["num_points"], o["meta"]["difficulty"]) for o in db["objects"]]
    assert got == expected and len(got) >= 5
    ped = next(o for o in db["objects"] if o["class"] == "Pedestrian")  # frame 000000's pedestrian
    pts = np.load(db["_root"] / ped["path"], allow_pickle=False)
    assert pts.shape == (ped["num_points"], 4) and pts.dtype == np.float32
    half = np.array(ped["box"][3:6]) / 2 + 1e-4
    assert (np.abs(pts[:, 2]) <= half[2]).all()  # centred on the box (upright: z is box-aligned)
    # the configs' training pipeline reads it: pasted objects reach the sample_groups targets where room allows
    cfg = load_config(ROOT / "configs" / "kitti" / "flatformer.yaml")
    train = cfg["data"]["train"]
    train["root"] = str(kitti_root)
    train["split"] = None
    train["transforms"][0]["db_path"] = str(out / "kitti_gt_database")
    train["transforms"][0]["min_points"] = 1
    train["transforms"][0]["filter_difficulty"] = []
    ds = build_dataset(train)
    assert isinstance(ds, KittiDataset)
    raw, aug = ds.get_sample(0), ds[0]
    assert len(aug.boxes) > len(raw.boxes) and len(aug.labels) == len(aug.boxes)


def test_gt_database_flag_is_kitti_only(tmp_path, capsys):
    assert main(["create-data", "nuscenes", "--root", str(tmp_path), "--gt-database"]) != 0
    assert "only kitti" in capsys.readouterr().err
