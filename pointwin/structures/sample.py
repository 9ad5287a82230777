"""What datasets yield and what models consume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._checks import check_finite, check_tensor
from .boxes import Boxes3D
from .points import Points


@dataclass
class Sample:
    """One frame.

    Attributes:
        points: float32 (N, C), x, y, z first, then the dataset's feature channels.
        channels: names of the C columns.
        boxes: ground-truth boxes (may be empty); None for unlabelled frames.
        labels: int64 (M,) class index of each box into the dataset's ``class_names``.
        point_labels: int64 (N,) per-point semantic labels for segmentation (ignore index -1), or None.
        frame_id: unique name of the frame (used to match predictions with ground truth).
        meta: small JSON-able extras (timestamps, poses, num_lidar_pts, difficulty, ...).
    """

    points: torch.Tensor
    channels: tuple[str, ...]
    frame_id: str
    boxes: Boxes3D | None = None
    labels: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"Sample {self.frame_id!r}"
        check_tensor(f"{where} points", self.points, ndim=2, dtypes=(torch.float32, torch.float16, torch.bfloat16,
                                                                    torch.float64))
        self.channels = tuple(self.channels)
        if len(self.channels) != self.points.shape[1] or len(self.channels) < 3:
            raise ValueError(f"{where}: channels {self.channels} must name the {self.points.shape[1]} point columns "
                             f"(x, y, z first)")
        check_finite(f"{where} points[:, :3]", self.points[:, :3])
        if self.boxes is not None and not isinstance(self.boxes, Boxes3D):
            raise ValueError(f"{where}: boxes must be Boxes3D or None, got {type(self.boxes).__name__}")
        if self.labels is not None:
            check_tensor(f"{where} labels", self.labels, ndim=1, dtypes=(torch.int64, torch.int32))
            if self.boxes is None or len(self.labels) != len(self.boxes):
                raise ValueError(f"{where}: labels has {len(self.labels)} entries for "
                                 f"{'no' if self.boxes is None else len(self.boxes)} boxes")
        if self.point_labels is not None:
            check_tensor(f"{where} point_labels", self.point_labels, ndim=1,
                         dtypes=(torch.int64, torch.int32, torch.int16, torch.uint8))
            if len(self.point_labels) != len(self.points):
                raise ValueError(f"{where}: point_labels has {len(self.point_labels)} entries for "
                                 f"{len(self.points)} points")


@dataclass
class Batch:
    """A collated list of samples: points concatenated with a batch index, per-sample targets in lists."""

    points: Points
    frame_ids: list[str]
    boxes: list[Boxes3D] | None = None
    labels: list[torch.Tensor] | None = None
    point_labels: torch.Tensor | None = None
    metas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.points.batch_size

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.points.to(device), self.frame_ids,
            None if self.boxes is None else [b.to(device) for b in self.boxes],
            None if self.labels is None else [lab.to(device) for lab in self.labels],
            None if self.point_labels is None else self.point_labels.to(device),
            self.metas,
        )


def collate(samples: Sequence[Sample]) -> Batch:
    """Concatenate samples into a :class:`Batch` (the DataLoader ``collate_fn``)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    channels = samples[0].channels
    for s in samples:
        if s.channels != channels:
            raise ValueError(f"collate: frame {s.frame_id} has channels {s.channels}, expected {channels}")
    points = Points.from_list([s.points for s in samples], channels)
    labelled = all(s.boxes is not None for s in samples)
    seg = all(s.point_labels is not None for s in samples)
    return Batch(
        points=points,
        frame_ids=[s.frame_id for s in samples],
        boxes=[s.boxes for s in samples] if labelled else None,
        labels=[s.labels if s.labels is not None else torch.zeros(len(s.boxes), dtype=torch.long)
                for s in samples] if labelled else None,
        point_labels=torch.cat([s.point_labels.long() for s in samples]) if seg else None,
        metas=[s.meta for s in samples],
    )
