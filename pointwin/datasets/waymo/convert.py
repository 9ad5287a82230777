"""Convert Waymo (v1 TFRecord or v2 Parquet) to pointwin's on-disk format, resumably and in parallel.

Output layout under ``out``::

    <segment>/<timestamp_micros>.npy   float32 (N, 6) x, y, z, intensity, elongation, no-label-zone flag,
                                       all lidars and both returns, in the frame's vehicle frame
    <segment>/<timestamp_micros>.seg.npy  int32 (N, 2) instance id, semantic class per point (-1 unlabelled),
                                       only for frames with segmentation labels (``seg_path`` in the info)
    <segment>/infos.json               list of frame infos (see :func:`_frame_info`)
    waymo_infos[_<split>]_shard<i>of<n>.json   the infos of every segment of that shard
    waymo_infos_<split>.json           all segments of the source, once every shard has finished
    waymo_infos.json                   :func:`merge_waymo_infos` of all finished segments

A segment is written into ``.partial-<segment>-<pid>`` and renamed to ``<segment>`` when complete, so a
segment folder that exists is finished: an interrupted run resumes by skipping those, and removes the
``.partial-*`` folders a killed run left for its own shard's segments (so never run the same shard twice at
the same time into one ``out``). Errors name the file (a corrupt TFRecord: the byte offset of the record)
and reach the caller unchanged from worker processes; empty TFRecord files are reported as a warning. ``shard=(i, n)``
takes every n-th segment (in sorted order) starting at i, so n machines can split a split between them.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from ...errors import DataError, PointwinError, PointwinWarning
from ...fileio import write_json

__all__ = ["WAYMO_TYPE_NAMES", "convert_segment", "create_waymo_infos", "discover_segments", "main",
           "merge_waymo_infos", "parse_shard"]

WAYMO_TYPE_NAMES = {0: "Unknown", 1: "Vehicle", 2: "Pedestrian", 3: "Sign", 4: "Cyclist"}


def discover_segments(src: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """Find the segments under ``src``: returns ("v1" | "v2", {segment name: source path}).

    v1: ``src`` holds ``*.tfrecord`` files (or is one); v2: ``src`` holds a ``lidar/`` component folder.
    """
    src = Path(src)
    if src.is_file() and src.suffix == ".tfrecord":
        return "v1", {src.stem: str(src)}
    if (src / "lidar").is_dir():
        from .v2 import list_segments

        return "v2", {s: str(src) for s in list_segments(src, "lidar")}
    records = sorted(src.glob("*.tfrecord"))
    if records:
        return "v1", {p.stem: str(p) for p in records}
    raise FileNotFoundError(f"{src}: no *.tfrecord files (Waymo v1) and no lidar/ folder (Waymo v2) found")


def _frame_info(segment: str, timestamp: int, pose: np.ndarray | None, lidar_path: str, num_points: int,
                boxes: np.ndarray, speed: np.ndarray, types: np.ndarray, ids: list[str], npts: np.ndarray,
                ntop: np.ndarray, det: np.ndarray, trk: np.ndarray, context: str) -> dict:
    """One frame's JSON info; boxes are (M, 9) x, y, z, dx=length, dy=width, dz=height, yaw, vx, vy."""
    box9 = np.concatenate([boxes.reshape(-1, 7), speed.reshape(-1, 3)[:, :2]], 1) if len(boxes) else np.zeros((0, 9))
    return {
        "frame_id": f"{segment}_{timestamp}",
        "segment": segment,
        "context_name": context,
        "timestamp_micros": int(timestamp),
        "pose": None if pose is None else np.asarray(pose, dtype=np.float64).reshape(16).tolist(),
        "lidar_path": lidar_path,
        "num_points": int(num_points),
        "channels": ["x", "y", "z", "intensity", "elongation", "nlz"],
        "annos": {
            "names": [WAYMO_TYPE_NAMES.get(int(t), "Unknown") for t in types],
            "boxes": box9.tolist(),
            "ids": list(ids),
            "difficulty": [int(d) for d in det],
            "tracking_difficulty": [int(d) for d in trk],
            "num_lidar_points_in_box": [int(n) for n in npts],
            "num_top_lidar_points_in_box": [int(n) for n in ntop],
        },
    }


