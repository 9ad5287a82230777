"""The KITTI metric (pointwin.evaluation.kitti): hand-worked cases and an independent float64 reference.

The hand-worked numbers follow the official rules (devkit ``evaluate_object.cpp``): with n valid ground
truths (GT), the score cut-offs are the true positives' scores whose recall is nearest the next of 0, 1/40,
..., 1, and the last one is always kept. With n = 80 all found that gives 41 cut-offs (TP number 1, 2, 4,
6, ..., 78, 80), one per slot; with n <= 40 every TP score is a cut-off, so slot s holds TP number s + 1.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from pointwin.datasets.kitti import KittiObject, read_calib, read_label
from pointwin.evaluation.kitti import (
    DIFFICULTIES,
    OVERLAPS,
    camera_to_permuted,
    detections_to_kitti,
    evaluate_kitti,
    score_cutoffs,
)
from pointwin.ops import boxes_iou3d, boxes_iou_bev
from tests.conftest import Polygon, shared_file


def car(x: float, z: float, *, height: float = 50.0, occ: int = 0, trunc: float = 0.0, ry: float = 0.0,
        score: float | None = None, name: str = "Car", alpha: float | None = None, u: float | None = None,
        dims: tuple[float, float, float] = (1.5, 1.6, 3.9)) -> KittiObject:
    """A camera-frame box at (x, 1.6, z) with an image box of the given height at column u."""
    u = 100.0 + 40.0 * x if u is None else u
    return KittiObject(type=name, truncated=trunc, occluded=occ, alpha=ry if alpha is None else alpha,
                       bbox=(u, 150.0, u + 30.0, 150.0 + height), dimensions=dims, location=(x, 1.6, z),
                       rotation_y=ry, score=score)


def row(n: int, **kw) -> list[KittiObject]:
    """n cars 8 m apart along x (no overlaps in the image or on the ground)."""
    return [car(8.0 * k, 20.0, **kw) for k in range(n)]


def detect(gts: list[KittiObject], scores) -> list[KittiObject]:
    return [dataclasses.replace(g, score=float(s)) for g, s in zip(gts, scores)]


def get(m: dict, cls: str, metric: str, diff: str, r: str) -> float:
    iou = OVERLAPS["strict"][cls.lower()][metric if metric != "aos" else "bbox"]
    return m[f"{cls}/{metric}@{iou:.2f}/{diff}/{r}"]


# ---------------------------------------------------------------------------------------------------
# hand-worked cases
# ---------------------------------------------------------------------------------------------------
def test_score_cutoffs_follow_the_recall_targets():
    s = np.linspace(0.99, 0.2, 80)
    cut = score_cutoffs(s, 80)
    kept = [0] + list(range(1, 79, 2)) + [79]  # TP numbers 1, 2, 4, ..., 78, 80
    assert np.array_equal(cut, s[kept]) and len(cut) == 41
    assert np.array_equal(score_cutoffs(s[:10], 10), s[:10])  # n < 40: every TP score
    assert np.array_equal(score_cutoffs(s[:40], 80), s[[0] + list(range(1, 38, 2)) + [39]])


def test_perfect_predictions_give_100_everywhere():
    gts = row(80) + [car(8.0 * k, 40.0, height=30.0, u=2000.0 + 40 * k) for k in range(40)]
    gts += [car(8.0 * k, 60.0, occ=2, u=4000.0 + 40 * k) for k in range(40)]
    frames = [gts[i::4] for i in range(4)]
    dets = [detect(f, np.linspace(0.9, 0.1, len(f))) for f in frames]
    m, curves = evaluate_kitti(frames, dets, classes=("Car",))
    assert curves.num_gt[("Car", "easy")] == 80 and curves.num_gt[("Car", "moderate")] == 120
    assert curves.num_gt[("Car", "hard")] == 160
    for metric in ("bbox", "bev", "3d", "aos"):
        for diff in DIFFICULTIES:
            for r in ("R11", "R40"):
                assert get(m, "Car", metric, diff, r) == pytest.approx(100.0), (metric, diff, r)
    assert m["mAP/3d@strict/moderate/R40"] == pytest.approx(100.0)


def test_one_missed_easy_object():
    # 40 easy + 40 moderate-only cars; with n = 40 every TP is a cut-off: all found fills slots 0..39
    easy = row(40)
    moderate = [car(8.0 * k, 40.0, height=30.0, u=2000.0 + 40 * k) for k in range(40)]
    scores = np.linspace(0.95, 0.15, 80)
    found = detect(easy + moderate, scores)
    m, _ = evaluate_kitti([easy + moderate], [found], classes=("Car",), metrics=("3d",))
    assert get(m, "Car", "3d", "easy", "R40") == pytest.approx(100 * 39 / 40)  # slot 40 stays empty
    assert get(m, "Car", "3d", "easy", "R11") == pytest.approx(100 * 10 / 11)
    assert get(m, "Car", "3d", "moderate", "R40") == pytest.approx(100.0)
    missed = found[:5] + found[6:]  # easy car 5 not detected: 39 TP -> slots 0..38
    m, _ = evaluate_kitti([easy + moderate], [missed], classes=("Car",), metrics=("3d",))
    assert get(m, "Car", "3d", "easy", "R40") == pytest.approx(100 * 38 / 40)
    assert get(m, "Car", "3d", "easy", "R11") == pytest.approx(100 * 10 / 11)
    # moderate: 79 of 80 found; the last TP score is always a cut-off, so 41 slots at precision 1
    assert get(m, "Car", "3d", "moderate", "R40") == pytest.approx(100.0)
    # 4 easy GT, 3 found: slots 0..2 -> R40 2/40, R11 slot 0 only
    m, _ = evaluate_kitti([easy[:4]], [found[:3]], classes=("Car",), metrics=("bev",))
    assert get(m, "Car", "bev", "easy", "R40") == pytest.approx(5.0)
    assert get(m, "Car", "bev", "easy", "R11") == pytest.approx(100 / 11)


def test_false_positive_at_high_score():
    gts = row(80)
    dets = detect(gts, np.linspace(0.9, 0.1, 80)) + [car(3.0, 50.0, score=0.99, u=5000.0)]
    m, _ = evaluate_kitti([gts], [dets], classes=("Car",))
    # the FP is above every cut-off: precision at slot s is tp / (tp + 1), rising to 80 / 81 at slot 40,
    # and the right-to-left maximum makes every slot 80 / 81
    for metric in ("bbox", "bev", "3d"):
        for r in ("R11", "R40"):
            assert get(m, "Car", metric, "easy", r) == pytest.approx(100 * 80 / 81)
    # the same FP below every cut-off costs nothing
    dets[-1] = dataclasses.replace(dets[-1], score=0.05)
    m, _ = evaluate_kitti([gts], [dets], classes=("Car",))
    assert get(m, "Car", "3d", "easy", "R40") == pytest.approx(100.0)
    # a FP lower than 25 px (hard's minimum height) is ignored at every difficulty
    dets[-1] = car(3.0, 50.0, score=0.99, u=5000.0, height=20.0)
    m, _ = evaluate_kitti([gts], [dets], classes=("Car",))
    assert get(m, "Car", "bbox", "hard", "R40") == pytest.approx(100.0)
    # detections are ignored below the minimum height (< 25 px), ground truths at or below it (<= 25 px)
    dets[-1] = car(3.0, 50.0, score=0.99, u=5000.0, height=25.0)
    m, _ = evaluate_kitti([gts], [dets], classes=("Car",))
    assert get(m, "Car", "bbox", "hard", "R40") == pytest.approx(100 * 80 / 81)
    assert get(m, "Car", "bbox", "easy", "R40") == pytest.approx(100.0)


def test_dontcare_suppresses_2d_false_positives_only():
    gts = row(80)
    fp = car(3.0, 50.0, score=0.99, u=5000.0)
    dc = KittiObject("DontCare", -1, -1, -10, (4990.0, 140.0, 5040.0, 210.0), (-1, -1, -1), (-1000, -1000, -1000),
                     -10)
    dets = detect(gts, np.linspace(0.9, 0.1, 80)) + [fp]
    m, _ = evaluate_kitti([gts + [dc]], [dets], classes=("Car",))
    assert get(m, "Car", "bbox", "easy", "R40") == pytest.approx(100.0)  # inside the DontCare region
    assert get(m, "Car", "bev", "easy", "R40") == pytest.approx(100 * 80 / 81)  # BEV / 3D: still a FP
    assert get(m, "Car", "3d", "easy", "R40") == pytest.approx(100 * 80 / 81)
    # intersection over the detection's area must exceed the class threshold (0.7): 20 of 30 px columns is not
    dc_part = dataclasses.replace(dc, bbox=(5010.0, 140.0, 5040.0, 210.0))
    m, _ = evaluate_kitti([gts + [dc_part]], [dets], classes=("Car",), metrics=("bbox",))
    assert get(m, "Car", "bbox", "easy", "R40") == pytest.approx(100 * 80 / 81)


def test_neighbouring_class_is_ignored_not_missed():
    gts = row(80)
    van = car(3.0, 50.0, u=5000.0, name="Van")
    dets = detect(gts, np.linspace(0.9, 0.1, 80)) + [dataclasses.replace(van, type="Car", score=0.99)]
    m, curves = evaluate_kitti([gts + [van]], [dets], classes=("Car",))
    assert curves.num_gt[("Car", "easy")] == 80
    assert get(m, "Car", "3d", "easy", "R40") == pytest.approx(100.0)  # the Car on the Van is not a FP
    truck = dataclasses.replace(van, type="Truck")  # not a neighbour of Car: the detection is a FP
    m, _ = evaluate_kitti([gts + [truck]], [dets], classes=("Car",))
    assert get(m, "Car", "3d", "easy", "R40") == pytest.approx(100 * 80 / 81)


def test_difficulty_filtering_by_height_occlusion_truncation():
    base = row(80)
    # per object: which difficulties it counts in (easy, moderate, hard)
    cases = [(dict(height=40.0), (0, 1, 1)),  # 40 px is not taller than 40: ignored for easy
             (dict(height=40.01), (1, 1, 1)), (dict(height=25.0), (0, 0, 0)), (dict(height=26.0), (0, 1, 1)),
             (dict(occ=1), (0, 1, 1)), (dict(occ=2), (0, 0, 1)), (dict(occ=3), (0, 0, 0)),
             (dict(trunc=0.15), (1, 1, 1)), (dict(trunc=0.2), (0, 1, 1)), (dict(trunc=0.3), (0, 1, 1)),
             (dict(trunc=0.4), (0, 0, 1)), (dict(trunc=0.51), (0, 0, 0))]
    extra = [car(8.0 * k, 40.0, u=3000.0 + 40 * k, **kw) for k, (kw, _) in enumerate(cases)]
    _, curves = evaluate_kitti([base + extra], [[]], classes=("Car",), metrics=("bbox",))
    for d, diff in enumerate(DIFFICULTIES):
        assert curves.num_gt[("Car", diff)] == 80 + sum(c[d] for _, c in cases), diff
    # a GT ignored at a difficulty and left undetected costs nothing there (the two extras that count
    # at easy, 40.01 px and truncation 0.15, are detected)
    dets = detect(base + [extra[1], extra[7]], np.linspace(0.9, 0.1, 82))
    m, _ = evaluate_kitti([base + extra], [dets], classes=("Car",), metrics=("bev",))
    assert get(m, "Car", "bev", "easy", "R40") == pytest.approx(100.0)
    assert get(m, "Car", "bev", "hard", "R40") < 100.0  # hard has 7 undetected extras
    on_ignored = dets + detect(extra[6:7], [0.99])  # occlusion 3: ignored at every difficulty
    m, _ = evaluate_kitti([base + extra[6:7]], [on_ignored], classes=("Car",), metrics=("bev",))
    assert get(m, "Car", "bev", "hard", "R40") == pytest.approx(100.0)


def test_r11_vs_r40_on_a_hand_computed_curve():
    gts = row(80)
    scores = np.linspace(0.9, 0.5, 80)
    # 40 FPs scored between TP number 40 and 41: cut-off slots 0..20 (TP 1..40) have precision 1, slot s > 20
    # (TP 2s) has 2s / (2s + 40), rising to 80 / 120 at slot 40 -> 2/3 from slot 21 on after the maximum
    fp_score = (scores[39] + scores[40]) / 2
    fps = [car(8.0 * k, 60.0, u=9000.0 + 40 * k, score=fp_score) for k in range(40)]
    m, curves = evaluate_kitti([gts], [detect(gts, scores) + fps], classes=("Car",), metrics=("3d",))
    r40 = (20 * 1 + 20 * 2 / 3) / 40 * 100
    r11 = (6 * 1 + 5 * 2 / 3) / 11 * 100
    assert get(m, "Car", "3d", "easy", "R40") == pytest.approx(r40)  # 83.33
    assert get(m, "Car", "3d", "easy", "R11") == pytest.approx(r11)  # 84.85
    prec = curves.precision[("Car", "3d", "strict", "easy")]
    assert np.allclose(prec[:21], 1.0) and np.allclose(prec[21:], 2 / 3)
    # half of the GT found, no FP: slots 0..20 -> R40 50, R11 6/11
    m, _ = evaluate_kitti([gts], [detect(gts[:40], scores[:40])], classes=("Car",), metrics=("3d",))
    assert get(m, "Car", "3d", "easy", "R40") == pytest.approx(50.0)
    assert get(m, "Car", "3d", "easy", "R11") == pytest.approx(600 / 11)


def test_aos_heading_errors():
    gts = row(80)
    dets = detect(gts, np.linspace(0.9, 0.1, 80))
    quarter = [dataclasses.replace(d, alpha=d.alpha + math.pi / 2) for d in dets]
    m, _ = evaluate_kitti([gts], [quarter], classes=("Car",), metrics=("bbox",))
    assert get(m, "Car", "aos", "easy", "R40") == pytest.approx(get(m, "Car", "bbox", "easy", "R40") / 2)
    # the best-scored detection flipped: similarity 0 for it, (tp - 1) / tp at every slot, max 79/80 at slot 40
    flipped = [dataclasses.replace(dets[0], alpha=dets[0].alpha + math.pi)] + dets[1:]
    m, _ = evaluate_kitti([gts], [flipped], classes=("Car",), metrics=("bbox",))
    assert get(m, "Car", "bbox", "easy", "R40") == pytest.approx(100.0)
    assert get(m, "Car", "aos", "easy", "R40") == pytest.approx(100 * 79 / 80)
    # one object alone, flipped: AP R11 100/11 (one slot), AOS 0
    m, _ = evaluate_kitti([gts[:1]], [flipped[:1]], classes=("Car",), metrics=("bbox",))
    assert get(m, "Car", "bbox", "easy", "R11") == pytest.approx(100 / 11)
    assert get(m, "Car", "aos", "easy", "R11") == pytest.approx(0.0)


def test_overlap_thresholds_strict_and_loose():
    gts = row(80)
    # shifted 0.9 m along the car's length: 3D IoU (3.0 / 4.8) = 0.625, between 0.5 and 0.7
    shifted = [dataclasses.replace(d, location=(d.location[0] + 0.9, *d.location[1:]))
               for d in detect(gts, np.linspace(0.9, 0.1, 80))]
    m, _ = evaluate_kitti([gts], [shifted], classes=("Car",), metrics=("bev", "3d"))
    assert m["Car/3d@0.70/easy/R40"] == 0.0 and m["Car/3d@0.50/easy/R40"] == pytest.approx(100.0)
    assert m["Car/bev@0.70/easy/R40"] == 0.0 and m["Car/bev@0.50/easy/R40"] == pytest.approx(100.0)
    ped = [dataclasses.replace(g, type="Pedestrian") for g in gts]
    m, _ = evaluate_kitti([ped], [[dataclasses.replace(d, type="Pedestrian") for d in shifted]],
                          classes=("Pedestrian",), metrics=("3d",))
    assert m["Pedestrian/3d@0.50/easy/R40"] == pytest.approx(100.0)  # 0.625 > 0.5
    assert m["Pedestrian/3d@0.25/easy/R40"] == pytest.approx(100.0)


def test_no_ground_truth_is_nan_and_bad_input_is_named():
    m, _ = evaluate_kitti([row(2)], [[]], classes=("Car", "Cyclist"), metrics=("bev",))
    assert math.isnan(m["Cyclist/bev@0.50/moderate/R40"]) and m["Car/bev@0.70/moderate/R40"] == 0.0
    assert m["mAP/bev@strict/moderate/R40"] == 0.0  # the mean skips classes without GT
    with pytest.raises(ValueError, match="2 ground-truth frames but 1 detection"):
        evaluate_kitti([[], []], [[]])
    with pytest.raises(ValueError, match="frame 0.*no score"):
        evaluate_kitti([row(1)], [row(1)])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_kitti([[]], [[]], metrics=("2d",))


# ---------------------------------------------------------------------------------------------------
# an independent float64 reference: shapely polygons in the camera x-z plane, plain loops
# ---------------------------------------------------------------------------------------------------
def ref_overlap(d: KittiObject, g: KittiObject, metric: str) -> float:
    if metric == "bbox":
        ax1, ay1, ax2, ay2 = d.bbox
        bx1, by1, bx2, by2 = g.bbox
        w, h = min(ax2, bx2) - max(ax1, bx1), min(ay2, by2) - max(ay1, by1)
        if w <= 0 or h <= 0:
            return 0.0
        return w * h / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - w * h)

    def footprint(o):  # camera frame: the box's +x axis is (cos ry, 0, -sin ry); width along (sin ry, 0, cos ry)
        h, w, length = o.dimensions
        x, _, z = o.location
        c, s = math.cos(o.rotation_y), math.sin(o.rotation_y)
        pts = []
        for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1)):
            pts.append((x + a * length / 2 * c + b * w / 2 * s, z - a * length / 2 * s + b * w / 2 * c))
        return Polygon(pts)

    pd, pg = footprint(d), footprint(g)
    inter = pd.intersection(pg).area
    if metric == "bev":
        return inter / (pd.area + pg.area - inter) if inter > 0 else 0.0
    # camera y points down: a box spans [y - h, y]
    dy = min(d.location[1], g.location[1]) - max(d.location[1] - d.dimensions[0], g.location[1] - g.dimensions[0])
    vol = inter * max(dy, 0.0)
    vd = math.prod(d.dimensions)
    vg = math.prod(g.dimensions)
    return vol / (vd + vg - vol) if vol > 0 else 0.0


def ref_overlaps(gt_frames, dt_frames, metric):
    return [{(j, i): ref_overlap(d, g, metric) for j, d in enumerate(dts) for i, g in enumerate(gts)}
            for gts, dts in zip(gt_frames, dt_frames)]


def ref_kitti_ap(gt_frames, dt_frames, cls, diff, metric, thr, overlaps):
    """(R11, R40, AOS R40) for one class / difficulty / metric, written out from the devkit's description."""
    min_h, max_occ, max_tr = [(40, 0, 0.15), (25, 1, 0.3), (25, 2, 0.5)][diff]
    neighbour = {"Car": "Van", "Pedestrian": "Person_sitting"}.get(cls)
    frames = []
    n_valid = 0
    for gts, dts, ov in zip(gt_frames, dt_frames, overlaps):
        gt_state = []
        for g in gts:
            tall = g.bbox[3] - g.bbox[1] > min_h
            easy_enough = tall and g.occluded <= max_occ and g.truncated <= max_tr
            if g.type == cls and easy_enough:
                gt_state.append("count")
                n_valid += 1
            elif g.type == neighbour or g.type == cls:
                gt_state.append("ignore")
            else:
                gt_state.append("other")
        dt_state = []
        for d in dts:
            if abs(d.bbox[3] - d.bbox[1]) < min_h:
                dt_state.append("ignore")
            else:
                dt_state.append("count" if d.type == cls else "other")
        dcs = [g.bbox for g in gts if g.type == "DontCare"]
        frames.append((gts, dts, gt_state, dt_state, dcs, ov))
    if n_valid == 0:
        return math.nan, math.nan, math.nan

    def run(frame, cutoff):
        gts, dts, gt_state, dt_state, dcs, ov = frame
        used = set()
        tp_scores, sims = [], []
        fn = 0
        for i, g in enumerate(gts):
            if gt_state[i] == "other":
                continue
            cands = [j for j, d in enumerate(dts) if dt_state[j] != "other" and j not in used
                     and (cutoff is None or d.score >= cutoff) and ov[(j, i)] > thr]
            if cutoff is None:
                pick = max(cands, key=lambda j: dts[j].score, default=None)
            else:
                good = [j for j in cands if dt_state[j] == "count"]
                if good:
                    best = max(ov[(j, i)] for j in good)
                    pick = next(j for j in good if ov[(j, i)] == best)  # first of the largest overlap
                else:
                    pick = cands[0] if cands else None
            if pick is None:
                fn += gt_state[i] == "count"
                continue
            used.add(pick)
            if gt_state[i] == "count" and dt_state[pick] == "count":
                tp_scores.append(dts[pick].score)
                sims.append((1 + math.cos(g.alpha - dts[pick].alpha)) / 2)
        fp = 0
        if cutoff is not None:
            left = [j for j, d in enumerate(dts) if dt_state[j] == "count" and j not in used and d.score >= cutoff]
            fp = len(left)
            if metric == "bbox":
                for dc in dcs:
                    for j in list(left):
                        if j in used:
                            continue
                        a = dts[j].bbox
                        w = min(a[2], dc[2]) - max(a[0], dc[0])
                        h = min(a[3], dc[3]) - max(a[1], dc[1])
                        if w > 0 and h > 0 and w * h / ((a[2] - a[0]) * (a[3] - a[1])) > thr:
                            used.add(j)
                            fp -= 1
        return tp_scores, fp, fn, sum(sims)

    all_scores = sorted((s for f in frames for s in run(f, None)[0]), reverse=True)
    cuts = []
    target = 0.0
    for i, s in enumerate(all_scores):
        if i + 1 < len(all_scores) and abs((i + 2) / n_valid - target) < abs(target - (i + 1) / n_valid) \
                and (i + 1) / n_valid < target:
            continue
        cuts.append(s)
        target += 1 / 40
    prec, aos = [0.0] * 41, [0.0] * 41
    for k, cut in enumerate(cuts[:41]):
        tp = fp = 0
        sim = 0.0
        for f in frames:
            t, p, _, s = run(f, cut)
            tp, fp, sim = tp + len(t), fp + p, sim + s
        prec[k] = tp / (tp + fp)
        aos[k] = sim / (tp + fp)
    prec = [max(prec[k:]) for k in range(41)]
    aos = [max(aos[k:]) for k in range(41)]
    return sum(prec[::4]) / 11 * 100, sum(prec[1:]) / 40 * 100, sum(aos[1:]) / 40 * 100


