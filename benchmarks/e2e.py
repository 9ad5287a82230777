"""End-to-end detector / segmentor latency per stage, peak memory, forward and training step, on real clouds.

For every model (by default the ``configs/waymo`` and ``configs/nuscenes`` configs whose backbone is
FlatFormer, DSVT-P, DSVT-V, ScatterFormer or SphereSeg; ``--model NAME`` picks the built-in published
settings of :func:`published_models`; ``--config`` any YAML) and every input (the nuScenes 10-sweep
aggregate, the three full KITTI scans as one batch), one forward pass is cut into stages:

- ``voxelize``: grid assignment of the points (``vfe.voxelize``);
- ``VFE``: the PointNet voxel feature encoder;
- ``partitions``: building window partitions (groups / sets / windows) and their companion structures,
  measured inside the 3D backbone by timing every first-time ``SparseVoxels.cached`` build whose result
  holds a :class:`~pointwin.partition.Partition` (later stages of multi-stage backbones included);
- ``3D backbone``: the backbone minus the partition builds (attention, FFN, sparse conv, pooling);
- ``BEV``: scatter to the BEV map + the 2D backbone/neck;
- ``head``: the CenterPoint head convolutions (segmentation: the per-point classifier);
- ``decode+NMS``: top-K decoding and NMS (segmentation: argmax per point).

Stage boundaries are CUDA events on a GPU (no synchronisation between stages) and ``perf_counter`` on the
CPU. Also measured, without instrumentation: ``model.predict`` (the whole forward), a training step
(forward, loss, backward, AdamW step) on seeded synthetic targets, and the peak memory of both.

Usage:
    python benchmarks/e2e.py [--device auto|cpu|cuda] [--config cfg.yaml ...] [--model FlatFormer ...]
                             [--input cloud.bin ...] [--warmup 1] [--repeats 3] [--dtype fp32|fp16|bf16]
                             [--compile] [--quick] [--write]

On CUDA, ``--dtype`` picks autocast precision and ``--compile`` wraps the 3D backbone (dynamic shapes),
the 2D backbone and the head with ``torch.compile``; without ``--dtype``/``--compile`` a CUDA run measures
fp32, bf16 and fp16, each with compile off and on.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

from pointwin.models import Detector, Segmentor, build_model
from pointwin.partition import Partition
from pointwin.structures import Batch, Boxes3D, Points, SparseVoxels

BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"
STAGES = ("voxelize", "VFE", "partitions", "3D backbone", "BEV", "head", "decode+NMS")

# ------------------------------------------------------------------------------------------------
# Published settings (used when no YAML config for that backbone is given)

WAYMO_RANGE = [-74.88, -74.88, -2.0, 74.88, 74.88, 4.0]
WAYMO_CLASSES = ["Vehicle", "Pedestrian", "Cyclist"]
NUSC_CLASSES = ["car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
                "pedestrian", "traffic_cone"]
NUSC_SEG_CLASSES = ["barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
                    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain",
                    "manmade", "vegetation"]

# DSVT's BaseBEVResBackbone (also used by ScatterFormer): 128-128-256, neck to stride 2, 3 x 128 channels.
RES_BEV = {"type": "BEVBackbone", "layer_nums": [1, 2, 2], "layer_strides": [1, 2, 2],
           "num_filters": [128, 128, 256], "upsample_strides": [0.5, 1, 2],
           "num_upsample_filters": [128, 128, 128], "block": "basic"}
# CenterPoint-pillar SECOND neck (FlatFormer's Waymo config): 64-128-256 at strides 1-2-4, neck to stride 1.
SECOND_BEV = {"type": "BEVBackbone", "layer_nums": [3, 5, 5], "layer_strides": [1, 2, 2],
              "num_filters": [64, 128, 256], "upsample_strides": [1, 2, 4],
              "num_upsample_filters": [128, 128, 128], "block": "conv"}


def _waymo_head(with_iou: bool) -> dict:
    head = {"type": "CenterPointHead", "tasks": [WAYMO_CLASSES], "shared_channels": 64, "head_channels": 64,
            "with_iou": with_iou, "max_objs": 500, "score_threshold": 0.1, "pre_max": 4096, "post_max": 500,
            "nms_type": "rotate", "nms_iou_threshold": [0.7, 0.6, 0.55]}
    if with_iou:
        head["iou_rectifier"] = [0.68, 0.71, 0.65]
    return head


def published_models() -> dict[str, dict]:
    """``model`` config sections at the published settings (Waymo grids; SphereSeg and DSVT-P nuScenes)."""
    pillar_vfe = {"type": "DynamicPillarVFE", "num_point_features": 5, "feat_channels": [128, 128]}
    return {
        # FlatFormer (CVPR'23), Waymo: 0.32 m pillars, C 128, 8 heads, 2 blocks x 4 orders, 13x13 windows, G 69.
        "FlatFormer": {"type": "Detector", "class_names": WAYMO_CLASSES, "point_cloud_range": WAYMO_RANGE,
                       "voxel_size": [0.32, 0.32, 6.0], "vfe": pillar_vfe,
                       "backbone": {"type": "FlatFormer", "channels": 128, "num_heads": 8, "num_blocks": 2,
                                    "window": [13, 13], "group_size": 69},
                       "backbone_2d": SECOND_BEV, "head": _waymo_head(False)},
        # DSVT-P (CVPR'23), Waymo: 0.32 m pillars, C 192, 8 heads, FFN 384, sets of 36, 12x12 windows,
        # 4 blocks, hybrid 24x24 windows shifted by 6.
        "DSVT-P": {"type": "Detector", "class_names": WAYMO_CLASSES, "point_cloud_range": WAYMO_RANGE,
                   "voxel_size": [0.32, 0.32, 6.0],
                   "vfe": {"type": "DynamicPillarVFE", "num_point_features": 5, "feat_channels": [192, 192]},
                   "backbone": {"type": "DSVT", "channels": 192, "num_heads": 8, "ffn_channels": 384,
                                "set_size": 36, "num_blocks": 4, "window": [12, 12, 1],
                                "hybrid_factor": [2, 2, 1], "shift": [6, 6, 0]},
                   "backbone_2d": RES_BEV, "head": _waymo_head(True)},
        # DSVT-V, Waymo: 0.32 x 0.32 x 0.1875 m voxels (468 x 468 x 32), 4 stages of 1 block, sets of 48,
        # windows 12x12x{32,8,2,1}, attention pooling over z by 4, 4, 2.
        "DSVT-V": {"type": "Detector", "class_names": WAYMO_CLASSES, "point_cloud_range": WAYMO_RANGE,
                   "voxel_size": [0.32, 0.32, 0.1875],
                   "vfe": {"type": "DynamicVFE", "num_point_features": 5, "feat_channels": [192, 192]},
                   "backbone": {"type": "DSVT", "channels": 192, "num_heads": 8, "ffn_channels": 384,
                                "set_size": 48, "num_blocks": 1,
                                "window": [[12, 12, 32], [12, 12, 8], [12, 12, 2], [12, 12, 1]],
                                "hybrid_factor": [2, 2, 1], "shift": [6, 6, 0],
                                "downsample_stride": [[1, 1, 4], [1, 1, 4], [1, 1, 2]]},
                   "backbone_2d": RES_BEV, "head": _waymo_head(True)},
        # ScatterFormer (ECCV'24), Waymo, the official backbone: same 3D grid, conv stem, C 128, 4 heads, 2 stages
        # x 3 layers, 12x12 BEV windows, CWI kernel 13, stride-2 conv between the stages, height pooling to BEV
        # stride 2; the ResBackbone neck back to stride 2 (upsample 1, 2, 4).
        "ScatterFormer": {"type": "Detector", "class_names": WAYMO_CLASSES, "point_cloud_range": WAYMO_RANGE,
                          "voxel_size": [0.32, 0.32, 0.1875],
                          "vfe": {"type": "DynamicVFE", "num_point_features": 5, "feat_channels": [32, 64]},
                          "backbone": {"type": "ScatterFormer", "channels": 128, "num_heads": 4,
                                       "num_layers": [3, 3], "window": 12},
                          "backbone_2d": {**RES_BEV, "upsample_strides": [1, 2, 4]}, "head": _waymo_head(True)},
        # SphereFormer-style segmentation (CVPR'23), nuScenes lidarseg: 0.1 m voxels over +-51.2 m.
        "SphereSeg": {"type": "Segmentor", "class_names": NUSC_SEG_CLASSES,
                      "point_cloud_range": [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0], "voxel_size": [0.1, 0.1, 0.1],
                      "vfe": {"type": "DynamicVFE", "num_point_features": 5, "feat_channels": [32]},
                      "backbone": {"type": "SphereSeg", "channels": [32, 64, 128, 256, 256],
                                   "num_heads": [2, 4, 8, 16, 16], "cubic_window": [6, 6, 6],
                                   "radial_window": [2.0, 2.0, 80.0]},
                      "head": {"type": "SegHead"}},
        # DSVT-P, nuScenes: 0.3 m pillars over +-54 m (360 x 360), C 128, FFN 256, sets of 90 in 30x30
        # windows, 4 blocks; 10 classes in 6 tasks with velocity; circle NMS per task.
        "DSVT-P nuScenes": {
            "type": "Detector", "class_names": NUSC_CLASSES, "point_cloud_range": [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0],
            "voxel_size": [0.3, 0.3, 8.0],
            "vfe": {"type": "DynamicPillarVFE", "num_point_features": 5, "feat_channels": [128, 128]},
            "backbone": {"type": "DSVT", "channels": 128, "num_heads": 8, "ffn_channels": 256, "set_size": 90,
                         "num_blocks": 4, "window": [30, 30, 1], "hybrid_factor": [2, 2, 1], "shift": [15, 15, 0]},
            "backbone_2d": RES_BEV,
            "head": {"type": "CenterPointHead", "tasks": [["car"], ["truck", "construction_vehicle"],
                                                          ["bus", "trailer"], ["barrier"], ["motorcycle", "bicycle"],
                                                          ["pedestrian", "traffic_cone"]],
                     "shared_channels": 64, "head_channels": 64, "with_velocity": True, "max_objs": 500,
                     "score_threshold": 0.1, "pre_max": 1000, "post_max": 83, "nms_type": "circle",
                     "circle_radius": [4.0, 12.0, 10.0, 1.0, 0.85, 0.175]}},
    }


def model_sections(configs: Sequence[Path] = (), names: Sequence[str] = ()) -> list[tuple[str, dict]]:
    """(label, model section) pairs: every ``--config`` YAML, then the published settings by name."""
    from pointwin.config import load_config, to_plain

    out = []
    for path in configs:
        cfg = to_plain(load_config(path))
        if "model" not in cfg:
            raise SystemExit(f"{path}: no 'model' section to benchmark")
        path = Path(path)
        out.append((f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem, cfg["model"]))
    table = published_models()
    for name in names:
        if name not in table:
            raise SystemExit(f"--model {name!r}: expected one of {sorted(table)}")
        out.append((name, copy.deepcopy(table[name])))
    return out


# ------------------------------------------------------------------------------------------------
# Inputs


def make_points(clouds: Sequence[np.ndarray], num_features: int, device: torch.device) -> Points:
    """A Points batch with exactly ``num_features`` columns: extra columns dropped, missing ones zero
    (KITTI has no time-lag column; a nuScenes-trained model sees time lag 0 there)."""
    cols = []
    for c in clouds:
        c = c[:, :num_features]
        if c.shape[1] < num_features:
            c = np.concatenate([c, np.zeros((len(c), num_features - c.shape[1]), np.float32)], 1)
        cols.append(torch.from_numpy(np.ascontiguousarray(c)))
    return Points.from_list(cols).to(device)


def synthetic_targets(model: torch.nn.Module, points: Points, seed: int = 0, boxes_per_sample: int = 30) -> Batch:
    """The batch with seeded random labels for the training step: boxes inside the range (detector) or
    per-point classes (segmentor). Targets only shape the loss cost, not the timing of the network."""
    gen = torch.Generator().manual_seed(seed)
    frame_ids = [f"bench{i}" for i in range(points.batch_size)]
    if isinstance(model, Segmentor):
        labels = torch.randint(0, len(model.class_names), (len(points),), generator=gen)
        return Batch(points, frame_ids, point_labels=labels.to(points.device))
    r = model.point_cloud_range
    boxes, labels = [], []
    for _ in range(points.batch_size):
        m = boxes_per_sample
        u = torch.rand(m, 7, generator=gen)
        t = torch.stack([r[0] + (0.1 + 0.8 * u[:, 0]) * (r[3] - r[0]), r[1] + (0.1 + 0.8 * u[:, 1]) * (r[4] - r[1]),
                         torch.full((m,), 0.5 * (r[2] + r[5])), 0.8 + 4 * u[:, 3], 0.6 + 1.5 * u[:, 4],
                         1.0 + u[:, 5], (u[:, 6] - 0.5) * 2 * math.pi], 1)
        if getattr(model.head, "with_velocity", False):
            t = torch.cat([t, torch.zeros(m, 2)], 1)
        boxes.append(Boxes3D(t.to(points.device)))
        labels.append(torch.randint(0, len(model.class_names), (m,), generator=gen).to(points.device))
    return Batch(points, frame_ids, boxes=boxes, labels=labels)


# ------------------------------------------------------------------------------------------------
# Stage timing


def _holds_partition(obj: Any) -> bool:
    if isinstance(obj, Partition):
        return True
    if isinstance(obj, (tuple, list)):
        return any(_holds_partition(o) for o in obj)
    if isinstance(obj, Mapping):
        return any(_holds_partition(o) for o in obj.values())
    return False


@contextlib.contextmanager
def timed_cache_builds(clock: common.Clock) -> Iterator[list[tuple[Any, Any, bool]]]:
    """Record (start, end, holds_partition) of every outermost first-time ``SparseVoxels.cached`` build.

    The models cache their partitions (and kernel maps, position encodings) on the voxels; wrapping the
    cache from the outside times partition building inside any backbone without touching the model code.
    """
    original = SparseVoxels.cached
    spans: list[tuple[Any, Any, bool]] = []
    depth = [0]

    def cached(self, key, build):
        if key in self.cache or depth[0]:
            return original(self, key, build)
        depth[0] += 1
        start = clock.mark()
        try:
            result = original(self, key, build)
        finally:
            depth[0] -= 1
        spans.append((start, clock.mark(), _holds_partition(result)))
        return result

    SparseVoxels.cached = cached
    try:
        yield spans
    finally:
        SparseVoxels.cached = original


def staged_forward(model: torch.nn.Module, batch: Batch, clock: common.Clock) -> dict[str, float]:
    """One inference pass cut into :data:`STAGES`; milliseconds per stage (plus ``"total"``)."""
    points = batch.points
    with torch.no_grad(), timed_cache_builds(clock) as spans:
        t0 = clock.mark()
        vox = model.vfe.voxelize(points)
        t1 = clock.mark()
        voxels = model.vfe(points, vox)
        t2 = clock.mark()
        voxels = model.backbone(voxels)
        t3 = clock.mark()
        if isinstance(model, Detector):
            bev = model.backbone_2d(model.scatter(voxels))
            t4 = clock.mark()
            out = model.head(bev)
            t5 = clock.mark()
            model.head.predict(out)
        else:
            t4 = t3  # no BEV stage in a segmentor
            logits = model.head(voxels, vox.point_voxel)
            t5 = clock.mark()
            torch.where(vox.kept, logits.argmax(1), torch.full_like(vox.kept, -1, dtype=torch.long))
        t6 = clock.mark()
    parts = sum(clock.ms(a, b) for a, b, is_part in spans if is_part)
    ms = {"voxelize": clock.ms(t0, t1), "VFE": clock.ms(t1, t2), "partitions": parts,
          "3D backbone": clock.ms(t2, t3) - parts, "BEV": clock.ms(t3, t4) if t4 is not t3 else float("nan"),
          "head": clock.ms(t4, t5), "decode+NMS": clock.ms(t5, t6)}
    ms["total"] = clock.ms(t0, t6)
    return ms


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and dtype == torch.bfloat16:  # oneDNN bf16 (fast on CPUs with AVX512-BF16 / AMX)
        return torch.autocast("cpu", dtype=dtype)
    return contextlib.nullcontext()


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile the 3D backbone (dynamic shapes: the voxel count changes per frame), the 2D backbone and
    the head convolutions; the sparse bookkeeping stays eager where dynamo graph-breaks."""
    model.backbone = torch.compile(model.backbone, dynamic=True)
    if isinstance(model, Detector):
        model.backbone_2d = torch.compile(model.backbone_2d)
        model.head.shared_conv = torch.compile(model.head.shared_conv)
        for i, h in enumerate(model.head.heads):
            model.head.heads[i] = torch.compile(h)
    return model


