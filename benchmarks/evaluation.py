"""Evaluation speed: Waymo AP/APH on Waymo-sized synthetic frames, .bin I/O, and nuScenes mAP/NDS.

Frames are synthetic but sized like the Waymo validation set (about 50 vehicles, 20 pedestrians,
10 signs and 2 cyclists labelled per frame; every object detected with probability 0.8, a third of
them twice, plus 40 false alarms per frame). The evaluation cost is linear in the number of frames
(matching is per frame); by default the full validation-set size (39,987 frames) is measured, and
the last column extrapolates each smaller size to it.

``--write`` replaces the evaluation section of BENCHMARKS.md (between its markers) with the table.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from pointwin.evaluation import nuscenes as nus  # noqa: E402
from pointwin.evaluation import waymo  # noqa: E402

BEGIN, END = "<!-- evaluation:begin -->", "<!-- evaluation:end -->"
WAYMO_VAL_FRAMES = 39_987
NUSCENES_VAL_SAMPLES = 6_019
_SIZES = {1: (4.6, 2.0, 1.7), 2: (0.9, 0.9, 1.8), 3: (0.6, 0.15, 0.8), 4: (1.8, 0.7, 1.7)}
_COUNTS = {1: 50, 2: 20, 3: 10, 4: 2}


def waymo_frames(num_frames: int, seed: int = 0) -> tuple[waymo.WaymoObjects, waymo.WaymoObjects]:
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for t, mean in _COUNTS.items():
        n = rng.poisson(mean, num_frames)
        frame = np.repeat(np.arange(num_frames), n)
        m = len(frame)
        size = np.asarray(_SIZES[t]) * rng.uniform(0.85, 1.15, (m, 3))
        box = np.column_stack([rng.uniform(-75, 75, (m, 2)), rng.normal(0, 0.5, m), size,
                               rng.uniform(-math.pi, math.pi, m)])
        pts = rng.choice([0, 3, 40, 400], m, p=[0.1, 0.15, 0.35, 0.4])
        gts.append((frame, box, np.full(m, t), pts))
        for copies in (rng.random(m) < 0.8, rng.random(m) < 0.27):
            k = np.flatnonzero(copies)
            jit = box[k].copy()
            jit[:, :2] += rng.normal(0, 0.1 * size[k, 1:2], (len(k), 2))
            jit[:, 3:6] *= rng.uniform(0.92, 1.08, (len(k), 3))
            jit[:, 6] += rng.normal(0, 0.1, len(k)) + np.where(rng.random(len(k)) < 0.1, math.pi, 0)
            preds.append((frame[k], jit, np.full(len(k), t), rng.beta(4, 2, len(k))))
    nfa = 40 * num_frames
    fa_type = rng.choice([1, 2, 3, 4], nfa, p=[0.5, 0.3, 0.15, 0.05])
    fa_size = np.array([_SIZES[t] for t in fa_type]) * rng.uniform(0.8, 1.2, (nfa, 3))
    preds.append((rng.integers(0, num_frames, nfa),
                  np.column_stack([rng.uniform(-75, 75, (nfa, 2)), rng.normal(0, 0.5, nfa), fa_size,
                                   rng.uniform(-math.pi, math.pi, nfa)]), fa_type, rng.beta(2, 4, nfa)))

    def cat(parts, with_points):
        f, b, t, x = (np.concatenate(c) for c in zip(*parts))
        if with_points:
            return waymo.WaymoObjects(f, b, t, num_points=x)
        return waymo.WaymoObjects(f, b, t, scores=x)

    return cat(preds, False), cat(gts, True)


def time_waymo(num_frames: int, repeats: int) -> dict:
    pred, gt = waymo_frames(num_frames)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = waymo.evaluate(pred, gt)
        best = min(best, time.perf_counter() - t0)
    return {"frames": num_frames, "preds": len(pred), "gts": len(gt), "s": best,
            "vehicle_l2": result["VEHICLE"]["L2"]["mAP"]}


def time_bin_io(num_frames: int) -> dict:
    pred, _ = waymo_frames(num_frames, seed=1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pred.bin"
        names = [f"segment-{f // 200:05d}" for f in pred.frame]
        t0 = time.perf_counter()
        waymo.write_predictions(path, pred.boxes, pred.types, pred.scores, names, pred.frame * 100_000)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = waymo.read_objects(path)
        t_read = time.perf_counter() - t0
        size = path.stat().st_size
    assert len(back) == len(pred)
    return {"objects": len(pred), "write_s": t_write, "read_s": t_read, "mb": size / 1e6}


def nuscenes_samples(num_samples: int, seed: int = 0) -> tuple[nus.NuScenesBoxes, nus.NuScenesBoxes]:
    rng = np.random.default_rng(seed)
    n = rng.poisson(40, num_samples)
    sample = np.repeat(np.arange(num_samples), n)
    m = len(sample)
    labels = rng.integers(0, 10, m)
    trans = np.column_stack([rng.uniform(-50, 50, (m, 2)), rng.normal(0, 0.5, m)])
    size = rng.uniform(0.5, 5, (m, 3))
    rot = nus.yaw_quaternion(rng.uniform(-math.pi, math.pi, m))
    vel = rng.normal(0, 3, (m, 2))
    gt = nus.NuScenesBoxes(sample, trans, size, rot, vel, labels, attributes=np.full(m, -1),
                           ego_dist=np.hypot(trans[:, 0], trans[:, 1]), num_pts=rng.integers(0, 50, m))
    k = np.flatnonzero(rng.random(m) < 0.8)
    fa = rng.poisson(60, num_samples)
    fs = np.repeat(np.arange(num_samples), fa)
    pt = np.concatenate([trans[k] + rng.normal(0, 0.5, (len(k), 3)),
                         np.column_stack([rng.uniform(-50, 50, (len(fs), 2)), np.zeros(len(fs))])])
    p = len(pt)
    pred = nus.NuScenesBoxes(np.concatenate([sample[k], fs]), pt, np.concatenate([size[k], rng.uniform(0.5, 5, (
        len(fs), 3))]), nus.yaw_quaternion(rng.uniform(-3, 3, p)), rng.normal(0, 3, (p, 2)),
        np.concatenate([labels[k], rng.integers(0, 10, len(fs))]), rng.random(p), np.full(p, -1),
        np.hypot(pt[:, 0], pt[:, 1]))
    return pred, gt


def time_nuscenes(num_samples: int) -> dict:
    pred, gt = nuscenes_samples(num_samples)
    nus.evaluate(pred.select(pred.sample < 10), gt.select(gt.sample < 10))  # numba compile
    t0 = time.perf_counter()
    result = nus.evaluate(pred, gt)
    return {"samples": num_samples, "preds": len(pred), "gts": len(gt), "s": time.perf_counter() - t0,
            "nds": result["nd_score"]}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[2000, 8000, WAYMO_VAL_FRAMES],
                        help="Waymo-sized frame counts to time")
    parser.add_argument("--io-frames", type=int, default=2000)
    parser.add_argument("--nuscenes-samples", type=int, default=NUSCENES_VAL_SAMPLES)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()

    waymo.evaluate(*waymo_frames(20))  # numba / scipy warm-up
    rows = [time_waymo(n, args.repeats) for n in args.frames]
    io = time_bin_io(args.io_frames)
    nu = time_nuscenes(args.nuscenes_samples)
    import numba
    import scipy

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = ["## Evaluation (`benchmarks/evaluation.py`)", "",
             f"Device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, single process); "
             f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
             f"numba {numba.__version__}; {datetime.date.today().isoformat()}. Synthetic frames sized like Waymo "
             "validation frames (see the script's docstring); best of "
             f"{args.repeats} run(s); 1-min load average {load:.1f} at the end (shared machine).", "",
             "Waymo AP/APH (OBJECT_TYPE + RANGE breakdowns, L1 + L2, 101 cut-offs), `pointwin.evaluation.waymo"
             ".evaluate` on in-memory arrays:", "",
             "| frames | predictions | ground truths | seconds | ms / frame | extrapolated to 39,987 frames |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = r["s"] / r["frames"]
        lines.append(f"| {r['frames']:,} | {r['preds']:,} | {r['gts']:,} | {r['s']:.1f} | {1e3 * per:.2f} | "
                     f"{per * WAYMO_VAL_FRAMES / 60:.1f} min |")
    lines += ["", f"`metrics.Objects` `.bin` I/O (Python protobuf): {io['objects']:,} predictions "
              f"({io['mb']:.0f} MB) written in {io['write_s']:.1f} s, read into arrays in {io['read_s']:.1f} s "
              f"({1e6 * io['read_s'] / io['objects']:.1f} us per object; a 40k-frame submission of ~5M boxes "
              f"reads in about {5e6 * io['read_s'] / io['objects'] / 60:.1f} min).", "",
              f"nuScenes mAP/NDS (`pointwin.evaluation.nuscenes.evaluate`, detection_cvpr_2019): "
              f"{nu['samples']:,} samples, {nu['preds']:,} predictions, {nu['gts']:,} ground truths in "
              f"{nu['s']:.1f} s."]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB on Linux
    lines += ["", f"Peak resident memory of the whole run: {peak:.1f} GB."]
    table = "\n".join(lines)
    print(table)
    if args.write:
        common.write_section(BEGIN, END, table)


if __name__ == "__main__":
    main()
