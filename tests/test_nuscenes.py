"""nuScenes: info creation from JSON tables (tiny synthetic table set around a real keyframe), boxes, sweeps,
lidarseg mapping, CBGS, and the real sample files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pointwin.datasets.nuscenes import (
    LIDARSEG_CLASSES,
    NuScenesDataset,
    NuScenesTables,
    cbgs_indices,
    create_nuscenes_infos,
    load_lidar_points,
)
from pointwin.ops import points_in_boxes
from tests.conftest import shared_file

KEYFRAME = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
BOXES = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.boxes.json"
SWEEPS10 = "nuscenes/sweeps10_ff9eff4389a740848f9a56ad749a4ae8.fp16.bin"

# lidarseg fine categories in the official index order
FINE = ["noise", "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
        "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
        "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
        "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack",
        "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction",
        "vehicle.emergency.ambulance", "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer",
        "vehicle.truck", "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
        "static.other", "static.vegetation", "vehicle.ego"]
CATEGORY_OF = {"car": "vehicle.car", "pedestrian": "human.pedestrian.adult", "bicycle": "vehicle.bicycle",
               "bus": "vehicle.bus.rigid", "barrier": "movable_object.barrier", "truck": "vehicle.truck",
               "construction_vehicle": "vehicle.construction", "traffic_cone": "movable_object.trafficcone",
               "ignore": "movable_object.debris"}


ATTRS = ["vehicle.moving", "vehicle.parked", "pedestrian.moving", "pedestrian.standing", "cycle.without_rider"]


def _attribute_tokens(box):
    """A plausible attribute per class from the box's speed (none for barriers, cones, ...)."""
    v = np.hypot(*box["velocity"]) if not np.isnan(box["velocity"]).any() else 0.0
    name = box["name"]
    if name in ("car", "truck", "bus", "construction_vehicle"):
        return ["attr_vehicle.moving" if v > 0.5 else "attr_vehicle.parked"]
    if name == "pedestrian":
        return ["attr_pedestrian.moving" if v > 0.3 else "attr_pedestrian.standing"]
    if name == "bicycle":
        return ["attr_cycle.without_rider"]
    return []


def _quat_wxyz(matrix):
    x, y, z, w = Rotation.from_matrix(matrix).as_quat()
    return [w, x, y, z]


def _pose_record(token, m, ts=None):
    rec = {"token": token, "translation": m[:3, 3].tolist(), "rotation": _quat_wxyz(m[:3, :3])}
    if ts is not None:
        rec["timestamp"] = ts
    return rec


def _moved(pose, dx, dyaw):
    """The ego pose after driving dx metres along its heading and turning dyaw."""
    step = np.eye(4)
    step[:3, :3] = Rotation.from_euler("z", dyaw).as_matrix()
    step[0, 3] = dx
    return pose @ step


