"""Batched point clouds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_finite, check_tensor


@dataclass
class Points:
    """A batch of point clouds, concatenated.

    Attributes:
        data: float32 (N, C); columns 0..2 are x, y, z in metres, the rest are features
            (intensity, elongation, time lag, ...) named by ``channels``.
        batch_idx: int64 (N,), the sample each point belongs to, in [0, batch_size).
        batch_size: number of samples (a sample may have no points).
        channels: names of the C columns, e.g. ``("x", "y", "z", "intensity")``.

    pointwin's single batching convention: a separate ``batch_idx`` vector (never a float column).
    """

    data: torch.Tensor
    batch_idx: torch.Tensor
    batch_size: int
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_tensor("Points.data", self.data, ndim=2, dtypes=(torch.float32, torch.float16,
                                                                torch.bfloat16, torch.float64))
        if self.data.shape[1] < 3:
            raise ValueError(f"Points.data must have at least 3 columns (x, y, z), got shape "
                             f"{tuple(self.data.shape)}")
        check_finite("Points.data[:, :3]", self.data[:, :3])
        check_tensor("Points.batch_idx", self.batch_idx, ndim=1, dtypes=(torch.int64, torch.int32))
        if self.batch_idx.shape[0] != self.data.shape[0]:
            raise ValueError(f"Points.batch_idx has {self.batch_idx.shape[0]} entries but Points.data "
                             f"has {self.data.shape[0]} points")
        self.batch_idx = self.batch_idx.long()
        if self.batch_size < 0:
            raise ValueError(f"Points.batch_size must be >= 0, got {self.batch_size}")
        if self.batch_idx.numel():
            lo, hi = int(self.batch_idx.min()), int(self.batch_idx.max())
            if lo < 0 or hi >= self.batch_size:
                raise ValueError(f"Points.batch_idx must lie in [0, {self.batch_size}), got range [{lo}, {hi}]")
        if not self.channels:
            self.channels = ("x", "y", "z") + tuple(f"f{i}" for i in range(self.data.shape[1] - 3))
        elif len(self.channels) != self.data.shape[1]:
            raise ValueError(f"Points.channels names {len(self.channels)} columns {self.channels} but "
                             f"Points.data has {self.data.shape[1]}")

    @classmethod
    def from_list(cls, clouds: Sequence[torch.Tensor | np.ndarray], channels: Sequence[str] = ()) -> Points:
        """Concatenate per-sample (N_i, C) clouds into one batch."""
        tensors = [torch.as_tensor(c, dtype=torch.float32) for c in clouds]
        if not tensors:
            raise ValueError("Points.from_list needs at least one cloud")
        widths = {t.shape[1] for t in tensors if t.ndim == 2}
        if len(widths) != 1 or any(t.ndim != 2 for t in tensors):
            raise ValueError(f"Points.from_list: every cloud must be 2-D with the same number of columns, "
                             f"got shapes {[tuple(t.shape) for t in tensors]}")
        batch_idx = torch.cat([torch.full((len(t),), i, dtype=torch.long) for i, t in enumerate(tensors)])
        return cls(torch.cat(tensors), batch_idx, len(tensors), tuple(channels))

    @property
    def xyz(self) -> torch.Tensor:
        """(N, 3) coordinates."""
        return self.data[:, :3]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __len__(self) -> int:
        return self.data.shape[0]

    def sample(self, i: int) -> torch.Tensor:
        """The (N_i, C) points of sample ``i``."""
        return self.data[self.batch_idx == i]

    def counts(self) -> torch.Tensor:
        """(batch_size,) number of points per sample."""
        return torch.bincount(self.batch_idx, minlength=self.batch_size)

    def channel(self, name: str) -> torch.Tensor:
        """The column called ``name``."""
        try:
            return self.data[:, self.channels.index(name)]
        except ValueError:
            raise KeyError(f"Points has no channel {name!r}; channels are {self.channels}") from None

    def to(self, device: torch.device | str) -> Points:
        return Points(self.data.to(device), self.batch_idx.to(device), self.batch_size, self.channels)

    def select(self, mask: torch.Tensor) -> Points:
        """Keep the points where ``mask`` is true (batch size unchanged)."""
        return Points(self.data[mask], self.batch_idx[mask], self.batch_size, self.channels)
