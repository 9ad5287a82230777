"""TensorRT engines from the exported ONNX graphs, with shape profiles taken from dataset statistics.

TensorRT builds one kernel plan per optimization profile; a profile whose ``opt`` shape is far from the
real inputs (or whose ``max`` is too small, forcing a failure, or far too large, wasting memory and
tactics) is what makes naive engines slower than PyTorch. Here the dynamic dimensions (points P, voxels
N, groups G_i of every partition) are measured on real frames by :func:`collect_profile` and written to
``profile.json``::

    min = smallest legal size (2 points / voxels, 1 group) so that a near-empty frame still runs,
          or the smallest value seen with ``min_from_data=True``;
    opt = median over the frames (TensorRT picks its tactics for this shape);
    max = ceil(largest value seen * headroom).

:func:`build_engines` then builds ``backbone.plan`` and ``head.plan`` (fp16 by default) with one profile
each. Requires the ``tensorrt`` Python package (TensorRT >= 10) and an NVIDIA GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..fileio import write_bytes, write_json
from ..structures import Points
from .modules import PreprocessedFrame, Preprocessor

PROFILE_JSON = "profile.json"
INSTALL_HINT = ("TensorRT is not installed: `pip install tensorrt` (NVIDIA TensorRT >= 10, the wheel matching your "
                "CUDA major version, e.g. `pip install tensorrt-cu12`) on a machine with an NVIDIA GPU and driver; "
                "then rerun `pointwin export ... --format tensorrt --profile-from SPLIT`")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU) is missing; the message says what to install."""


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` with install instructions."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(INSTALL_HINT) from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old (int64/bool I/O needs >= 10). "
                                  + INSTALL_HINT)
    return trt


def frame_dims(frame: PreprocessedFrame) -> dict[str, int]:
    """Dynamic dimensions of one preprocessed frame: num_points, num_voxels (per stage), p{i}_groups."""
    dims = {"num_points": int(frame.point_feats.shape[0])}
    for s, n in enumerate(frame.stage_voxel_counts()):
        dims["num_voxels" if s == 0 else f"num_voxels_s{s}"] = n
    for name, g in frame.group_counts().items():
        dims[name.replace("_index", "_groups")] = g
    return dims


def summarize(samples: list[dict[str, int]], headroom: float = 1.2, min_from_data: bool = False
              ) -> dict[str, dict[str, int]]:
    """min / opt (median, rounded down) / max (largest * headroom, rounded up) per dimension."""
    if not samples:
        raise ValueError("profile: no frames measured")
    out = {}
    for key in samples[0]:
        v = np.array([s[key] for s in samples], dtype=np.int64)
        lo, hi = int(v.min()), int(v.max())
        legal = 1 if key.endswith("_groups") else 2
        low = max(legal, lo) if min_from_data else legal
        out[key] = {"min": low, "opt": int(np.floor(np.median(v))), "max": max(hi, int(math.ceil(hi * headroom)))}
        out[key]["opt"] = min(max(out[key]["opt"], out[key]["min"]), out[key]["max"])
    return out


def collect_profile(detector: torch.nn.Module, clouds: Iterable[Points], headroom: float = 1.2,
                    max_frames: int | None = None, min_from_data: bool = False) -> dict:
    """Measure the dynamic dims over ``clouds`` (one Points batch each) -> profile dict (see module doc)."""
    pre = Preprocessor(detector)
    samples = []
    for i, points in enumerate(clouds):
        if max_frames is not None and i >= max_frames:
            break
        samples.append(frame_dims(pre(points)))
    return {"frames": len(samples), "headroom": headroom, "dims": summarize(samples, headroom, min_from_data)}


def save_profile(profile: dict, out_dir: str | Path) -> Path:
    return write_json(Path(out_dir) / PROFILE_JSON, profile, indent=2)


def input_shapes(meta: dict, profile: dict) -> dict[str, dict[str, tuple[tuple[int, ...], ...]]]:
    """Per graph, per input: (min, opt, max) shapes from the profile's dims and deploy.json."""
    dims = profile["dims"]

    def shape(which: str, *rest) -> tuple[tuple[int, ...], ...]:
        d = dims[which]
        return tuple((d[k], *rest) for k in ("min", "opt", "max"))

    def voxels(stage: int) -> str:
        return "num_voxels" if stage == 0 else f"num_voxels_s{stage}"

    graph1: dict[str, tuple] = {}
    names = meta["backbone"]["inputs"]
    feat_dim = int(meta["point_feat_dim"])
    graph1["point_feats"] = shape("num_points", feat_dim)
    graph1["point_voxel"] = shape("num_points")
    last = 0
    for i, e in enumerate(meta["cache_entries"]):
        stage = int(e.get("stage", 0))
        if e["kind"] == "partition":
            s = int(e["size"])
            graph1[f"p{i}_index"] = shape(f"p{i}_groups", s)
            graph1[f"p{i}_key_pad"] = shape(f"p{i}_groups", s)
            graph1[f"p{i}_owner"] = shape(voxels(stage))
        elif e["kind"] == "pooling":
            graph1[f"q{i}_parent"] = shape(voxels(stage))
            graph1[f"q{i}_inner"] = shape(voxels(stage))
            graph1[f"q{i}_coords"] = shape(voxels(stage + 1), 4)
            last = max(last, stage + 1)
        else:
            graph1[f"t{i}_value"] = shape(voxels(stage), int(e["size"]))
    missing = [n for n in names if n not in graph1]
    if missing:
        raise ValueError(f"profile: no shape rule for backbone inputs {missing}")
    graph2 = {"voxel_feats": shape(voxels(last), int(meta["voxel_feat_dim"])), "voxel_coords": shape(voxels(last), 4)}
    return {"backbone": graph1, "head": graph2}


def build_engine(onnx_path: str | Path, plan_path: str | Path, shapes: dict[str, tuple], fp16: bool = True,
                 workspace_gb: float = 4.0) -> Path:
    """Parse ``onnx_path``, add one optimization profile from ``shapes``, build and write the plan."""
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT engines need an NVIDIA GPU; torch.cuda.is_available() is False")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise ValueError(f"TensorRT: no profile shape for input {name!r} of {onnx_path}")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return write_bytes(plan_path, bytes(plan))


def build_engines(export_dir: str | Path, profile: dict, fp16: bool = True) -> dict[str, Path]:
    """backbone.plan and head.plan next to the ONNX graphs of ``export_dir``."""
    from .runtime import load_meta

    d = Path(export_dir)
    meta = load_meta(d)
    shapes = input_shapes(meta, profile)
    return {g: build_engine(d / meta[g]["file"], d / f"{g}.plan", shapes[g], fp16) for g in ("backbone", "head")}


class TensorRTGraph:
    """Run one serialized engine on CUDA torch tensors (TensorRT 10 named-tensor API)."""

    def __init__(self, plan_path: str | Path) -> None:
        trt = import_tensorrt()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _dtype(self, name: str) -> torch.dtype:
        trt = self.trt
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                 trt.int64: torch.int64, trt.bool: torch.bool}
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = []
        for name in self.inputs:
            t = feed[name].cuda().to(self._dtype(name)).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, out[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out


class TensorRTDetector:
    """The four deployment steps with the TensorRT engines of an export folder (see :mod:`.runtime`):
    pure-torch pre-processing on the GPU, ``backbone.plan``, ``head.plan``, pure-torch post-processing.

    Args:
        export_dir: folder with deploy.json and the plans written by :func:`build_engines`.
        detector: a detector of the same config for the pre/post settings (default: rebuilt from deploy.json).
    """

    def __init__(self, export_dir: str | Path, detector: torch.nn.Module | None = None) -> None:
        from .modules import Postprocessor
        from .runtime import load_meta

        d = Path(export_dir)
        self.meta = load_meta(d)
        if detector is None:
            from ..models import build_model

            detector = build_model(self.meta["model"])
        self.detector = detector.eval().cuda()
        self.preprocess = Preprocessor(self.detector)
        self.postprocess = Postprocessor(self.detector.head)
        self.backbone = TensorRTGraph(d / "backbone.plan")
        self.head = TensorRTGraph(d / "head.plan")

    @torch.no_grad()
    def run_graphs(self, points: Points) -> tuple[PreprocessedFrame, torch.Tensor, list[torch.Tensor]]:
        frame = self.preprocess(points.to("cuda"))
        feed = dict(zip(self.meta["backbone"]["inputs"], frame.backbone_inputs(), strict=True))
        voxel = self.backbone(feed)["voxel_feats"].float()
        maps = self.head({"voxel_feats": voxel, "voxel_coords": frame.coords.long()})
        return frame, voxel, [maps[n].float() for n in self.meta["head"]["outputs"]]

    def __call__(self, points: Points):
        return self.postprocess(self.run_graphs(points)[2])


__all__ = ["INSTALL_HINT", "PROFILE_JSON", "TensorRTDetector", "TensorRTGraph", "TensorRTUnavailable", "build_engine",
           "build_engines", "collect_profile", "frame_dims", "import_tensorrt", "input_shapes", "save_profile",
           "summarize"]