def _build_tables(root, version="v1.0-mini", with_annotations=True):
    """A tiny nuScenes table set around the real keyframe.

    Scene scene-0061 (mini_train): samples s0 (t - 0.5 s), s1 (the real keyframe, t), s2 (t + 0.5 s);
    LIDAR_TOP chain s0 -> sweep a (t - 0.1) -> sweep b (t - 0.05) -> s1 -> s2. Sweep clouds are the real
    keyframe points seen from the sweeps' ego poses (a static world). s1's annotations are the 69 real
    boxes moved to the global frame with scipy (an independent path); their neighbours in s0/s2 encode
    the real velocities.
    """
    meta = json.loads(shared_file(BOXES).read_text())
    key = load_lidar_points(shared_file(KEYFRAME))
    lidar2ego = np.asarray(meta["lidar2ego"], dtype=np.float64)
    lidar2ego[:3, :3] = Rotation.from_matrix(lidar2ego[:3, :3]).as_matrix()  # orthonormalise float32 values
    ego2global = np.asarray(meta["ego2global"], dtype=np.float64)
    ego2global[:3, :3] = Rotation.from_matrix(ego2global[:3, :3]).as_matrix()
    t1 = 1532402927647951
    poses = {"s0": (_moved(ego2global, -4.0, -0.03), t1 - 500_000), "a": (_moved(ego2global, -0.8, -0.006),
                                                                            t1 - 100_000),
             "b": (_moved(ego2global, -0.4, -0.003), t1 - 50_000), "s1": (ego2global, t1),
             "s2": (_moved(ego2global, 4.0, 0.03), t1 + 500_000)}
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True)
    (root / "sweeps" / "LIDAR_TOP").mkdir(parents=True)
    key_name = "samples/LIDAR_TOP/" + shared_file(KEYFRAME).name
    (root / key_name).symlink_to(shared_file(KEYFRAME))
    files = {"s1": key_name, "s2": key_name}
    for name in ("s0", "a", "b"):
        sweep_from_key = np.linalg.inv(lidar2ego) @ np.linalg.inv(poses[name][0]) @ ego2global @ lidar2ego
        pts = key.astype(np.float64)
        pts[:, :3] = pts[:, :3] @ sweep_from_key[:3, :3].T + sweep_from_key[:3, 3]
        files[name] = f"sweeps/LIDAR_TOP/sweep_{name}.pcd.bin"
        pts.astype(np.float32).tofile(root / files[name])

    order = ["s0", "a", "b", "s1", "s2"]
    sample_of = {"s0": "smp0", "s1": "smp1", "s2": "smp2", "a": "smp1", "b": "smp1"}
    sample_data = []
    for i, name in enumerate(order):
        sample_data.append({
            "token": f"sd_{name}", "sample_token": sample_of[name], "ego_pose_token": f"ep_{name}",
            "calibrated_sensor_token": "cs_lidar", "timestamp": poses[name][1], "fileformat": "pcd",
            "is_key_frame": name.startswith("s"), "filename": files[name],
            "prev": f"sd_{order[i - 1]}" if i else "", "next": f"sd_{order[i + 1]}" if i + 1 < len(order) else ""})
    sample_data.append({"token": "sd_cam", "sample_token": "smp1", "ego_pose_token": "ep_s1",
                        "calibrated_sensor_token": "cs_cam", "timestamp": t1, "fileformat": "jpg",
                        "is_key_frame": True, "filename": "samples/CAM_FRONT/x.jpg", "prev": "", "next": ""})
    tables = {
        "scene": [{"token": "scene_tok", "name": "scene-0061", "first_sample_token": "smp0",
                   "last_sample_token": "smp2", "nbr_samples": 3, "log_token": "log"}],
        "sample": [{"token": f"smp{k}", "scene_token": "scene_tok", "timestamp": poses[f"s{k}"][1],
                    "prev": f"smp{k - 1}" if k else "", "next": f"smp{k + 1}" if k < 2 else ""} for k in range(3)],
        "sample_data": sample_data,
        "sensor": [{"token": "sensor_lidar", "channel": "LIDAR_TOP", "modality": "lidar"},
                   {"token": "sensor_cam", "channel": "CAM_FRONT", "modality": "camera"}],
        "calibrated_sensor": [dict(_pose_record("cs_lidar", lidar2ego), sensor_token="sensor_lidar"),
                              dict(_pose_record("cs_cam", np.eye(4)), sensor_token="sensor_cam")],
        "ego_pose": [_pose_record(f"ep_{n}", poses[n][0], poses[n][1]) for n in order],
        "category": [{"token": f"cat{i}", "name": n, "index": i} for i, n in enumerate(FINE)],
        "instance": [], "sample_annotation": [], "lidarseg": [],
        # tables pointwin does not read, present so that nuscenes-devkit can load the set as a cross-check
        "attribute": [{"token": f"attr_{a}", "name": a, "description": ""} for a in ATTRS],
        "visibility": [{"token": "4", "level": "v80-100", "description": ""}],
        "log": [{"token": "log", "logfile": "", "vehicle": "n015", "date_captured": "2018-07-24",
                 "location": "singapore-onenorth"}],
        "map": [{"token": "map", "log_tokens": ["log"], "category": "semantic_prior", "filename": ""}],
    }
    key_to_global = ego2global @ lidar2ego
    expected = []
    for j, b in enumerate(meta["boxes"]):
        x, y, z, length, width, height, yaw = b["box"]
        center = (key_to_global @ np.array([x, y, z, 1.0]))[:3]
        rot = key_to_global[:3, :3] @ Rotation.from_euler("z", yaw).as_matrix()
        moving = not np.isnan(b["velocity"]).any()  # a NaN velocity: an object seen in this sample only
        vel = key_to_global[:3, :3] @ np.array([b["velocity"][0], b["velocity"][1], 0.0]) if moving else 0
        tables["instance"].append({"token": f"inst{j}", "category_token": f"cat{FINE.index(CATEGORY_OF[b['name']])}"})
        for k, dt in ((0, -0.5), (1, 0.0), (2, 0.5)) if moving else ((1, 0.0),):
            tables["sample_annotation"].append({
                "token": f"ann{k}_{j}", "sample_token": f"smp{k}", "instance_token": f"inst{j}",
                "translation": (center + vel * dt).tolist(), "size": [width, length, height],
                "rotation": _quat_wxyz(rot), "num_lidar_pts": b["num_lidar_pts"], "num_radar_pts": b["num_radar_pts"],
                "prev": f"ann{k - 1}_{j}" if k and moving else "", "next": f"ann{k + 1}_{j}" if k < 2 and moving
                else "", "attribute_tokens": _attribute_tokens(b), "visibility_token": "4"})
        expected.append(b)
    fine = np.random.default_rng(0).integers(0, len(FINE), len(key)).astype(np.uint8)
    (root / "lidarseg" / version).mkdir(parents=True)
    fine.tofile(root / "lidarseg" / version / "sd_s1_lidarseg.bin")
    tables["lidarseg"].append({"token": "ls1", "sample_data_token": "sd_s1",
                               "filename": f"lidarseg/{version}/sd_s1_lidarseg.bin"})
    if not with_annotations:
        tables["sample_annotation"], tables["instance"] = [], []
    (root / version).mkdir()
    for name, rows in tables.items():
        (root / version / f"{name}.json").write_text(json.dumps(rows))
    return key, expected, fine, {n: (poses[n][1]) for n in order}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuscenes")
    key, expected, fine, stamps = _build_tables(root)
    paths = create_nuscenes_infos(root, "v1.0-mini", out=root / "infos", max_sweeps=10)
    assert paths["mini_train"] == root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json"
    return root, key, expected, fine, stamps, _read(paths)


