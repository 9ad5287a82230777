"""Time every partition scheme on real LiDAR clouds voxelized at DSVT/FlatFormer Waymo-like settings.

Inputs (from ../shared/data, see its README): the nuScenes 10-sweep aggregated cloud (one sample,
271k points) and the three full KITTI scans (one batch of 3 samples). Grids cover
(-74.88, -74.88, -2) .. (74.88, 74.88, 4) m: 0.32 m pillars (468 x 468 x 1) and 0.32 x 0.32 x 0.1875 m
voxels (468 x 468 x 32).

Usage:
    python benchmarks/partition.py [--device cpu|cuda] [--repeats 15] [--threads 1] [--write]

``--write`` replaces the partition section of BENCHMARKS.md (between its markers) with the table.
Medians over ``--repeats`` timed calls after one warm-up call; CUDA timings synchronise the device.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import numpy as np
import torch

from pointwin.partition import (
    Partition,
    bev_windows,
    curve_patches,
    flattened_windows,
    radial_windows,
    rotated_sets,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
NUSCENES = DATA / "nuscenes" / "sweeps10_ff9eff4389a740848f9a56ad749a4ae8.fp16.bin"
KITTI_GLOB = str(DATA / "kitti" / "full" / "velodyne" / "*.bin")
POINT_RANGE = (-74.88, -74.88, -2.0, 74.88, 74.88, 4.0)
PILLAR = (0.32, 0.32, 6.0)
VOXEL = (0.32, 0.32, 0.1875)
BEGIN, END = "<!-- partition:begin -->", "<!-- partition:end -->"


def load_clouds() -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """name -> (xyz float32 (N, 3), batch_idx int64 (N,), batch_size)."""
    if not NUSCENES.exists() or not glob.glob(KITTI_GLOB):
        sys.exit(f"benchmark data not found under {DATA} (see ../shared/data/README.md)")
    nu = np.fromfile(NUSCENES, dtype=np.float16).reshape(-1, 5)[:, :3].astype(np.float32)
    clouds = {"nuScenes 10-sweep (B=1)": (torch.from_numpy(nu), torch.zeros(len(nu), dtype=torch.int64), 1)}
    scans = [np.fromfile(f, dtype=np.float32).reshape(-1, 4)[:, :3] for f in sorted(glob.glob(KITTI_GLOB))]
    xyz = torch.from_numpy(np.concatenate(scans))
    b = torch.cat([torch.full((len(s),), i, dtype=torch.int64) for i, s in enumerate(scans)])
    clouds[f"KITTI full scans (B={len(scans)})"] = (xyz, b, len(scans))
    return clouds


def voxel_coords(xyz: torch.Tensor, batch_idx: torch.Tensor, batch_size: int,
                 voxel_size: tuple[float, float, float]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Unique int32 (b, z, y, x) voxel rows of the cloud and the grid shape."""
    try:
        from pointwin.ops.voxelize import voxelize
    except ImportError:  # fall back to a local torch.unique voxelization
        voxelize = None
    if voxelize is not None:
        vox = voxelize(xyz, voxel_size, POINT_RANGE, batch_idx=batch_idx, batch_size=batch_size)
        return vox.coords, tuple(vox.spatial_shape)
    lo = torch.tensor(POINT_RANGE[:3], dtype=torch.float64)
    hi = torch.tensor(POINT_RANGE[3:], dtype=torch.float64)
    size = torch.tensor(voxel_size, dtype=torch.float64)
    shape = torch.round((hi - lo) / size).long()
    cell = torch.floor((xyz.double() - lo) / size).long()
    keep = ((cell >= 0) & (cell < shape)).all(1)
    rows = torch.cat([batch_idx[keep, None], cell[keep].flip(1)], 1)
    return torch.unique(rows, dim=0).int(), (int(shape[2]), int(shape[1]), int(shape[0]))


def centres(coords: torch.Tensor, voxel_size: tuple[float, float, float]) -> torch.Tensor:
    xyz = coords[:, [3, 2, 1]].double() + 0.5
    return (xyz * torch.tensor(voxel_size, dtype=torch.float64) + torch.tensor(POINT_RANGE[:3])).float()


def time_call(fn: Callable[[], Partition], device: torch.device, repeats: int) -> tuple[float, float, Partition]:
    """(median, min) milliseconds of ``fn`` over ``repeats`` calls after one warm-up, and its output."""
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