def random_case(seed: int):
    """Crowded frames: ~150 Cars and ~50 Pedestrians in all (so that the cut-off selection matters), 0-3
    noisy detections per object (so that the matching order matters), FPs, neighbours and DontCare areas."""
    rnd = random.Random(seed)
    names = ["Car"] * 6 + ["Van", "Pedestrian", "Pedestrian", "Person_sitting", "Cyclist", "DontCare"]
    gts_all, dts_all = [], []
    for _ in range(10):
        gts, dts = [], []
        for _ in range(rnd.randint(25, 35)):
            name = rnd.choice(names)
            x, z = rnd.uniform(-15, 15), rnd.uniform(5, 50)
            u, v = rnd.uniform(0, 1200), rnd.uniform(100, 250)
            hgt = rnd.choice([20.0, 25.0, 30.0, 40.0, 60.0, rnd.uniform(15, 90)] + [rnd.uniform(26, 90)] * 4)
            dims = (rnd.uniform(1.3, 1.9), rnd.uniform(0.5, 1.9), rnd.uniform(0.6, 4.5))
            ry = rnd.uniform(-math.pi, math.pi)
            g = KittiObject(name, rnd.choice([0.0, 0.0, 0.0, 0.1, 0.2, 0.4, 0.6]), rnd.choice([0, 0, 0, 1, 2, 3]),
                            rnd.uniform(-math.pi, math.pi), (u, v, u + rnd.uniform(10, 80), v + hgt), dims,
                            (x, rnd.uniform(1.4, 1.8), z), ry)
            gts.append(g)
            if name == "DontCare":
                continue
            for _ in range(rnd.choice([0, 1, 1, 1, 2, 3])):  # noisy detections of it
                jit = rnd.uniform(0, 0.5)
                dname = rnd.choice([name, name, name, "Car"]) if name not in ("Van", "Person_sitting") else \
                    rnd.choice(["Car", "Pedestrian"])
                dts.append(dataclasses.replace(
                    g, type=dname, bbox=tuple(c + rnd.uniform(-8, 8) * jit for c in g.bbox),
                    location=(x + rnd.uniform(-1, 1) * jit, g.location[1] + rnd.uniform(-0.3, 0.3) * jit,
                              z + rnd.uniform(-1, 1) * jit),
                    dimensions=tuple(s * rnd.uniform(0.85, 1.15) for s in dims),
                    rotation_y=ry + rnd.uniform(-0.4, 0.4), alpha=g.alpha + rnd.uniform(-1, 1),
                    score=round(rnd.random(), 2)))
        for _ in range(rnd.randint(0, 8)):  # false positives, some inside DontCare areas
            u, v = rnd.uniform(0, 1200), rnd.uniform(100, 250)
            dts.append(KittiObject(rnd.choice(["Car", "Pedestrian", "Cyclist"]), 0.0, 0, rnd.uniform(-3, 3),
                                   (u, v, u + rnd.uniform(10, 60), v + rnd.uniform(15, 80)),
                                   (1.5, rnd.uniform(0.5, 1.8), rnd.uniform(0.6, 4.2)),
                                   (rnd.uniform(-15, 15), 1.6, rnd.uniform(5, 50)), rnd.uniform(-3, 3),
                                   score=round(rnd.random(), 2)))
        rnd.shuffle(dts)
        gts_all.append(gts)
        dts_all.append(dts)
    return gts_all, dts_all


