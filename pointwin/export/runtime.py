"""Run an exported detector end to end: pure-torch pre-processing -> onnxruntime graphs -> post-processing.

::

    runtime = OnnxDetector("export_dir")            # reads deploy.json, backbone.onnx, head.onnx
    detections = runtime(points)                    # list of Detections, one per sample
    result = runtime.predict("scan.bin")            # numpy in / out, as pointwin.load_detector's predict

Steps of one call (the same steps a TensorRT / C++ deployment has to reproduce):

1. ``Preprocessor``: dynamic voxelization (exact float64 cell index, half-open range), point decoration
   (offsets to the voxel point mean and voxel centre), the backbone's partitions (index (G, S), key_pad
   (G, S), owner (N,) per partition) and position inputs, all from integer coords; no learned weights.
2. ``backbone.onnx``: VFE PointNet + 3D transformer backbone -> voxel features (N, C).
3. ``head.onnx``: BEV scatter + 2D backbone + CenterPoint head -> per-task maps.
4. ``Postprocessor``: top-K decode, score threshold, IoU rectification, NMS (the head's own code).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..structures import Detections, Points
from .modules import CacheEntry, Postprocessor, PreprocessedFrame, Preprocessor

META_JSON = "deploy.json"


def load_meta(export_dir: str | Path) -> dict:
    """deploy.json of an export folder, validated."""
    path = Path(export_dir) / META_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `pointwin export CONFIG --ckpt C --out DIR` first")
    meta = json.loads(path.read_text())
    if meta.get("format") != "pointwin-deploy-1":
        raise ValueError(f"{path}: format {meta.get('format')!r} is not 'pointwin-deploy-1'")
    for key in ("cache_entries", "backbone", "head", "batch_size"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    return meta


class OnnxDetector:
    """The exported detector in onnxruntime.

    Args:
        export_dir: folder written by :func:`pointwin.export.export_onnx`.
        detector: a detector built from the same config, for its pre/post-processing settings (its
            weights are not used). Default: rebuilt from the ``model`` section of deploy.json.
        providers: onnxruntime execution providers (default CPU).
    """

    def __init__(self, export_dir: str | Path, detector: nn.Module | None = None,
                 providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.dir = Path(export_dir)
        self.meta = load_meta(self.dir)
        if detector is None:
            if self.meta.get("model") is None:
                raise ValueError(f"{self.dir / META_JSON} has no model config; pass detector=")
            from ..models import build_model

            detector = build_model(self.meta["model"])
        self.detector = detector.eval()
        self.entries = [CacheEntry.from_json(e) for e in self.meta["cache_entries"]]
        self.preprocess = Preprocessor(self.detector)
        self.postprocess = Postprocessor(self.detector.head)
        opts = ort.SessionOptions()
        providers = providers or ["CPUExecutionProvider"]
        self.backbone = ort.InferenceSession(str(self.dir / self.meta["backbone"]["file"]), opts, providers=providers)
        self.head = ort.InferenceSession(str(self.dir / self.meta["head"]["file"]), opts, providers=providers)

    def _check_frame(self, frame: PreprocessedFrame) -> None:
        if [e.key for e in frame.entries] != [e.key for e in self.entries]:
            raise ValueError(f"runtime: the preprocessing produced cache entries {[e.key for e in frame.entries]} "
                             f"but the graph was exported for {[e.key for e in self.entries]}")
        if frame.batch_size != self.meta["batch_size"]:
            raise ValueError(f"runtime: the graphs were exported for batch_size {self.meta['batch_size']}, "
                             f"got {frame.batch_size}")

    def as_points(self, points) -> Points:
        """A one-sample :class:`Points` batch from Points, an (N, C) numpy array / tensor or a .bin/.npy path
        (read with the model's point width)."""
        if isinstance(points, Points):
            return points
        from ..api import Predictor

        array = Predictor.read_points_for(points, int(self.detector.vfe.num_point_features))
        return Points.from_list([torch.from_numpy(array)])

    def run_graphs(self, points) -> tuple[PreprocessedFrame, torch.Tensor, list[torch.Tensor]]:
        """(preprocessed frame, voxel features (N, C), head maps) for a batch of points (see :meth:`as_points`)."""
        frame = self.preprocess(self.as_points(points))
        self._check_frame(frame)
        names = self.meta["backbone"]["inputs"]
        feed = {n: t.cpu().numpy() for n, t in zip(names, frame.backbone_inputs(), strict=True)}
        (voxel_feats,) = self.backbone.run(["voxel_feats"], feed)
        coords = frame.coords.long().cpu().numpy()
        head = self.head.run(self.meta["head"]["outputs"], {"voxel_feats": voxel_feats, "voxel_coords": coords})
        return frame, torch.from_numpy(np.asarray(voxel_feats)), [torch.from_numpy(np.asarray(h)) for h in head]

    def __call__(self, points) -> list[Detections]:
        _, _, head = self.run_graphs(points)
        return self.postprocess(head)

    def predict(self, points):
        """Detections of one cloud as a :class:`pointwin.api.DetectionResult` (numpy arrays, by score)."""
        from ..api import DetectionResult

        (det,) = self(points)
        order = det.scores.argsort(descending=True)
        return DetectionResult(det.boxes.tensor[order].float().numpy(), det.scores[order].float().numpy(),
                               det.labels[order].numpy().astype(np.int64), list(self.detector.class_names))


__all__ = ["OnnxDetector", "load_meta"]
