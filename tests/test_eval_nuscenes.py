"""nuScenes detection metrics against nuscenes-devkit's own evaluation classes on the same boxes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pointwin.evaluation.nuscenes import (
    ATTRIBUTE_NAMES,
    DETECTION_CLASSES,
    DETECTION_CVPR_2019,
    TP_METRICS,
    NuScenesBoxes,
    evaluate,
    filter_boxes,
    format_table,
    from_eval_boxes,
    quaternion_yaw,
    read_submission,
    write_submission,
    yaw_quaternion,
)

devkit = pytest.importorskip("nuscenes.eval.detection.algo")

_CLASS_ATTRS = {
    "car": ATTRIBUTE_NAMES[5:8], "truck": ATTRIBUTE_NAMES[5:8], "bus": ATTRIBUTE_NAMES[5:8],
    "trailer": ATTRIBUTE_NAMES[5:8], "construction_vehicle": ATTRIBUTE_NAMES[5:8],
    "pedestrian": ATTRIBUTE_NAMES[0:3], "motorcycle": ATTRIBUTE_NAMES[3:5], "bicycle": ATTRIBUTE_NAMES[3:5],
    "traffic_cone": (), "barrier": (),
}


def _random_boxes(rng, num_samples=12, per_sample=14):
    """Ground truths and predictions (jittered copies, duplicates and clutter) around random ego poses."""
    tokens = [f"sample{i:03d}" for i in range(num_samples)]
    ego = rng.uniform(-500, 500, (num_samples, 3))
    gt_rows, pred_rows = [], []
    for s in range(num_samples):
        for _ in range(per_sample):
            c = int(rng.integers(0, len(DETECTION_CLASSES)))
            name = DETECTION_CLASSES[c]
            attrs = _CLASS_ATTRS[name]
            a = ATTRIBUTE_NAMES.index(attrs[rng.integers(len(attrs))]) if attrs and rng.random() < 0.9 else -1
            pos = ego[s] + np.r_[rng.uniform(-55, 55, 2), rng.uniform(-1, 1)]
            size = rng.uniform(0.4, 5.0, 3)
            yaw = rng.uniform(-math.pi, math.pi)
            vel = rng.normal(0, 3, 2)
            npts = int(rng.choice([0, 2, 30], p=[0.1, 0.3, 0.6]))
            gt_rows.append((s, pos, size, yaw, vel, c, np.nan, a, npts))
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                pa = ATTRIBUTE_NAMES.index(attrs[rng.integers(len(attrs))]) if attrs else -1
                pred_rows.append((s, pos + np.r_[rng.normal(0, 0.8, 2), 0.1], size * rng.uniform(0.8, 1.2, 3),
                                  yaw + rng.normal(0, 0.4) + rng.choice([0, math.pi], p=[0.85, 0.15]),
                                  vel + rng.normal(0, 1, 2), c, rng.random(), pa, -1))
        for _ in range(5):
            c = int(rng.integers(0, len(DETECTION_CLASSES)))
            pred_rows.append((s, ego[s] + np.r_[rng.uniform(-50, 50, 2), 0.0], rng.uniform(0.5, 4, 3),
                              rng.uniform(-3, 3), rng.normal(0, 2, 2), c, rng.random() * 0.6, -1, -1))

    def pack(rows, scored):
        n = len(rows)
        trans = np.array([r[1] for r in rows]).reshape(n, 3)
        sample = np.array([r[0] for r in rows], np.int64)
        return NuScenesBoxes(sample, trans, np.array([r[2] for r in rows]).reshape(n, 3),
                             yaw_quaternion(np.array([r[3] for r in rows])), np.array([r[4] for r in rows]),
                             np.array([r[5] for r in rows]), np.array([r[6] for r in rows]) if scored else None,
                             np.array([r[7] for r in rows]),
                             np.hypot(trans[:, 0] - ego[sample, 0], trans[:, 1] - ego[sample, 1]),
                             np.array([r[8] for r in rows]), tokens)

    return pack(gt_rows, False), pack(pred_rows, True), ego


def _to_eval_boxes(boxes: NuScenesBoxes, ego, is_gt: bool):
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionBox

    eb = EvalBoxes()
    for s, tok in enumerate(boxes.sample_tokens):
        lst = []
        for i in np.flatnonzero(boxes.sample == s):
            lst.append(DetectionBox(
                sample_token=tok, translation=tuple(boxes.translation[i]), size=tuple(boxes.size[i]),
                rotation=tuple(boxes.rotation[i]), velocity=tuple(boxes.velocity[i]),
                ego_translation=tuple(boxes.translation[i] - ego[s]), num_pts=int(boxes.num_pts[i]),
                detection_name=DETECTION_CLASSES[boxes.labels[i]],
                detection_score=-1.0 if is_gt else float(boxes.scores[i]),
                attribute_name=ATTRIBUTE_NAMES[boxes.attributes[i]] if boxes.attributes[i] >= 0 else ""))
        eb.add_boxes(tok, lst)
    return eb


class _FakeNusc:
    """Just enough of the NuScenes table API for the devkit's filter_eval_boxes (bike racks)."""

    def __init__(self, racks: dict[str, list]):
        self.racks = racks

    def get(self, table, token):
        if table == "sample":
            return {"anns": [f"{token}/{k}" for k in range(len(self.racks.get(token, [])))]}
        tok, k = token.split("/")
        r = self.racks[tok][int(k)]
        return {"category_name": "static_object.bicycle_rack", "translation": list(r[:3]), "size": list(r[3:6]),
                "rotation": list(r[6:10])}


