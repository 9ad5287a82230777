"""CenterPoint head: class-grouped heatmaps plus box regression on a BEV feature map.

Reference: Yin, Zhou, Krähenbühl, "Center-based 3D Object Detection and Tracking" (CVPR 2021); the
IoU branch and IoU-rectified scores follow CIA-SSD / AFDetV2 as used by DSVT on Waymo.

Encoding of one box at feature cell (i, j) = floor(centre in feature cells):
``[cx - j, cy - i, z, log dx, log dy, log dz, sin yaw, cos yaw (, vx, vy)]``.
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
        dim: log of (dx, dy, dz).
        rot: (sin yaw, cos yaw).
        vel: (vx, vy) in m/s, or None.
        iou: predicted IoU mapped to [-1, 1], or None.
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

    Shapes: (B, Cin, H, W) -> {branch: (B, out, H, W)}.
    """

    def __init__(self, in_channels: int, head_channels: int, branches: dict[str, int], num_conv: int = 2,
                 heatmap_init_bias: float = -2.19) -> None:
        super().__init__()
        self.branches = nn.ModuleDict()
        for name, out in branches.items():
            layers: list[nn.Module] = []
            c = in_channels
            for _ in range(num_conv - 1):
                layers += [nn.Conv2d(c, head_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(head_channels),
                           nn.ReLU(inplace=True)]
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


class CenterPointHead(nn.Module):
    """CenterPoint detection head.

    Args:
        in_channels: channels of the BEV feature map.
        class_names: all class names (labels index into this list).
        tasks: class groups, each a list of names; one heatmap per group (default: one group of all).
        point_cloud_range: (x0, y0, z0, x1, y1, z1) metres.
        voxel_size: (vx, vy[, vz]) metres of one BEV grid cell before the 2D backbone.
        feature_stride: BEV grid cells per feature-map cell (CenterPoint's ``out_size_factor``).
        with_velocity / with_iou: add the (vx, vy) and IoU branches.
        gaussian_overlap, min_radius: heatmap radius rule.
        max_objs: most objects per sample and task.
        code_weights: per-channel weights of the L1 regression loss (8 or 10 values).
        heatmap_weight, reg_weight, iou_weight: loss weights.
        score_threshold, pre_max, post_max: decoding (top-K per task = pre_max).
        nms_type: "rotate" (class-specific rotated BEV NMS), "circle" (CenterPoint's centre-distance NMS
            per task) or "none".
        nms_iou_threshold: rotated NMS threshold, a float or one per class.
        circle_radius: circle NMS distance in metres, one per task.
        iou_rectifier: alpha per class (or one float) for ``score^(1-a) * iou^a``; 0 disables.
        post_center_range: boxes whose centre lies outside are dropped (default: the point range widened).
    """

    def __init__(self, in_channels: int, class_names: Sequence[str], point_cloud_range: Sequence[float],
                 voxel_size: Sequence[float], feature_stride: float = 1, tasks: Sequence[Sequence[str]] | None = None,
                 shared_channels: int = 64, head_channels: int = 64, num_conv: int = 2,
                 with_velocity: bool = False, with_iou: bool = False, gaussian_overlap: float = 0.1,
                 min_radius: int = 2, max_objs: int = 500, code_weights: Sequence[float] | None = None,
                 heatmap_weight: float = 1.0, reg_weight: float = 2.0, iou_weight: float = 1.0,
                 score_threshold: float = 0.1, pre_max: int = 500, post_max: int = 100, nms_type: str = "rotate",
                 nms_iou_threshold: float | Sequence[float] = 0.7, circle_radius: Sequence[float] | None = None,
                 iou_rectifier: float | Sequence[float] = 0.0,
                 post_center_range: Sequence[float] | None = None) -> None:
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
        self.gaussian_overlap, self.min_radius, self.max_objs = gaussian_overlap, min_radius, max_objs
        code_size = 10 if with_velocity else 8
        self.code_weights = list(code_weights) if code_weights is not None else [1.0] * code_size
        if len(self.code_weights) != code_size:
            raise ValueError(f"CenterPointHead: code_weights needs {code_size} values, got {len(self.code_weights)}")
        self.heatmap_weight, self.reg_weight, self.iou_weight = heatmap_weight, reg_weight, iou_weight
        self.score_threshold, self.pre_max, self.post_max = score_threshold, pre_max, post_max
        if nms_type not in ("rotate", "circle", "none"):
            raise ValueError(f"CenterPointHead nms_type must be 'rotate', 'circle' or 'none', got {nms_type!r}")
        self.nms_type = nms_type
        n_cls = len(self.class_names)
        thr = nms_iou_threshold
        self.nms_iou_threshold = [float(thr)] * n_cls if isinstance(thr, (int, float)) else [float(t) for t in thr]
        if len(self.nms_iou_threshold) != n_cls:
            raise ValueError(f"CenterPointHead: nms_iou_threshold needs one value per class ({n_cls})")
        self.circle_radius = [float(r) for r in (circle_radius or [1.0] * len(tasks))]
        if len(self.circle_radius) != len(tasks):
            raise ValueError(f"CenterPointHead: circle_radius needs one value per task ({len(tasks)})")
        a = iou_rectifier
        self.iou_rectifier = [float(a)] * n_cls if isinstance(a, (int, float)) else [float(v) for v in a]
        if len(self.iou_rectifier) != n_cls:
            raise ValueError(f"CenterPointHead: iou_rectifier needs one value per class ({n_cls})")
        r = self.point_cloud_range
        self.post_center_range = (list(post_center_range) if post_center_range is not None
                                  else [r[0] - 10, r[1] - 10, r[2] - 10, r[3] + 10, r[4] + 10, r[5] + 10])

        self.shared_conv = FoldingSequential(nn.Conv2d(in_channels, shared_channels, 3, 1, 1, bias=False),
                                             nn.BatchNorm2d(shared_channels), nn.ReLU(inplace=True))
        self.heads = nn.ModuleList()
        for t in tasks:
            branches = {"heatmap": len(t), "center": 2, "center_z": 1, "dim": 3, "rot": 2}
            if with_velocity:
                branches["vel"] = 2
            if with_iou:
                branches["iou"] = 1
            self.heads.append(SeparateHead(shared_channels, head_channels, branches, num_conv))

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
        """Boxes (M, 7|9) at integer cells (M, 2) (x, y) -> (M, 8|10) regression codes."""
        r = self.point_cloud_range
        cx, cy = self.cell_size
        fx = (boxes[:, 0] - r[0]) / cx
        fy = (boxes[:, 1] - r[1]) / cy
        parts = [fx - index_xy[:, 0], fy - index_xy[:, 1], boxes[:, 2],
                 torch.log(boxes[:, 3].clamp(min=1e-3)), torch.log(boxes[:, 4].clamp(min=1e-3)),
                 torch.log(boxes[:, 5].clamp(min=1e-3)), torch.sin(boxes[:, 6]), torch.cos(boxes[:, 6])]
        if self.with_velocity:
            vel = boxes[:, 7:9] if boxes.shape[1] >= 9 else boxes.new_zeros(len(boxes), 2)
            parts += [vel[:, 0], vel[:, 1]]
        return torch.stack(parts, 1)

    def decode(self, code: torch.Tensor, index_xy: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`: (M, 8|10) codes at cells (M, 2) -> boxes (M, 7|9)."""
        r = self.point_cloud_range
        cx, cy = self.cell_size
        x = (index_xy[:, 0] + code[:, 0]) * cx + r[0]
        y = (index_xy[:, 1] + code[:, 1]) * cy + r[1]
        dims = torch.exp(code[:, 3:6].clamp(max=10))
        yaw = torch.atan2(code[:, 6], code[:, 7])
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
        return torch.abs(iou_pred[sel] - (2 * iou - 1)).sum() / (sel.sum() + 1e-4)

    # ---- decoding -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, output: CenterHeadOutput) -> list[Detections]:
        """Top-K decode, score threshold, IoU rectification and NMS -> one :class:`Detections` per sample."""
        B = output.tasks[0].heatmap.shape[0]
        per_sample: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(B)]
        for t_id, (pred, class_ids) in enumerate(zip(output.tasks, self.task_class_ids, strict=True)):
            heat = pred.heatmap.float().sigmoid()
            _, C, H, W = heat.shape
            k = min(self.pre_max, C * H * W)
            scores, flat = heat.reshape(B, -1).topk(k, dim=1)
            cls_local, cell = flat // (H * W), flat % (H * W)
            code = gather_cells(pred.box_code().float(), cell)
            iou = gather_cells(pred.iou.float(), cell)[..., 0] if pred.iou is not None else None
            labels = class_ids.to(heat.device)[cls_local]
            for b in range(B):
                cells = torch.stack([cell[b] % W, cell[b] // W], 1).float()
                boxes = self.decode(code[b], cells)
                s, lab = scores[b], labels[b]
                if iou is not None:
                    alpha = torch.tensor(self.iou_rectifier, device=s.device)[lab]
                    q = ((iou[b] + 1) / 2).clamp(0, 1)
                    s = s.pow(1 - alpha) * q.pow(alpha)
                pr = self.post_center_range
                keep = (s > self.score_threshold)
                keep &= (boxes[:, :3] >= torch.tensor(pr[:3], device=s.device)).all(1)
                keep &= (boxes[:, :3] <= torch.tensor(pr[3:], device=s.device)).all(1)
                boxes, s, lab = boxes[keep], s[keep], lab[keep]
                boxes, s, lab = self._nms(boxes, s, lab, t_id)
                per_sample[b].append((boxes, s, lab))
        results = []
        for parts in per_sample:
            boxes = torch.cat([p[0] for p in parts])
            scores = torch.cat([p[1] for p in parts])
            labels = torch.cat([p[2] for p in parts])
            results.append(Detections(Boxes3D(boxes), scores, labels))
        return results

    def _nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, task_id: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if len(boxes) == 0 or self.nms_type == "none":
            order = scores.argsort(descending=True)[: self.post_max]
            return boxes[order], scores[order], labels[order]
        if self.nms_type == "circle":
            from ...ops import circle_nms

            order = scores.argsort(descending=True)
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            keep = circle_nms(boxes[:, :2], scores, self.circle_radius[task_id])
            keep = _as_index(keep, len(boxes))[: self.post_max]
            return boxes[keep], scores[keep], labels[keep]
        from ...ops import nms_bev

        kept = []
        for c in labels.unique().tolist():
            idx = (labels == c).nonzero()[:, 0]
            keep = _as_index(nms_bev(boxes[idx, :7], scores[idx], self.nms_iou_threshold[c]), len(idx))
            kept.append(idx[keep])
        keep = torch.cat(kept)
        keep = keep[scores[keep].argsort(descending=True)][: self.post_max]
        return boxes[keep], scores[keep], labels[keep]


def _as_index(keep: torch.Tensor, n: int) -> torch.Tensor:
    """NMS results as int64 indices whether the op returns indices or a bool mask."""
    keep = torch.as_tensor(keep)
    if keep.dtype == torch.bool:
        if keep.numel() != n:
            raise ValueError(f"NMS returned a mask of {keep.numel()} entries for {n} boxes")
        return keep.nonzero()[:, 0]
    return keep.long()


__all__ = ["CenterHeadOutput", "CenterPointHead", "TaskPrediction", "TaskTargets", "draw_gaussian", "focal_loss",
           "gather_cells", "gaussian_radius"]