def _iter_v1(path: str) -> Iterator[tuple[int, np.ndarray | None, np.ndarray, dict, str]]:
    from google.protobuf.message import DecodeError

    from . import proto
    from .range_image import frame_to_points
    from .tfrecord import iter_records

    for k, rec in enumerate(iter_records(path)):
        frame = proto.Frame()
        try:
            frame.ParseFromString(rec)
        except DecodeError as e:
            raise DataError(f"record {k} is not a waymo.open_dataset.Frame protobuf ({e})", path=path) from None
        pose = np.asarray(frame.pose.transform, dtype=np.float64).reshape(4, 4) if frame.pose.transform else None
        labels = frame.laser_labels
        lab = {
            "boxes": np.array([[lb.box.center_x, lb.box.center_y, lb.box.center_z, lb.box.length, lb.box.width,
                                lb.box.height, lb.box.heading] for lb in labels], dtype=np.float64).reshape(-1, 7),
            "speed": np.array([[lb.metadata.speed_x, lb.metadata.speed_y, lb.metadata.speed_z] for lb in labels],
                              dtype=np.float64).reshape(-1, 3),
            "types": np.array([lb.type for lb in labels], dtype=np.int64),
            "ids": [lb.id for lb in labels],
            "npts": np.array([lb.num_lidar_points_in_box for lb in labels], dtype=np.int64),
            "ntop": np.array([lb.num_top_lidar_points_in_box for lb in labels], dtype=np.int64),
            "det": np.array([lb.detection_difficulty_level for lb in labels], dtype=np.int64),
            "trk": np.array([lb.tracking_difficulty_level for lb in labels], dtype=np.int64),
        }
        yield frame.timestamp_micros, pose, frame_to_points(frame), lab, frame.context.name


def _iter_v2(root: str, segment: str) -> Iterator[tuple[int, np.ndarray | None, np.ndarray, dict, str]]:
    from .v2 import (
        component_path,
        frame_points,
        iter_lidar_frames,
        read_lidar_boxes,
        read_lidar_calibrations,
        read_lidar_segmentation,
    )

    calibs = read_lidar_calibrations(root, segment)
    boxes = read_lidar_boxes(root, segment) if component_path(root, "lidar_box", segment).exists() else {}
    seg = (read_lidar_segmentation(root, segment) if component_path(root, "lidar_segmentation", segment).exists()
           else None)
    for frame in iter_lidar_frames(root, segment):
        b = boxes.get(frame.timestamp)
        if b is None:
            lab = {"boxes": np.zeros((0, 7)), "speed": np.zeros((0, 3)), "types": np.zeros(0, np.int64), "ids": [],
                   "npts": np.zeros(0, np.int64), "ntop": np.zeros(0, np.int64), "det": np.zeros(0, np.int64),
                   "trk": np.zeros(0, np.int64)}
        else:
            lab = {"boxes": b.boxes, "speed": b.speed, "types": b.types, "ids": b.ids, "npts": b.num_lidar_points,
                   "ntop": b.num_top_lidar_points, "det": b.difficulty, "trk": b.tracking_difficulty}
        yield frame.timestamp, frame.pose, frame_points(frame, calibs, segmentation=seg), lab, segment


def convert_segment(kind: str, source: str, segment: str, out: str | os.PathLike) -> int:
    """Convert one segment into ``out/<segment>`` (skipped if it exists); returns the number of frames written."""
    out = Path(out)
    final = out / segment
    if final.is_dir():
        return 0
    tmp = out / f".partial-{segment}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        frames = _iter_v1(source) if kind == "v1" else _iter_v2(source, segment)
        infos = []
        for ts, pose, fp, lab, context in frames:
            name = f"{ts}.npy"
            np.save(tmp / name, np.ascontiguousarray(fp.points, dtype=np.float32))
            info = _frame_info(segment, ts, pose, f"{segment}/{name}", len(fp.points), lab["boxes"], lab["speed"],
                               lab["types"], lab["ids"], lab["npts"], lab["ntop"], lab["det"], lab["trk"], context)
            info["seg_path"] = None
            if fp.segmentation is not None:
                np.save(tmp / f"{ts}.seg.npy", np.ascontiguousarray(fp.segmentation, dtype=np.int32))
                info["seg_path"] = f"{segment}/{ts}.seg.npy"
            infos.append(info)
        infos.sort(key=lambda i: i["timestamp_micros"])
        for idx, info in enumerate(infos):
            info["sample_idx"] = idx
        write_json(tmp / "infos.json", infos)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # another worker finishing the same segment first is fine
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(infos)


