"""CenterPoint head: class-grouped heatmaps plus box regression on a BEV feature map.

Reference: Yin, Zhou, Krähenbühl, "Center-based 3D Object Detection and Tracking" (CVPR 2021); the
IoU branch and IoU-rectified scores follow CIA-SSD / AFDetV2 as used by DSVT on Waymo.

Encoding of one box at feature cell (i, j) = floor(centre in feature cells), with the default
``rot_order="sin_cos"`` and ``box_convention="pointwin"``:
``[cx - j, cy - i, z, log dx, log dy, log dz, sin yaw, cos yaw (, vx, vy)]``.
:class:`CenterPointHead`'s arguments switch the rot channel order, the box convention of the dim/rot
channels, the IoU-branch range and the post-processing so that the OpenPCDet head of the official DSVT and
the mmdetection3d head of the official FlatFormer fork are reproduced (see the class docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...nn.conv import FoldingSequential
from ...structures import Boxes3D, Detections


@dataclass
class TaskPrediction:
    """Raw outputs of one task (class group) on the BEV map, all (B, k, H, W).

    Attributes:
        heatmap: logits, one channel per class of the task.
        center: sub-cell offset (dx, dy) of the box centre in feature cells.
        center_z: box centre z in metres.
        dim: log of (dx, dy, dz) (of (dy, dx, dz) with ``box_convention="mmdet3d_legacy"``).
        rot: (sin, cos) or (cos, sin) of the yaw as the head's ``rot_order`` says (of ``-yaw - pi/2`` with
            ``box_convention="mmdet3d_legacy"``).
        vel: (vx, vy) in m/s, or None.
        iou: predicted IoU, 2 IoU - 1 in [-1, 1] (``iou_range="signed"``) or IoU in [0, 1]
            (``iou_range="unit"``), or None.
    """

    heatmap: torch.Tensor
    center: torch.Tensor
    center_z: torch.Tensor
    dim: torch.Tensor
    rot: torch.Tensor
    vel: torch.Tensor | None = None
    iou: torch.Tensor | None = None

    def box_code(self) -> torch.Tensor:
        """(B, 8 or 10, H, W) regression channels in encoding order."""
        parts = [self.center, self.center_z, self.dim, self.rot] + ([self.vel] if self.vel is not None else [])
        return torch.cat(parts, 1)


@dataclass
class CenterHeadOutput:
    """Outputs of :class:`CenterPointHead`: one :class:`TaskPrediction` per class group."""

    tasks: list[TaskPrediction]


@dataclass
class TaskTargets:
    """Training targets of one task for a batch.

    Attributes:
        heatmap: (B, k, H, W) Gaussian targets, exactly 1 at every object's centre cell.
        index: (B, K) int64 flat cell index y * W + x of each object (K = max_objs).
        mask: (B, K) bool, True for real objects.
        box_code: (B, K, 8 or 10) regression targets in encoding order.
        boxes: (B, K, 7 or 9) the ground-truth boxes (for the IoU branch).
    """

    heatmap: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    box_code: torch.Tensor
    boxes: torch.Tensor


@dataclass
class TaskCandidates:
    """Decoded boxes of one sample and one task before NMS (M rows, in top-K order).

    Attributes:
        boxes: (M, 7 | 9) ``(x, y, z, dx, dy, dz, yaw[, vx, vy])``, pointwin's box convention.
        scores: (M,) final scores (IoU-rectified or IoU-powered when the head has an IoU branch, else
            ``raw_scores``); the scores NMS ranks by and :meth:`CenterPointHead.predict` returns.
        labels: (M,) int64 0-based indices into ``class_names``.
        raw_scores: (M,) sigmoid of the heatmap logit.
        iou: (M,) predicted IoU read from the IoU branch p: ``(p + 1) / 2`` (``iou_range="signed"``) or ``p``
            (``"unit"``), before the clamp to [0, 1] that scoring applies; None without an IoU branch.
        cells: (M, 3) int64 heatmap cell ``(class in task, y, x)`` each box was decoded at.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    raw_scores: torch.Tensor
    iou: torch.Tensor | None
    cells: torch.Tensor


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.5) -> torch.Tensor:
    """CornerNet/CenterNet radius rule used by CenterPoint: the smallest of the three radii at which a
    box of (height, width) cells shifted by that radius still overlaps the original by ``min_overlap``
    (the formula as published, including its ``/ 2`` denominators)."""
    h, w = height.double(), width.double()
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).to(height.dtype)


