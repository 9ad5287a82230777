"""Time the dataset I/O paths: TFRecord CRC-32C, Waymo frame decoding (range images -> points), and nuScenes
10-sweep aggregation.

Usage:
    python benchmarks/datasets_io.py [--repeats 5] [--write]

Waymo: a synthetic v1 ``Frame`` at the real sensor resolutions (TOP 64 x 2650 with a per-pixel pose,
four 200 x 600 short-range lidars, two returns each, about 70 % of the pixels with a return) written
to a TFRecord; one "frame" = read + CRC check + protobuf parse + zlib/matrix decode + conversion of all
ten range images to points. nuScenes: the real LIDAR_TOP keyframe plus nine synthetic sweeps (the
keyframe seen from nearby ego poses) aggregated into the keyframe frame with time lags.
``--write`` replaces the datasets_io section of BENCHMARKS.md (between its markers) with the tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import common
import numba
import numpy as np

from pointwin.datasets.nuscenes import aggregate_sweeps, load_lidar_points
from pointwin.datasets.waymo import proto
from pointwin.datasets.waymo.range_image import encode_matrix, frame_to_points
from pointwin.datasets.waymo.tfrecord import crc32c, iter_records, write_records

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- datasets_io:begin -->", "<!-- datasets_io:end -->"
KEYFRAME = ROOT / ".." / "shared" / "data" / "nuscenes" / \
    "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    out = fn()  # warm-up (numba compilation / caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def _waymo_frame(rng: np.random.Generator) -> bytes:
    frame = proto.Frame()
    frame.context.name = "bench"
    frame.timestamp_micros = 1
    frame.pose.transform.extend(np.eye(4).ravel().tolist())
    for name, (h, w) in {1: (64, 2650), 2: (200, 600), 3: (200, 600), 4: (200, 600), 5: (200, 600)}.items():
        cal = frame.context.laser_calibrations.add(name=name)
        ext = np.eye(4)
        ext[:3, 3] = [1.4, 0.0, 2.2]
        cal.extrinsic.transform.extend(ext.ravel().tolist())
        if name == 1:
            cal.beam_inclinations.extend(np.linspace(-0.31, 0.04, h).tolist())
        cal.beam_inclination_min, cal.beam_inclination_max = (-0.31, 0.04) if name == 1 else (-1.57, 0.52)
        laser = frame.lasers.add(name=name)
        for ri_msg in (laser.ri_return1, laser.ri_return2):
            ri = np.zeros((h, w, 4), np.float32)
            hit = rng.random((h, w)) < 0.7
            ri[..., 0] = np.where(hit, rng.uniform(1, 75, (h, w)), -1)
            ri[..., 1:] = rng.random((h, w, 3))
            ri_msg.range_image_compressed = encode_matrix(ri)
        if name == 1:
            pose = np.zeros((h, w, 6), np.float32)
            pose[..., 2] = np.linspace(0, 0.02, w)[None]
            pose[..., 3] = np.linspace(0, 1.0, w)[None]
            laser.ri_return1.range_image_pose_compressed = encode_matrix(pose)
    return frame.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    rows = []

    data = rng.integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    med, best, _ = _timed(lambda: crc32c(data), args.repeats)
    rows.append(f"| CRC-32C (numba, slicing-by-8), 64 MiB | {med * 1e3:.1f} | {best * 1e3:.1f} | "
                f"{64 / 1024 / best:.2f} GiB/s |")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.tfrecord"
        record = _waymo_frame(rng)
        write_records(path, [record])

        def read_frame():
            (rec,) = list(iter_records(path))
            frame = proto.Frame()
            frame.ParseFromString(rec)
            return frame_to_points(frame)

        med, best, fp = _timed(read_frame, args.repeats)
        rows.append(f"| Waymo v1 frame ({len(record) / 2**20:.1f} MiB record): read + CRC + parse + decode + "
                    f"10 range images -> {len(fp.points):,} points | {med * 1e3:.0f} | {best * 1e3:.0f} | "
                    f"{1 / med:.1f} frames/s |")

        if KEYFRAME.exists():
            key = load_lidar_points(KEYFRAME)
            info = {"lidar_path": str(KEYFRAME), "sweeps": []}
            for k in range(1, 10):
                m = np.eye(4)
                m[0, 3] = 0.5 * k
                sweep = key.copy()
                sweep[:, 0] -= 0.5 * k
                p = Path(tmp) / f"sweep{k}.pcd.bin"
                sweep.tofile(p)
                info["sweeps"].append({"lidar_path": str(p), "time_lag": 0.05 * k, "sensor2lidar": m.tolist()})
            med, best, (pts, _) = _timed(lambda: aggregate_sweeps("/", info, num_sweeps=10), args.repeats)
            rows.append(f"| nuScenes keyframe + 9 sweeps -> {len(pts):,} points x 5 | {med * 1e3:.0f} | "
                        f"{best * 1e3:.0f} | {1 / med:.1f} samples/s |")

    header = (f"## Dataset I/O (`benchmarks/datasets_io.py`)\n\n"
              f"Device: CPU ({platform.machine()}, single process, numba {numba.__version__}); numpy "
              f"{np.__version__}; Python {platform.python_version()}; {datetime.date.today()}. Median and min of "
              f"{args.repeats} runs after a warm-up. Load average at the start: {load:.1f} on {os.cpu_count()} "
              "cores (a shared machine: treat the medians as upper bounds).\n\n"
              "| what | median ms | min ms | rate (from min / median) |\n|---|---:|---:|---:|\n")
    table = header + "\n".join(rows) + "\n"
    print(table)
    if args.write:
        common.write_section(BEGIN, END, table)


if __name__ == "__main__":
    main()
