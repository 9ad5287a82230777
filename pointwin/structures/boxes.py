"""Upright 3D boxes in the LiDAR/ego frame."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_finite, check_tensor


def limit_period(angle: torch.Tensor, offset: float = 0.5, period: float = 2 * math.pi) -> torch.Tensor:
    """Wrap ``angle`` into ``[-offset * period, (1 - offset) * period)``."""
    return angle - torch.floor(angle / period + offset) * period


@dataclass
class Boxes3D:
    """M boxes ``(x, y, z, dx, dy, dz, yaw[, vx, vy])``.

    Gravity-centred, in metres; ``dx`` is the length along the heading, ``dy`` the width, ``dz`` the
    height; ``yaw`` is counter-clockwise from +x in radians; optional velocity ``(vx, vy)`` in m/s.

    Attributes:
        tensor: float (M, 7) or (M, 9).
    """

    tensor: torch.Tensor

    def __post_init__(self) -> None:
        if isinstance(self.tensor, np.ndarray):
            self.tensor = torch.from_numpy(np.ascontiguousarray(self.tensor, dtype=np.float32))
        if isinstance(self.tensor, torch.Tensor) and self.tensor.ndim == 1 and self.tensor.numel() == 0:
            self.tensor = self.tensor.reshape(0, 7)
        check_tensor("Boxes3D.tensor", self.tensor, ndim=2, last_dim=(7, 9),
                     dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16))
        check_finite("Boxes3D.tensor", self.tensor)
        if self.tensor.numel() and bool((self.tensor[:, 3:6] < 0).any()):
            raise ValueError("Boxes3D.tensor has a negative size (columns dx, dy, dz must be >= 0)")

    @classmethod
    def empty(cls, with_velocity: bool = False, device: torch.device | str = "cpu") -> Boxes3D:
        return cls(torch.zeros(0, 9 if with_velocity else 7, device=device))

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item) -> Boxes3D:
        t = self.tensor[item]
        return Boxes3D(t.reshape(1, -1) if t.ndim == 1 else t)

    @property
    def has_velocity(self) -> bool:
        return self.tensor.shape[1] == 9

    @property
    def center(self) -> torch.Tensor:
        """(M, 3) gravity centres."""
        return self.tensor[:, :3]

    @property
    def dims(self) -> torch.Tensor:
        """(M, 3) sizes (dx, dy, dz)."""
        return self.tensor[:, 3:6]

    @property
    def yaw(self) -> torch.Tensor:
        return self.tensor[:, 6]

    @property
    def velocity(self) -> torch.Tensor | None:
        return self.tensor[:, 7:9] if self.has_velocity else None

    @property
    def bottom_center(self) -> torch.Tensor:
        c = self.center.clone()
        c[:, 2] -= self.dims[:, 2] / 2
        return c

    def to(self, device: torch.device | str) -> Boxes3D:
        return Boxes3D(self.tensor.to(device))

    def clone(self) -> Boxes3D:
        return Boxes3D(self.tensor.clone())

    # ---- rigid transforms (return new boxes) -------------------------------------------------------
    def translate(self, offset: torch.Tensor | tuple[float, float, float]) -> Boxes3D:
        t = self.tensor.clone()
        t[:, :3] += torch.as_tensor(offset, dtype=t.dtype, device=t.device)
        return Boxes3D(t)

    def rotate(self, angle: float) -> Boxes3D:
        """Rotate about the z axis through the origin by ``angle`` radians (counter-clockwise)."""
        c, s = math.cos(angle), math.sin(angle)
        t = self.tensor.clone()
        x, y = t[:, 0].clone(), t[:, 1].clone()
        t[:, 0], t[:, 1] = c * x - s * y, s * x + c * y
        t[:, 6] = limit_period(t[:, 6] + angle)
        if self.has_velocity:
            vx, vy = t[:, 7].clone(), t[:, 8].clone()
            t[:, 7], t[:, 8] = c * vx - s * vy, s * vx + c * vy
        return Boxes3D(t)

    def flip(self, axis: str = "y") -> Boxes3D:
        """Mirror the scene by negating coordinate ``axis`` ("y": left-right, "x": front-back)."""
        t = self.tensor.clone()
        if axis == "y":
            t[:, 1] = -t[:, 1]
            t[:, 6] = limit_period(-t[:, 6])
            if self.has_velocity:
                t[:, 8] = -t[:, 8]
        elif axis == "x":
            t[:, 0] = -t[:, 0]
            t[:, 6] = limit_period(math.pi - t[:, 6])
            if self.has_velocity:
                t[:, 7] = -t[:, 7]
        else:
            raise ValueError(f"Boxes3D.flip axis must be 'x' or 'y', got {axis!r}")
        return Boxes3D(t)

    def scale(self, factor: float) -> Boxes3D:
        """Scale positions, sizes and velocities about the origin."""
        t = self.tensor.clone()
        t[:, :6] *= factor
        if self.has_velocity:
            t[:, 7:9] *= factor
        return Boxes3D(t)

    # ---- geometry ---------------------------------------------------------------------------------
    def bev_corners(self) -> torch.Tensor:
        """(M, 4, 2) BEV corners, counter-clockwise, starting at the front-left (+dx/2, +dy/2)."""
        half = self.dims[:, None, :2] / 2
        signs = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=self.tensor.dtype,
                             device=self.tensor.device)
        local = half * signs
        c, s = torch.cos(self.yaw)[:, None], torch.sin(self.yaw)[:, None]
        x = local[..., 0] * c - local[..., 1] * s
        y = local[..., 0] * s + local[..., 1] * c
        return torch.stack([x, y], -1) + self.center[:, None, :2]

    def corners(self) -> torch.Tensor:
        """(M, 8, 3) corners: the 4 bottom corners in :meth:`bev_corners` order, then the 4 top ones."""
        bev = self.bev_corners()
        zc, half = self.center[:, 2:3], self.dims[:, 2:3] / 2
        bottom = torch.cat([bev, (zc - half)[:, None].expand(-1, 4, 1)], -1)
        top = torch.cat([bev, (zc + half)[:, None].expand(-1, 4, 1)], -1)
        return torch.cat([bottom, top], 1)

    def volume(self) -> torch.Tensor:
        return self.dims.prod(-1)

    def nearest_bev(self) -> torch.Tensor:
        """(M, 4) axis-aligned BEV boxes (x1, y1, x2, y2) after snapping yaw to the nearest axis."""
        yaw = limit_period(self.yaw, 0.5, math.pi).abs()
        swap = yaw > math.pi / 4
        dxy = torch.where(swap[:, None], self.dims[:, [1, 0]], self.dims[:, :2])
        return torch.cat([self.center[:, :2] - dxy / 2, self.center[:, :2] + dxy / 2], -1)

    def in_range_bev(self, point_range: tuple[float, ...]) -> torch.Tensor:
        """(M,) bool: centre inside (x0, y0, _, x1, y1, _) in BEV."""
        x0, y0, _, x1, y1, _ = point_range
        x, y = self.center[:, 0], self.center[:, 1]
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


@dataclass
class Detections:
    """Detections of one sample: boxes with a score and a class index each."""

    boxes: Boxes3D
    scores: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if self.scores.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(f"Detections: scores {tuple(self.scores.shape)} and labels "
                             f"{tuple(self.labels.shape)} must both be ({n},) like the boxes")

    def __len__(self) -> int:
        return len(self.boxes)

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    def select(self, mask: torch.Tensor) -> Detections:
        return Detections(Boxes3D(self.boxes.tensor[mask]), self.scores[mask], self.labels[mask])