def draw_gaussian(heatmap: torch.Tensor, center: tuple[int, int], radius: int) -> None:
    """Max-paste ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, sigma = (2r + 1) / 6, into (H, W) ``heatmap``
    around integer ``center = (x, y)``, clipped at the borders (in place)."""
    H, W = heatmap.shape
    x, y = center
    d = torch.arange(-radius, radius + 1, dtype=heatmap.dtype, device=heatmap.device)
    sigma = (2 * radius + 1) / 6
    g = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))
    g[g < torch.finfo(g.dtype).eps * g.max()] = 0
    left, right = min(x, radius), min(W - x, radius + 1)
    top, bottom = min(y, radius), min(H - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    region = heatmap[y - top:y + bottom, x - left:x + right]
    patch = g[radius - top:radius + bottom, radius - left:radius + right]
    torch.maximum(region, patch, out=region)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of peaks (target == 1)."""
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg_weight = (1 - target).pow(beta)
    pos_loss = (torch.log(pred) * (1 - pred).pow(alpha) * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred.pow(alpha) * neg_weight * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def gather_cells(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) and (B, K) flat cell indices -> (B, K, C)."""
    B, C = feature.shape[:2]
    flat = feature.reshape(B, C, -1)
    return flat.gather(2, index[:, None, :].expand(-1, C, -1)).transpose(1, 2)


class SeparateHead(nn.Module):
    """One small conv stack per output branch: (num_conv - 1) x [3x3 conv, BN, ReLU] then a 3x3 conv.

    ``norm_eps`` is the eps of every BatchNorm of the branches.
    Shapes: (B, Cin, H, W) -> {branch: (B, out, H, W)}.
    """

    def __init__(self, in_channels: int, head_channels: int, branches: dict[str, int], num_conv: int = 2,
                 heatmap_init_bias: float = -2.19, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.branches = nn.ModuleDict()
        for name, out in branches.items():
            layers: list[nn.Module] = []
            c = in_channels
            for _ in range(num_conv - 1):
                layers += [nn.Conv2d(c, head_channels, 3, 1, 1, bias=False),
                           nn.BatchNorm2d(head_channels, eps=norm_eps), nn.ReLU(inplace=True)]
                c = head_channels
            final = nn.Conv2d(c, out, 3, 1, 1, bias=True)
            if name == "heatmap":
                nn.init.constant_(final.bias, heatmap_init_bias)
            else:
                nn.init.kaiming_normal_(final.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(final.bias)
                final.weight.data.mul_(0.1)
            layers.append(final)
            self.branches[name] = FoldingSequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: branch(x) for name, branch in self.branches.items()}


_ROT_ORDERS = ("sin_cos", "cos_sin")
_BOX_CONVENTIONS = ("pointwin", "mmdet3d_legacy")
_IOU_RANGES = ("signed", "unit")
_SCORE_STAGES = ("rectified", "raw")


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"CenterPointHead {name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def _per_class_float(value: float | Sequence[float], n: int, name: str) -> list[float]:
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"CenterPointHead: {name} needs one value per class ({n}), got {len(values)}")
    return values


def _per_class_size(value: int | Sequence[int] | None, n: int, name: str) -> list[int | None]:
    """None (no limit) for every class, or a positive int per class (one int broadcast)."""
    if value is None:
        return [None] * n
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"CenterPointHead: {name} needs one value per class ({n}), got {len(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"CenterPointHead: {name} must be None, a positive int or one positive int per class, "
                             f"got {value!r}")
    return [int(v) for v in values]