@dataclass
class Result:
    """One (model, input, precision, compile) measurement."""

    model: str
    input: str
    precision: str
    compiled: bool
    points: int
    voxels: int
    params_m: float
    stages: dict[str, float] = field(default_factory=dict)
    predict_ms: float = float("nan")
    predict_cpu_ms: float = float("nan")
    predict_mib: float = float("nan")
    train_ms: float = float("nan")
    train_mib: float = float("nan")
    note: str = ""
    load: str = ""
    task: str = "detection"


def _measure(model: torch.nn.Module, res: Result, points: Points, device: torch.device, warmup: int,
             repeats: int, dtype: torch.dtype | None, train: bool, seed: int) -> None:
    """Fill ``res`` with stage medians, predict time / memory and training-step time / memory."""
    batch = Batch(points, [f"bench{i}" for i in range(points.batch_size)])
    clock = common.Clock(device)
    with _autocast(device, dtype):
        for _ in range(warmup):
            staged_forward(model, batch, clock)
        with common.PeakMemory(device) as mem:
            runs = [staged_forward(model, batch, clock) for _ in range(repeats)]
            cpu0 = time.process_time()
            res.predict_ms = common.median(common.time_ms(lambda: model.predict(batch), device, 0, repeats))
            res.predict_cpu_ms = (time.process_time() - cpu0) * 1e3 / repeats
        res.stages = {k: common.median([r[k] for r in runs]) for k in (*STAGES, "total")}
        res.predict_mib = mem.mib
    if train:
        train_batch = synthetic_targets(model, points, seed)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda") if (device.type == "cuda" and dtype == torch.float16) else None

        def step():
            model.train()
            opt.zero_grad(set_to_none=True)
            with _autocast(device, dtype):
                loss = model.loss(train_batch)["loss"]
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()

        # the first step also allocates the optimizer state: warm up once (with --warmup > 0), then time
        if warmup > 0:
            step()
        with common.PeakMemory(device) as mem:
            res.train_ms = common.median(common.time_ms(step, device, 0, max(1, repeats)))
        res.train_mib = mem.mib
        model.eval()