def _devkit_metrics(gt_eb, pred_eb, racks_by_token=None):
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import filter_eval_boxes
    from nuscenes.eval.common.utils import center_distance
    from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
    from nuscenes.eval.detection.data_classes import DetectionMetrics

    cfg = config_factory("detection_cvpr_2019")
    nusc = _FakeNusc(racks_by_token or {})
    gt_eb = filter_eval_boxes(nusc, gt_eb, cfg.class_range)
    pred_eb = filter_eval_boxes(nusc, pred_eb, cfg.class_range)
    metrics = DetectionMetrics(cfg)
    for name in cfg.class_names:
        for th in cfg.dist_ths:
            md = accumulate(gt_eb, pred_eb, name, center_distance, th)
            metrics.add_label_ap(name, th, calc_ap(md, cfg.min_recall, cfg.min_precision))
        md = accumulate(gt_eb, pred_eb, name, center_distance, cfg.dist_th_tp)
        for m in TP_METRICS:
            if name == "traffic_cone" and m in ("attr_err", "vel_err", "orient_err"):
                tp = np.nan
            elif name == "barrier" and m in ("attr_err", "vel_err"):
                tp = np.nan
            else:
                tp = calc_tp(md, cfg.min_recall, m)
            metrics.add_label_tp(name, m, tp)
    return metrics, gt_eb, pred_eb


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_nuscenes_devkit(seed):
    rng = np.random.default_rng(seed)
    gt, pred, ego = _random_boxes(rng)
    ref, gt_f, pred_f = _devkit_metrics(_to_eval_boxes(gt, ego, True), _to_eval_boxes(pred, ego, False))
    ours = evaluate(pred, gt)
    assert ours["mean_ap"] == pytest.approx(ref.mean_ap, abs=1e-9)
    assert ours["nd_score"] == pytest.approx(ref.nd_score, abs=1e-9)
    for m in TP_METRICS:
        assert ours["tp_errors"][m] == pytest.approx(ref.tp_errors[m], abs=1e-9)
    for c in DETECTION_CLASSES:
        assert ours["mean_dist_aps"][c] == pytest.approx(ref.mean_dist_aps[c], abs=1e-9)
        for th in DETECTION_CVPR_2019.dist_ths:
            assert ours["label_aps"][c][th] == pytest.approx(ref.get_label_ap(c, th), abs=1e-9)
        for m in TP_METRICS:
            r = ref.get_label_tp(c, m)
            if np.isnan(r):
                assert np.isnan(ours["label_tp_errors"][c][m])
            else:
                assert ours["label_tp_errors"][c][m] == pytest.approx(r, abs=1e-9), (c, m)
    # the filtered sets are the same boxes, and the scene is not degenerate
    assert len(filter_boxes(gt)) == len(gt_f.all) and len(filter_boxes(pred)) == len(pred_f.all)
    assert 0.05 < ours["mean_ap"] < 0.95 and 0.1 < ours["nd_score"] < 0.95
    assert "NDS" in format_table(ours)


