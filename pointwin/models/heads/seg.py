"""Per-point segmentation head: per-voxel logits mapped to points through the voxel inverse map."""

from __future__ import annotations

import torch
from torch import nn

from ...structures import SparseVoxels


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Lovász-softmax loss (Berman et al., CVPR 2018), averaged over the classes present in ``labels``.

    probs: (N, K) softmax probabilities; labels: (N,) int64 with ``ignore_index`` skipped.
    """
    valid = labels != ignore_index
    probs, labels = probs[valid], labels[valid]
    if labels.numel() == 0:
        return probs.sum() * 0
    losses = []
    for c in labels.unique().tolist():
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        intersection = gts - fg_sorted.cumsum(0)
        union = gts + (1 - fg_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


class SegHead(nn.Module):
    """Linear classifier on voxel features, read out per point.

    Args:
        in_channels: backbone width.
        num_classes: K.
        ignore_index: label value left out of the losses.
        class_weights: optional (K,) cross-entropy weights.
        lovasz_weight: weight of the Lovász-softmax term (0 disables).

    Shapes: SparseVoxels (V, C) and point_voxel (N,) (-1 = no voxel) -> (N, K) logits (zeros without voxel).
    """

    def __init__(self, in_channels: int, num_classes: int, ignore_index: int = -1,
                 class_weights: list[float] | None = None, lovasz_weight: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.ignore_index, self.lovasz_weight = num_classes, ignore_index, lovasz_weight
        self.drop = nn.Dropout(dropout)
        self.cls = nn.Linear(in_channels, num_classes)
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"SegHead: class_weights needs {num_classes} values, got {len(class_weights)}")
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(class_weights),
                             persistent=False)

    def forward(self, voxels: SparseVoxels, point_voxel: torch.Tensor) -> torch.Tensor:
        voxel_logits = self.cls(self.drop(voxels.feats))
        kept = point_voxel >= 0
        out = voxel_logits.new_zeros(point_voxel.shape[0], self.num_classes)
        return out.index_put((kept.nonzero()[:, 0],), voxel_logits[point_voxel[kept]])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy (+ Lovász) over points with a label other than ``ignore_index``."""
        labels = labels.long()
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"SegHead.loss: labels must be in [0, {self.num_classes}) or {self.ignore_index}, got "
                             f"{labels[bad][:5].tolist()}")
        if bool((labels != self.ignore_index).any()):
            ce = nn.functional.cross_entropy(logits.float(), labels, weight=self.class_weights,
                                             ignore_index=self.ignore_index)
        else:
            ce = logits.sum() * 0
        out = {"ce": ce.detach()}
        total = ce
        if self.lovasz_weight:
            lv = lovasz_softmax(logits.float().softmax(1), labels, self.ignore_index)
            out["lovasz"] = lv.detach()
            total = total + self.lovasz_weight * lv
        out["loss"] = total
        return out