def cases(pillars: torch.Tensor, pshape, voxels: torch.Tensor, vshape, vcentres: torch.Tensor):
    """(scheme, settings, grid label, callable) for every timed configuration."""
    b = voxels[:, 0].long()
    yield ("flattened_windows", "window 13, G 144, axis x", "pillars",
           lambda: flattened_windows(pillars, pshape, window=(13, 13), group_size=144, axis="x"))
    yield ("flattened_windows", "window 13, G 144, axis y, shift", "pillars",
           lambda: flattened_windows(pillars, pshape, window=(13, 13), group_size=144, axis="y", shift=True))
    yield ("flattened_windows", "window 12, G 144, axis x", "pillars",
           lambda: flattened_windows(pillars, pshape, window=(12, 12), group_size=144, axis="x"))
    yield ("rotated_sets", "window 12x12x1, S 36, axis x", "pillars",
           lambda: rotated_sets(pillars, pshape, window=(12, 12, 1), set_size=36, axis="x"))
    yield ("rotated_sets", "hybrid 24x24x1, S 36, axis y, shift 12", "pillars",
           lambda: rotated_sets(pillars, pshape, window=(24, 24, 1), set_size=36, axis="y", shift=(12, 12, 0)))
    yield ("rotated_sets", "window 12x12x32, S 36, axis x", "3D voxels",
           lambda: rotated_sets(voxels, vshape, window=(12, 12, 32), set_size=36, axis="x"))
    yield ("bev_windows", "window 12", "pillars", lambda: bev_windows(pillars, window=12))
    yield ("bev_windows", "window 13", "3D voxels", lambda: bev_windows(voxels, window=13))
    yield ("radial_windows", "2 deg x 2 deg x 120 m", "3D voxel centres",
           lambda: radial_windows(vcentres, b, window=(2.0, 2.0, 120.0)))
    yield ("curve_patches", "z-order, K 1024", "3D voxels",
           lambda: curve_patches(voxels, "z", patch_size=1024, spatial_shape=vshape))
    yield ("curve_patches", "hilbert, K 1024", "3D voxels",
           lambda: curve_patches(voxels, "hilbert", patch_size=1024, spatial_shape=vshape))
    yield ("curve_patches", "hilbert-trans, K 144", "3D voxels",
           lambda: curve_patches(voxels, "hilbert-trans", patch_size=144, spatial_shape=vshape))






def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    for cloud, (xyz, bidx, bsize) in load_clouds().items():
        pillars, pshape = voxel_coords(xyz, bidx, bsize, PILLAR)
        voxels, vshape = voxel_coords(xyz, bidx, bsize, VOXEL)
        vcentres = centres(voxels, VOXEL)
        pillars, voxels, vcentres = pillars.to(device), voxels.to(device), vcentres.to(device)
        print(f"{cloud}: {len(xyz)} points -> {len(pillars)} pillars {pshape}, {len(voxels)} voxels {vshape}",
              flush=True)
        for scheme, settings, grid, fn in cases(pillars, pshape, voxels, vshape, vcentres):
            ms, ms_min, part = time_call(fn, device, args.repeats)
            n = len(pillars) if grid == "pillars" else len(voxels)
            rows.append(f"| {cloud} | {scheme} | {settings} | {grid} | {n:,} | {part.num_groups:,} | "
                        f"{part.num_slots:,} | {ms:.2f} | {ms_min:.2f} |")
            print(rows[-1], flush=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    load = ""
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        load = (f" The box was shared (1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the "
                "end of the run), so medians carry contention; the min column is the closer estimate of the cost.")
    header = (
        "## Partitions (`benchmarks/partition.py`)\n\n"
        f"Device: {common.device_name(device)}; torch {torch.__version__}; Python {platform.python_version()}; {date}. "
        f"Median and min of {args.repeats} calls after a warm-up (partition only: voxelization excluded). "
        "Grid (-74.88, -74.88, -2)..(74.88, 74.88, 4) m; "
        "pillars 0.32 m (468x468x1), 3D voxels 0.32x0.32x0.1875 m (468x468x32). Groups/slots: the partition's "
        f"G and M (slots include the repeats / overlaps of equal-size schemes).{load}\n\n"
        "| cloud | scheme | settings | grid | voxels | groups | slots | median ms | min ms |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|"
    )
    table = header + "\n" + "\n".join(rows)
    print(table)
    if args.write:
        common.write_section(BEGIN, END, table)


if __name__ == "__main__":
    main()