def test_bike_rack_filter_agrees_with_devkit():
    rng = np.random.default_rng(7)
    gt, pred, ego = _random_boxes(rng, num_samples=8)
    bikes = np.flatnonzero(np.isin(gt.labels, [6, 7]) & (gt.num_pts != 0) & (gt.ego_dist < 40))
    assert len(bikes) >= 2
    racks, racks_tok = {}, {}
    for i in bikes[:2]:  # a rack around the first two bicycles / motorcycles
        s = int(gt.sample[i])
        rack = np.r_[gt.translation[i] + 0.2, [2.0, 3.0, 2.0], yaw_quaternion(np.array([0.3]))[0]]
        racks.setdefault(s, []).append(rack)
        racks_tok.setdefault(gt.sample_tokens[s], []).append(rack)
    ours_gt = filter_boxes(gt, bike_racks={s: np.array(r) for s, r in racks.items()})
    _, gt_f, _ = _devkit_metrics(_to_eval_boxes(gt, ego, True), _to_eval_boxes(pred, ego, False), racks_tok)
    assert len(ours_gt) == len(gt_f.all) == len(filter_boxes(gt)) - 2
    ref, _, _ = _devkit_metrics(_to_eval_boxes(gt, ego, True), _to_eval_boxes(pred, ego, False), racks_tok)
    ours = evaluate(pred, gt, bike_racks={s: np.array(r) for s, r in racks.items()})
    assert ours["nd_score"] == pytest.approx(ref.nd_score, abs=1e-9)


def test_hand_worked_single_class():
    # one car, one perfect prediction: AP 1 at every threshold, zero errors, attribute right
    gt = NuScenesBoxes([0], [[10.0, 0, 0]], [[2.0, 4.0, 1.5]], yaw_quaternion(np.array([0.2])), [[1.0, 0.0]], [0],
                       attributes=[6], ego_dist=[10.0], num_pts=[10], sample_tokens=["a"])
    pred = NuScenesBoxes([0], [[10.3, 0.4, 0]], [[2.0, 4.0, 1.5]], yaw_quaternion(np.array([0.2 + math.pi])),
                         [[1.0, 0.0]], [0], scores=[0.9], attributes=[5], ego_dist=[10.0], sample_tokens=["a"])
    r = evaluate(pred, gt)
    car = r["label_tp_errors"]["car"]
    assert r["label_aps"]["car"][0.5] == 0.0  # 0.5 m off: not within 0.5 m
    assert r["label_aps"]["car"][1.0] == pytest.approx(1.0)
    assert car["trans_err"] == pytest.approx(0.5) and car["orient_err"] == pytest.approx(math.pi)
    assert car["attr_err"] == pytest.approx(1.0) and car["scale_err"] == pytest.approx(0.0)
    assert r["mean_dist_aps"]["car"] == pytest.approx(0.75) and r["mean_ap"] == pytest.approx(0.075)
    # classes without ground truth: AP 0 and errors 1
    assert r["label_tp_errors"]["bus"]["trans_err"] == 1.0 and r["mean_dist_aps"]["bus"] == 0.0


def test_filters_range_and_points():
    gt = NuScenesBoxes([0, 0, 0], [[0, 0, 0]] * 3, [[1, 1, 1]] * 3, yaw_quaternion(np.zeros(3)), np.zeros((3, 2)),
                       [DETECTION_CLASSES.index("traffic_cone")] * 3, ego_dist=[29.9, 30.0, 10.0], num_pts=[1, 1, 0])
    kept = filter_boxes(gt)
    assert len(kept) == 1 and kept.ego_dist[0] == pytest.approx(29.9)


def test_submission_roundtrip_and_devkit_loader(tmp_path):
    rng = np.random.default_rng(3)
    gt, pred, ego = _random_boxes(rng, num_samples=3)
    path = tmp_path / "results.json"
    write_submission(path, pred)
    ego_by_token = {t: ego[i] for i, t in enumerate(pred.sample_tokens)}
    back, meta = read_submission(path, ego_by_token, pred.sample_tokens)
    assert meta["use_lidar"] is True
    np.testing.assert_allclose(back.translation, pred.translation)
    np.testing.assert_allclose(back.ego_dist, pred.ego_dist)
    np.testing.assert_array_equal(back.labels, pred.labels)
    np.testing.assert_array_equal(back.attributes, pred.attributes)
    # the devkit reads the same file into the same boxes
    from nuscenes.eval.common.loaders import load_prediction
    from nuscenes.eval.detection.data_classes import DetectionBox

    eb, _ = load_prediction(str(path), 500, DetectionBox, verbose=False)
    assert len(eb.all) == len(pred)
    conv = from_eval_boxes(eb, pred.sample_tokens)
    np.testing.assert_allclose(conv.size, pred.size)
    np.testing.assert_allclose(conv.scores, pred.scores)
    assert not list(tmp_path.glob("*.tmp"))