@pytest.mark.parametrize("seed", range(3))
def test_matches_independent_reference_on_random_cases(seed):
    gts, dts = random_case(seed)
    classes = ("Car", "Pedestrian", "Cyclist")
    m, curves = evaluate_kitti(gts, dts, classes=classes, overlap_sets=("strict", "loose"))
    assert curves.num_gt[("Car", "hard")] > 40  # more than 40: not every TP score is a cut-off
    checked = 0
    for metric in ("bbox", "bev", "3d"):
        overlaps = ref_overlaps(gts, dts, metric)
        for cls in classes:
            for oset in ("strict", "loose"):
                thr = OVERLAPS[oset][cls.lower()][metric]
                for d, diff in enumerate(DIFFICULTIES):
                    r11, r40, aos40 = ref_kitti_ap(gts, dts, cls, d, metric, thr, overlaps)
                    key = f"{cls}/{metric}@{thr:.2f}/{diff}"
                    if math.isnan(r11):
                        assert math.isnan(m[f"{key}/R11"])
                        continue
                    assert m[f"{key}/R11"] == pytest.approx(r11, abs=1e-9), key
                    assert m[f"{key}/R40"] == pytest.approx(r40, abs=1e-9), key
                    if metric == "bbox":
                        assert m[f"{cls}/aos@{thr:.2f}/{diff}/R40"] == pytest.approx(aos40, abs=1e-9), key
                    checked += 1
    assert checked >= 40


