"""One-call inference: a checkpoint (or a config) in, boxes or per-point labels out.

Example::

    import pointwin

    detector = pointwin.load_detector("work_dirs/demo/latest.pth")   # the config is inside the checkpoint
    result = detector.predict("scan.bin")                            # or an (N, C) numpy array / tensor
    for box, score, name in zip(result.boxes, result.scores, result.label_names):
        print(name, round(float(score), 2), box[:3])

Points are given as the model's dataset gives them: float32 (N, C) with x, y, z first and at least the
config's ``model.vfe.num_point_features`` columns (extra columns are dropped). A ``.bin`` file is read as raw
float32 with ``dims`` columns (default: that number), a ``.npy`` file as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PointsLike = np.ndarray | torch.Tensor | str | os.PathLike


@dataclass
class DetectionResult:
    """Detections of one point cloud, as numpy arrays.

    Attributes:
        boxes: float32 (N, 7 or 9) ``x, y, z, dx, dy, dz, yaw[, vx, vy]`` in the LiDAR frame, gravity-centred.
        scores: float32 (N,), descending.
        labels: int64 (N,) indices into ``class_names``.
        class_names: the model's classes.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def label_names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels.tolist()]

    def above(self, score: float) -> DetectionResult:
        """The detections scoring at least ``score``."""
        keep = self.scores >= score
        return DetectionResult(self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"class_names": [...], "objects": [{"label", "score", "box"}, ...]}``."""
        return {"class_names": list(self.class_names),
                "box_format": ["x", "y", "z", "dx", "dy", "dz", "yaw", "vx", "vy"][: self.boxes.shape[1]],
                "objects": [{"label": name, "score": float(s), "box": [float(v) for v in b]}
                            for b, s, name in zip(self.boxes, self.scores, self.label_names, strict=True)]}


@dataclass
class SegmentationResult:
    """Per-point classes of one point cloud: ``labels`` int64 (N,) into ``class_names``, -1 outside the grid."""

    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def to_json(self) -> dict[str, Any]:
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        return {"class_names": list(self.class_names), "num_points": int(len(self.labels)),
                "outside_grid": int((self.labels < 0).sum()),
                "counts": {n: int(c) for n, c in zip(self.class_names, counts, strict=True)}}


class Predictor:
    """A model ready for inference (eval mode, on one device), with its config.

    Build it with :func:`load_detector` / :func:`load_segmentor`; call :meth:`predict`.
    """

    def __init__(self, model: torch.nn.Module, config: dict, device: torch.device, source: str) -> None:
        self.model = model.eval().to(device)
        self.config = config
        self.device = device
        self.source = source
        self.class_names = list(model.class_names)
        self.num_point_features = int((config.get("model", {}).get("vfe") or {}).get("num_point_features", 4))

    @property
    def task(self) -> str:
        from .models import Segmentor

        return "segmentation" if isinstance(self.model, Segmentor) else "detection"

    def read_points(self, points: PointsLike, dims: int | None = None) -> np.ndarray:
        """(N, C) float32 points from an array, a tensor or a ``.bin`` / ``.npy`` path (``dims`` columns
        for ``.bin``, default the model's point width); checked against the model's point width."""
        return self.read_points_for(points, self.num_point_features, dims)

    @staticmethod
    def read_points_for(points: PointsLike, width: int, dims: int | None = None) -> np.ndarray:
        """:meth:`read_points` for a model whose point width is ``width``."""
        if isinstance(points, (str, os.PathLike)):
            from .datasets.base import load_points

            path = Path(points)
            array = load_points(path, dims or width if path.suffix == ".bin" else None)
            where = str(path)
        elif isinstance(points, torch.Tensor):
            array, where = points.detach().cpu().float().numpy(), "points tensor"
        elif isinstance(points, np.ndarray):
            array, where = points, "points array"
        else:
            raise TypeError(f"predict: points must be a numpy array, a torch tensor or a path to a .bin/.npy "
                            f"file, got {type(points).__name__}")
        if array.ndim != 2 or array.shape[1] < width:
            raise ValueError(f"{where}: expected (N, >= {width}) points (x, y, z first; the config's "
                             f"model.vfe.num_point_features is {width}), got shape {tuple(array.shape)}")
        return np.ascontiguousarray(array[:, :width], dtype=np.float32)

    @torch.no_grad()
    def predict(self, points: PointsLike | Sequence[PointsLike], dims: int | None = None):
        """Predictions for one cloud (a :class:`DetectionResult` / :class:`SegmentationResult`) or, given a
        list, one per cloud (run as one batch)."""
        from .structures import Batch, Points

        single = not isinstance(points, (list, tuple))
        clouds = [self.read_points(p, dims) for p in ([points] if single else points)]
        batch = Batch(Points.from_list([torch.from_numpy(c) for c in clouds]).to(self.device),
                      [f"frame{i}" for i in range(len(clouds))])
        out = self.model.predict(batch)
        if self.task == "segmentation":
            results = [SegmentationResult(p.cpu().numpy().astype(np.int64), self.class_names) for p in out]
        else:
            results = []
            for det in out:
                order = det.scores.argsort(descending=True)
                results.append(DetectionResult(det.boxes.tensor[order].float().cpu().numpy(),
                                               det.scores[order].float().cpu().numpy(),
                                               det.labels[order].cpu().numpy().astype(np.int64), self.class_names))
        return results[0] if single else results

    __call__ = predict


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_predictor(source: str | os.PathLike, device: str | torch.device = "auto",
                   config: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Predictor:
    """A :class:`Predictor` from a pointwin checkpoint (its embedded config, or ``config``) or from a config
    YAML alone (untrained weights: for trying the pipeline)."""
    import yaml

    from .config import ConfigError, config_from_dict, load_config
    from .engine.builders import build_model, import_modules
    from .engine.checkpoint import load_checkpoint_file, load_model_weights

    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        if config is not None:
            raise ValueError("load: give either a config file or a checkpoint with config=..., not two configs")
        cfg, state = load_config(path, list(overrides)), None
    else:
        state = load_checkpoint_file(path)
        if config is not None:
            cfg = load_config(config, list(overrides))
        elif state.get("config"):
            cfg = config_from_dict(yaml.safe_load(state["config"]), list(overrides))
        else:
            raise ConfigError(f"{path} carries no config (a plain state dict, e.g. converted by hand): pass "
                              "config='configs/....yaml'")
    if "model" not in cfg:
        raise ConfigError(f"the config of {path} has no 'model' section")
    import_modules(cfg)
    model = build_model(cfg["model"], "model")
    if state is not None:
        load_model_weights(model, state, path)
    return Predictor(model, cfg, _device(device), str(path))


def _load_for(task: str, source, device, config, overrides) -> Predictor:
    predictor = load_predictor(source, device, config, overrides)
    if predictor.task != task:
        other = "load_segmentor" if task == "detection" else "load_detector"
        raise ValueError(f"{source} holds a {type(predictor.model).__name__}, not a "
                         f"{'detector' if task == 'detection' else 'segmentor'}: use {other}")
    return predictor


def load_detector(source: str | os.PathLike, device: str | torch.device = "auto",
                  config: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Predictor:
    """A detector ready for :meth:`Predictor.predict` (see :func:`load_predictor`)."""
    return _load_for("detection", source, device, config, overrides)


def load_segmentor(source: str | os.PathLike, device: str | torch.device = "auto",
                   config: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Predictor:
    """A segmentor ready for :meth:`Predictor.predict` (see :func:`load_predictor`)."""
    return _load_for("segmentation", source, device, config, overrides)


__all__ = ["DetectionResult", "Predictor", "SegmentationResult", "load_detector", "load_predictor", "load_segmentor"]