def test_quaternion_yaw_roundtrip_and_errors(tmp_path):
    yaw = np.linspace(-3.1, 3.1, 9)
    np.testing.assert_allclose(quaternion_yaw(yaw_quaternion(yaw)), yaw, atol=1e-12)
    np.testing.assert_allclose(quaternion_yaw(2.0 * yaw_quaternion(yaw)), yaw, atol=1e-12)  # not unit: normalised
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"a": [{"translation": [0, 0, 0]}]}}))
    with pytest.raises(ValueError, match="not a valid detection box"):
        read_submission(bad)
    with pytest.raises(ValueError, match="labels must index"):
        NuScenesBoxes([0], [[0, 0, 0]], [[1, 1, 1]], [[1, 0, 0, 0]], [[0, 0]], [12], ego_dist=[1.0])
    with pytest.raises(ValueError, match="ego_dist"):
        NuScenesBoxes([0], [[0, 0, 0]], [[1, 1, 1]], [[1, 0, 0, 0]], [[0, 0]], [1])


# ---- end to end through the nuScenes tables ------------------------------------------------------------------------
_CATEGORIES = {"static_object.bicycle_rack": None, "vehicle.car": "car", "vehicle.truck": "truck",
               "human.pedestrian.adult": "pedestrian",
               "vehicle.bicycle": "bicycle", "movable_object.trafficcone": "traffic_cone",
               "movable_object.barrier": "barrier"}


def _write_mini_tables(root, rng, num_samples=4, num_objects=24):
    """A tiny v1.0-mini database (scene-0103 of the mini_val split) the devkit can load."""
    tok = iter(f"{i:032x}" for i in range(1, 100000))
    t = {name: [] for name in ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
                               "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")}
    cat_tok = {}
    for name in _CATEGORIES:
        cat_tok[name] = next(tok)
        t["category"].append({"token": cat_tok[name], "name": name, "description": ""})
    attr_tok = {}
    for name in ATTRIBUTE_NAMES:
        attr_tok[name] = next(tok)
        t["attribute"].append({"token": attr_tok[name], "name": name, "description": ""})
    vis = next(tok)
    t["visibility"].append({"token": vis, "level": "v80-100", "description": ""})
    sensor, calib, log, scene, map_tok = (next(tok) for _ in range(5))
    t["sensor"].append({"token": sensor, "channel": "LIDAR_TOP", "modality": "lidar"})
    t["calibrated_sensor"].append({"token": calib, "sensor_token": sensor, "translation": [0.9, 0.0, 1.8],
                                   "rotation": [1, 0, 0, 0], "camera_intrinsic": []})
    t["log"].append({"token": log, "logfile": "", "vehicle": "", "date_captured": "", "location": "boston-seaport"})
    t["map"].append({"token": map_tok, "log_tokens": [log], "category": "semantic_prior", "filename": ""})
    samples = [next(tok) for _ in range(num_samples)]
    ego = []
    for i, s in enumerate(samples):
        ts = 1_500_000_000_000_000 + i * 500_000
        pose, sd = next(tok), next(tok)
        ego.append(np.array([300.0 + 4 * i, 600.0 + i, 0.0]))
        t["ego_pose"].append({"token": pose, "timestamp": ts, "rotation": [1, 0, 0, 0], "translation": list(ego[-1])})
        t["sample"].append({"token": s, "timestamp": ts, "scene_token": scene,
                            "prev": samples[i - 1] if i else "", "next": samples[i + 1] if i + 1 < num_samples else ""})
        t["sample_data"].append({"token": sd, "sample_token": s, "ego_pose_token": pose,
                                 "calibrated_sensor_token": calib, "timestamp": ts, "fileformat": "pcd",
                                 "is_key_frame": True, "height": 0, "width": 0,
                                 "filename": f"samples/LIDAR_TOP/{i}.pcd.bin", "prev": "", "next": ""})
    t["scene"].append({"token": scene, "log_token": log, "nbr_samples": num_samples, "first_sample_token": samples[0],
                       "last_sample_token": samples[-1], "name": "scene-0103", "description": ""})
    names = list(_CATEGORIES)
    for k in range(num_objects):
        cat = names[k] if k < len(names) else names[int(rng.integers(1, len(names)))]
        inst = next(tok)
        anns = [next(tok) for _ in range(num_samples)]
        start = ego[0] + np.r_[rng.uniform(-45, 45, 2), 0.5]
        vel = rng.normal(0, 2, 2) if k else np.zeros(2)
        size = [float(v) for v in rng.uniform(0.6, 4.5, 3)]
        if cat == "vehicle.bicycle" and k < len(names):  # the first bicycle stands in the rack (object 0)
            start, vel = np.asarray(t["sample_annotation"][0]["translation"]), np.zeros(2)
        det = _CATEGORIES[cat]
        attrs = [a for a in ATTRIBUTE_NAMES if det and a.split(".")[0] in
                 {"car": "vehicle", "truck": "vehicle", "pedestrian": "pedestrian", "bicycle": "cycle"}.get(det, "-")]
        attr = [attr_tok[attrs[int(rng.integers(len(attrs)))]]] if attrs else []
        for i, a in enumerate(anns):
            pos = np.asarray(start, float) + np.r_[vel * 0.5 * i, 0.0]
            t["sample_annotation"].append({
                "token": a, "sample_token": samples[i], "instance_token": inst, "visibility_token": vis,
                "attribute_tokens": attr, "translation": [float(v) for v in pos],
                "size": [3.0, 3.0, 2.0] if det is None else size,
                "rotation": [float(v) for v in yaw_quaternion(np.array([rng.uniform(-3, 3)]))[0]],
                "prev": anns[i - 1] if i else "", "next": anns[i + 1] if i + 1 < num_samples else "",
                "num_lidar_pts": int(rng.choice([0, 3, 40], p=[0.15, 0.25, 0.6])), "num_radar_pts": 0})
        t["instance"].append({"token": inst, "category_token": cat_tok[cat], "nbr_annotations": num_samples,
                              "first_annotation_token": anns[0], "last_annotation_token": anns[-1]})
    table_dir = root / "v1.0-mini"
    table_dir.mkdir(parents=True)
    for name, records in t.items():
        (table_dir / f"{name}.json").write_text(json.dumps(records))
    return samples, ego, t["sample_annotation"]


