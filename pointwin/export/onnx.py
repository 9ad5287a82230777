"""Export a detector to two ONNX graphs with ``torch.onnx.export(dynamo=True)``, and check parity.

Files written to the output folder (see :mod:`pointwin.export.modules` for the cut)::

    backbone.onnx   graph 1: point features + partitions/positions -> voxel features (N, C)
    head.onnx       graph 2: voxel features + coords -> per-task head maps
    deploy.json     model config, graph input/output names, the backbone's cache layout, tolerances

Why dynamo: with repeated indices the legacy TorchScript exporter (torch 2.13, opset 17) silently turns
``index_put(accumulate=True)`` into a ScatterND *overwrite* (the last write wins instead of the sum) and
refuses ``index_add_``; the dynamo exporter emits ScatterND with ``reduction="add"`` for both.
``tests/test_export.py`` checks both exporters on a tiny module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..fileio import atomic_path, write_json
from ..structures import Detections, Points
from .modules import BackboneGraph, CacheEntry, HeadGraph, PreprocessedFrame, Preprocessor, head_output_names

FORMAT = "pointwin-deploy-1"
BACKBONE_ONNX = "backbone.onnx"
HEAD_ONNX = "head.onnx"
META_JSON = "deploy.json"

#: Parity tolerances (float32 CPU onnxruntime vs PyTorch). Voxel features leave a LayerNorm (O(1) values);
#: head maps are logits / regression codes. Detections: same count, labels equal, box centres / sizes
#: within BOX_ATOL metres, yaw within YAW_ATOL rad (wrapped), scores within SCORE_ATOL.
TOLERANCES = {"voxel_feats_atol": 1e-3, "head_atol": 1e-3, "box_atol": 1e-3, "yaw_atol": 1e-3, "score_atol": 1e-4}


class ParityError(AssertionError):
    """The exported graphs disagree with PyTorch beyond :data:`TOLERANCES`."""


def backbone_io(entries: Sequence[CacheEntry]) -> tuple[list[str], tuple]:
    """Input names and ``dynamic_shapes`` of graph 1 (P points, N_s voxels per stage, G_i groups per partition)."""
    from torch.export import Dim

    P = Dim("num_points", min=2)
    stages = max((e.stage for e in entries), default=0) + 1
    N = [Dim("num_voxels" if s == 0 else f"num_voxels_s{s}", min=2) for s in range(stages + 1)]
    names = ["point_feats", "point_voxel"]
    rest: list[dict] = []
    for i, e in enumerate(entries):
        names += e.input_names(i)
        if e.kind == "partition":
            G = Dim(f"p{i}_groups", min=1)
            rest += [{0: G}, {0: G}, {0: N[e.stage]}]
        elif e.kind == "pooling":
            rest += [{0: N[e.stage]}, {0: N[e.stage]}, {0: N[e.stage + 1]}]
        else:
            rest.append({0: N[e.stage]})
    return names, ({0: P}, {0: P}, tuple(rest))


def _atomic_onnx(program, path: Path) -> None:
    with atomic_path(path) as tmp:
        program.save(str(tmp))


@dataclass
class ExportResult:
    """Paths written by :func:`export_onnx` and the example frame used for tracing."""

    out_dir: Path
    backbone: Path
    head: Path
    meta: Path
    frame: PreprocessedFrame = field(repr=False)


def export_onnx(detector: nn.Module, points: Points, out_dir: str | Path, model_cfg: dict | None = None,
                batch_size: int = 1, verbose: bool = False) -> ExportResult:
    """Export ``detector`` (eval mode, CPU) as the two graphs, tracing with the example ``points``.

    Args:
        detector: a :class:`~pointwin.models.detector.Detector` with a FlatFormer or DSVT backbone.
        points: an example batch (its voxel / group counts only seed the tracer; all those dims are dynamic).
        out_dir: output folder (created).
        model_cfg: the ``model`` config section, stored in deploy.json so the runtime can rebuild the
            pre/post-processing (no weights needed there).
        batch_size: B of the dense BEV canvas in graph 2 (fixed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detector = detector.eval().cpu()
    if points.batch_size != batch_size:
        raise ValueError(f"export_onnx: the example points have batch_size {points.batch_size}, expected {batch_size}")
    frame = Preprocessor(detector)(points.to("cpu") if hasattr(points, "to") else points)
    g1 = BackboneGraph(detector, frame.entries).eval()
    g2 = HeadGraph(detector, batch_size).eval()
    names1, dyn1 = backbone_io(frame.entries)
    inputs1 = tuple(frame.backbone_inputs())
    with torch.no_grad():
        voxel_feats = g1(*inputs1)
        prog1 = torch.onnx.export(g1, (inputs1[0], inputs1[1], *inputs1[2:]), dynamo=True,
                                  dynamic_shapes=(dyn1[0], dyn1[1], dyn1[2]), input_names=names1,
                                  output_names=["voxel_feats"], optimize=True, verbose=verbose)
        from torch.export import Dim

        N = Dim("num_voxels", min=2)
        coords = frame.coords.long()
        prog2 = torch.onnx.export(g2, (voxel_feats, coords), dynamo=True, dynamic_shapes=({0: N}, {0: N}),
                                  input_names=["voxel_feats", "voxel_coords"],
                                  output_names=head_output_names(detector.head), optimize=True, verbose=verbose)
    backbone_path, head_path, meta_path = out / BACKBONE_ONNX, out / HEAD_ONNX, out / META_JSON
    _atomic_onnx(prog1, backbone_path)
    _atomic_onnx(prog2, head_path)
    meta = {
        "format": FORMAT,
        "model": _plain(model_cfg) if model_cfg is not None else None,
        "batch_size": batch_size,
        "point_feat_dim": int(frame.point_feats.shape[1]),
        "voxel_feat_dim": int(voxel_feats.shape[1]),
        "cache_entries": [e.to_json() for e in frame.entries],
        "backbone": {"file": BACKBONE_ONNX, "inputs": names1, "outputs": ["voxel_feats"]},
        "head": {"file": HEAD_ONNX, "inputs": ["voxel_feats", "voxel_coords"],
                 "outputs": head_output_names(detector.head)},
        "tolerances": TOLERANCES,
        "torch": torch.__version__,
    }
    write_json(meta_path, meta, indent=2)
    return ExportResult(out, backbone_path, head_path, meta_path, frame)


def _plain(obj: Any) -> Any:
    from ..config import to_plain

    return to_plain(obj)


# --------------------------------------------------------------------------------------------------
# parity


@dataclass
class ParityReport:
    """Max abs / rel errors of the ONNX pipeline against PyTorch on one frame.

    Detections are compared one by one only where their order is defined: two detections whose scores
    differ by less than twice the largest head-map error (at least 1e-7) may swap places in top-K / NMS,
    so a PyTorch detection tied like that with another of its sample is left out; every other detection
    must have an ONNX counterpart of the same label within the box / yaw / score tolerances.
    """

    voxel_abs: float
    voxel_rel: float
    head_abs: float
    head_rel: float
    num_dets_torch: int
    num_dets_onnx: int
    num_unique: int
    num_unmatched: int
    box_abs: float
    yaw_abs: float
    score_abs: float

    def lines(self) -> list[str]:
        return [f"voxel features: max abs {self.voxel_abs:.3g}, max rel {self.voxel_rel:.3g}",
                f"head maps:      max abs {self.head_abs:.3g}, max rel {self.head_rel:.3g}",
                f"detections:     torch {self.num_dets_torch}, onnx {self.num_dets_onnx} "
                f"({self.num_unique} with untied scores, {self.num_unmatched} of them unmatched); matched box max "
                f"abs {self.box_abs:.3g} m, yaw {self.yaw_abs:.3g} rad, score {self.score_abs:.3g}"]

    def failures(self, tol: dict[str, float] | None = None) -> list[str]:
        tol = TOLERANCES if tol is None else tol
        bad = []
        if not self.voxel_abs <= tol["voxel_feats_atol"]:
            bad.append(f"voxel features max abs {self.voxel_abs:.3g} > {tol['voxel_feats_atol']}")
        if not self.head_abs <= tol["head_atol"]:
            bad.append(f"head maps max abs {self.head_abs:.3g} > {tol['head_atol']}")
        if self.num_unmatched:
            bad.append(f"{self.num_unmatched} of {self.num_unique} detections have no ONNX counterpart within "
                       f"box {tol['box_atol']} m / yaw {tol['yaw_atol']} rad / score {tol['score_atol']}")
        return bad


def _errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        raise ParityError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0, 0.0
    diff = (a - b).abs()
    return float(diff.max()), float((diff / b.abs().clamp(min=1e-3)).max())


def compare_detections(ref: Sequence[Detections], got: Sequence[Detections], tol: dict[str, float] | None = None,
                       tie: float = 1e-7) -> tuple[int, int, int, int, float, float, float]:
    """(count ref, count got, untied ref detections, unmatched among them, box abs, yaw abs, score abs).

    Reference detections whose score is within ``tie`` of another one's are skipped; each other one is
    matched to the closest ONNX detection of the same label; errors are the maxima over matched pairs
    (see :class:`ParityReport`)."""
    tol = TOLERANCES if tol is None else tol
    n_ref = sum(len(d.scores) for d in ref)
    n_got = sum(len(d.scores) for d in got)
    unique = unmatched = 0
    box = yaw = score = 0.0
    for a, b in zip(ref, got, strict=True):
        sa = a.scores.double()
        if len(sa) == 0:
            continue
        ties = ((sa[:, None] - sa[None, :]).abs() <= tie).sum(1) > 1
        ta, tb = a.boxes.tensor.double(), b.boxes.tensor.double()
        cols = [c for c in range(ta.shape[1]) if c != 6]
        for i in (~ties).nonzero()[:, 0].tolist():
            unique += 1
            cand = (b.labels == a.labels[i]).nonzero()[:, 0]
            if len(cand) == 0:
                unmatched += 1
                continue
            d_box = (tb[cand][:, cols] - ta[i, cols]).abs().amax(1)
            d_yaw = (torch.remainder(tb[cand, 6] - ta[i, 6] + torch.pi, 2 * torch.pi) - torch.pi).abs()
            d_score = (b.scores[cand].double() - sa[i]).abs()
            j = int((d_box + d_yaw + d_score).argmin())
            if d_box[j] > tol["box_atol"] or d_yaw[j] > tol["yaw_atol"] or d_score[j] > tol["score_atol"]:
                unmatched += 1
                continue
            box, yaw, score = max(box, float(d_box[j])), max(yaw, float(d_yaw[j])), max(score, float(d_score[j]))
    return n_ref, n_got, unique, unmatched, box, yaw, score


@torch.no_grad()
def parity_check(detector: nn.Module, export_dir: str | Path, points: Points, raise_on_fail: bool = True,
                 tolerances: dict[str, float] | None = None, printer=print, runtime=None) -> ParityReport:
    """Run the exported graphs in onnxruntime on ``points`` and compare with the PyTorch detector.

    Prints max abs / rel errors; raises :class:`ParityError` above ``tolerances`` (default
    :data:`TOLERANCES`) when ``raise_on_fail``. ``runtime``: an :class:`OnnxDetector` of ``export_dir`` to
    reuse (default: a new one with ``detector``'s settings).
    """
    from .runtime import OnnxDetector

    detector = detector.eval().cpu()
    runtime = OnnxDetector(export_dir, detector=detector) if runtime is None else runtime
    frame, voxel_onnx, head_onnx = runtime.run_graphs(points)
    voxels = detector.backbone(detector.vfe(points))
    bev = detector.backbone_2d(detector.scatter(voxels))
    out = detector.head(bev)
    head_ref = [getattr(t, b) for t, sep in zip(out.tasks, detector.head.heads, strict=True) for b in sep.branches]
    voxel_abs, voxel_rel = _errors(voxel_onnx, voxels.feats)
    head_abs = head_rel = 0.0
    for a, b in zip(head_onnx, head_ref, strict=True):
        ea, er = _errors(a, b)
        head_abs, head_rel = max(head_abs, ea), max(head_rel, er)
    dets_ref = detector.head.predict(out)
    dets_onnx = runtime.postprocess(head_onnx)
    report = ParityReport(voxel_abs, voxel_rel, head_abs, head_rel,
                          *compare_detections(dets_ref, dets_onnx, tolerances, tie=max(2 * head_abs, 1e-7)))
    for line in report.lines():
        printer(line)
    bad = report.failures(tolerances)
    if bad and raise_on_fail:
        raise ParityError("ONNX parity failed: " + "; ".join(bad))
    return report


__all__ = ["BACKBONE_ONNX", "HEAD_ONNX", "META_JSON", "TOLERANCES", "ExportResult", "ParityError", "ParityReport",
           "backbone_io", "compare_detections", "export_onnx", "parity_check"]
