"""Pictures: bird's-eye views of points with ground-truth and predicted boxes, training curves, 3D renders.

Matplotlib figures are drawn with the Agg canvas directly (no pyplot, no display needed, the user's
backend is left alone). 3D rendering uses open3d's offscreen renderer and needs the ``viz`` extra
(``pip install 'pointwin[viz]'``); it is imported only when asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .fileio import atomic_path

GT_COLOR = "#00a000"
PRED_COLORS = ("#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _np(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "tensor"):  # Boxes3D
        x = x.tensor
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """(M, >=7) boxes -> (M, 4, 2) BEV corners, counter-clockwise starting front-left... as
    (+dx/2, +dy/2), (-dx/2, +dy/2), (-dx/2, -dy/2), (+dx/2, -dy/2) rotated by yaw."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, boxes.shape[-1] if boxes.size else 7)
    sx = np.array([0.5, -0.5, -0.5, 0.5])
    sy = np.array([0.5, 0.5, -0.5, -0.5])
    lx = boxes[:, 3:4] * sx
    ly = boxes[:, 4:5] * sy
    c, s = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    x = boxes[:, 0:1] + c * lx - s * ly
    y = boxes[:, 1:2] + s * lx + c * ly
    return np.stack([x, y], -1)


def _save(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path


def _draw_boxes(ax: Any, boxes: np.ndarray, color: str | Sequence[str], lw: float, ls: str = "-",
                labels: Sequence[str] | None = None) -> None:
    from matplotlib.collections import LineCollection

    if boxes is None or len(boxes) == 0:
        return
    corners = bev_corners(boxes)
    closed = np.concatenate([corners, corners[:, :1]], 1)
    colors = [color] * len(boxes) if isinstance(color, str) else list(color)
    ax.add_collection(LineCollection(list(closed), colors=colors, linewidths=lw, linestyles=ls))
    # heading tick: centre -> front edge midpoint
    front = (corners[:, 0] + corners[:, 3]) / 2
    ticks = np.stack([boxes[:, :2], front], 1)
    ax.add_collection(LineCollection(list(ticks), colors=colors, linewidths=lw, linestyles=ls))
    if labels is not None:
        for (x, y), text, col in zip(boxes[:, :2], labels, colors):
            ax.text(x, y, text, color=col, fontsize=5, ha="center", va="center")


def draw_bev(points: Any, path: str | os.PathLike, *, gt_boxes: Any = None, pred_boxes: Any = None,
             pred_scores: Any = None, pred_labels: Any = None, class_names: Sequence[str] | None = None,
             extent: tuple[float, float, float, float] | None = None, title: str | None = None,
             max_points: int = 200_000, size_inches: float = 8.0) -> Path:
    """Bird's-eye view PNG: points coloured by height, GT boxes green (solid), predictions dashed
    (one colour per class, score printed). ``extent = (x0, y0, x1, y1)`` metres (default: fit the points)."""
    from matplotlib.figure import Figure

    pts = _np(points)
    if pts is None or pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"draw_bev: points must be (N, >=3), got {None if pts is None else pts.shape}")
    if len(pts) > max_points:
        pts = pts[np.linspace(0, len(pts) - 1, max_points).astype(np.int64)]
    gt = _np(gt_boxes)
    pred = _np(pred_boxes)
    fig = Figure(figsize=(size_inches, size_inches))
    ax = fig.add_subplot(1, 1, 1)
    if extent is not None and len(pts):
        inside = ((pts[:, 0] >= extent[0]) & (pts[:, 0] <= extent[2]) & (pts[:, 1] >= extent[1])
                  & (pts[:, 1] <= extent[3]))
        pts = pts[inside]
    if len(pts):
        z = pts[:, 2]
        lo, hi = np.percentile(z, [2, 98]) if len(z) > 10 else (z.min(), z.max() + 1e-3)
        ax.scatter(pts[:, 0], pts[:, 1], s=0.4, c=np.clip(z, lo, hi), cmap="Greys", vmin=lo - 0.3 * (hi - lo),
                   vmax=hi, linewidths=0, rasterized=True)
    if gt is not None and len(gt):
        _draw_boxes(ax, gt, GT_COLOR, 1.2)
    if pred is not None and len(pred):
        lab = np.zeros(len(pred), np.int64) if pred_labels is None else _np(pred_labels).astype(np.int64)
        colors = [PRED_COLORS[k % len(PRED_COLORS)] for k in lab]
        texts = None
        if pred_scores is not None:
            scores = _np(pred_scores)
            texts = [f"{s:.2f}" for s in scores]
        _draw_boxes(ax, pred, colors, 0.9, "--", texts)
    if extent is None:
        if len(pts):
            x0, y0 = pts[:, :2].min(0)
            x1, y1 = pts[:, :2].max(0)
        else:
            x0, y0, x1, y1 = -50, -50, 50, 50
        extent = (float(x0), float(y0), float(x1), float(y1))
    ax.set_xlim(extent[0], extent[2])
    ax.set_ylim(extent[1], extent[3])
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=GT_COLOR, label="ground truth")]
    if pred is not None:
        names = class_names or [f"class {i}" for i in range(len(PRED_COLORS))]
        present = sorted(set(lab.tolist())) if len(pred) else []
        handles += [Line2D([], [], color=PRED_COLORS[k % len(PRED_COLORS)], ls="--",
                           label=f"predicted {names[k] if k < len(names) else k}") for k in present]
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.6)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def draw_sample_bev(sample: Any, path: str | os.PathLike, pred: Any = None, score_thr: float = 0.3,
                    class_names: Sequence[str] | None = None, extent: tuple[float, ...] | None = None) -> Path:
    """BEV of a :class:`~pointwin.structures.Sample` with its GT and (optionally) ``Detections`` above
    ``score_thr``."""
    kw: dict[str, Any] = {}
    n_pred = 0
    if pred is not None:
        keep = pred.scores >= score_thr
        kw = dict(pred_boxes=pred.boxes.tensor[keep], pred_scores=pred.scores[keep], pred_labels=pred.labels[keep])
        n_pred = int(keep.sum())
    n_gt = 0 if sample.boxes is None else len(sample.boxes)
    title = f"{sample.frame_id}: {n_gt} GT (green)" + (f", {n_pred} predictions >= {score_thr}" if pred is not None
                                                       else "")
    return draw_bev(sample.points, path, gt_boxes=sample.boxes, class_names=class_names, extent=extent,
                    title=title, **kw)


