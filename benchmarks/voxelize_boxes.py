"""Time voxelization, voxel pooling and the box ops on real / realistic inputs.

Inputs: the nuScenes 10-sweep aggregated cloud from ../shared/data (float16 x 5, 271k points; see its
README) and the 69 annotated boxes of the nuScenes keyframe; 500 x 500 random rotated boxes for IoU,
either spread over a 100 m x 100 m scene (few overlaps) or clustered in 5 m x 5 m (most pairs overlap,
as among the raw candidates fed to NMS).

Usage:
    python benchmarks/voxelize_boxes.py [--device cpu|cuda] [--repeats 7] [--threads 1] [--write]

``--write`` replaces the voxelize/boxes section of BENCHMARKS.md (between its markers) with the table.
Median and min over ``--repeats`` calls after one warm-up call (which also loads numba's cache);
CUDA timings synchronise the device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import common
import numba
import numpy as np
import torch

from pointwin.ops import (
    boxes_iou3d,
    boxes_iou_bev,
    circle_nms,
    nms_bev,
    points_in_boxes,
    voxel_pool,
    voxelize,
)
from pointwin.structures import Points

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
SWEEPS = DATA / "nuscenes" / "sweeps10_ff9eff4389a740848f9a56ad749a4ae8.fp16.bin"
KEYFRAME_BOXES = DATA / "nuscenes" / "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.boxes.json"
BEGIN, END = "<!-- voxelize_boxes:begin -->", "<!-- voxelize_boxes:end -->"
RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
GRIDS = {
    "pillars 0.2 m": (0.2, 0.2, 8.0),
    "voxels 0.1x0.1x0.2 m": (0.1, 0.1, 0.2),
    "voxels 0.075x0.075x0.2 m": (0.075, 0.075, 0.2),
}


def time_call(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, object]:
    out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), out


def random_boxes(n: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.zeros(n, 7)
    b[:, :2] = (torch.rand(n, 2, generator=g) - 0.5) * spread
    b[:, 2] = torch.rand(n, generator=g) * 2 - 1
    b[:, 3:6] = torch.rand(n, 3, generator=g) * 4 + 0.5
    b[:, 6] = (torch.rand(n, generator=g) - 0.5) * 2 * torch.pi
    return b


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads, load average {load:.1f} at start)")




def cases(device: torch.device):
    raw = np.fromfile(SWEEPS, dtype=np.float16).reshape(-1, 5).astype(np.float32)
    cloud = torch.from_numpy(raw)
    one = Points(cloud, torch.zeros(len(cloud), dtype=torch.long), 1).to(device)
    four = Points(cloud.repeat(4, 1), torch.arange(4).repeat_interleave(len(cloud)), 4).to(device)
    for name, size in GRIDS.items():
        for label, pts in (("B=1", one), ("B=4", four)):
            vox = voxelize(pts, size, RANGE)
            yield "voxelize", f"{name}, {label}", f"{len(pts):,} points -> {vox.num_voxels:,} voxels", \
                lambda pts=pts, size=size: voxelize(pts, size, RANGE)
        vox = voxelize(one, size, RANGE)
        for reduce in ("mean", "max"):
            yield "voxel_pool", f"{name}, {reduce}, C=5", f"{len(one):,} points -> {vox.num_voxels:,} voxels", \
                lambda vox=vox, reduce=reduce: voxel_pool(one.data, vox.point_voxel, vox.num_voxels, reduce)
    backends = ["numba", "torch"] if device.type == "cpu" else ["torch"]
    for spread, label in ((100.0, "spread 100 m"), (5.0, "clustered 5 m")):
        a, b = random_boxes(500, spread, 0).to(device), random_boxes(500, spread, 1).to(device)
        overlapping = int((boxes_iou_bev(a, b) > 0).sum())
        for backend in backends:
            yield "boxes_iou_bev", f"500x500, {label}, {backend}", f"{overlapping:,} overlapping pairs", \
                lambda a=a, b=b, backend=backend: boxes_iou_bev(a, b, backend=backend)
        yield "boxes_iou3d", f"500x500, {label}, {backends[0]}", f"{overlapping:,} overlapping pairs", \
            lambda a=a, b=b: boxes_iou3d(a, b, backend=backends[0])
        scores = torch.rand(500, generator=torch.Generator().manual_seed(2)).to(device)
        for backend in backends:
            kept = len(nms_bev(a, scores, 0.2, backend=backend))
            yield "nms_bev", f"500 boxes, {label}, IoU > 0.2, {backend}", f"{kept} kept", \
                lambda a=a, scores=scores, backend=backend: nms_bev(a, scores, 0.2, backend=backend)
        kept = len(circle_nms(a, scores, 1.0))
        yield "circle_nms", f"500 boxes, {label}, r = 1 m", f"{kept} kept", lambda a=a, scores=scores: circle_nms(
            a, scores, 1.0)
    gt = torch.tensor([b["box"] for b in json.loads(KEYFRAME_BOXES.read_text())["boxes"]]).to(device)
    inside = int(points_in_boxes(one.xyz, gt).sum())
    yield "points_in_boxes", f"{len(one):,} points x {len(gt)} nuScenes boxes", f"{inside:,} point-box hits", \
        lambda: points_in_boxes(one.xyz, gt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    name = device_name(device)
    rows = []
    for op, settings, size, fn in cases(device):
        ms, ms_min, _ = time_call(fn, device, args.repeats)
        rows.append(f"| {op} | {settings} | {size} | {ms:.2f} | {ms_min:.2f} |")
        print(rows[-1], flush=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    header = (
        "## Voxelization and box ops (`benchmarks/voxelize_boxes.py`)\n\n"
        f"Device: {name}; torch {torch.__version__}; numba {numba.__version__}; Python {platform.python_version()}; "
        f"{date}. Median and min of {args.repeats} calls after a warm-up. Cloud: the real nuScenes 10-sweep "
        f"aggregate (B=4 repeats it 4 times), range {RANGE}. Boxes: 500 random rotated boxes (sizes 0.5-4.5 m) "
        "spread over 100 m x 100 m or clustered in 5 m x 5 m. The `torch` box backend is the GPU path; on the CPU "
        "the default is `numba`. A CPU load average above the core count means the machine was shared with other "
        "jobs: treat those times as upper bounds.\n\n"
        "| op | settings | size | median ms | min ms |\n"
        "|---|---|---|---:|---:|"
    )
    table = header + "\n" + "\n".join(rows)
    print(table)
    if args.write:
        common.write_section(BEGIN, END, table)


if __name__ == "__main__":
    main()
