"""Deployment: ONNX export of the whole detector, onnxruntime / TensorRT runtimes, checkpoint converters.

``pointwin export CONFIG --ckpt C --format onnx|tensorrt --out DIR [--profile-from SPLIT]`` calls
:func:`export_main`. Python API: :func:`~pointwin.export.onnx.export_onnx`,
:func:`~pointwin.export.onnx.parity_check`, :class:`~pointwin.export.runtime.OnnxDetector`,
:mod:`pointwin.export.tensorrt`, :mod:`pointwin.export.converters`. Heavy imports (onnx, onnxruntime,
tensorrt) happen inside the functions that need them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


def _err(msg: str) -> None:
    print(f"pointwin export: error: {msg}", file=sys.stderr)


def _dataset_points(cfg: Any, split: str, max_frames: int | None = None) -> Iterator:
    """Points (batch of one) of the frames of ``data.<split>``."""
    import torch

    from ..engine.builders import build_dataset
    from ..structures import Points

    data = cfg.get("data") or {}
    if split not in data:
        raise KeyError(f"the config has no data.{split} section (available: {sorted(data)})")
    dataset = build_dataset(data[split], f"data.{split}")
    n = len(dataset) if max_frames is None else min(len(dataset), max_frames)
    for i in range(n):
        sample = dataset[i]
        pts = torch.as_tensor(sample.points, dtype=torch.float32)
        yield Points(pts, torch.zeros(len(pts), dtype=torch.long), 1, tuple(sample.channels))


def export_main(args: Any) -> int:
    """Entry point of ``pointwin export`` (argparse namespace: config, ckpt, format, out, profile_from,
    overrides; optional profile_frames). Returns the process exit code."""
    from ..config import load_config
    from ..engine.checkpoint import load_checkpoint_file, load_model_weights
    from ..models import build_model

    fmt = getattr(args, "format", "onnx")
    out = Path(args.out)
    profile_from = getattr(args, "profile_from", None)
    if fmt == "tensorrt":
        from .tensorrt import TensorRTUnavailable, import_tensorrt

        try:
            import_tensorrt()
        except TensorRTUnavailable as e:
            _err(str(e))
            return EXIT_UNAVAILABLE
        if not profile_from:
            _err("--format tensorrt needs --profile-from SPLIT (a data.<split> of the config) to size the "
                 "dynamic-shape profiles")
            return EXIT_USAGE
    cfg = load_config(args.config, getattr(args, "overrides", []) or [])
    model = build_model(cfg["model"])
    load_model_weights(model, load_checkpoint_file(args.ckpt), args.ckpt)
    model.eval()

    from .onnx import ParityError, export_onnx, parity_check

    split = profile_from or ("val" if "val" in (cfg.get("data") or {}) else "train")
    try:
        example = next(_dataset_points(cfg, split, 1))
    except (KeyError, StopIteration) as e:
        _err(f"no example frame for tracing from data.{split}: {e}")
        return EXIT_USAGE
    print(f"exporting {args.config} -> {out} (example frame from data.{split})")
    result = export_onnx(model, example, out, model_cfg=cfg["model"])
    print(f"wrote {result.backbone}, {result.head}, {result.meta}")
    from .tensorrt_compat import SOURCE, check_export

    problems = check_export([result.backbone, result.head])
    if problems:
        print(f"TensorRT compatibility ({SOURCE}): {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        if fmt == "tensorrt":
            _err("the graphs use operators TensorRT cannot parse (listed above)")
            return EXIT_FAIL
    else:
        print(f"TensorRT compatibility: every node passes ({SOURCE})")
    print("parity (onnxruntime vs PyTorch) on the example frame:")
    try:
        parity_check(model, out, example)
    except ParityError as e:
        _err(str(e))
        return EXIT_FAIL
    if profile_from:
        from .tensorrt import collect_profile, save_profile

        frames = getattr(args, "profile_frames", None) or 200
        profile = collect_profile(model, _dataset_points(cfg, profile_from, frames))
        path = save_profile(profile, out)
        print(f"wrote {path} ({profile['frames']} frames of data.{profile_from}): "
              + ", ".join(f"{k} {v['min']}/{v['opt']}/{v['max']}" for k, v in profile["dims"].items()))
        from .runtime import load_meta
        from .tensorrt import input_shapes
        from .tensorrt_compat import check_profile

        bad = check_profile({"backbone": result.backbone, "head": result.head}, input_shapes(load_meta(out), profile))
        for problem in bad:
            print(f"  profile: {problem}")
        if bad:
            _err("the shape profile does not fit the graphs (listed above)")
            return EXIT_FAIL
        if fmt == "tensorrt":
            from .tensorrt import build_engines

            plans = build_engines(out, profile, fp16=True)
            print("wrote " + ", ".join(str(p) for p in plans.values()))
    return 0


def __getattr__(name: str) -> Any:
    lazy = {"export_onnx": "onnx", "parity_check": "onnx", "OnnxDetector": "runtime", "build_keymap": "converters",
            "load_reference_checkpoint": "converters"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OnnxDetector", "build_keymap", "export_main", "export_onnx", "load_reference_checkpoint", "parity_check"]
