"""KITTI reader on the real scans in ../shared/data/kitti/full."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointwin.datasets.base import InfoDataset
from pointwin.datasets.kitti import (
    KittiDataset,
    camera_boxes_to_lidar,
    create_kitti_infos,
    lidar_boxes_to_camera,
    read_calib,
    read_label,
    read_velodyne,
)
from pointwin.ops import points_in_boxes
from tests.conftest import shared_file


@pytest.fixture
def kitti_root():
    return shared_file("kitti/full/velodyne/000000.bin").parents[1]


def test_calib_label_and_scan_parse(kitti_root):
    calib = read_calib(kitti_root / "calib" / "000000.txt")
    assert calib.R0_rect[0, 0] == 0.9999128 and calib.R0_rect[3, 3] == 1.0
    assert calib.Tr_velo_to_cam[0, 3] == -0.02457729 and calib.Tr_velo_to_cam[2, 0] == 0.9999753
    assert calib.P2[0, 3] == 45.75831
    objs = read_label(kitti_root / "label_2" / "000001.txt")
    assert [o.type for o in objs] == ["Truck", "Car", "Cyclist"] + ["DontCare"] * 4
    car = objs[1]
    assert car.dimensions == (1.67, 1.87, 3.69) and car.location == (-16.53, 2.39, 58.49)
    assert car.rotation_y == 1.57 and car.occluded == 0 and car.score is None
    pts = read_velodyne(kitti_root / "velodyne" / "000000.bin")
    assert pts.shape == (1846144 // 16, 4) and pts.dtype == np.float32
    assert 0 <= pts[:, 3].min() and pts[:, 3].max() <= 1


def test_hand_checked_box_conversion(kitti_root):
    # 000000: "Pedestrian ... h w l = 1.89 0.48 1.20, location 1.84 1.47 8.41, rotation_y 0.01"
    calib = read_calib(kitti_root / "calib" / "000000.txt")
    (ped,) = read_label(kitti_root / "label_2" / "000000.txt")
    box = camera_boxes_to_lidar([ped], calib)[0]
    # by hand with R0_rect ~ I and Tr ~ [[0,-1,0,-0.025],[0,0,-1,-0.061],[1,0,0,-0.332]]:
    # x = z_cam + 0.332 = 8.742, y = -(x_cam + 0.025) = -1.865, z = -(y_cam - h/2 + 0.061) = -0.586
    # (R0_rect's ~0.5 deg pitch moves z by 8.4 m * 0.0085 = 7 cm, hence the tolerance)
    np.testing.assert_allclose(box[:3], [8.742, -1.865, -0.586], atol=0.1)
    np.testing.assert_allclose(box[3:6], [1.20, 0.48, 1.89])
    assert box[6] == pytest.approx(-0.01 - math.pi / 2, abs=0.01)
    # exact: invert the composed 4x4 transform directly
    full = calib.R0_rect @ calib.Tr_velo_to_cam
    ref = np.linalg.inv(full) @ np.array([1.84, 1.47 - 1.89 / 2, 8.41, 1.0])
    np.testing.assert_allclose(box[:3], ref[:3], atol=1e-9)
    # and back
    cam = lidar_boxes_to_camera(box[None], calib)[0]
    np.testing.assert_allclose(cam[:6], [1.84, 1.47, 8.41, 1.89, 0.48, 1.20], atol=1e-9)
    assert cam[6] == pytest.approx(0.01, abs=1e-3)


def test_boxes_land_on_their_points(kitti_root):
    ds = KittiDataset(kitti_root)
    assert ds.frame_ids == ["000000", "000001", "000002"]
    checked = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s.channels == ("x", "y", "z", "intensity") and s.points.shape[1] == 4
        assert len(s.boxes) == len(s.labels) == len(s.meta["difficulty"])
        assert set(s.labels.tolist()) <= {0, 1, 2}
        inside = points_in_boxes(s.points, s.boxes).sum(1)
        moved = s.boxes.tensor.clone()
        side = torch.stack([-torch.sin(moved[:, 6]), torch.cos(moved[:, 6])], 1)
        moved[:, :2] += 2.0 * side  # 2 m sideways: the box should leave its object
        inside_moved = points_in_boxes(s.points, moved).sum(1)
        for box, n, m in zip(s.boxes.tensor, inside.tolist(), inside_moved.tolist()):
            if float(torch.linalg.norm(box[:2])) < 50:
                checked += 1
                assert n >= 15, (s.frame_id, box, n)
                assert m < n / 3, (s.frame_id, box, n, m)
    assert checked == 3  # the pedestrian (377 points), the cyclist at 46 m, the car at 35 m


def test_dontcare_dropped_and_classes_selected(kitti_root):
    ds = KittiDataset(kitti_root, class_names=("Car", "Truck"))
    s = ds[1]
    assert s.labels.tolist() == [1, 0]  # Truck, Car in file order; Cyclist and DontCare dropped
    assert s.meta["occluded"] == [0, 0]
    with pytest.raises(ValueError, match="unknown class"):
        KittiDataset(kitti_root, class_names=("Car", "DontCare"))


def test_bad_files_name_themselves(tmp_path):
    (tmp_path / "calib.txt").write_text("P2: 1 2 3\nR0_rect: 1 0 0 0 1 0 0 0 1\n")
    with pytest.raises(ValueError, match="calib.txt: P2 must have 12 numbers"):
        read_calib(tmp_path / "calib.txt")
    (tmp_path / "calib.txt").write_text("P2: " + " ".join(["0"] * 12) + "\n")
    with pytest.raises(ValueError, match="calib.txt: missing R0_rect"):
        read_calib(tmp_path / "calib.txt")
    (tmp_path / "label.txt").write_text("Car 0 0 0 1 2 3 4 1.5 1.6 3.9 1 2\n")
    with pytest.raises(ValueError, match=r"label.txt:1: a KITTI label row has 15 fields"):
        read_label(tmp_path / "label.txt")
    np.zeros(7, np.float32).tofile(tmp_path / "scan.bin")
    with pytest.raises(ValueError, match="scan.bin: size 28 bytes is not a multiple of 16 bytes per point"):
        read_velodyne(tmp_path / "scan.bin")
    with pytest.raises(FileNotFoundError, match="no velodyne"):
        KittiDataset(tmp_path)


def test_info_files_read_back_like_the_raw_reader(kitti_root, tmp_path):
    paths = create_kitti_infos(kitti_root, tmp_path, progress=False)
    assert list(paths) == ["all"]
    info_ds = InfoDataset(paths["all"], class_names=("Car", "Pedestrian", "Cyclist"))
    raw = KittiDataset(kitti_root)
    assert len(info_ds) == len(raw) == 3
    for i in range(3):
        a, b = info_ds[i], raw[i]
        assert a.frame_id == b.frame_id
        torch.testing.assert_close(a.points, b.points, rtol=0, atol=0)
        torch.testing.assert_close(a.boxes.tensor, b.boxes.tensor, rtol=0, atol=0)
        assert a.labels.tolist() == b.labels.tolist() and a.meta["difficulty"] == b.meta["difficulty"]
        assert a.meta["num_lidar_pts"] == points_in_boxes(a.points, a.boxes).sum(1).tolist()