def test_evaluate_files_matches_devkit_detection_eval(tmp_path):
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    from pointwin.evaluation.nuscenes import evaluate_files

    rng = np.random.default_rng(4)
    samples, ego, anns = _write_mini_tables(tmp_path / "nusc", rng)
    index = {s: i for i, s in enumerate(samples)}
    rows = []
    for a in anns:  # detections: jittered copies of most annotations (as a detector would), plus clutter
        if rng.random() < 0.8:
            rows.append((index[a["sample_token"]], np.asarray(a["translation"]) + np.r_[rng.normal(0, 0.6, 2), 0],
                         a["size"], a["rotation"], a["instance_token"], rng.random()))
    tables = tmp_path / "nusc" / "v1.0-mini"
    cats = {c["token"]: c["name"] for c in json.loads((tables / "category.json").read_text())}
    inst_cat = {r["token"]: _CATEGORIES[cats[r["category_token"]]]
                for r in json.loads((tables / "instance.json").read_text())}
    rows = [r for r in rows if inst_cat[r[4]] is not None]
    n = len(rows)
    labels = np.array([DETECTION_CLASSES.index(inst_cat[r[4]]) for r in rows])
    attrs = np.array([{"car": 5, "truck": 6, "pedestrian": 0, "bicycle": 3}.get(DETECTION_CLASSES[c], -1)
                      for c in labels])
    sample = np.array([r[0] for r in rows])
    trans = np.array([r[1] for r in rows])
    pred = NuScenesBoxes(sample, trans, np.array([r[2] for r in rows]), np.array([r[3] for r in rows]),
                         rng.normal(0, 2, (n, 2)), labels, np.array([r[5] for r in rows]), attrs,
                         np.zeros(n), sample_tokens=samples)
    result_path = tmp_path / "results.json"
    write_submission(result_path, pred)
    ours = evaluate_files(result_path, tmp_path / "nusc", version="v1.0-mini", eval_set="mini_val")
    nusc = NuScenes(version="v1.0-mini", dataroot=str(tmp_path / "nusc"), verbose=False)
    ref, _ = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(result_path), "mini_val",
                           str(tmp_path / "out"), verbose=False).evaluate()
    assert ours["nd_score"] == pytest.approx(ref.nd_score, abs=1e-9)
    assert ours["mean_ap"] == pytest.approx(ref.mean_ap, abs=1e-9)
    for m in TP_METRICS:
        assert ours["tp_errors"][m] == pytest.approx(ref.tp_errors[m], abs=1e-9, nan_ok=True)
    assert ours["mean_ap"] > 0.1