def test_permuted_boxes_give_camera_frame_iou():
    rnd = random.Random(3)
    for _ in range(50):
        a = KittiObject("Car", 0, 0, 0, (0, 0, 1, 1), (1.5, 1.7, 4.0), (rnd.uniform(-2, 2), 1.6, 20.0),
                        rnd.uniform(-3, 3))
        b = dataclasses.replace(a, location=(rnd.uniform(-2, 2), rnd.uniform(1.0, 2.0), 20 + rnd.uniform(-2, 2)),
                                rotation_y=rnd.uniform(-3, 3), dimensions=(1.4, 1.8, 3.5))
        pa = torch.from_numpy(camera_to_permuted([a.dimensions], [a.location], [a.rotation_y]))
        pb = torch.from_numpy(camera_to_permuted([b.dimensions], [b.location], [b.rotation_y]))
        assert float(boxes_iou_bev(pa, pb)[0, 0]) == pytest.approx(ref_overlap(a, b, "bev"), abs=1e-9)
        assert float(boxes_iou3d(pa, pb)[0, 0]) == pytest.approx(ref_overlap(a, b, "3d"), abs=1e-9)


def test_real_labels_round_trip_through_lidar_detections():
    """The real KITTI labels -> LiDAR boxes -> detections_to_kitti -> AP 100 against the labels."""
    from pointwin.datasets.kitti import camera_boxes_to_lidar

    root = shared_file("kitti/full/label_2/000000.txt").parents[1]
    gts, dts = [], []
    for fid in ("000000", "000001", "000002"):
        labels = read_label(root / "label_2" / f"{fid}.txt")
        calib = read_calib(root / "calib" / f"{fid}.txt")
        objs = [o for o in labels if o.type in ("Car", "Pedestrian", "Cyclist")]
        boxes = camera_boxes_to_lidar(objs, calib)
        names = ("Car", "Pedestrian", "Cyclist")
        rows = detections_to_kitti(boxes, np.full(len(objs), 0.9), np.array([names.index(o.type) for o in objs]),
                                   names, calib)
        assert len(rows) == len(objs)
        for r, o in zip(rows, objs):  # camera box and alpha come back; the image box is the projected one
            assert np.allclose(r.location, o.location, atol=1e-6) and np.allclose(r.dimensions, o.dimensions)
            # the yaw is the heading projected on the LiDAR ground plane: the calibration's small tilt moves ry a bit
            assert abs(math.remainder(r.rotation_y - o.rotation_y, 2 * math.pi)) < 1e-3
            assert math.isclose(math.cos(r.alpha - o.alpha), 1.0, abs_tol=2e-3)
            assert r.bbox[0] < (o.bbox[0] + o.bbox[2]) / 2 < r.bbox[2]
        gts.append(labels)
        dts.append(rows)
    m, _ = evaluate_kitti(gts, dts, metrics=("bev", "3d"))
    assert m["Car/3d@0.70/moderate/R11"] == pytest.approx(100 / 11)  # 1 Car at moderate: one slot
    assert m["Pedestrian/3d@0.50/easy/R11"] == pytest.approx(100 / 11)


