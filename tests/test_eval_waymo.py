"""Waymo AP/APH: the official tool's documented output, hand-worked rules, and a naive reference.

The naive reference below shares no code with pointwin.evaluation: shapely polygons for the IoU, a
full assignment per frame, class and score cut-off, and plain loops for the counts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from pointwin.evaluation.detection import (
    SCORE_CUTOFFS,
    MatchCounts,
    cutoff_counts,
    heading_accuracy,
    match_counts,
    precision_recall,
    waymo_average_precision,
)
from pointwin.evaluation.waymo import (
    WaymoObjects,
    evaluate,
    evaluate_files,
    format_table,
    ground_truth_levels,
    read_objects,
    upright_iou3d_pairs,
    write_predictions,
)
from tests.conftest import Polygon, shared_file

# Printed by compute_detection_metrics_main on fake_predictions.bin / fake_ground_truths.bin
# (header comment of waymo-open-dataset src/waymo_open_dataset/metrics/tools/compute_detection_metrics_main.cc).
OFFICIAL = {
    "VEHICLE": {"L1": (0.208277, 0.162823), "L2": (0.20542, 0.160523)},
    "PEDESTRIAN": {"L1": (0.129258, 0.0984962), "L2": (0.125136, 0.0953438)},
    "SIGN": {"L1": (0.0926278, 0.0635938), "L2": (0.067927, 0.0466355)},
    "CYCLIST": {"L1": (0.0, 0.0), "L2": (0.0, 0.0)},
}
OFFICIAL_RANGE = {
    "VEHICLE_[0, 30)": {"L1": (0.154727, 0.129927), "L2": (0.154727, 0.129927)},
    "VEHICLE_[30, 50)": {"L1": (0.27302, 0.230956), "L2": (0.270492, 0.228818)},
    "VEHICLE_[50, +inf)": {"L1": (0.218596, 0.155501), "L2": (0.212188, 0.150963)},
    "PEDESTRIAN_[0, 30)": {"L1": (0.19352, 0.155428), "L2": (0.19352, 0.155428)},
    "PEDESTRIAN_[30, 50)": {"L1": (0.144201, 0.103131), "L2": (0.134931, 0.0966024)},
    "PEDESTRIAN_[50, +inf)": {"L1": (0.0985548, 0.0779858), "L2": (0.0960544, 0.075891)},
    "SIGN_[0, 30)": {"L1": (0.106175, 0.0716929), "L2": (0.0651952, 0.0439717)},
    "SIGN_[30, 50)": {"L1": (0.15528, 0.117763), "L2": (0.13587, 0.103042)},
    "SIGN_[50, +inf)": {"L1": (0.075276, 0.0507518), "L2": (0.0596342, 0.040206)},
    **{f"CYCLIST_{r}": {"L1": (0.0, 0.0), "L2": (0.0, 0.0)} for r in ("[0, 30)", "[30, 50)", "[50, +inf)")},
}
# Two shards differ slightly on the unmodified fixture; see the next test and pointwin/evaluation/waymo.py.
KNOWN_DIFFERENCE = {("VEHICLE",), ("RANGE", "VEHICLE_[30, 50)")}


def _close(ours: float, printed: float) -> bool:
    # printed with 6 significant digits (std::cout default)
    return abs(ours - printed) <= 5e-6 * max(abs(printed), 1e-3) + 1e-7


def _fixture_objects():
    index: dict = {}
    gt = read_objects(shared_file("waymo/metrics/fake_ground_truths.bin"), index)
    pred = read_objects(shared_file("waymo/metrics/fake_predictions.bin"), index)
    return pred, gt


@pytest.fixture(scope="module")
def fake_result():
    pred = shared_file("waymo/metrics/fake_predictions.bin")
    gt = shared_file("waymo/metrics/fake_ground_truths.bin")
    return evaluate_files(pred, gt)


def test_official_fixture_matches_documented_output(fake_result):
    checked = 0
    for cls, levels in OFFICIAL.items():
        for lv, (ap, aph) in levels.items():
            got = fake_result[cls][lv]
            if (cls,) in KNOWN_DIFFERENCE:
                assert 0 < got["mAP"] - ap < 0.002 and 0 < got["mAPH"] - aph < 0.002
                continue
            assert _close(got["mAP"], ap) and _close(got["mAPH"], aph), (cls, lv, got, ap, aph)
            checked += 1
    for shard, levels in OFFICIAL_RANGE.items():
        for lv, (ap, aph) in levels.items():
            got = fake_result["RANGE"][shard][lv]
            if ("RANGE", shard) in KNOWN_DIFFERENCE:
                assert 0 < got["mAP"] - ap < 0.005 and 0 < got["mAPH"] - aph < 0.005
                continue
            assert _close(got["mAP"], ap) and _close(got["mAPH"], aph), (shard, lv, got, ap, aph)
            checked += 1
    assert checked == 28
    table = format_table(fake_result)
    assert "OBJECT_TYPE_TYPE_PEDESTRIAN_LEVEL_1: [mAP 0.129258] [mAPH 0.0984962]" in table
    assert "RANGE_TYPE_SIGN_[30, 50)_LEVEL_2: [mAP 0.13587] [mAPH 0.103042]" in table


def test_official_fixture_vehicle_difference_is_one_coincident_box():
    """The VEHICLE gap comes from one prediction that coincides with its ground truth (heading + pi).

    Exact clipping gives IoU 1; the official numbers are reproduced to all printed digits when that
    prediction is unmatched (moved by a 90 degree turn about the origin, which keeps its range bin).
    """
    pred, gt = _fixture_objects()
    gt_box = gt.boxes[(gt.types == 1) & (np.abs(gt.boxes[:, 0] - 43.6829136) < 1e-6)]
    hit = np.flatnonzero((pred.types == 1) & (np.abs(pred.boxes[:, :6] - gt_box[:, :6]).max(1) < 1e-9))
    assert len(hit) == 1
    assert abs(pred.boxes[hit[0], 6] - gt_box[0, 6] - math.pi) < 1e-12
    assert upright_iou3d_pairs(pred.boxes[hit], gt_box)[0] == pytest.approx(1.0)
    x, y = pred.boxes[hit[0], :2].copy()
    pred.boxes[hit[0], :2] = (-y, x)
    r = evaluate(pred, gt)
    for lv, (ap, aph) in OFFICIAL["VEHICLE"].items():
        assert _close(r["VEHICLE"][lv]["mAP"], ap) and _close(r["VEHICLE"][lv]["mAPH"], aph), r["VEHICLE"]
    for lv, (ap, aph) in OFFICIAL_RANGE["VEHICLE_[30, 50)"].items():
        got = r["RANGE"]["VEHICLE_[30, 50)"][lv]
        assert _close(got["mAPH"], aph)
        assert abs(got["mAP"] - ap) < 1.1e-3  # the one remaining, unexplained gap (see waymo.py)


# ---- naive reference ------------------------------------------------------------------------------------------
def _poly(b):
    x, y, _, length, width, _, yaw = b
    c, s = math.cos(yaw), math.sin(yaw)
    return Polygon([(x + u * c - v * s, y + u * s + v * c)
                    for u, v in ((length / 2, width / 2), (-length / 2, width / 2),
                                 (-length / 2, -width / 2), (length / 2, -width / 2))])


def _iou3d(a, b):
    if min(a[3:6]) <= 1e-2 or min(b[3:6]) <= 1e-2:
        return 0.0
    lo, hi = max(a[2] - a[5] / 2, b[2] - b[5] / 2), min(a[2] + a[5] / 2, b[2] + b[5] / 2)
    if hi < lo:
        return 0.0
    inter = _poly(a).intersection(_poly(b)).area * (hi - lo)
    union = a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter
    return inter / union if union > 1e-6 else 0.0


def _iou_bev(a, b):
    inter = _poly(a).intersection(_poly(b)).area
    return inter / (a[3] * a[4] + b[3] * b[4] - inter)


def _naive_counts(pred, gt, gt_level, thresholds, pred_shard, gt_shard, num_shards, levels=(1, 2), iou_fn=_iou3d):
    k = len(SCORE_CUTOFFS)
    tp, fp, ha = np.zeros((num_shards, k)), np.zeros((num_shards, k)), np.zeros((num_shards, k))
    fn = np.zeros((num_shards, len(levels), k))
    for f in sorted(set(pred.frame.tolist()) | set(gt.frame.tolist())):
        for s in range(num_shards):
            pi = [i for i in range(len(pred)) if pred.frame[i] == f and pred_shard[i] == s]
            gi = [j for j in range(len(gt)) if gt.frame[j] == f and gt_shard[j] == s]
            iou = np.zeros((len(pi), len(gi)))
            for a, i in enumerate(pi):
                for b, j in enumerate(gi):
                    v = iou_fn(pred.boxes[i], gt.boxes[j])
                    iou[a, b] = v if v >= thresholds[pred.types[i]] else 0.0
            for kk, cut in enumerate(SCORE_CUTOFFS):
                alive = [a for a, i in enumerate(pi) if np.float32(pred.scores[i]) >= cut]
                mp, mg = set(), set()
                if alive and gi:
                    w = np.rint(iou[alive] * 1e6)
                    for r, c in zip(*linear_sum_assignment(w, maximize=True)):
                        if w[r, c] > 0:
                            mp.add(alive[r])
                            mg.add(c)
                            d = abs((pred.boxes[pi[alive[r]], 6] - gt.boxes[gi[c], 6] + math.pi) % (2 * math.pi)
                                    - math.pi)
                            ha[s, kk] += 1 - d / math.pi
                tp[s, kk] += len(mp)
                fp[s, kk] += sum(1 for a in alive if a not in mp and not pred.overlap_nlz[pi[a]])
                for li, lv in enumerate(levels):
                    fn[s, li, kk] += sum(1 for b, j in enumerate(gi) if b not in mg and gt_level[j] <= lv)
    return MatchCounts(tp, fp, ha, fn)


def _random_scene(rng, frames=4, per_frame=6):
    """Clusters of ground truths with jittered, duplicated predictions: many competing matches."""
    gb, gf, gt_types, npts, pb, pf, pt, ps, nlz = [], [], [], [], [], [], [], [], []
    for f in range(frames):
        for _ in range(per_frame):
            t = int(rng.integers(1, 4))
            size = {1: (4.5, 1.9, 1.6), 2: (0.9, 0.9, 1.8), 3: (0.6, 0.6, 1.0)}[t]
            c = rng.uniform(-60, 60, 2)
            box = [c[0], c[1], rng.uniform(-1, 1), *size, rng.uniform(-math.pi, math.pi)]
            gb.append(box)
            gf.append(f)
            gt_types.append(t)
            npts.append(int(rng.choice([0, 3, 50])))
            for _ in range(int(rng.integers(0, 4))):
                jit = np.array(box, float)
                jit[:2] += rng.normal(0, 0.1 * size[1], 2)
                jit[2] += rng.normal(0, 0.05)
                jit[3:6] *= rng.uniform(0.93, 1.07, 3)
                jit[6] += rng.choice([0.0, math.pi, 0.3 * rng.normal()])
                pb.append(jit)
                pf.append(f)
                pt.append(t)
                ps.append(rng.uniform(0, 1))
                nlz.append(rng.random() < 0.1)
        for _ in range(3):  # unmatched clutter
            pb.append([*rng.uniform(-60, 60, 2), 0.0, 4.0, 2.0, 1.5, 0.0])
            pf.append(f)
            pt.append(1)
            ps.append(rng.uniform(0, 1))
            nlz.append(False)
    gt = WaymoObjects(np.array(gf), np.array(gb), np.array(gt_types), num_points=np.array(npts),
                      difficulty=rng.choice([0, 0, 2], len(gb)))
    pred = WaymoObjects(np.array(pf), np.array(pb), np.array(pt), np.array(ps), overlap_nlz=np.array(nlz))
    return pred, gt


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_reference_object_type_and_range(seed):
    rng = np.random.default_rng(seed)
    pred, gt = _random_scene(rng)
    result = evaluate(pred, gt)
    keep, level = ground_truth_levels(gt)
    g, level = gt.select(keep), level[keep]
    thr = (0.0, 0.7, 0.5, 0.5, 0.5)
    for shards, pshard, gshard, names in (
        (4, pred.types - 1, g.types - 1, ["VEHICLE", "PEDESTRIAN", "SIGN", "CYCLIST"]),
        (12, 3 * (pred.types - 1) + _bin(pred.boxes), 3 * (g.types - 1) + _bin(g.boxes),
         [f"{c}_{r}" for c in ("VEHICLE", "PEDESTRIAN", "SIGN", "CYCLIST")
          for r in ("[0, 30)", "[30, 50)", "[50, +inf)")]),
    ):
        counts = _naive_counts(pred, g, level, thr, pshard, gshard, shards)
        section = result if shards == 4 else result["RANGE"]
        for li, lv in enumerate(("L1", "L2")):
            p, ph, r = precision_recall(counts, li)
            for s, name in enumerate(names):
                assert section[name][lv]["mAP"] == pytest.approx(waymo_average_precision(p[s], r[s]), abs=1e-9)
                assert section[name][lv]["mAPH"] == pytest.approx(waymo_average_precision(ph[s], r[s]), abs=1e-9)
    # the scene exercises matching at all
    assert all(result[c]["L2"]["mAP"] > 0.05 for c in ("VEHICLE", "PEDESTRIAN", "SIGN"))


def _bin(boxes):
    d = np.linalg.norm(boxes[:, :3], axis=1)
    return np.where(d < 30, 0, np.where(d < 50, 1, 2))


def test_fake_vehicle_counts_match_naive_reference():
    """On the official fixture, VEHICLE TP/FP/FN at every cut-off equal the naive reference's."""
    idx: dict = {}
    gt = read_objects(shared_file("waymo/metrics/fake_ground_truths.bin"), idx)
    pred = read_objects(shared_file("waymo/metrics/fake_predictions.bin"), idx)
    keep, level = ground_truth_levels(gt)
    g, level = gt.select(keep), level[keep]
    pv, gv = pred.select(pred.types == 1), g.select(g.types == 1)
    lv = level[g.types == 1]
    # restrict to 6 frames to keep the naive loops fast
    frames = np.unique(gv.frame)[:6]
    pv, gm = pv.select(np.isin(pv.frame, frames)), np.isin(gv.frame, frames)
    gv, lv = gv.select(gm), lv[gm]
    ref = _naive_counts(pv, gv, lv, (0, 0.7, 0.5, 0.5, 0.5), np.zeros(len(pv), int), np.zeros(len(gv), int), 1)
    from pointwin.evaluation.detection import candidate_pairs

    ep, eg = candidate_pairs(pv.frame, gv.frame, pv.boxes, gv.boxes)
    iou = upright_iou3d_pairs(pv.boxes[ep], gv.boxes[eg])
    ok = iou >= 0.7
    ours = match_counts(1, len(SCORE_CUTOFFS), (1, 2), np.zeros(len(pv), int), cutoff_counts(pv.scores),
                        pv.overlap_nlz, np.zeros(len(gv), int), lv, ep[ok], eg[ok], iou[ok],
                        heading_accuracy(pv.boxes[ep[ok], 6], gv.boxes[eg[ok], 6]))
    np.testing.assert_array_equal(ours.tp, ref.tp)
    np.testing.assert_array_equal(ours.fp, ref.fp)
    np.testing.assert_array_equal(ours.fn, ref.fn)
    np.testing.assert_allclose(ours.sum_ha, ref.sum_ha, atol=1e-9)