def bench_model(label: str, section: Mapping, input_label: str, clouds: Sequence[np.ndarray],
                device: torch.device, warmup: int, repeats: int, dtype: torch.dtype | None = None,
                compiled: bool = False, train: bool = True, seed: int = 0) -> Result:
    """Per-stage forward, whole ``predict``, training step and peak memories of one model on one input."""
    torch.manual_seed(seed)
    model = build_model(copy.deepcopy(dict(section))).to(device).eval()
    points = make_points(clouds, model.vfe.num_point_features, device)
    with torch.no_grad():
        n_vox = model.vfe.voxelize(points).num_voxels
    params = sum(p.numel() for p in model.parameters()) / 1e6
    prec = {None: "fp32", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    res = Result(label, input_label, prec, compiled, len(points), int(n_vox), params, load=common.load_average(),
                 task="segmentation" if isinstance(model, Segmentor) else "detection")
    if compiled:
        try:
            model = compile_model(model)
        except Exception as exc:  # noqa: BLE001 - a compile failure is a result to report, not a crash
            res.note = f"compile failed: {type(exc).__name__}"
            return res
    try:
        _measure(model, res, points, device, warmup, repeats, dtype, train, seed)
    except Exception as exc:
        if not compiled:
            raise
        # torch.compile errors surface at the first call; report them in the table instead of stopping
        res.note = f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    return res


# ------------------------------------------------------------------------------------------------
# Report


def stage_table(results: Sequence[Result]) -> str:
    header = ["model", "input", "prec", "compile", "voxels", "params M", *(f"{s} ms" for s in STAGES),
              "stage sum ms", "predict ms", "predict CPU ms", "predict peak MiB", "train step ms", "train peak MiB",
              "load avg"]
    rows = []
    for r in results:
        if r.note:
            rows.append([r.model, r.input, r.precision, "on" if r.compiled else "off", f"{r.voxels:,}",
                         f"{r.params_m:.2f}", *(["-"] * (len(STAGES) + 7))])
            rows[-1][-2] = r.note
            rows[-1][-1] = r.load
            continue
        rows.append([r.model, r.input, r.precision, "on" if r.compiled else "off", f"{r.voxels:,}",
                     f"{r.params_m:.2f}", *(common.fmt_ms(r.stages.get(s, float('nan'))) for s in STAGES),
                     common.fmt_ms(r.stages.get("total", float("nan"))), common.fmt_ms(r.predict_ms),
                     common.fmt_ms(r.predict_cpu_ms), f"{r.predict_mib:,.0f}", common.fmt_ms(r.train_ms),
                     "n/a" if r.train_mib != r.train_mib else f"{r.train_mib:,.0f}", r.load])
    return common.markdown_table(header, rows, "llllrr" + "r" * (len(STAGES) + 6) + "l")


def section_text(results: Sequence[Result], device: torch.device, header: str, warmup: int, repeats: int,
                 quick: bool) -> str:
    gpu_note = ("" if device.type == "cuda" else
                "\n\nNo CUDA device was available for this run, so only CPU numbers are recorded. The CUDA path "
                "(CUDA-event stage timers, bf16/fp16 autocast, torch.compile off/on, `max_memory_allocated`) runs "
                "with `pointwin bench --device cuda` (or `python benchmarks/e2e.py --device cuda --write`).")
    return (
        f"## End-to-end per-stage latency (`benchmarks/e2e.py`{', --quick' if quick else ''})\n\n"
        f"{header} Median of {repeats} runs after {warmup} warm-up run(s); stage times come from one instrumented "
        "pass (stage sum); `predict` is the uninstrumented whole forward (`model.predict`); `predict CPU` is the "
        "process CPU time of one predict call summed over threads (on a shared, overloaded machine wall time "
        "includes waiting for a core; CPU time does not); `load avg` is the 1/5/15-minute load when the row was "
        "measured. Partitions = first-time "
        "builds of cached window partitions inside the 3D backbone; the 3D backbone column excludes them. The "
        "training step is forward + loss + backward + AdamW on seeded synthetic targets (30 random boxes per "
        "sample, or random per-point classes). Peak memory: extra memory at the high-water mark over the timed "
        "calls (CUDA: max_memory_allocated; CPU: malloc in-use bytes sampled every 2 ms). "
        "Models are untrained (random weights), so decode+NMS "
        "sees many low-score candidates. Inputs: the real nuScenes 10-sweep aggregate (271,156 points, "
        "x y z intensity time-lag) and the three full KITTI scans as one batch (time-lag column zero)."
        + gpu_note + "\n\n" + stage_table(results) + target_lines(results, device))


def target_lines(results: Sequence[Result], device: torch.device) -> str:
    """Issue targets checked against the measured rows (nuScenes 10-sweep frame, batch 1)."""
    rows = [r for r in results if r.input.startswith("nuScenes 10-sweep") and r.task == "detection"
            and not r.note and r.predict_ms == r.predict_ms]
    # the target is for nuScenes detectors; Waymo settings on the same cloud (a 468 x 468 BEV grid instead of
    # 360 x 360) are listed in the table for comparison only
    nusc = [r for r in rows if "nuscenes" in r.model.lower()]
    rows = nusc or rows
    if not rows:
        return ""
    if device.type == "cuda":
        limit, what = 15.0, "whole detector under 15 ms (H100, batch 1)"
    else:
        limit, what = 3000.0, "whole-detector forward well under 3 s on the 2-core CPU"
    items = []
    for r in rows:
        verdict = "met" if r.predict_ms < limit else "NOT met"
        items.append(f"{r.model} ({r.precision}{', compiled' if r.compiled else ''}): {r.predict_ms / 1e3:.2f} s wall, "
                     f"{r.predict_cpu_ms / 1e3:.2f} s CPU time -> {verdict}")
    return f"\n\nTarget ({what}): " + "; ".join(items) + "."


def run(device: torch.device, sections: Sequence[tuple[str, dict]], inputs: Sequence[tuple[str, list]],
        warmup: int, repeats: int, precisions: Sequence[torch.dtype | None], compile_modes: Sequence[bool],
        train: bool = True, log=print, on_result=None) -> list[Result]:
    results = []
    for label, section in sections:
        for input_label, clouds in inputs:
            for dtype in precisions:
                for compiled in compile_modes:
                    r = bench_model(label, section, input_label, clouds, device, warmup, repeats, dtype,
                                    compiled, train)
                    results.append(r)
                    if on_result is not None:
                        on_result(r)
                    log(f"[e2e] {label} | {input_label} | {r.precision} compile={compiled} | " +
                        ", ".join(f"{k} {v:.1f}" for k, v in r.stages.items()) +
                        f" | predict {r.predict_ms:.1f} ms | train {r.train_ms:.1f} ms {r.note}")
    return results


def merge_results(path: Path, new: Sequence[Result]) -> list[Result]:
    """Results stored in ``path`` (JSON) updated with ``new`` (same model/input/precision/compile replaced)."""
    import dataclasses
    import json
    import os

    old = [Result(**r) for r in json.loads(path.read_text())] if path.exists() else []
    key = lambda r: (r.model, r.input, r.precision, r.compiled)  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([dataclasses.asdict(r) for r in merged.values()], indent=1))
    os.replace(tmp, path)
    return list(merged.values())


