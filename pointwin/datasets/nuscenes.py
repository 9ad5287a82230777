"""nuScenes: info files from the JSON tables, multi-sweep LIDAR_TOP clouds, boxes, lidarseg, CBGS.

Info creation reads the devkit's JSON tables (``<root>/<version>/*.json``) directly (no devkit needed,
no map files) and writes JSON infos (never pickle)::

    {"metadata": {"version", "split", "max_sweeps", "class_names", "lidarseg_classes", "lidarseg_map"},
     "infos": [{"token", "frame_id", "scene_name", "timestamp", "lidar_path", "lidar2ego", "ego2global",
                "sweeps": [{"lidar_path", "sample_data_token", "timestamp", "time_lag", "sensor2lidar"}],
                "lidarseg_path" (optional),
                "annos": {"names", "categories", "boxes", "num_lidar_pts", "num_radar_pts", "valid",
                          "velocity_valid", "global_boxes", "global_velocity", "tokens", "instance_tokens",
                          "attributes"}
                (absent for the test split)}]}

Boxes are in the keyframe's LIDAR_TOP frame in pointwin's convention ``(x, y, z, dx, dy, dz, yaw, vx, vy)``:
global -> ego -> lidar; nuScenes ``size = (w, l, h)`` gives ``dx = l, dy = w, dz = h``; yaw is the
heading of the box's x axis after the rotation; velocity (the devkit's centred difference over the
neighbouring annotations, 0 with ``velocity_valid = false`` where undefined) is rotated into the lidar frame.
``names`` holds the detection class of each box or ``"ignore"`` for categories outside the 10 classes.

Sweeps are the up to ``max_sweeps`` LIDAR_TOP sample_data records preceding the keyframe, each with the
4x4 transform from its sensor frame into the keyframe's lidar frame and its time lag in seconds.

:class:`NuScenesDataset` yields samples with 5-channel multi-sweep points; its ``evaluate(results)``
computes mAP/NDS in memory (ground truth from the infos, predictions moved back to the global frame)
and ``format_results`` writes the official results JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..fileio import write_json
from ..structures import Boxes3D, Sample
from .base import DATASETS, PointDataset

__all__ = ["CATEGORY_TO_DETECTION", "DETECTION_CLASSES", "LIDARSEG_CLASSES", "LIDARSEG_FINE_TO_COARSE",
           "NuScenesDataset", "NuScenesTables", "aggregate_sweeps", "box_velocity", "cbgs_indices",
           "create_nuscenes_infos", "default_attribute", "global_boxes_to_lidar", "lidar_boxes_to_global",
           "load_lidar_points", "matrix_to_quaternion", "quaternion_to_matrix", "transform_matrix"]

DETECTION_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
                     "pedestrian", "traffic_cone")

# The devkit's default category -> detection class mapping; other categories are "ignore".
CATEGORY_TO_DETECTION = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}

# The 16 lidarseg challenge classes (the devkit's coarse indices 1..16 shifted to 0..15; ignore -> -1).
LIDARSEG_CLASSES = ("barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
                    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain",
                    "manmade", "vegetation")

LIDARSEG_FINE_TO_COARSE = {
    "noise": None, "animal": None,
    "human.pedestrian.adult": "pedestrian", "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian", "human.pedestrian.police_officer": "pedestrian",
    "human.pedestrian.personal_mobility": None, "human.pedestrian.stroller": None,
    "human.pedestrian.wheelchair": None,
    "movable_object.barrier": "barrier", "movable_object.debris": None, "movable_object.pushable_pullable": None,
    "movable_object.trafficcone": "traffic_cone", "static_object.bicycle_rack": None,
    "vehicle.bicycle": "bicycle", "vehicle.bus.bendy": "bus", "vehicle.bus.rigid": "bus", "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle", "vehicle.emergency.ambulance": None,
    "vehicle.emergency.police": None, "vehicle.motorcycle": "motorcycle", "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
    "flat.driveable_surface": "driveable_surface", "flat.other": "other_flat", "flat.sidewalk": "sidewalk",
    "flat.terrain": "terrain", "static.manmade": "manmade", "static.other": None, "static.vegetation": "vegetation",
    "vehicle.ego": None,
}

# Official v1.0-mini scene split (the devkit's splits.mini_train / mini_val).
MINI_SPLITS = {
    "mini_train": ["scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
                   "scene-1100"],
    "mini_val": ["scene-0103", "scene-0916"],
}


# ---- geometry -----------------------------------------------------------------------------------------
def quaternion_to_matrix(q: Sequence[float]) -> np.ndarray:
    """(w, x, y, z) quaternion (nuScenes order) -> (3, 3) rotation matrix (float64)."""
    w, x, y, z = (float(v) for v in q)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if n == 0:
        raise ValueError("quaternion_to_matrix: zero quaternion")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def transform_matrix(translation: Sequence[float], rotation: Sequence[float]) -> np.ndarray:
    """(4, 4) transform from a nuScenes ``translation`` and ``rotation`` (w, x, y, z)."""
    m = np.eye(4)
    m[:3, :3] = quaternion_to_matrix(rotation)
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (w, x, y, z) quaternion with w >= 0 (Shepperd's method)."""
    m = np.asarray(m, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(1.0 + tr)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def lidar_boxes_to_global(boxes: np.ndarray, lidar2ego: np.ndarray, ego2global: np.ndarray,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """pointwin lidar-frame boxes (M, 7 or 9) -> global nuScenes (translation (M, 3), size w, l, h (M, 3),
    rotation (M, 4) w, x, y, z, velocity (M, 2) vx, vy; NaN without velocity columns)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(len(boxes), -1)
    g = np.asarray(ego2global, dtype=np.float64) @ np.asarray(lidar2ego, dtype=np.float64)
    m = len(boxes)
    translation = boxes[:, :3] @ g[:3, :3].T + g[:3, 3] if m else np.zeros((0, 3))
    size = boxes[:, [4, 3, 5]] if m else np.zeros((0, 3))
    rotation = np.zeros((m, 4))
    for i in range(m):
        c, s_ = math.cos(boxes[i, 6]), math.sin(boxes[i, 6])
        rotation[i] = matrix_to_quaternion(g[:3, :3] @ np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]]))
    if boxes.shape[1] >= 9:
        vel3 = np.concatenate([boxes[:, 7:9], np.zeros((m, 1))], 1)
        velocity = (vel3 @ g[:3, :3].T)[:, :2]
    else:
        velocity = np.full((m, 2), np.nan)
    return translation, size, rotation, velocity


def global_boxes_to_lidar(translation: np.ndarray, size_wlh: np.ndarray, rotation: np.ndarray,
                          velocity: np.ndarray, ego2global: np.ndarray, lidar2ego: np.ndarray) -> np.ndarray:
    """Global nuScenes boxes -> (M, 9) float64 pointwin boxes in the lidar frame.

    Args:
        translation: (M, 3) global centres; size_wlh: (M, 3) width, length, height;
        rotation: (M, 4) quaternions (w, x, y, z); velocity: (M, 3) global velocity (m/s).
        ego2global, lidar2ego: (4, 4).
    """
    lidar_from_global = np.linalg.inv(lidar2ego) @ np.linalg.inv(ego2global)
    rot = lidar_from_global[:3, :3]
    m = len(translation)
    out = np.zeros((m, 9))
    if m == 0:
        return out
    out[:, :3] = np.asarray(translation, dtype=np.float64) @ rot.T + lidar_from_global[:3, 3]
    size = np.asarray(size_wlh, dtype=np.float64)
    out[:, 3], out[:, 4], out[:, 5] = size[:, 1], size[:, 0], size[:, 2]
    for i in range(m):
        r = rot @ quaternion_to_matrix(rotation[i])
        out[i, 6] = math.atan2(r[1, 0], r[0, 0])
    out[:, 7:9] = (np.asarray(velocity, dtype=np.float64) @ rot.T)[:, :2]
    return out


# ---- tables -------------------------------------------------------------------------------------------
class NuScenesTables:
    """The JSON tables of one nuScenes version, indexed by token (a light stand-in for the devkit)."""

    REQUIRED = ("scene", "sample", "sample_data", "calibrated_sensor", "sensor", "ego_pose", "category")
    OPTIONAL = ("sample_annotation", "instance", "lidarseg", "attribute")

    def __init__(self, root: str | os.PathLike, version: str) -> None:
        self.root = Path(root)
        self.version = version
        folder = self.root / version
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found: expected the nuScenes tables of version {version!r}")
        self.tables: dict[str, list[dict]] = {}
        for name in self.REQUIRED + self.OPTIONAL:
            path = folder / f"{name}.json"
            if not path.exists():
                if name in self.REQUIRED:
                    raise FileNotFoundError(f"{path} not found (required nuScenes table {name!r})")
                self.tables[name] = []
                continue
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON ({e})", path=path, line=e.lineno) from None
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}", path=path)
            bad = next((i for i, r in enumerate(data) if not isinstance(r, dict) or "token" not in r), None)
            if bad is not None:
                raise DataError(f"{path}: record {bad} has no 'token' (every nuScenes table record has one)",
                                path=path, key=f"[{bad}].token")
            self.tables[name] = data
        self._index = {name: {r["token"]: r for r in rows} for name, rows in self.tables.items()}

    def get(self, table: str, token: str) -> dict:
        try:
            return self._index[table][token]
        except KeyError:
            raise DataError(f"nuScenes {self.version}: no {table!r} record with token {token!r}",
                            path=self.root / self.version / f"{table}.json", key=token) from None

    def __getitem__(self, table: str) -> list[dict]:
        return self.tables[table]


def box_velocity(tables: NuScenesTables, ann: dict, max_time_diff: float = 1.5) -> np.ndarray:
    """Global (3,) velocity of an annotation from its neighbours (NaN when undefined), as the devkit does."""
    has_prev, has_next = bool(ann.get("prev")), bool(ann.get("next"))
    if not has_prev and not has_next:
        return np.full(3, np.nan)
    first = tables.get("sample_annotation", ann["prev"]) if has_prev else ann
    last = tables.get("sample_annotation", ann["next"]) if has_next else ann
    dt = 1e-6 * (tables.get("sample", last["sample_token"])["timestamp"]
                 - tables.get("sample", first["sample_token"])["timestamp"])
    if has_prev and has_next:
        max_time_diff *= 2  # a centred difference may span twice the gap
    if dt <= 0 or dt > max_time_diff:
        return np.full(3, np.nan)
    return (np.asarray(last["translation"], dtype=np.float64) - np.asarray(first["translation"])) / dt


def _attribute_name(tables: NuScenesTables, ann: dict) -> str:
    """The annotation's attribute name ("" for none); nuScenes boxes carry at most one attribute."""
    tokens = ann.get("attribute_tokens", [])
    if len(tokens) > 1:
        raise ValueError(f"nuScenes annotation {ann['token']} has {len(tokens)} attributes (at most 1 expected)")
    return tables.get("attribute", tokens[0])["name"] if tokens else ""


def _lidar_pose(tables: NuScenesTables, sd: dict) -> tuple[np.ndarray, np.ndarray]:
    cs = tables.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = tables.get("ego_pose", sd["ego_pose_token"])
    return transform_matrix(cs["translation"], cs["rotation"]), transform_matrix(pose["translation"],
                                                                                 pose["rotation"])


def _lidar_keyframe(tables: NuScenesTables, sample_token: str, lidar_sd: dict[str, dict]) -> dict:
    sd = lidar_sd.get(sample_token)
    if sd is None:
        raise DataError(f"nuScenes {tables.version}: sample {sample_token} has no LIDAR_TOP keyframe sample_data")
    return sd


def _scene_splits(version: str, tables: NuScenesTables) -> dict[str, list[str]]:
    if version == "v1.0-mini":
        return dict(MINI_SPLITS)
    if version == "v1.0-test":
        return {"test": [s["name"] for s in tables["scene"]]}
    if version == "v1.0-trainval":
        try:
            from nuscenes.utils.splits import create_splits_scenes
        except ImportError as e:
            raise ImportError("the official v1.0-trainval train/val scene lists come from nuscenes-devkit: "
                              "pip install 'pointwin[nuscenes]' or pass splits={'train': [...], 'val': [...]}") from e
        scenes = create_splits_scenes(verbose=False)
        return {"train": scenes["train"], "val": scenes["val"]}
    raise ValueError(f"unknown nuScenes version {version!r}; expected v1.0-mini, v1.0-trainval or v1.0-test "
                     "(or pass splits=)")


def _lidarseg_map(tables: NuScenesTables) -> list[int]:
    """Fine lidarseg index -> coarse class 0..15 or -1 (ignore), from the category table's ``index``."""
    pairs = [(c["index"], c["name"]) for c in tables["category"] if "index" in c]
    if not pairs:
        return []
    out = [-1] * (max(i for i, _ in pairs) + 1)
    for idx, name in pairs:
        if name not in LIDARSEG_FINE_TO_COARSE:
            raise DataError(f"nuScenes category {name!r} (lidarseg index {idx}) has no lidarseg challenge mapping")
        coarse = LIDARSEG_FINE_TO_COARSE[name]
        out[idx] = -1 if coarse is None else LIDARSEG_CLASSES.index(coarse)
    return out


def create_nuscenes_infos(root: str | os.PathLike, version: str = "v1.0-trainval", out: str | os.PathLike | None = None,
                          max_sweeps: int = 10, splits: dict[str, Sequence[str]] | None = None,
                          progress: bool = True) -> dict[str, Path]:
    """Build the info lists of every split of ``version`` and write ``nuscenes_infos_<version>_<split>.json``.

    Args:
        root: the dataset root (holding ``samples/``, ``sweeps/`` and ``<version>/``).
        out: output folder (default ``root``).
        max_sweeps: previous LIDAR_TOP sweeps recorded per keyframe.
        splits: ``{split name: [scene names]}``; default the official split of ``version``.
        progress: show a progress bar over the samples.
    Returns:
        ``{split: path of the written info file}``.
    """
    tables = NuScenesTables(root, version)
    splits = dict(splits) if splits is not None else _scene_splits(version, tables)
    lidar_sensor_tokens = {s["token"] for s in tables["sensor"] if s.get("channel") == "LIDAR_TOP"}
    lidar_cs = {c["token"] for c in tables["calibrated_sensor"] if c["sensor_token"] in lidar_sensor_tokens}
    lidar_sd = {sd["sample_token"]: sd for sd in tables["sample_data"]
                if sd["calibrated_sensor_token"] in lidar_cs and sd.get("is_key_frame", False)}
    anns_by_sample: dict[str, list[dict]] = defaultdict(list)
    for ann in tables["sample_annotation"]:
        anns_by_sample[ann["sample_token"]].append(ann)
    lidarseg_by_sd = {r["sample_data_token"]: r["filename"] for r in tables["lidarseg"]}
    scene_name = {s["token"]: s["name"] for s in tables["scene"]}
    has_annotations = bool(tables["sample_annotation"])

    split_of_scene = {}
    for split, names in splits.items():
        for name in names:
            split_of_scene[name] = split
    result: dict[str, list[dict]] = {split: [] for split in splits}
    from tqdm import tqdm

    ordered = sorted(tables["sample"], key=lambda s: (scene_name.get(s["scene_token"], ""), s["timestamp"]))
    for sample in tqdm(ordered, desc=f"nuScenes {version} infos", unit="sample", disable=not progress):
        split = split_of_scene.get(scene_name.get(sample["scene_token"], ""))
        if split is None:
            continue
        sd = _lidar_keyframe(tables, sample["token"], lidar_sd)
        lidar2ego, ego2global = _lidar_pose(tables, sd)
        lidar_from_global = np.linalg.inv(lidar2ego) @ np.linalg.inv(ego2global)
        info = {
            "token": sample["token"], "frame_id": sample["token"], "scene_token": sample["scene_token"],
            "scene_name": scene_name[sample["scene_token"]], "timestamp": sd["timestamp"],
            "lidar_path": sd["filename"], "lidar_token": sd["token"],
            "lidar2ego": lidar2ego.tolist(), "ego2global": ego2global.tolist(), "sweeps": [],
        }
        cur = sd
        while len(info["sweeps"]) < max_sweeps and cur.get("prev"):
            cur = tables.get("sample_data", cur["prev"])
            s_l2e, s_e2g = _lidar_pose(tables, cur)
            info["sweeps"].append({
                "lidar_path": cur["filename"], "sample_data_token": cur["token"], "timestamp": cur["timestamp"],
                "time_lag": 1e-6 * (sd["timestamp"] - cur["timestamp"]),
                "sensor2lidar": (lidar_from_global @ s_e2g @ s_l2e).tolist(),
            })
        if sd["token"] in lidarseg_by_sd:
            info["lidarseg_path"] = lidarseg_by_sd[sd["token"]]
        if has_annotations:
            anns = anns_by_sample.get(sample["token"], [])
            cats = [tables.get("category", tables.get("instance", a["instance_token"])["category_token"])["name"]
                    for a in anns]
            vel = np.array([box_velocity(tables, a) for a in anns]).reshape(-1, 3)
            vel_ok = ~np.isnan(vel).any(1)
            boxes = global_boxes_to_lidar(np.array([a["translation"] for a in anns]).reshape(-1, 3),
                                          np.array([a["size"] for a in anns]).reshape(-1, 3),
                                          np.array([a["rotation"] for a in anns]).reshape(-1, 4),
                                          np.where(vel_ok[:, None], vel, 0.0), ego2global, lidar2ego)
            info["annos"] = {
                "names": [CATEGORY_TO_DETECTION.get(c, "ignore") for c in cats],
                "categories": cats,
                "boxes": boxes.tolist(),
                "num_lidar_pts": [int(a["num_lidar_pts"]) for a in anns],
                "num_radar_pts": [int(a["num_radar_pts"]) for a in anns],
                "valid": [int(a["num_lidar_pts"]) + int(a["num_radar_pts"]) > 0 for a in anns],
                "velocity_valid": vel_ok.tolist(),
                # the annotation as given (global x, y, z, w, l, h, qw, qx, qy, qz and vx, vy) for evaluation:
                # upright lidar-frame boxes drop the tilt and vz, so they cannot give these back exactly
                "global_boxes": [list(a["translation"]) + list(a["size"]) + list(a["rotation"]) for a in anns],
                "global_velocity": np.where(vel_ok[:, None], vel, 0.0)[:, :2].tolist(),
                "tokens": [a["token"] for a in anns],
                "instance_tokens": [a["instance_token"] for a in anns],
                "attributes": [_attribute_name(tables, a) for a in anns],
            }
        result[split].append(info)

    out = Path(out) if out is not None else Path(root)
    out.mkdir(parents=True, exist_ok=True)
    seg_map = _lidarseg_map(tables)
    paths = {}
    for split, infos in result.items():
        doc = {"metadata": {"version": version, "split": split, "max_sweeps": max_sweeps,
                            "class_names": list(DETECTION_CLASSES), "lidarseg_classes": list(LIDARSEG_CLASSES),
                            "lidarseg_map": seg_map}, "infos": infos}
        path = out / f"nuscenes_infos_{version}_{split}.json"
        write_json(path, doc)
        paths[split] = path
    return paths


# ---- points -----------------------------------------------------------------------------------------------
def load_lidar_points(path: str | os.PathLike, num_channels: int = 5, dtype: np.dtype | type = np.float32,
                      ) -> np.ndarray:
    """A raw LiDAR file (``.pcd.bin``: float32 x 5) as float32 (N, num_channels).

    A size that is not a whole number of points, a non-finite value or a coordinate beyond +-1e4 m raises
    :class:`~pointwin.errors.DataError` naming the file (see :func:`pointwin.datasets.base.read_raw_points`).
    """
    from .base import read_raw_points

    return read_raw_points(path, num_channels, dtype).astype(np.float32)


def aggregate_sweeps(root: str | os.PathLike, info: dict, num_sweeps: int = 10, remove_close: float = 1.0,
                     ) -> tuple[np.ndarray, int]:
    """Keyframe + up to ``num_sweeps - 1`` previous sweeps in the keyframe lidar frame.

    Sweep points within ``remove_close`` metres (x-y) of their own sensor are dropped (the ego vehicle's
    roof returns), as in OpenPCDet.

    Returns:
        float32 (N, 5) x, y, z, intensity, time lag (s), and the number of keyframe points (first rows).
    """
    root = Path(root)
    key = load_lidar_points(root / info["lidar_path"])
    clouds = [np.concatenate([key[:, :4], np.zeros((len(key), 1), np.float32)], 1)]
    for sweep in info["sweeps"][:max(num_sweeps - 1, 0)]:
        pts = load_lidar_points(root / sweep["lidar_path"])[:, :4].astype(np.float64)
        if remove_close > 0:
            pts = pts[np.hypot(pts[:, 0], pts[:, 1]) >= remove_close]
        m = np.asarray(sweep["sensor2lidar"], dtype=np.float64)
        xyz = pts[:, :3] @ m[:3, :3].T + m[:3, 3]
        lag = np.full((len(pts), 1), sweep["time_lag"])
        clouds.append(np.concatenate([xyz, pts[:, 3:4], lag], 1).astype(np.float32))
    return np.concatenate(clouds), len(key)


_DEFAULT_ATTRIBUTE = {"car": "vehicle.parked", "pedestrian": "pedestrian.moving", "trailer": "vehicle.parked",
                      "truck": "vehicle.parked", "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
                      "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider", "barrier": "",
                      "traffic_cone": ""}


def default_attribute(name: str, velocity: np.ndarray) -> str:
    """The attribute a velocity-only detector reports (the common lidar-detector convention): moving
    above 0.2 m/s; vehicles parked and pedestrians standing when still; cycles with a rider when moving."""
    speed = float(np.hypot(*np.asarray(velocity, dtype=np.float64)[:2])) if velocity is not None else float("nan")
    if speed > 0.2:
        if name in ("car", "construction_vehicle", "bus", "truck", "trailer"):
            return "vehicle.moving"
        if name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
        return _DEFAULT_ATTRIBUTE.get(name, "")
    if name == "pedestrian":
        return "pedestrian.standing"
    if name == "bus":
        return "vehicle.stopped"
    return _DEFAULT_ATTRIBUTE.get(name, "")


# ---- class-balanced grouping and sampling --------------------------------------------------------------
def cbgs_indices(infos: Sequence[dict], class_names: Sequence[str], seed: int = 0) -> list[int]:
    """Class-balanced resampling (CBGS): indices into ``infos`` so each class appears in ~1/K of the samples.

    For each class c, the samples containing c are drawn with replacement ``int(n_c * ratio_c)`` times,
    ``ratio_c = (1 / K) / (n_c / sum_k n_k)``; classes with no sample are skipped.
    """
    per_class: dict[str, list[int]] = {c: [] for c in class_names}
    for i, info in enumerate(infos):
        for name in set(info.get("annos", {}).get("names", [])):
            if name in per_class:
                per_class[name].append(i)
    total = sum(len(v) for v in per_class.values())
    if total == 0:
        return list(range(len(infos)))
    rng = np.random.default_rng(seed)
    frac = 1.0 / len(class_names)
    out: list[int] = []
    for idx in per_class.values():
        if not idx:
            continue
        ratio = frac / (len(idx) / total)
        out.extend(rng.choice(idx, int(len(idx) * ratio)).tolist())
    return out


@DATASETS.register()
class NuScenesDataset(PointDataset):
    """nuScenes keyframes as :class:`~pointwin.structures.Sample` with multi-sweep points.

    Points are float32 (N, 5) ``x, y, z, intensity, time_lag`` in the keyframe lidar frame; boxes
    (M, 9) with velocity (or (M, 7)); labels index ``class_names``.

    Args:
        root: dataset root (lidar paths in the infos are relative to it).
        info_path: a ``nuscenes_infos_<version>_<split>.json``.
        num_sweeps: clouds aggregated including the keyframe (10 = keyframe + 9 sweeps).
        filter_empty: drop boxes with ``num_lidar_pts == 0``.
        cbgs: class-balanced resampling of the frame list (see :func:`cbgs_indices`), seeded by ``seed``.
        with_lidarseg: load the keyframe's lidarseg labels mapped to the 16 challenge classes as
            ``point_labels`` (-1 = ignore, and for sweep points).
        transforms, aug_seed: augmentations, see :class:`~pointwin.datasets.base.PointDataset`.
    """

    channels = ("x", "y", "z", "intensity", "time_lag")

    # ---- evaluation -------------------------------------------------------------------------------
    def _eval_boxes(self, results: Sequence | None):
        """Ground truth (and predictions, when ``results`` is given) as :class:`NuScenesBoxes` plus bike racks."""
        from ..evaluation.nuscenes import ATTRIBUTE_NAMES, NuScenesBoxes
        from ..evaluation.nuscenes import DETECTION_CLASSES as EVAL_CLASSES

        if self.indices != list(range(len(self.infos))):
            raise ValueError("NuScenesDataset.evaluate: build the evaluation dataset without cbgs (one entry per "
                             "sample)")
        tokens = [info["token"] for info in self.infos]
        gt_cols: dict[str, list] = defaultdict(list)
        pred_cols: dict[str, list] = defaultdict(list)
        racks: dict[int, np.ndarray] = {}
        for i, info in enumerate(self.infos):
            ego_xy = np.asarray(info["ego2global"])[:2, 3]
            l2e, e2g = np.asarray(info["lidar2ego"]), np.asarray(info["ego2global"])
            a = info.get("annos")
            if a is None:
                raise ValueError(f"NuScenesDataset.evaluate: sample {info['token']} has no annotations (test split?)")
            boxes = np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 9)
            t, sz, rot, vel = lidar_boxes_to_global(boxes, l2e, e2g)
            if "global_boxes" in a:
                g = np.asarray(a["global_boxes"], dtype=np.float64).reshape(-1, 10)
                t, sz, rot = g[:, :3], g[:, 3:6], g[:, 6:10]
            if "global_velocity" in a:
                vel = np.asarray(a["global_velocity"], dtype=np.float64).reshape(-1, 2).copy()
            vel[~np.asarray(a["velocity_valid"], dtype=bool)] = np.nan
            is_rack = np.array([c == "static_object.bicycle_rack" for c in a["categories"]], dtype=bool)
            if is_rack.any():
                racks[i] = np.concatenate([t[is_rack], sz[is_rack], rot[is_rack]], 1)
            for j, name in enumerate(a["names"]):
                if name not in EVAL_CLASSES:
                    continue
                attr = a.get("attributes", [""] * len(a["names"]))[j]
                gt_cols["sample"].append(i)
                gt_cols["translation"].append(t[j])
                gt_cols["size"].append(sz[j])
                gt_cols["rotation"].append(rot[j])
                gt_cols["velocity"].append(vel[j])
                gt_cols["labels"].append(EVAL_CLASSES.index(name))
                gt_cols["attributes"].append(ATTRIBUTE_NAMES.index(attr) if attr else -1)
                gt_cols["ego_dist"].append(float(np.hypot(*(t[j, :2] - ego_xy))))
                gt_cols["num_pts"].append(a["num_lidar_pts"][j] + a["num_radar_pts"][j])
            if results is None:
                continue
            det = results[i]
            pb = det.boxes.tensor.detach().cpu().double().numpy()
            t, sz, rot, vel = lidar_boxes_to_global(pb, l2e, e2g)
            names = [self.class_names[int(k)] for k in det.labels.tolist()]
            for j, name in enumerate(names):
                if name not in EVAL_CLASSES:
                    continue
                pred_cols["sample"].append(i)
                pred_cols["translation"].append(t[j])
                pred_cols["size"].append(sz[j])
                pred_cols["rotation"].append(rot[j])
                pred_cols["velocity"].append(vel[j])
                pred_cols["labels"].append(EVAL_CLASSES.index(name))
                pred_cols["scores"].append(float(det.scores[j]))
                pred_cols["attributes"].append(ATTRIBUTE_NAMES.index(a_) if (a_ := default_attribute(
                    name, vel[j])) else -1)
                pred_cols["ego_dist"].append(float(np.hypot(*(t[j, :2] - ego_xy))))

        def make(cols: dict, with_scores: bool) -> NuScenesBoxes:
            n = len(cols["labels"])
            return NuScenesBoxes(
                sample=np.asarray(cols["sample"], np.int64), translation=np.asarray(cols["translation"]).reshape(n, 3),
                size=np.asarray(cols["size"]).reshape(n, 3), rotation=np.asarray(cols["rotation"]).reshape(n, 4),
                velocity=np.asarray(cols["velocity"]).reshape(n, 2), labels=np.asarray(cols["labels"], np.int64),
                scores=np.asarray(cols["scores"]) if with_scores else None,
                attributes=np.asarray(cols["attributes"], np.int64), ego_dist=np.asarray(cols["ego_dist"]),
                num_pts=np.asarray(cols["num_pts"], np.int64) if "num_pts" in cols else None, sample_tokens=tokens)

        if results is not None and len(results) != len(self.infos):
            raise ValueError(f"NuScenesDataset.evaluate: {len(results)} results for {len(self.infos)} samples")
        return make(gt_cols, False), (make(pred_cols, True) if results is not None else None), racks

    def evaluate(self, results: Sequence, **kwargs) -> dict[str, float]:
        """nuScenes mAP / NDS of ``results`` (one :class:`~pointwin.structures.Detections` per sample, in the
        lidar frame, labels indexing ``class_names``) against this split's annotations, in memory.

        Predicted attributes follow the usual velocity rule (:func:`default_attribute`). Returns flat
        metrics: ``mAP``, ``NDS``, ``mATE`` .. ``mAAE`` and ``AP/<class>``.
        """
        from ..evaluation.nuscenes import TP_METRIC_SHORT
        from ..evaluation.nuscenes import evaluate as nus_evaluate

        gt, pred, racks = self._eval_boxes(results)
        res = nus_evaluate(pred, gt, bike_racks=racks, **kwargs)
        out = {"mAP": float(res["mean_ap"]), "NDS": float(res["nd_score"])}
        out.update({TP_METRIC_SHORT[k]: float(v) for k, v in res["tp_errors"].items()})
        out.update({f"AP/{c}": float(v) for c, v in res["mean_dist_aps"].items()})
        return out

    def format_results(self, results: Sequence, path: str | os.PathLike) -> Path:
        """Write ``results`` as an official nuScenes detection results JSON (global frame) at ``path``."""
        from ..evaluation.nuscenes import write_submission

        _, pred, _ = self._eval_boxes(results)
        write_submission(path, pred)
        return Path(path)

    def __init__(self, root: str | os.PathLike, info_path: str | os.PathLike,
                 class_names: Sequence[str] = DETECTION_CLASSES, num_sweeps: int = 10, with_velocity: bool = True,
                 filter_empty: bool = True, cbgs: bool = False, seed: int = 0, with_lidarseg: bool = False,
                 remove_close: float = 1.0, transforms=None, aug_seed: int = 0) -> None:
        super().__init__(transforms, aug_seed)
        self.root = Path(root)
        from .base import read_json

        doc = read_json(info_path)
        if not isinstance(doc, dict) or "infos" not in doc:
            raise DataError(f"{info_path}: expected a JSON object with 'metadata' and 'infos' "
                            "(written by create_nuscenes_infos)", path=info_path)
        self.metadata, self.infos = doc.get("metadata", {}), doc["infos"]
        self.class_names = tuple(class_names)
        self.num_sweeps, self.with_velocity, self.filter_empty = num_sweeps, with_velocity, filter_empty
        self.with_lidarseg, self.remove_close = with_lidarseg, remove_close
        self.indices = cbgs_indices(self.infos, self.class_names, seed) if cbgs else list(range(len(self.infos)))
        self._seg_map = np.asarray(self.metadata.get("lidarseg_map", []), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def get_sample(self, index: int) -> Sample:
        info = self.infos[self.indices[index]]
        points, n_key = aggregate_sweeps(self.root, info, self.num_sweeps, self.remove_close)
        boxes = labels = None
        meta = {"timestamp": info["timestamp"], "scene_name": info["scene_name"],
                "lidar2ego": info["lidar2ego"], "ego2global": info["ego2global"]}
        if "annos" in info:
            a = info["annos"]
            keep = np.array([n in self.class_names for n in a["names"]], dtype=bool)
            if self.filter_empty:
                keep &= np.asarray(a["num_lidar_pts"], dtype=np.int64) > 0
            b = np.asarray(a["boxes"], dtype=np.float32).reshape(-1, 9)[keep]
            boxes = Boxes3D(torch.from_numpy(b if self.with_velocity else b[:, :7].copy()))
            labels = torch.tensor([self.class_names.index(n) for n, k in zip(a["names"], keep) if k],
                                  dtype=torch.long)
            meta["num_lidar_pts"] = [n for n, k in zip(a["num_lidar_pts"], keep) if k]
        point_labels = None
        if self.with_lidarseg:
            if "lidarseg_path" not in info:
                raise DataError(f"frame {info['token']} has no lidarseg labels (lidarseg.json lacks its sample_data)")
            fine = np.fromfile(self.root / info["lidarseg_path"], dtype=np.uint8).astype(np.int64)
            if len(fine) != n_key:
                raise DataError(f"{info['lidarseg_path']}: {len(fine)} labels for {n_key} keyframe points",
                                path=self.root / info["lidarseg_path"])
            if len(fine) and fine.max() >= len(self._seg_map):
                raise DataError(f"{info['lidarseg_path']}: label {fine.max()} outside the category index table",
                                path=self.root / info["lidarseg_path"])
            point_labels = torch.full((len(points),), -1, dtype=torch.long)
            point_labels[:n_key] = torch.from_numpy(self._seg_map[fine])
        return Sample(points=torch.from_numpy(points), channels=self.channels, frame_id=info["frame_id"],
                      boxes=boxes, labels=labels, point_labels=point_labels, meta=meta)