# ---- IoU -------------------------------------------------------------------------------------------------------
def test_upright_iou3d_pairs_vs_shapely():
    rng = np.random.default_rng(3)
    n = 300
    a = np.column_stack([rng.normal(0, 1, (n, 3)), rng.uniform(0.5, 4, (n, 3)), rng.uniform(-4, 4, n)])
    b = a + np.column_stack([rng.normal(0, 0.7, (n, 3)), rng.normal(0, 0.3, (n, 3)), rng.normal(0, 0.5, n)])
    b[:, 3:6] = np.abs(b[:, 3:6])
    b[:5, 3] = 0.005  # tiny side: IoU 0 by the Waymo rule
    ours = upright_iou3d_pairs(a, b)
    ref = np.array([_iou3d(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    assert (ours[:5] == 0).all() and (ours > 0.3).sum() > 50


# ---- hand-worked rules -----------------------------------------------------------------------------------------
def _car(x, y=0.0, yaw=0.0):
    return [x, y, 0.0, 4.0, 2.0, 1.5, yaw]


def _objects(boxes, frame=None, types=None, **kw):
    boxes = np.array(boxes, float).reshape(-1, 7)
    n = len(boxes)
    return WaymoObjects(np.zeros(n, int) if frame is None else np.asarray(frame),
                        boxes, np.ones(n, int) if types is None else np.asarray(types), **kw)


def test_ap_integration_hand_worked():
    # single PR point (recall 0.5, precision 1): area 0.5
    assert waymo_average_precision([1.0], [0.5]) == pytest.approx(0.5)
    # (r=1, p=0.5) and (r=0.5, p=1): 0.45 * 0.5 + 0.05 * (0.5 + 1) / 2 + 0.5 * 1 = 0.7625
    assert waymo_average_precision([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.7625)
    # envelope: a lower precision at a lower recall is lifted to the best precision at higher recall
    assert waymo_average_precision([0.2, 1.0], [0.5, 1.0]) == pytest.approx(1.0)
    assert waymo_average_precision([], []) == 0.0
    assert waymo_average_precision([1.0], [0.0]) == 0.0


def test_tp_on_level2_ground_truth_counts_at_level1():
    gt = _objects([_car(10), _car(20)], num_points=np.array([100, 3]))  # second one is LEVEL_2 (<= 5 points)
    pred = _objects([_car(20)], scores=np.array([0.9]))
    r = evaluate(pred, gt, breakdowns=("OBJECT_TYPE",))["VEHICLE"]
    # L1: TP 1 (the L2 box, still a TP), FN 1 -> recall 0.5 at precision 1 -> AP 0.5 (not 0, not 0.25)
    assert r["L1"]["mAP"] == pytest.approx(0.5)
    assert r["L2"]["mAP"] == pytest.approx(0.5)
    # predicting only the L1 box: L1 recall 1, L2 recall 0.5
    r = evaluate(_objects([_car(10)], scores=np.array([0.9])), gt, breakdowns=("OBJECT_TYPE",))["VEHICLE"]
    assert r["L1"]["mAP"] == pytest.approx(1.0) and r["L2"]["mAP"] == pytest.approx(0.5)


def test_false_positive_in_no_label_zone_is_ignored():
    gt = _objects([_car(10)], num_points=np.array([100]))
    boxes = [_car(10), _car(-30)]
    with_nlz = _objects(boxes, scores=np.array([0.9, 0.95]), overlap_nlz=np.array([False, True]))
    without = _objects(boxes, scores=np.array([0.9, 0.95]))
    assert evaluate(with_nlz, gt)["VEHICLE"]["L1"]["mAP"] == pytest.approx(1.0)
    # the FP outscores the TP: (r=0, p=1) then (r=1, p=0.5) -> area 0.5
    assert evaluate(without, gt)["VEHICLE"]["L1"]["mAP"] == pytest.approx(0.5)


@pytest.mark.parametrize("dyaw, expected", [(math.pi, 0.0), (-math.pi, 0.0), (math.pi / 2, 0.5), (2 * math.pi, 1.0),
                                            (0.25 * math.pi, 0.75)])
def test_heading_weight(dyaw, expected):
    gt = _objects([[10, 0, 0, 4, 4, 1.5, 0.3]], num_points=np.array([100]))  # square: IoU 1 whatever the yaw
    pred = _objects([[10, 0, 0, 4, 4, 1.5, 0.3 + dyaw]], scores=np.array([0.8]))
    r = evaluate(pred, gt)["VEHICLE"]["L2"]
    assert r["mAP"] == pytest.approx(1.0)
    assert r["mAPH"] == pytest.approx(expected, abs=1e-6)  # AP sums are float32 like the library


def test_empty_predictions_and_empty_ground_truth():
    gt = _objects([_car(10)], num_points=np.array([100]))
    empty = _objects(np.zeros((0, 7)), scores=np.zeros(0))
    r = evaluate(empty, gt)
    assert r["VEHICLE"]["L1"] == {"mAP": 0.0, "mAPH": 0.0}
    r = evaluate(_objects([_car(10)], scores=np.array([0.5])), _objects(np.zeros((0, 7))))
    assert all(r[c][lv]["mAP"] == 0.0 for c in ("VEHICLE", "PEDESTRIAN", "SIGN", "CYCLIST") for lv in ("L1", "L2"))
    r = evaluate(empty, _objects(np.zeros((0, 7))))
    assert r["PEDESTRIAN"]["L2"]["mAPH"] == 0.0


def test_zero_point_ground_truth_is_dropped():
    gt = _objects([_car(10), _car(30)], num_points=np.array([100, 0]))
    pred = _objects([_car(10), _car(30)], scores=np.array([0.9, 0.5]))
    # the box on the 0-point ground truth is a FP below the TP: AP = 1 (recall 1 reached at precision 1)
    assert evaluate(pred, gt)["VEHICLE"]["L1"]["mAP"] == pytest.approx(1.0)
    pred = _objects([_car(10), _car(30)], scores=np.array([0.5, 0.9]))
    assert evaluate(pred, gt)["VEHICLE"]["L1"]["mAP"] == pytest.approx(0.5)


def test_iou_threshold_and_class_separation():
    gt = _objects([_car(10)], num_points=np.array([100]))
    # shift 0.5 m along the 4 m length: IoU = 3.5 / 4.5 = 0.778 >= 0.7; 1 m: 3 / 5 = 0.6 < 0.7
    assert evaluate(_objects([_car(10.5)], scores=np.array([0.9])), gt)["VEHICLE"]["L1"]["mAP"] == 1.0
    assert evaluate(_objects([_car(11.0)], scores=np.array([0.9])), gt)["VEHICLE"]["L1"]["mAP"] == 0.0
    # a pedestrian prediction never matches a vehicle
    r = evaluate(_objects([_car(10)], types=[2], scores=np.array([0.9])), gt)
    assert r["VEHICLE"]["L1"]["mAP"] == 0.0 and r["PEDESTRIAN"]["L1"]["mAP"] == 0.0


def test_range_breakdown_bins_each_box_by_its_own_centre():
    gt = _objects([_car(30.1)], num_points=np.array([100]))
    pred = _objects([_car(29.9)], scores=np.array([0.9]))  # IoU 3.8 / 4.2 = 0.905 but other side of 30 m
    r = evaluate(pred, gt)
    assert r["VEHICLE"]["L1"]["mAP"] == pytest.approx(1.0)
    assert r["RANGE"]["VEHICLE_[0, 30)"]["L1"]["mAP"] == 0.0
    assert r["RANGE"]["VEHICLE_[30, 50)"]["L1"]["mAP"] == 0.0


def test_optimal_matching_beats_greedy():
    # P0 (score .9) overlaps G0 (.80) and G1 (.75); P1 (score .8) overlaps only G0 (.72).
    # Greedy by score: P0-G0, P1 unmatched -> 1 TP. Optimal: P0-G1 + P1-G0 -> 2 TPs at cut-offs <= 0.8.
    counts = match_counts(1, len(SCORE_CUTOFFS), (1,), np.zeros(2, int), cutoff_counts(np.array([0.9, 0.8])),
                          np.zeros(2, bool), np.zeros(2, int), np.ones(2, int), np.array([0, 0, 1]),
                          np.array([0, 1, 0]), np.array([0.80, 0.75, 0.72]), np.ones(3))
    assert counts.tp[0, 0] == 2 and counts.fp[0, 0] == 0 and counts.fn[0, 0, 0] == 0
    assert counts.tp[0, 81] == 1 and counts.fn[0, 0, 81] == 1  # only P0 above 0.81: matched to G0
    assert counts.tp[0, 91] == 0 and counts.fn[0, 0, 91] == 2


def test_cutoffs_and_heading_accuracy_helpers():
    assert len(SCORE_CUTOFFS) == 101 and SCORE_CUTOFFS[0] == 0 and SCORE_CUTOFFS[-1] == 1
    np.testing.assert_array_equal(cutoff_counts(np.array([0.0, 0.005, 0.01, 0.5, 1.0])), [1, 1, 2, 51, 101])
    np.testing.assert_allclose(heading_accuracy(np.array([0.1, 3.0, -3.0]), np.array([0.1, -3.0, 3.0])),
                               [1.0, 1 - (2 * math.pi - 6) / math.pi, 1 - (2 * math.pi - 6) / math.pi])


def test_write_predictions_roundtrip(tmp_path):
    boxes = np.array([_car(10, 2, 0.4), [5, -3, 0.5, 0.8, 0.7, 1.8, -1.0]])
    path = tmp_path / "sub.bin"
    write_predictions(path, boxes, [1, 2], [0.9, 0.4], ["ctx_a", "ctx_a"], [1000, 1000])
    back = read_objects(path)
    np.testing.assert_allclose(back.boxes, boxes)
    np.testing.assert_array_equal(back.types, [1, 2])
    np.testing.assert_allclose(back.scores, [0.9, 0.4], rtol=1e-7)
    assert back.frame_keys == [("ctx_a", 0, 1000)]
    assert not list(tmp_path.glob("*.tmp"))
    gt_path = tmp_path / "gt.bin"
    write_predictions(gt_path, boxes, [1, 2], [1.0, 1.0], ["ctx_a", "ctx_a"], [1000, 1000])
    # ground truths written without num_points: 0 points -> all dropped, so check with evaluate on arrays
    gt = read_objects(gt_path)
    gt.num_points = np.array([50, 50])
    r = evaluate(back, gt)
    assert r["VEHICLE"]["L1"]["mAP"] == 1.0 and r["PEDESTRIAN"]["L1"]["mAP"] == 1.0


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="scores"):
        write_predictions(tmp_path / "x.bin", np.array([_car(1)]), [1], [1.5], ["c"], [1])
    with pytest.raises(ValueError, match="one entry per box"):
        write_predictions(tmp_path / "x.bin", np.array([_car(1)]), [1], [0.5], ["c", "d"], [1])
    with pytest.raises(ValueError, match="types"):
        WaymoObjects(np.zeros(2), np.zeros((2, 7)), np.zeros(3))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\xff\xff\xff not a proto")
    with pytest.raises(ValueError, match="bad.bin"):
        read_objects(bad)


# ---- generic evaluator (synthetic dataset) -----------------------------------------------------------------------
def test_generic_evaluator_vs_naive_bev_reference():
    import torch

    from pointwin.evaluation.detection import evaluate_detections
    from pointwin.structures import Boxes3D, Detections

    pred, gt = _random_scene(np.random.default_rng(5))
    gt.num_points = None  # no difficulty, nothing dropped
    frames = int(max(pred.frame.max(), gt.frame.max())) + 1
    results = [Detections(Boxes3D(torch.from_numpy(pred.boxes[pred.frame == f])),
                          torch.from_numpy(pred.scores[pred.frame == f].astype(np.float32)),
                          torch.from_numpy(pred.types[pred.frame == f] - 1)) for f in range(frames)]
    gts = [(gt.boxes[gt.frame == f], gt.types[gt.frame == f] - 1) for f in range(frames)]
    thr = {"Car": 0.6, "Pedestrian": 0.4, "Sign": 0.3}
    m = evaluate_detections(results, gts, ["Car", "Pedestrian", "Sign"], iou_thresholds=thr)
    level = np.ones(len(gt), int)
    nlz_free = WaymoObjects(pred.frame, pred.boxes, pred.types, pred.scores)  # the generic evaluator has no NLZ
    for kind, fn in (("BEV", _iou_bev), ("3D", _iou3d)):
        ref = _naive_counts(nlz_free, gt, level, (0, 0.6, 0.4, 0.3, 0.5), nlz_free.types - 1, gt.types - 1, 3,
                            levels=(1,), iou_fn=fn)
        p, ph, r = precision_recall(ref, 0)
        for k, name in enumerate(("Car", "Pedestrian", "Sign")):
            assert m[f"{name}/AP_{kind}"] == pytest.approx(waymo_average_precision(p[k], r[k]), abs=1e-9)
            assert m[f"{name}/APH_{kind}"] == pytest.approx(waymo_average_precision(ph[k], r[k]), abs=1e-9)
        assert m[f"mAP_{kind}"] == pytest.approx(np.mean([m[f"{n}/AP_{kind}"] for n in ("Car", "Pedestrian", "Sign")]))
    assert m["Car/AP_BEV"] >= m["Car/AP_3D"] > 0.1


def test_generic_evaluator_hand_cases():
    from pointwin.evaluation.detection import evaluate_detections, format_ap_table

    gt = [(np.array([_car(10), _car(20)]), np.array([0, 0]))]
    lifted = np.array([_car(10), _car(20)])
    lifted[:, 2] += 1.0  # 1 m up of 1.5 m height: BEV IoU 1, 3D IoU 0.5 / 2.5 = 0.2
    m = evaluate_detections([(lifted, np.array([0, 0]), np.array([0.9, 0.8]))], gt, ["Car"])
    assert m["Car/AP_BEV"] == pytest.approx(1.0) and m["Car/AP_3D"] == 0.0
    # 1 m along the length: BEV IoU 3 / 5 = 0.6 -> a match at 0.5, not at 0.7
    shifted = np.array([_car(11), _car(21)])
    assert evaluate_detections([(shifted, np.array([0, 0]), np.array([0.9, 0.8]))], gt, ["Car"],
                               iou_thresholds={"Car": 0.5})["Car/AP_BEV"] == pytest.approx(1.0)
    assert evaluate_detections([(shifted, np.array([0, 0]), np.array([0.9, 0.8]))], gt, ["Car"],
                               iou_thresholds=0.7)["Car/AP_BEV"] == 0.0
    # no detections at all, and a class without ground truth (left out of the mean)
    m = evaluate_detections([(np.zeros((0, 7)), np.zeros(0, int), np.zeros(0))], gt, ["Car", "Cyclist"])
    assert m["Car/AP_BEV"] == 0.0 and m["Cyclist/AP_3D"] == 0.0 and m["mAP_3D"] == 0.0
    table = format_ap_table(m, 0.5)
    assert "Car" in table and "Cyclist" in table and "AP_BEV" in table
    with pytest.raises(ValueError, match="scores"):
        evaluate_detections([(shifted, np.array([0, 0]), np.array([2.0, 0.8]))], gt, ["Car"])
    with pytest.raises(ValueError, match="unknown classes"):
        evaluate_detections([(shifted, np.array([0, 0]), np.array([0.9, 0.8]))], gt, ["Car"], iou_thresholds={"Bus": 1})
    with pytest.raises(ValueError, match="results for"):
        evaluate_detections([], gt, ["Car"])


def test_numba_hungarian_matches_scipy():
    from pointwin.evaluation.detection import _max_weight_assignment

    rng = np.random.default_rng(11)
    for _ in range(200):
        n, m = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        w = np.where(rng.random((n, m)) < 0.5, np.rint(rng.uniform(5e5, 1e6, (n, m))), 0.0)
        rows, cols = linear_sum_assignment(w, maximize=True)
        best = w[rows, cols].sum()
        if n <= m:
            rc = _max_weight_assignment(w)
            got = sum(w[r, c] for r, c in enumerate(rc) if c >= 0)
            assert len(set(c for c in rc if c >= 0)) == sum(c >= 0 for c in rc)
        else:
            cr = _max_weight_assignment(w.T.copy())
            got = sum(w[r, c] for c, r in enumerate(cr) if r >= 0)
        assert got == best


def test_many_components_counts():
    """Tens of thousands of competing pairs (component labels beyond int32 key products)."""
    n = 30_000
    # component i: predictions 2i (score 0.9, IoU 0.8) and 2i+1 (score 0.3, IoU 0.9) on ground truth i
    scores = np.tile([0.9, 0.3], n)
    ep = np.arange(2 * n)
    eg = np.repeat(np.arange(n), 2)
    iou = np.tile([0.8, 0.9], n)
    ha = np.tile([1.0, 0.5], n)
    c = match_counts(1, len(SCORE_CUTOFFS), (1,), np.zeros(2 * n, int), cutoff_counts(scores), np.zeros(2 * n, bool),
                     np.zeros(n, int), np.ones(n, int), ep, eg, iou, ha)
    # at cut-offs <= 0.3 the better-overlapping low-score box is matched (APH weight 0.5), the other is a FP
    assert c.tp[0, 0] == n and c.fp[0, 0] == n and c.sum_ha[0, 0] == pytest.approx(0.5 * n)
    assert c.tp[0, 50] == n and c.fp[0, 50] == 0 and c.sum_ha[0, 50] == pytest.approx(n)
    assert c.tp[0, 95] == 0 and c.fn[0, 0, 95] == n and c.fn[0, 0, 0] == 0


def test_real_ground_truth_against_itself():
    path = shared_file("waymo/v1/gt.bin")
    r = evaluate_files(path, path)
    assert r["VEHICLE"]["L1"] == {"mAP": 1.0, "mAPH": 1.0}
    assert r["PEDESTRIAN"]["L2"]["mAP"] == 0.0  # no pedestrian in that file


def test_objects_from_detections(tmp_path):
    import torch

    from pointwin.evaluation.waymo import objects_from_detections
    from pointwin.structures import Boxes3D, Detections

    dets = [Detections(Boxes3D(torch.tensor([_car(10), _car(20)], dtype=torch.float32)), torch.tensor([0.9, 0.2]),
                       torch.tensor([0, 2])),
            Detections(Boxes3D.empty(), torch.zeros(0), torch.zeros(0, dtype=torch.long))]
    objs = objects_from_detections(dets, (1, 2, 4), [("ctx", 0, 5), ("ctx", 0, 6)])
    np.testing.assert_array_equal(objs.types, [1, 4])
    np.testing.assert_array_equal(objs.frame, [0, 0])
    np.testing.assert_allclose(objs.scores, [0.9, 0.2], rtol=1e-6)
    gt = _objects([_car(10)], num_points=np.array([100]))
    assert evaluate(objs, gt)["VEHICLE"]["L1"]["mAP"] == 1.0
    with pytest.raises(ValueError, match="label_to_type"):
        objects_from_detections(dets, (1,))