def _read(paths):
    return {split: json.loads(path.read_text())["infos"] for split, path in paths.items()}


def test_infos_structure_and_sweeps(mini):
    root, key, expected, fine, stamps, result = mini
    assert set(result) == {"mini_train", "mini_val"} and len(result["mini_val"]) == 0
    infos = result["mini_train"]
    assert [i["token"] for i in infos] == ["smp0", "smp1", "smp2"]
    info = infos[1]
    assert info["lidar_path"].startswith("samples/LIDAR_TOP/") and info["lidarseg_path"].endswith("sd_s1_lidarseg.bin")
    assert [s["sample_data_token"] for s in info["sweeps"]] == ["sd_b", "sd_a", "sd_s0"]
    np.testing.assert_allclose([s["time_lag"] for s in info["sweeps"]], [0.05, 0.1, 0.5])
    assert infos[0]["sweeps"] == []
    on_disk = json.loads((root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json").read_text())
    assert on_disk["infos"] == json.loads(json.dumps(infos)) and on_disk["metadata"]["max_sweeps"] == 10
    two = _read(create_nuscenes_infos(root, "v1.0-mini", out=root / "infos2", max_sweeps=2))
    assert [s["sample_data_token"] for s in two["mini_train"][1]["sweeps"]] == ["sd_b", "sd_a"]


def test_boxes_converted_to_lidar_frame(mini):
    root, key, expected, fine, stamps, result = mini
    annos = result["mini_train"][1]["annos"]
    boxes = np.asarray(annos["boxes"])
    assert boxes.shape == (69, 9)
    ref = np.array([b["box"] for b in expected])
    np.testing.assert_allclose(boxes[:, :6], ref[:, :6], atol=1e-5)
    dyaw = (boxes[:, 6] - ref[:, 6] + math.pi) % (2 * math.pi) - math.pi
    assert np.abs(dyaw).max() < 1e-6
    ref_vel = np.array([b["velocity"] for b in expected])
    valid = ~np.isnan(ref_vel).any(1)
    assert annos["velocity_valid"] == valid.tolist() and (~valid).sum() == 2
    np.testing.assert_allclose(boxes[valid, 7:9], ref_vel[valid], atol=1e-5)
    np.testing.assert_array_equal(boxes[~valid, 7:9], 0.0)
    assert annos["names"] == [b["name"] for b in expected]
    assert annos["num_lidar_pts"] == [b["num_lidar_pts"] for b in expected]
    # s0 has only a forward neighbour: a one-sided difference, still valid (0.5 s apart)
    s0 = result["mini_train"][0]["annos"]
    assert len(s0["boxes"]) == 67 and all(s0["velocity_valid"])


def test_keyframe_points_in_boxes_reproduce_num_lidar_pts(mini):
    root, key, expected, fine, stamps, result = mini
    ds = NuScenesDataset(root, root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json", num_sweeps=1,
                         filter_empty=False, class_names=tuple(CATEGORY_OF))
    sample = ds[1]
    assert sample.points.shape == (34688, 5) and sample.channels[-1] == "time_lag"
    assert float(sample.points[:, 4].abs().max()) == 0.0
    counts = points_in_boxes(sample.points.double(), sample.boxes.tensor.double()).sum(1).numpy()
    annotated = np.asarray(sample.meta["num_lidar_pts"])
    assert len(counts) == 69
    assert (counts == annotated).sum() >= 58, (counts, annotated)
    # the rest differ by a few border points (at most 5 points or 5 % of the box's points)
    assert (np.abs(counts - annotated) <= np.maximum(5, 0.05 * annotated)).all()
    # and the boxes that went through the tables count exactly the points of the original lidar-frame boxes
    direct = points_in_boxes(torch.from_numpy(key).double(), torch.tensor([b["box"] for b in expected],
                                                                           dtype=torch.float64)).sum(1).numpy()
    np.testing.assert_array_equal(counts, direct)


def test_multisweep_aggregation_aligns_static_world(mini):
    root, key, expected, fine, stamps, result = mini
    ds = NuScenesDataset(root, root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json", num_sweeps=10)
    sample = ds[1]
    pts = sample.points.numpy()
    lags = np.unique(pts[:, 4])
    np.testing.assert_allclose(lags, [0.0, 0.05, 0.1, 0.5], atol=1e-6)
    key_xyz = key[:, :3]
    for lag, name in zip(lags[1:], ("b", "a", "s0")):
        block = pts[pts[:, 4] == lag]
        # the returns within 1 m (x-y) of the sweep's own sensor are gone (the real keyframe has ~8k
        # points near its origin; seen from sweep b, 0.4 m away, they are still within 1 m) ...
        raw = load_lidar_points(root / "sweeps" / "LIDAR_TOP" / f"sweep_{name}.pcd.bin")
        assert len(block) == int((np.hypot(raw[:, 0], raw[:, 1]) >= 1.0).sum())
        if name == "b":
            assert len(block) < len(key) - 5000
        # ... and every other sweep point lands back on a keyframe point (same static world)
        from scipy.spatial import cKDTree

        dist, _ = cKDTree(key_xyz).query(block[:, :3])
        assert dist.max() < 2e-3, lag
    assert sample.boxes.tensor.shape[1] == 9
    assert set(sample.labels.tolist()) <= set(range(10))
    # filter_empty dropped the boxes without lidar points
    assert all(n > 0 for n in sample.meta["num_lidar_pts"])


def test_lidarseg_labels_map_to_16_classes(mini):
    root, key, expected, fine, stamps, result = mini
    ds = NuScenesDataset(root, root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json", num_sweeps=2,
                         with_lidarseg=True)
    sample = ds[1]
    labels = sample.point_labels.numpy()
    n = len(key)
    assert len(labels) == len(sample.points) and (labels[n:] == -1).all()
    hand = {0: -1, 1: -1, 2: 6, 9: 0, 12: 7, 14: 1, 15: 2, 16: 2, 17: 3, 18: 4, 19: -1, 21: 5, 22: 8, 23: 9, 24: 10,
            25: 11, 26: 12, 27: 13, 28: 14, 29: -1, 30: 15, 31: -1}
    for f, c in hand.items():
        sel = fine == f
        assert sel.any()
        assert (labels[:n][sel] == c).all(), (f, c)
    assert LIDARSEG_CLASSES[15] == "vegetation" and len(LIDARSEG_CLASSES) == 16


def test_test_split_without_annotations(tmp_path):
    _build_tables(tmp_path, version="v1.0-test", with_annotations=False)
    result = _read(create_nuscenes_infos(tmp_path, "v1.0-test"))
    assert list(result) == ["test"] and len(result["test"]) == 3
    assert all("annos" not in i for i in result["test"])
    ds = NuScenesDataset(tmp_path, tmp_path / "nuscenes_infos_v1.0-test_test.json", num_sweeps=1)
    assert ds[0].boxes is None


def test_missing_tables_error(tmp_path):
    (tmp_path / "v1.0-mini").mkdir()
    with pytest.raises(FileNotFoundError, match="scene.json"):
        NuScenesTables(tmp_path, "v1.0-mini")
    with pytest.raises(FileNotFoundError, match="v1.0-trainval"):
        create_nuscenes_infos(tmp_path, "v1.0-trainval")


def test_cbgs_hand_worked():
    infos = [{"annos": {"names": ["car"]}} for _ in range(8)] + [{"annos": {"names": ["car", "pedestrian"]}}
                                                                   for _ in range(2)]
    # n_car = 10, n_ped = 2, total 12; ratios (1/2)/(10/12) = 0.6 and (1/2)/(2/12) = 3 -> 6 + 6 draws
    idx = cbgs_indices(infos, ["car", "pedestrian"], seed=0)
    assert len(idx) == 12
    assert sum(i >= 8 for i in idx) >= 6  # the 6 pedestrian draws all come from frames 8 and 9
    assert cbgs_indices(infos, ["car", "pedestrian"], seed=0) == idx
    assert cbgs_indices([{"annos": {"names": []}}], ["car"]) == [0]


def test_cbgs_dataset_option(mini):
    root, *_ = mini
    path = root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json"
    ds = NuScenesDataset(root, path, num_sweeps=1, cbgs=True, seed=3)
    assert len(ds) > 0 and all(0 <= i < 3 for i in ds.indices)
    assert isinstance(ds[0].points, torch.Tensor)


def test_real_keyframe_and_boxes_json():
    pts = load_lidar_points(shared_file(KEYFRAME))
    assert pts.shape == (34688, 5)
    assert 0 <= pts[:, 3].min() and pts[:, 3].max() <= 255 and set(np.unique(pts[:, 4])) <= set(range(32))
    meta = json.loads(shared_file(BOXES).read_text())
    boxes = torch.tensor([b["box"] for b in meta["boxes"]], dtype=torch.float64)
    counts = points_in_boxes(torch.from_numpy(pts).double(), boxes).sum(1).numpy()
    annotated = np.array([b["num_lidar_pts"] for b in meta["boxes"]])
    assert (counts == annotated).sum() >= 58


def test_real_ten_sweep_cloud():
    pts = load_lidar_points(shared_file(SWEEPS10), num_channels=5, dtype=np.float16)
    assert pts.shape == (271156, 5) and pts.dtype == np.float32
    lags = pts[:, 4]
    assert lags.min() >= 0.0 and lags.max() <= 0.6
    values, counts = np.unique(lags, return_counts=True)
    assert len(values) == 10  # the keyframe + 9 sweeps
    np.testing.assert_allclose(values, np.arange(10) * 0.05, atol=2e-3)  # 20 Hz sweeps
    assert counts[0] == counts.max()  # the keyframe keeps its near-ego points, sweeps lose them
    with pytest.raises(ValueError, match="not a multiple of 6 bytes per point \\(3 x float16\\)"):
        load_lidar_points(shared_file(SWEEPS10), num_channels=3, dtype=np.float16)


def test_matches_nuscenes_devkit(mini):
    """The devkit (an independent implementation) loads the same tables: boxes, velocities, lidarseg map agree."""
    devkit = pytest.importorskip("nuscenes.nuscenes")
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    root, key, expected, fine, stamps, result = mini
    nusc = devkit.NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False)
    info = result["mini_train"][1]
    _, boxes, _ = nusc.get_sample_data("sd_s1")
    sd = nusc.get("sample_data", "sd_s1")
    cs, pose = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]), nusc.get("ego_pose", sd["ego_pose_token"])
    from pyquaternion import Quaternion

    by_token = {t: i for i, t in enumerate(info["annos"]["tokens"])}
    ours = np.asarray(info["annos"]["boxes"])
    assert len(boxes) == len(ours) == 69
    for box in boxes:
        b = ours[by_token[box.token]]
        np.testing.assert_allclose(b[:3], box.center, atol=1e-6)
        np.testing.assert_allclose(b[3:6], [box.wlh[1], box.wlh[0], box.wlh[2]])
        assert abs((b[6] - box.orientation.yaw_pitch_roll[0] + math.pi) % (2 * math.pi) - math.pi) < 1e-6
        v = nusc.box_velocity(box.token)
        if np.isnan(v).any():
            assert not info["annos"]["velocity_valid"][by_token[box.token]]
            continue
        v = Quaternion(cs["rotation"]).inverse.rotate(Quaternion(pose["rotation"]).inverse.rotate(v))
        np.testing.assert_allclose(b[7:9], v[:2], atol=1e-6)
    fine_to_coarse = LidarsegClassMapper(nusc).get_fine_idx_2_coarse_idx()
    ours_map = json.loads((root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json").read_text())
    assert ours_map["metadata"]["lidarseg_map"] == [fine_to_coarse[i] - 1 for i in range(len(FINE))]


def test_dataset_transforms_keep_points_and_boxes_consistent(mini):
    root, *_ = mini
    path = root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json"
    plain = NuScenesDataset(root, path, num_sweeps=1)[1]
    flipped = NuScenesDataset(root, path, num_sweeps=1,
                              transforms=[{"type": "RandomFlip", "axes": ["y"], "prob": 1.0}])[1]
    np.testing.assert_allclose(flipped.points[:, 1].numpy(), -plain.points[:, 1].numpy())
    np.testing.assert_allclose(flipped.boxes.tensor[:, 1].numpy(), -plain.boxes.tensor[:, 1].numpy())
    np.testing.assert_allclose(flipped.boxes.tensor[:, 8].numpy(), -plain.boxes.tensor[:, 8].numpy())
    before = points_in_boxes(plain.points.double(), plain.boxes.tensor.double()).sum(1)
    after = points_in_boxes(flipped.points.double(), flipped.boxes.tensor.double()).sum(1)
    assert torch.equal(before, after)


def test_in_memory_evaluation_matches_devkit_ground_truth(mini, tmp_path):
    """dataset.evaluate (ground truth rebuilt from the infos) equals the evaluation whose ground truth the
    devkit loads from the tables, on noisy predictions written as an official results file."""
    pytest.importorskip("nuscenes")
    from pointwin.datasets.nuscenes import DETECTION_CLASSES
    from pointwin.evaluation.nuscenes import evaluate_files
    from pointwin.structures import Boxes3D, Detections

    root, *_ = mini
    path = root / "infos" / "nuscenes_infos_v1.0-mini_mini_train.json"
    ds = NuScenesDataset(root, path, num_sweeps=1, filter_empty=False)
    rng = np.random.default_rng(0)
    results = []
    for i in range(len(ds)):
        s = ds[i]
        b = s.boxes.tensor.double().numpy().copy()
        keep = rng.random(len(b)) > 0.2
        b = b[keep]
        b[:, :2] += rng.normal(0, 0.3, (len(b), 2))
        b[:, 6] += rng.normal(0, 0.1, len(b))
        b[:, 7:9] += rng.normal(0, 0.5, (len(b), 2))
        fp = np.concatenate([rng.uniform(-40, 40, (5, 2)), np.zeros((5, 1)), np.full((5, 3), 2.0),
                             np.zeros((5, 3))], 1)
        labels = np.concatenate([s.labels.numpy()[keep], rng.integers(0, len(DETECTION_CLASSES), 5)])
        boxes = np.concatenate([b, fp])
        results.append(Detections(Boxes3D(torch.from_numpy(boxes).float()), torch.from_numpy(
            rng.uniform(0.05, 1.0, len(boxes))).float(), torch.from_numpy(labels)))
    ours = ds.evaluate(results)
    sub = ds.format_results(results, tmp_path / "results_nusc.json")
    official = evaluate_files(sub, root, version="v1.0-mini", eval_set="mini_train")
    assert 0.1 < ours["mAP"] < 1.0
    assert ours["mAP"] == pytest.approx(official["mean_ap"], abs=1e-9)
    assert ours["NDS"] == pytest.approx(official["nd_score"], abs=1e-9)
    for metric, short in (("trans_err", "mATE"), ("scale_err", "mASE"), ("orient_err", "mAOE"),
                          ("vel_err", "mAVE"), ("attr_err", "mAAE")):
        assert ours[short] == pytest.approx(official["tp_errors"][metric], abs=1e-9), metric