def default_precisions(device: torch.device, dtype: str | None) -> list[torch.dtype | None]:
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype is not None:
        return [table[dtype]]
    return [torch.float32, torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.float32]


#: backbone types of the issue's table; their configs under configs/waymo and configs/nuscenes are the default
BACKBONE_TYPES = ("FlatFormer", "DSVT", "ScatterFormer", "SphereSeg")


def default_configs() -> list[Path]:
    """The Waymo / nuScenes configs in ``configs/`` whose 3D backbone is one of :data:`BACKBONE_TYPES`."""
    from pointwin.config import load_config, to_plain

    out = []
    for folder in ("waymo", "nuscenes"):
        for path in sorted((common.ROOT / "configs" / folder).glob("*.yaml")):
            try:
                model = to_plain(load_config(path)).get("model", {})
            except Exception:  # noqa: BLE001 - a broken config is skipped here and fails in its own tests
                continue
            if model.get("backbone", {}).get("type") in BACKBONE_TYPES:
                out.append(path)
    return out


DEFAULT_MODELS = ("FlatFormer", "DSVT-P", "DSVT-V", "ScatterFormer", "SphereSeg", "DSVT-P nuScenes")
#: --quick: the small synthetic-dataset configs on the real cloud (a < 1 minute smoke version of the table)
QUICK_CONFIGS = ("configs/synthetic/flatformer_tiny.yaml",)


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--config", type=Path, action="append", default=[], help="model config YAML (repeatable)")
    p.add_argument("--model", action="append", default=None, help=f"published setting: {DEFAULT_MODELS}")
    p.add_argument("--input", type=Path, action="append", default=[],
                   help="input .bin, repeatable: one batch (default: the real samples)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None)
    p.add_argument("--compile", action="store_true", help="only compile on (CUDA)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--write", action="store_true", help="replace the e2e section of BENCHMARKS.md")
    p.add_argument("--results", type=Path, default=None,
                   help="JSON file: merge this run's results into it and render the table from all of them")
    p.add_argument("--render-only", action="store_true", help="only render --results into the section")
    p.add_argument("--header", default=None, help="with --render-only: the environment line of the runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = common.resolve_device(args.device)
    configs = list(args.config)
    if args.quick and not configs and args.model is None:
        configs = [common.ROOT / c for c in QUICK_CONFIGS]
    if not configs and args.model is None:
        configs = default_configs()  # the repository's Waymo / nuScenes configs at the published settings
    names = args.model if args.model is not None else ([] if configs else list(DEFAULT_MODELS))
    sections = model_sections(configs, names)
    inputs = ([(common.input_label(args.input), [common.load_cloud(i) for i in args.input])] if args.input
              else common.real_inputs(args.quick))
    if args.render_only:
        if args.results is None or not args.results.exists():
            raise SystemExit("--render-only needs an existing --results JSON file")
        text = section_text(merge_results(args.results, []), device, args.header or common.env_header(device),
                            args.warmup, args.repeats, args.quick)
        print(text)
        if args.write:
            common.write_section(BEGIN, END, text)
        return text
    if not inputs:
        raise SystemExit(f"no benchmark inputs: pass --input or provide {common.NUSCENES_SWEEPS}")
    compile_modes = [True] if args.compile else ([False, True] if device.type == "cuda" and not args.quick
                                                 else [False])
    header = common.env_header(device)
    save = None if args.results is None else (lambda r: merge_results(args.results, [r]))
    results = run(device, sections, inputs, args.warmup, args.repeats, default_precisions(device, args.dtype),
                  compile_modes, not args.no_train, on_result=save)
    if args.results is not None:
        results = merge_results(args.results, [])
    text = section_text(results, device, header, args.warmup, args.repeats, args.quick)
    print(text)
    if args.write:
        common.write_section(BEGIN, END, text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