# ---------------------------------------------------------------------------------------------------
# the dataset hook used by `pointwin test` / `pointwin train` evaluation
# ---------------------------------------------------------------------------------------------------
def test_kitti_dataset_evaluate_and_format_results(tmp_path):
    from pointwin.datasets.kitti import KittiDataset
    from pointwin.engine.builders import dataset_evaluator
    from pointwin.structures import Detections

    root = shared_file("kitti/full/velodyne/000000.bin").parents[1]
    ds = KittiDataset(root, class_names=("Car", "Pedestrian", "Cyclist"))
    samples = [ds.get_sample(i) for i in range(len(ds))]
    results = [Detections(s.boxes, torch.full((len(s.boxes),), 0.9), s.labels) for s in samples]
    evaluate = dataset_evaluator(ds, {})
    m = evaluate(results)
    # frame 000000: an easy Pedestrian; 000001: a Car 21.6 px tall and a Cyclist occluded 3 (ignored at every
    # difficulty, their detections are not FPs); 000002: a moderate Car (33.3 px). One GT each: one slot.
    assert m["Pedestrian/3d@0.50/easy/R11"] == pytest.approx(100 / 11)
    assert m["Car/3d@0.70/moderate/R11"] == pytest.approx(100 / 11)
    assert m["Car/bbox@0.70/moderate/R11"] == pytest.approx(100 / 11)  # the projected image box matches
    assert math.isnan(m["Car/3d@0.70/easy/R11"]) and math.isnan(m["Cyclist/bev@0.50/hard/R40"])
    none = [Detections(s.boxes[:0], torch.zeros(0), s.labels[:0]) for s in samples]
    assert evaluate(none)["Car/3d@0.70/moderate/R11"] == 0.0
    # the KITTI result files read back give the same numbers
    out = ds.format_results(results, tmp_path / "pred")
    dts = [read_label(out / f"{fid}.txt") for fid in ds.frame_ids]
    gts = [read_label(root / "label_2" / f"{fid}.txt") for fid in ds.frame_ids]
    m2, _ = evaluate_kitti(gts, dts)
    assert all(m2[k] == pytest.approx(v, abs=1e-6) or (math.isnan(v) and math.isnan(m2[k])) for k, v in m.items())
    with pytest.raises(ValueError, match="2 results for 3 frames"):
        evaluate(results[:2])