class CenterPointHead(nn.Module):
    """CenterPoint detection head.

    Args:
        in_channels: channels of the BEV feature map.
        class_names: all class names (labels index into this list).
        tasks: class groups, each a list of names; one heatmap per group (default: one group of all).
        point_cloud_range: (x0, y0, z0, x1, y1, z1) metres.
        voxel_size: (vx, vy[, vz]) metres of one BEV grid cell before the 2D backbone.
        feature_stride: BEV grid cells per feature-map cell (CenterPoint's ``out_size_factor``).
        shared_channels, head_channels, num_conv: widths of the shared 3x3 conv and of the branch convs,
            convs per branch.
        shared_norm_eps: BatchNorm eps of the shared conv (OpenPCDet ``BN_EPS``; mmdetection3d ``norm_cfg``).
        head_norm_eps: BatchNorm eps of the branch convs (OpenPCDet applies ``BN_EPS`` here too; mmdetection3d's
            ``SeparateHead`` gets no ``norm_cfg`` and keeps torch's 1e-5).
        with_velocity / with_iou: add the (vx, vy) and IoU branches.
        rot_order: channel order of the rot branch, ``"sin_cos"`` (pointwin, mmdetection3d) or ``"cos_sin"``
            (OpenPCDet); used by :meth:`encode` (training targets) and :meth:`decode` alike.
        box_convention: convention the dim and rot channels regress. ``"pointwin"``: ``log(dx, dy, dz)`` and
            the yaw itself (counter-clockwise from +x, ``dx`` along the heading), as OpenPCDet. ``"mmdet3d_legacy"``:
            mmdetection3d < 1.0 LiDAR boxes, which the FlatFormer fork (mmdetection3d 0.15) trains on: dims
            ordered ``(dy, dx, dz)`` (width first) and angle ``-yaw - pi/2`` (0 along -y, clockwise).
            :meth:`decode` always returns pointwin boxes and :meth:`encode` writes the chosen convention.
        max_log_dim: clamp of the log-dims before ``exp`` when decoding; None = no clamp (the official heads).
        iou_range: what the IoU branch predicts. ``"signed"``: 2 IoU - 1, read as ``clamp((p + 1) / 2, 0, 1)``
            (OpenPCDet / AFDetV2); ``"unit"``: the IoU itself, read as ``clamp(p, 0, 1)`` (the FlatFormer fork).
            The IoU loss target follows.
        gaussian_overlap, min_radius: heatmap radius rule.
        max_objs: most objects per sample and task.
        code_weights: per-channel weights of the L1 regression loss (8 or 10 values).
        heatmap_weight, reg_weight, iou_weight: loss weights.
        score_threshold: a candidate is kept when its score is > this (see ``threshold_on``).
        threshold_on: which score ``score_threshold`` tests: ``"rectified"`` (the final score, after IoU
            scoring) or ``"raw"`` (the heatmap sigmoid, before it; OpenPCDet).
        pre_max: candidates per sample and task: the top ``pre_max`` over (class, cell) of the task's heatmap
            (OpenPCDet ``MAX_OBJ_PER_SAMPLE``, mmdetection3d ``bbox_coder.max_num``).
        topk_on: which score ranks that top-K: ``"raw"`` (heatmap sigmoid; OpenPCDet) or ``"rectified"``
            (final score; the FlatFormer fork scores the whole heatmap with the IoU before its top-K).
        post_max: most boxes per sample and task after NMS (best scores first); None = no limit.
        nms_type: "rotate" (class-specific rotated BEV NMS), "circle" (CenterPoint's centre-distance NMS
            per task) or "none".
        nms_iou_threshold: rotated NMS threshold, a float or one per class (a box is dropped when its BEV IoU
            with a kept better box is > this).
        nms_pre_max, nms_post_max: rotated NMS only: per class, the most boxes entering NMS (best scores
            first) and the most kept; None = no limit, an int = the same for every class, or one int per class
            (OpenPCDet ``NMS_PRE_MAXSIZE`` / ``NMS_POST_MAXSIZE``, mmdetection3d ``pre_max_size`` /
            ``post_max_size``; the fork indexes its lists by class-in-task, the same with one task).
        nms_swap_dims: rotated NMS on footprints with dx and dy swapped (each box turned 90 degrees about its
            centre), as DSVT's ``multi_class_nms`` computes it: it hands ``(dx, dy)`` with the angle
            ``pi/2 - yaw`` to a kernel that turns boxes clockwise. False = the boxes' true footprints.
        circle_radius: circle NMS distance in metres, one per task.
        iou_rectifier: alpha per class (or one float) for ``score = raw^(1-a) * iou^a``; 0 disables.
        iou_pow: the FlatFormer fork's ``test_cfg.iou_pow`` as a float: ``score = raw * iou^iou_pow``
            (None = unused; its per-class list form is ``iou_rectifier``). Needs ``with_iou`` and excludes a
            non-zero ``iou_rectifier``.
        post_center_range: boxes whose centre lies outside are dropped (default: the point range widened
            by 10 m). Tested before NMS, like both official heads.

    Decoding (:meth:`candidates`), per sample and task: top ``pre_max`` cells by the ``topk_on`` score; decode;
    keep the boxes whose ``threshold_on`` score is > ``score_threshold`` and whose centre lies in
    ``post_center_range``. :meth:`predict` adds NMS. The official settings:

    * DSVT (OpenPCDet ``CenterHead``, ``dsvt_plain_1f_onestage.yaml``): ``shared_norm_eps=head_norm_eps=1e-3``,
      ``rot_order="cos_sin"``, ``max_log_dim=None``, ``pre_max=500``, ``topk_on="raw"``, ``threshold_on="raw"``,
      ``score_threshold=0.1``, ``iou_rectifier=[0.68, 0.71, 0.65]``, ``post_center_range=[-80, -80, -10, 80, 80,
      10]``, ``nms_iou_threshold=[0.7, 0.6, 0.55]``, ``nms_pre_max=4096``, ``nms_post_max=500``,
      ``nms_swap_dims=True``.
    * FlatFormer (the mmdetection3d fork's ``CenterHead``): ``shared_norm_eps=1e-3``, ``head_norm_eps=1e-5``,
      ``with_velocity``, ``box_convention="mmdet3d_legacy"``, ``rot_order="sin_cos"``, ``max_log_dim=None``,
      ``iou_range="unit"``, ``iou_pow=2.0``, ``pre_max=4096``, ``topk_on="rectified"``,
      ``threshold_on="rectified"``, ``score_threshold=0.1``, ``post_center_range=[-74.88, -74.88, -10, 74.88,
      74.88, 10]`` (the bbox coder's range, tested first; the later ``post_center_limit_range`` of +-80 m
      removes nothing more), ``nms_iou_threshold=[0.8, 0.55, 0.55]``, ``nms_pre_max=[2048, 1024, 1024]``,
      ``nms_post_max=[300, 100, 100]``.
    """

    def __init__(self, in_channels: int, class_names: Sequence[str], point_cloud_range: Sequence[float],
                 voxel_size: Sequence[float], feature_stride: float = 1, tasks: Sequence[Sequence[str]] | None = None,
                 shared_channels: int = 64, head_channels: int = 64, num_conv: int = 2,
                 shared_norm_eps: float = 1e-5, head_norm_eps: float = 1e-5,
                 with_velocity: bool = False, with_iou: bool = False, rot_order: str = "sin_cos",
                 box_convention: str = "pointwin", max_log_dim: float | None = 10.0, iou_range: str = "signed",
                 gaussian_overlap: float = 0.1, min_radius: int = 2, max_objs: int = 500,
                 code_weights: Sequence[float] | None = None,
                 heatmap_weight: float = 1.0, reg_weight: float = 2.0, iou_weight: float = 1.0,
                 score_threshold: float = 0.1, threshold_on: str = "rectified", pre_max: int = 500,
                 topk_on: str = "raw", post_max: int | None = 100, nms_type: str = "rotate",
                 nms_iou_threshold: float | Sequence[float] = 0.7, nms_pre_max: int | Sequence[int] | None = None,
                 nms_post_max: int | Sequence[int] | None = None, nms_swap_dims: bool = False,
                 circle_radius: Sequence[float] | None = None, iou_rectifier: float | Sequence[float] = 0.0,
                 iou_pow: float | None = None, post_center_range: Sequence[float] | None = None) -> None:
        super().__init__()
        self.class_names = list(class_names)
        tasks = [list(self.class_names)] if tasks is None else [list(t) for t in tasks]
        for t in tasks:
            for name in t:
                if name not in self.class_names:
                    raise ValueError(f"CenterPointHead: task class {name!r} is not in class_names {self.class_names}")
        self.tasks = tasks
        self.task_class_ids = [torch.tensor([self.class_names.index(n) for n in t]) for t in tasks]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.feature_stride = float(feature_stride)
        self.with_velocity, self.with_iou = with_velocity, with_iou
        for name, eps in (("shared_norm_eps", shared_norm_eps), ("head_norm_eps", head_norm_eps)):
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
                raise ValueError(f"CenterPointHead: {name} must be a positive float, got {eps!r}")
        self.shared_norm_eps, self.head_norm_eps = float(shared_norm_eps), float(head_norm_eps)
        self.rot_order = _choice(rot_order, _ROT_ORDERS, "rot_order")
        self.box_convention = _choice(box_convention, _BOX_CONVENTIONS, "box_convention")
        if max_log_dim is not None and (isinstance(max_log_dim, bool) or not isinstance(max_log_dim, (int, float))):
            raise ValueError(f"CenterPointHead: max_log_dim must be a float or None (no clamp), got {max_log_dim!r}")
        self.max_log_dim = None if max_log_dim is None else float(max_log_dim)
        self.iou_range = _choice(iou_range, _IOU_RANGES, "iou_range")
        self.gaussian_overlap, self.min_radius, self.max_objs = gaussian_overlap, min_radius, max_objs
        code_size = 10 if with_velocity else 8
        self.code_weights = list(code_weights) if code_weights is not None else [1.0] * code_size
        if len(self.code_weights) != code_size:
            raise ValueError(f"CenterPointHead: code_weights needs {code_size} values, got {len(self.code_weights)}")
        self.heatmap_weight, self.reg_weight, self.iou_weight = heatmap_weight, reg_weight, iou_weight
        self.score_threshold = float(score_threshold)
        self.threshold_on = _choice(threshold_on, _SCORE_STAGES, "threshold_on")
        self.topk_on = _choice(topk_on, _SCORE_STAGES[::-1], "topk_on")
        if isinstance(pre_max, bool) or not isinstance(pre_max, int) or pre_max < 1:
            raise ValueError(f"CenterPointHead: pre_max must be a positive int, got {pre_max!r}")
        if post_max is not None and (isinstance(post_max, bool) or not isinstance(post_max, int) or post_max < 1):
            raise ValueError(f"CenterPointHead: post_max must be a positive int or None (no limit), got {post_max!r}")
        self.pre_max, self.post_max = pre_max, post_max
        if nms_type not in ("rotate", "circle", "none"):
            raise ValueError(f"CenterPointHead nms_type must be 'rotate', 'circle' or 'none', got {nms_type!r}")
        self.nms_type = nms_type
        n_cls = len(self.class_names)
        self.nms_iou_threshold = _per_class_float(nms_iou_threshold, n_cls, "nms_iou_threshold")
        self.nms_pre_max = _per_class_size(nms_pre_max, n_cls, "nms_pre_max")
        self.nms_post_max = _per_class_size(nms_post_max, n_cls, "nms_post_max")
        if nms_type != "rotate" and (nms_pre_max is not None or nms_post_max is not None or nms_swap_dims):
            raise ValueError(f"CenterPointHead: nms_pre_max, nms_post_max and nms_swap_dims apply to nms_type "
                             f"'rotate' only, got nms_type {nms_type!r}")
        self.nms_swap_dims = bool(nms_swap_dims)
        self.circle_radius = [float(r) for r in (circle_radius or [1.0] * len(tasks))]
        if len(self.circle_radius) != len(tasks):
            raise ValueError(f"CenterPointHead: circle_radius needs one value per task ({len(tasks)})")
        self.iou_rectifier = _per_class_float(iou_rectifier, n_cls, "iou_rectifier")
        if iou_pow is not None:
            if isinstance(iou_pow, bool) or not isinstance(iou_pow, (int, float)) or iou_pow < 0:
                raise ValueError(f"CenterPointHead: iou_pow must be a float >= 0 or None, got {iou_pow!r}")
            if not with_iou:
                raise ValueError("CenterPointHead: iou_pow scores with the IoU branch: it needs with_iou=True")
            if any(a != 0 for a in self.iou_rectifier):
                raise ValueError("CenterPointHead: iou_pow and a non-zero iou_rectifier are two IoU scorings; "
                                 "set only one")
        self.iou_pow = None if iou_pow is None else float(iou_pow)
        r = self.point_cloud_range
        self.post_center_range = (list(post_center_range) if post_center_range is not None
                                  else [r[0] - 10, r[1] - 10, r[2] - 10, r[3] + 10, r[4] + 10, r[5] + 10])
        if len(self.post_center_range) != 6:
            raise ValueError(f"CenterPointHead: post_center_range needs 6 values (x0, y0, z0, x1, y1, z1), "
                             f"got {len(self.post_center_range)}")

        self.shared_conv = FoldingSequential(nn.Conv2d(in_channels, shared_channels, 3, 1, 1, bias=False),
                                             nn.BatchNorm2d(shared_channels, eps=self.shared_norm_eps),
                                             nn.ReLU(inplace=True))
        self.heads = nn.ModuleList()
        for t in tasks:
            branches = {"heatmap": len(t), "center": 2, "center_z": 1, "dim": 3, "rot": 2}
            if with_velocity:
                branches["vel"] = 2
            if with_iou:
                branches["iou"] = 1
            self.heads.append(SeparateHead(shared_channels, head_channels, branches, num_conv,
                                           norm_eps=self.head_norm_eps))

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, bev: torch.Tensor) -> CenterHeadOutput:
        """(B, C, H, W) BEV features -> :class:`CenterHeadOutput`."""
        x = self.shared_conv(bev)
        return CenterHeadOutput([TaskPrediction(**head(x)) for head in self.heads])

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def cell_size(self) -> tuple[float, float]:
        """Metres per feature-map cell (x, y)."""
        return self.voxel_size[0] * self.feature_stride, self.voxel_size[1] * self.feature_stride

    def feature_shape(self) -> tuple[int, int]:
        """(H, W) of the feature map the head expects."""
        r = self.point_cloud_range
        cx, cy = self.cell_size
        return int(round((r[4] - r[1]) / cy)), int(round((r[3] - r[0]) / cx))

    # ---- targets --------------------------------------------------------------------------------
    def encode(self, boxes: torch.Tensor, index_xy: torch.Tensor) -> torch.Tensor:
        """Boxes (M, 7|9) at integer cells (M, 2) (x, y) -> (M, 8|10) regression codes.

        The dim and rot channels follow ``box_convention`` and ``rot_order``.
        """
        r = self.point_cloud_range
        cx, cy = self.cell_size
        fx = (boxes[:, 0] - r[0]) / cx
        fy = (boxes[:, 1] - r[1]) / cy
        log_dims = [torch.log(boxes[:, i].clamp(min=1e-3)) for i in (3, 4, 5)]
        yaw = boxes[:, 6]
        if self.box_convention == "mmdet3d_legacy":
            # angle a = -yaw - pi/2: sin a = -cos yaw, cos a = -sin yaw; dims (dy, dx, dz)
            log_dims = [log_dims[1], log_dims[0], log_dims[2]]
            sin_a, cos_a = -torch.cos(yaw), -torch.sin(yaw)
        else:
            sin_a, cos_a = torch.sin(yaw), torch.cos(yaw)
        rot = [sin_a, cos_a] if self.rot_order == "sin_cos" else [cos_a, sin_a]
        parts = [fx - index_xy[:, 0], fy - index_xy[:, 1], boxes[:, 2], *log_dims, *rot]
        if self.with_velocity:
            vel = boxes[:, 7:9] if boxes.shape[1] >= 9 else boxes.new_zeros(len(boxes), 2)
            parts += [vel[:, 0], vel[:, 1]]
        return torch.stack(parts, 1)

    def decode(self, code: torch.Tensor, index_xy: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`: (M, 8|10) codes at cells (M, 2) (x, y) -> pointwin boxes (M, 7|9).

        ``x = (cell_x + code_0) * cell size + x0`` (y likewise), ``dims = exp(log dims)`` (clamped at
        ``max_log_dim`` unless None), ``yaw = atan2(sin, cos)`` of the rot channels in ``rot_order``
        (``atan2(-cos, -sin)`` with ``box_convention="mmdet3d_legacy"``, i.e. ``-a - pi/2`` wrapped).
        """
        r = self.point_cloud_range
        cx, cy = self.cell_size
        x = (index_xy[:, 0] + code[:, 0]) * cx + r[0]
        y = (index_xy[:, 1] + code[:, 1]) * cy + r[1]
        log_dims = code[:, 3:6] if self.max_log_dim is None else code[:, 3:6].clamp(max=self.max_log_dim)
        dims = torch.exp(log_dims)
        sin_a, cos_a = (code[:, 6], code[:, 7]) if self.rot_order == "sin_cos" else (code[:, 7], code[:, 6])
        if self.box_convention == "mmdet3d_legacy":
            dims = dims[:, [1, 0, 2]]
            yaw = torch.atan2(-cos_a, -sin_a)
        else:
            yaw = torch.atan2(sin_a, cos_a)
        parts = [x[:, None], y[:, None], code[:, 2:3], dims, yaw[:, None]]
        if self.with_velocity:
            parts.append(code[:, 8:10])
        return torch.cat(parts, 1)

    def targets(self, boxes: Sequence[Boxes3D], labels: Sequence[torch.Tensor], device: torch.device
                ) -> list[TaskTargets]:
        """Heatmaps and regression targets for a batch, one :class:`TaskTargets` per task."""
        H, W = self.feature_shape()
        cx, cy = self.cell_size
        r = self.point_cloud_range
        B, K = len(boxes), self.max_objs
        box_dim = 9 if self.with_velocity else 7
        code_size = len(self.code_weights)
        out = []
        for task_ids in self.task_class_ids:
            heat = torch.zeros(B, len(task_ids), H, W, device=device)
            index = torch.zeros(B, K, dtype=torch.long, device=device)
            mask = torch.zeros(B, K, dtype=torch.bool, device=device)
            code = torch.zeros(B, K, code_size, device=device)
            gt = torch.zeros(B, K, box_dim, device=device)
            for b in range(B):
                t = boxes[b].tensor.to(device=device, dtype=torch.float32)
                lab = labels[b].to(device).long()
                if len(t) != len(lab):
                    raise ValueError(f"CenterPointHead.targets: sample {b} has {len(t)} boxes but {len(lab)} labels")
                local = (lab[:, None] == task_ids.to(device)[None]).float().argmax(1)
                keep = (lab[:, None] == task_ids.to(device)[None]).any(1)
                t, local = t[keep], local[keep]
                if t.shape[1] < box_dim:
                    t = torch.cat([t, t.new_zeros(len(t), box_dim - t.shape[1])], 1)
                t = t[:, :box_dim]
                fx = (t[:, 0] - r[0]) / cx
                fy = (t[:, 1] - r[1]) / cy
                ix, iy = torch.floor(fx).long(), torch.floor(fy).long()
                inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H) & (t[:, 3] > 0) & (t[:, 4] > 0)
                t, local, ix, iy = t[inside][:K], local[inside][:K], ix[inside][:K], iy[inside][:K]
                if len(t) == 0:
                    continue
                radius = gaussian_radius(t[:, 4] / cy, t[:, 3] / cx, self.gaussian_overlap)
                radius = torch.clamp(radius.floor().long(), min=self.min_radius)
                for k in range(len(t)):
                    draw_gaussian(heat[b, int(local[k])], (int(ix[k]), int(iy[k])), int(radius[k]))
                m = len(t)
                index[b, :m] = iy * W + ix
                mask[b, :m] = True
                code[b, :m] = self.encode(t, torch.stack([ix, iy], 1).float())
                gt[b, :m] = t
            out.append(TaskTargets(heat, index, mask, code, gt))
        return out

    # ---- losses ---------------------------------------------------------------------------------
    def loss(self, output: CenterHeadOutput, boxes: Sequence[Boxes3D], labels: Sequence[torch.Tensor]
             ) -> dict[str, torch.Tensor]:
        """Named losses (per task and summed); ``"loss"`` is the weighted total."""
        device = output.tasks[0].heatmap.device
        targets = self.targets(boxes, labels, device)
        H, W = output.tasks[0].heatmap.shape[-2:]
        if (H, W) != self.feature_shape():
            raise ValueError(f"CenterPointHead: feature map is {(H, W)} but point_cloud_range / voxel_size / "
                             f"feature_stride imply {self.feature_shape()}")
        weights = torch.tensor(self.code_weights, device=device)
        losses: dict[str, torch.Tensor] = {}
        total = output.tasks[0].heatmap.new_zeros(())
        for i, (pred, tgt) in enumerate(zip(output.tasks, targets, strict=True)):
            hm = focal_loss(pred.heatmap.float(), tgt.heatmap)
            code_pred = gather_cells(pred.box_code().float(), tgt.index)
            m = tgt.mask[..., None].float()
            num = tgt.mask.sum().float()
            per_code = (torch.abs(code_pred - tgt.box_code) * m).sum((0, 1)) / (num + 1e-4)
            reg = (per_code * weights).sum()
            losses[f"task{i}.heatmap"] = hm.detach()
            losses[f"task{i}.reg"] = reg.detach()
            total = total + self.heatmap_weight * hm + self.reg_weight * reg
            if self.with_iou:
                iou_loss = self._iou_loss(pred, tgt, code_pred.detach())
                losses[f"task{i}.iou"] = iou_loss.detach()
                total = total + self.iou_weight * iou_loss
        losses["loss"] = total
        return losses

    def _iou_loss(self, pred: TaskPrediction, tgt: TaskTargets, code_pred: torch.Tensor) -> torch.Tensor:
        """L1 between the IoU branch and the 3D IoU of the decoded box with its GT (2 IoU - 1 for
        ``iou_range="signed"``, the IoU for ``"unit"``), averaged over objects."""
        from ...ops import boxes_iou3d

        iou_pred = gather_cells(pred.iou.float(), tgt.index)[..., 0]
        sel = tgt.mask
        if not bool(sel.any()):
            return iou_pred.sum() * 0
        H, W = pred.heatmap.shape[-2:]
        idx = tgt.index[sel]
        cells = torch.stack([idx % W, idx // W], 1).float()
        decoded = self.decode(code_pred[sel], cells)[:, :7]
        gt = tgt.boxes[sel][:, :7]
        iou = boxes_iou3d(decoded, gt, aligned=True).to(iou_pred.dtype).clamp(0, 1)
        target = 2 * iou - 1 if self.iou_range == "signed" else iou
        return torch.abs(iou_pred[sel] - target).sum() / (sel.sum() + 1e-4)

    # ---- decoding -------------------------------------------------------------------------------
    def read_iou(self, iou: torch.Tensor) -> torch.Tensor:
        """IoU-branch values p (any shape) -> predicted IoU as ``iou_range`` reads them: ``(p + 1) / 2``
        (signed) or ``p`` (unit), not clamped."""
        return (iou + 1) / 2 if self.iou_range == "signed" else iou

    def score(self, raw: torch.Tensor, iou: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """Final scores from heatmap sigmoids ``raw``, predicted IoUs (:meth:`read_iou`, broadcastable to
        ``raw``, or None) and 0-based class indices ``labels`` (``raw``'s shape). With ``q = clamp(iou, 0, 1)``:
        ``raw * q^iou_pow`` when ``iou_pow`` is set, else ``raw^(1-a) * q^a`` with ``a = iou_rectifier[label]``;
        ``raw`` without IoU."""
        if iou is None:
            return raw
        iou = iou.clamp(0, 1)
        if self.iou_pow is not None:
            return raw * iou.pow(self.iou_pow)
        alpha = torch.tensor(self.iou_rectifier, device=raw.device, dtype=raw.dtype)[labels]
        return raw.pow(1 - alpha) * iou.pow(alpha)

    @torch.no_grad()
    def candidates(self, output: CenterHeadOutput) -> list[list[TaskCandidates]]:
        """Decoded boxes before NMS: ``result[b][t]`` is the :class:`TaskCandidates` of sample b and task t.

        Per sample and task (heatmap (B, C, H, W)): the top ``min(pre_max, C * H * W)`` (class, cell) pairs by
        the ``topk_on`` score, decoded at their cells; kept when the ``threshold_on`` score is
        > ``score_threshold`` and the centre lies in ``post_center_range``. Rows stay in top-K order.
        """
        B = output.tasks[0].heatmap.shape[0]
        result: list[list[TaskCandidates]] = [[] for _ in range(B)]
        pr = self.post_center_range
        for pred, class_ids in zip(output.tasks, self.task_class_ids, strict=True):
            heat = pred.heatmap.float().sigmoid()
            _, C, H, W = heat.shape
            ids = class_ids.to(heat.device)
            q_map = self.read_iou(pred.iou.float()) if pred.iou is not None else None  # (B, 1, H, W)
            if self.topk_on == "rectified" and q_map is not None:
                rank = self.score(heat, q_map, ids[None, :, None, None].expand_as(heat))
            else:
                rank = heat
            k = min(self.pre_max, C * H * W)
            flat = rank.reshape(B, -1).topk(k, dim=1).indices
            cls_local, cell = flat // (H * W), flat % (H * W)
            raw = heat.reshape(B, -1).gather(1, flat)
            code = gather_cells(pred.box_code().float(), cell)
            iou = gather_cells(q_map, cell)[..., 0] if q_map is not None else None
            labels = ids[cls_local]
            lo = torch.tensor(pr[:3], device=heat.device)
            hi = torch.tensor(pr[3:], device=heat.device)
            for b in range(B):
                ys, xs = cell[b] // W, cell[b] % W
                boxes = self.decode(code[b], torch.stack([xs, ys], 1).float())
                q = iou[b] if iou is not None else None
                s = self.score(raw[b], q, labels[b])
                keep = (raw[b] if self.threshold_on == "raw" else s) > self.score_threshold
                keep &= (boxes[:, :3] >= lo).all(1) & (boxes[:, :3] <= hi).all(1)
                result[b].append(TaskCandidates(
                    boxes=boxes[keep], scores=s[keep], labels=labels[b][keep], raw_scores=raw[b][keep],
                    iou=q[keep] if q is not None else None,
                    cells=torch.stack([cls_local[b], ys, xs], 1)[keep]))
        return result

    @torch.no_grad()
    def predict(self, output: CenterHeadOutput) -> list[Detections]:
        """:meth:`candidates` then NMS per task -> one :class:`Detections` per sample (boxes (N, 7|9),
        scores (N,), 0-based labels (N,); each task's boxes by descending score)."""
        results = []
        for per_task in self.candidates(output):
            parts = [self._nms(c.boxes, c.scores, c.labels, t) for t, c in enumerate(per_task)]
            boxes = torch.cat([p[0] for p in parts])
            scores = torch.cat([p[1] for p in parts])
            labels = torch.cat([p[2] for p in parts])
            results.append(Detections(Boxes3D(boxes), scores, labels))
        return results

    def _nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, task_id: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NMS of one task's candidates -> kept (boxes, scores, labels) by descending score, at most post_max.

        rotate: per class c, the best ``nms_pre_max[c]`` boxes, greedy rotated BEV NMS at
        ``nms_iou_threshold[c]``, the first ``nms_post_max[c]`` kept."""
        if len(boxes) == 0 or self.nms_type == "none":
            order = torch.sort(scores, descending=True, stable=True).indices[: self.post_max]
            return boxes[order], scores[order], labels[order]
        if self.nms_type == "circle":
            from ...ops import circle_nms

            order = torch.sort(scores, descending=True, stable=True).indices
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            keep = circle_nms(boxes[:, :2], scores, self.circle_radius[task_id])
            keep = _as_index(keep, len(boxes))[: self.post_max]
            return boxes[keep], scores[keep], labels[keep]
        from ...ops import nms_bev

        footprint = boxes[:, [0, 1, 2, 4, 3, 5, 6]] if self.nms_swap_dims else boxes[:, :7]
        kept = []
        for c in labels.unique().tolist():
            idx = (labels == c).nonzero()[:, 0]
            keep = nms_bev(footprint[idx], scores[idx], self.nms_iou_threshold[c], pre_max=self.nms_pre_max[c],
                           post_max=self.nms_post_max[c])
            kept.append(idx[_as_index(keep, len(idx))])
        keep = torch.cat(kept)
        keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices][: self.post_max]
        return boxes[keep], scores[keep], labels[keep]


def _as_index(keep: torch.Tensor, n: int) -> torch.Tensor:
    """NMS results as int64 indices whether the op returns indices or a bool mask."""
    keep = torch.as_tensor(keep)
    if keep.dtype == torch.bool:
        if keep.numel() != n:
            raise ValueError(f"NMS returned a mask of {keep.numel()} entries for {n} boxes")
        return keep.nonzero()[:, 0]
    return keep.long()


__all__ = ["CenterHeadOutput", "CenterPointHead", "TaskCandidates", "TaskPrediction", "TaskTargets", "draw_gaussian",
           "focal_loss", "gather_cells", "gaussian_radius"]
