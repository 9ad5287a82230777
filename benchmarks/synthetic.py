"""Time synthetic LiDAR scene generation (layout + numba ray casting + labelling) per frame.

Usage:
    python benchmarks/synthetic.py [--frames 20] [--threads 1] [--write]

``--write`` replaces the synthetic section of BENCHMARKS.md (between its markers) with the table.
One warm-up frame first (numba compilation or cache load, not counted); then ``--frames`` different
frames of the train split; median and min per frame.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import common
import numba
import numpy as np
import torch

from pointwin.datasets.synthetic import HDL32, HDL64, LidarConfig, SceneConfig, frame_seed, generate_scene

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- synthetic:begin -->", "<!-- synthetic:end -->"

SENSORS = {
    "32 beams -30..+10 deg, 0.2 deg (HDL32, default)": HDL32,
    "32 beams -30..+10 deg, 0.4 deg": LidarConfig(azimuth_resolution=0.4),
    "64 beams -24.9..+2 deg, 0.17 deg (HDL64)": HDL64,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = []
    for name, lidar in SENSORS.items():
        cfg = SceneConfig(lidar=lidar)
        generate_scene(frame_seed("train", 10**6), cfg)  # warm-up
        times, points, boxes = [], [], []
        for i in range(args.frames):
            t0 = time.perf_counter()
            scene = generate_scene(frame_seed("train", i), cfg)
            times.append((time.perf_counter() - t0) * 1e3)
            points.append(len(scene.points))
            boxes.append(len(scene.boxes))
        rows.append(f"| {name} | {lidar.num_columns * lidar.num_beams:,} | {int(np.mean(points)):,} | "
                    f"{np.mean(boxes):.1f} | {statistics.median(times):.1f} | {min(times):.1f} |")
    header = (f"## Synthetic scenes (`benchmarks/synthetic.py`)\n\n"
              f"Device: CPU ({platform.machine()}, {args.threads} torch threads, numba {numba.__version__}); "
              f"torch {torch.__version__}; Python {platform.python_version()}; {datetime.date.today()}. "
              f"Per frame: layout, ray casting, points-in-boxes labelling; median and min over {args.frames} "
              f"train frames after a warm-up frame. Scene extent +-40 m, max range 70 m. "
              f"Load average at the start: {load:.1f} (other jobs share the cores).\n\n"
              "| sensor | rays | points (mean) | labelled boxes (mean) | median ms | min ms |\n"
              "|---|---:|---:|---:|---:|---:|\n")
    table = header + "\n".join(rows) + "\n"
    print(table)
    if args.write:
        common.write_section(BEGIN, END, table)


if __name__ == "__main__":
    main()