def create_waymo_infos(src: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                       shard: tuple[int, int] = (0, 1), workers: int = 4, progress: bool = True,
                       split: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Convert the segments of shard ``shard = (i, n)`` under ``src`` into ``out``.

    Finished segments are skipped, so re-running after an interruption resumes. ``workers <= 1`` runs in
    this process. Writes ``out/waymo_infos[_<split>]_shard<i>of<n>.json`` (the shard's frame infos). With
    ``split`` (e.g. "train", "val"), the run that finds every segment of ``src`` finished (the last shard)
    also writes ``out/waymo_infos_<split>.json`` over all of them, so train and val can share ``out``.
    Returns the split file when written, else the shard file. ``root`` is accepted as another name for
    ``src`` (the CLI passes ``root=``); ``out`` defaults to ``src``.
    """
    if src is None:
        src = root
    if src is None:
        raise TypeError("create_waymo_infos needs src (a folder of v1 .tfrecord files or a v2 root)")
    out = src if out is None else out
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    kind, segments = discover_segments(src)
    mine = sorted(segments)[i::n]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out, mine)
    if kind == "v1":
        empty = [s for s in mine if os.path.getsize(segments[s]) == 0]
        if empty:
            warnings.warn(f"{len(empty)} of {len(mine)} TFRecord files of shard {i}/{n} are empty (0 bytes) and "
                          f"convert to segments without frames: {', '.join(segments[s] for s in empty[:5])}"
                          f"{' ...' if len(empty) > 5 else ''}", PointwinWarning, stacklevel=2)
    todo = [s for s in mine if not (out / s).is_dir()]
    from tqdm import tqdm

    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"waymo {kind} shard {i}/{n}", unit="segment",
               disable=not progress)
    try:
        if workers <= 1:
            for seg in todo:
                convert_segment(kind, segments[seg], seg, out)
                bar.update(1)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(convert_segment, kind, segments[s], s, out): s for s in todo}
                for fut in as_completed(futures):
                    try:
                        fut.result()
                    except PointwinError:  # names the file (and offset) itself; survives the process boundary
                        raise
                    except Exception as e:
                        raise RuntimeError(f"converting Waymo segment {futures[fut]} failed: {e}") from e
                    bar.update(1)
    finally:
        bar.close()
    prefix = f"waymo_infos_{split}" if split else "waymo_infos"
    path = out / f"{prefix}_shard{i}of{n}.json"
    write_json(path, _collect(out, mine))
    if split and all((out / s).is_dir() for s in segments):
        path = out / f"{prefix}.json"
        write_json(path, _collect(out, sorted(segments)))
    return path


def _remove_stale_partials(out: Path, segments: list[str]) -> None:
    """Delete ``.partial-<segment>-<pid>`` folders a killed run left for these segments (this shard's own)."""
    for seg in segments:
        for stale in out.glob(f".partial-{glob_escape(seg)}-*"):
            if stale.is_dir() and stale.name[len(f".partial-{seg}-"):].isdigit():
                shutil.rmtree(stale, ignore_errors=True)


def _collect(out: Path, segments: list[str]) -> list[dict]:
    infos = []
    for seg in segments:
        infos.extend(json.loads((out / seg / "infos.json").read_text()))
    return infos


def merge_waymo_infos(out: str | os.PathLike, name: str = "waymo_infos.json") -> list[dict]:
    """Concatenate the infos of every finished segment under ``out`` into ``out/<name>``."""
    out = Path(out)
    segments = sorted(p.parent.name for p in out.glob("*/infos.json") if not p.parent.name.startswith(".partial-"))
    infos = _collect(out, segments)
    write_json(out / name, infos)
    return infos


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (the ``--shard`` option)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def main(argv: list[str] | None = None) -> None:
    """``python -m pointwin.datasets.waymo.convert SRC OUT [--shard i/n] [--workers W] [--merge]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Convert Waymo v1 TFRecords or v2 Parquet to pointwin's format")
    ap.add_argument("src", help="folder of *.tfrecord files (v1) or a v2 root holding lidar/, lidar_box/, ...")
    ap.add_argument("out", help="output folder")
    ap.add_argument("--shard", default="0/1", help="i/n: convert every n-th segment starting at i")
    ap.add_argument("--split", default=None, help="name of the split (writes waymo_infos_<split>.json when done)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--merge", action="store_true", help="also write waymo_infos.json over all finished segments")
    args = ap.parse_args(argv)
    path = create_waymo_infos(args.src, args.out, shard=parse_shard(args.shard), workers=args.workers,
                              split=args.split)
    print(f"{len(json.loads(path.read_text()))} frames in shard {args.shard}: {path}")
    if args.merge:
        print(f"{len(merge_waymo_infos(args.out))} frames in {Path(args.out) / 'waymo_infos.json'}")


if __name__ == "__main__":
    main()