# ---------------------------------------------------------------- training curves
def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON-lines log; a malformed line raises a ValueError naming the file and line."""
    path = Path(path)
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not a JSON line ({e})", path=path, line=i) from None
    return out


def plot_training_curves(log: str | os.PathLike, out: str | os.PathLike) -> Path:
    """PNG with the training loss (raw and smoothed), the learning rate, and the validation metrics."""
    from matplotlib.figure import Figure

    records = read_log(log)
    train = [r for r in records if r.get("mode") == "train"]
    val = [r for r in records if r.get("mode") == "val"]
    if not train:
        raise ValueError(f"{log}: no training records (mode == 'train') to plot")
    skip = {"epoch", "iter", "eval_time", "mode", "wall"}
    numeric = sorted({k for r in val for k, v in r.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip
                      and not k.startswith("num_")})
    # headline metrics first (AP with BEV IoU, means), then the rest
    val_keys = ([k for k in numeric if k.endswith("AP_BEV") and "/" in k] + [k for k in numeric if k.startswith("m")]
                + [k for k in numeric if not (k.endswith("AP_BEV") and "/" in k) and not k.startswith("m")])[:6]
    ncols = 3 if val_keys else 2
    fig = Figure(figsize=(5 * ncols, 3.8))
    it = np.array([r["iter"] for r in train])
    loss = np.array([r["loss"] for r in train], dtype=np.float64)
    ax = fig.add_subplot(1, ncols, 1)
    k = max(1, len(loss) // 25)
    smoothed = k > 1 and len(loss) > k
    ax.plot(it, loss, lw=0.6 if smoothed else 1.5, alpha=0.4 if smoothed else 1.0, color="C0", label="loss")
    if smoothed:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(it[k - 1:], smooth, lw=1.5, color="C0", label=f"loss (mean of {k})")
    not_parts = {"loss", "loss_avg", "lr", "grad_norm", "time", "data_time", "epoch", "iter", "mode", "wall"}
    parts = sorted({key for r in train for key, v in r.items() if key not in not_parts
                    and isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in parts[:6]:
        vals = np.array([r.get(key, np.nan) for r in train], dtype=np.float64)
        ax.plot(it, vals, lw=0.7, label=key)
    ax.set_yscale("log" if np.all(loss > 0) else "linear")
    ax.set_xlabel("step")
    ax.set_title("training loss")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, ncols, 2)
    ax.plot(it, [r.get("lr", np.nan) for r in train])
    ax.set_xlabel("step")
    ax.set_title("learning rate")
    if val_keys:
        ax = fig.add_subplot(1, ncols, 3)
        ep = [r["epoch"] for r in val]
        for key in val_keys[:8]:
            ax.plot(ep, [r.get(key, np.nan) for r in val], marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title("validation")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


# ---------------------------------------------------------------- point files and 3D
def read_points_file(path: str | os.PathLike, dims: int = 4) -> np.ndarray:
    """``.npy`` (N, C) or raw float32 ``.bin`` with ``dims`` values per point."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point file not found: {path}")
    from pointwin.datasets.base import check_points, read_raw_points

    if path.suffix == ".npy":
        pts = np.load(path, allow_pickle=False)
    else:
        pts = read_raw_points(path, dims, np.float32)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise DataError(f"expected (N, >=3) points, got shape {pts.shape}", path=path)
    pts = pts.astype(np.float32, copy=False)
    check_points(pts, path, max_abs_coord=None)  # .bin: read_raw_points also checked the coordinates
    return pts