def test_pointwin_eval_kitti_reads_result_files(tmp_path, capsys):
    import json

    from pointwin.cli import main
    from pointwin.datasets.kitti import KittiDataset
    from pointwin.structures import Detections

    root = shared_file("kitti/full/velodyne/000000.bin").parents[1]
    ds = KittiDataset(root, class_names=("Car", "Pedestrian", "Cyclist"))
    samples = [ds.get_sample(i) for i in range(len(ds))]
    results = [Detections(s.boxes, torch.full((len(s.boxes),), 0.9), s.labels) for s in samples]
    expected = ds.evaluate(results)
    pred = ds.format_results(results, tmp_path / "pred")
    out = tmp_path / "metrics.json"
    assert main(["eval", "kitti", "--pred", str(pred), "--gt", str(root / "label_2"), "--out", str(out)]) == 0
    assert "Car" in capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(v, abs=1e-6) or (math.isnan(v) and math.isnan(got[k]))
               for k, v in expected.items())
    # a frame list with a frame that has no result file: its objects count as missed
    (tmp_path / "val.txt").write_text("000000\n000002\n")
    (pred / "000002.txt").unlink()
    assert main(["eval", "kitti", "--pred", str(pred), "--gt", str(root / "label_2"), "--frames",
                 str(tmp_path / "val.txt"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["Car/3d@0.70/moderate/R40"] == 0.0 and got["Pedestrian/3d@0.50/easy/R11"] == pytest.approx(100 / 11)
    assert main(["eval", "kitti", "--pred", str(pred), "--gt", str(tmp_path / "nope")]) != 0
    assert "label_2 folder" in capsys.readouterr().err


def test_detections_outside_the_image_are_dropped_and_png_size_is_read(tmp_path):
    from pointwin.evaluation.kitti import image_size_of, project_boxes_to_image

    calib = read_calib(shared_file("kitti/full/calib/000000.txt"))
    boxes = np.array([[20.0, 0.0, -0.8, 4.0, 1.7, 1.5, 0.0],     # ahead: in the image
                      [-10.0, 0.0, -0.8, 4.0, 1.7, 1.5, 0.0],    # behind the car: no corner in front
                      [5.0, 30.0, -0.8, 4.0, 1.7, 1.5, 0.0],     # far to the left: outside the image
                      [1.0, -2.0, -0.8, 4.0, 1.7, 1.5, 0.0]])    # beside the car, partly in front of the camera
    bbox, visible = project_boxes_to_image(boxes, calib)
    assert visible.tolist()[:3] == [True, False, False]
    assert (bbox[visible][:, [0, 2]] >= 0).all() and (bbox[visible][:, [0, 2]] <= 1241).all()
    rows = detections_to_kitti(boxes, np.ones(4), np.zeros(4, int), ("Car",), calib)
    assert len(rows) == int(visible.sum())
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (1224).to_bytes(4, "big") + (370).to_bytes(4, "big"))
    assert image_size_of(png) == (1224, 370) and image_size_of(tmp_path / "missing.png") is None
