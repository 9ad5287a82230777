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