def _import_open3d() -> Any:
    try:
        import open3d
    except ImportError:
        raise ImportError("3D rendering needs open3d: pip install 'pointwin[viz]' (or use the default BEV "
                          "renderer, --renderer bev)") from None
    return open3d


def render_open3d(points: Any, path: str | os.PathLike, gt_boxes: Any = None, pred: Any = None,
                  score_thr: float = 0.3, width: int = 1280, height: int = 960) -> Path:
    """Offscreen 3D render (PNG) of the points with GT boxes (green) and predictions (red) using open3d."""
    o3d = _import_open3d()
    from open3d.visualization import rendering

    pts = _np(points)
    renderer = rendering.OffscreenRenderer(width, height)
    scene = renderer.scene
    scene.set_background([0.05, 0.05, 0.05, 1.0])
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[:, :3].astype(np.float64)))
    z = pts[:, 2]
    zn = (z - z.min()) / max(float(z.max() - z.min()), 1e-6)
    cloud.colors = o3d.utility.Vector3dVector(np.stack([zn, 0.6 * np.ones_like(zn), 1 - zn], 1))
    mat = rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    mat.point_size = 1.5
    scene.add_geometry("points", cloud, mat)
    line_mat = rendering.MaterialRecord()
    line_mat.shader = "unlitLine"
    line_mat.line_width = 2.0

    def add_boxes(name: str, boxes: np.ndarray | None, color: tuple[float, float, float]) -> None:
        if boxes is None:
            return
        for i, b in enumerate(boxes):
            obb = o3d.geometry.OrientedBoundingBox(b[:3].astype(np.float64),
                                                   o3d.geometry.get_rotation_matrix_from_xyz((0, 0, float(b[6]))),
                                                   b[3:6].astype(np.float64))
            lines = o3d.geometry.LineSet.create_from_oriented_bounding_box(obb)
            lines.paint_uniform_color(color)
            scene.add_geometry(f"{name}{i}", lines, line_mat)

    add_boxes("gt", _np(gt_boxes), (0.1, 0.9, 0.1))
    if pred is not None:
        keep = (pred.scores >= score_thr).cpu()
        add_boxes("pred", _np(pred.boxes.tensor[keep]), (0.95, 0.1, 0.1))
    scene.camera.look_at([0, 0, 0], [-30, -30, 40], [0, 0, 1])
    image = renderer.render_to_image()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    o3d.io.write_image(str(path), image)
    return path
