"""Sparse voxel tensors."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._checks import check_finite, check_tensor


@dataclass
class SparseVoxels:
    """Active voxels of a batch of grids.

    Attributes:
        feats: (N, C) features of the N active voxels.
        coords: int32 (N, 4) rows ``(b, z, y, x)`` (spconv's order); unique per row.
        spatial_shape: grid size ``(Z, Y, X)``; a pillar grid has Z = 1.
        batch_size: number of samples in the batch (a sample may have no voxels).
        voxel_size: optional metres per voxel ``(vx, vy, vz)``, needed by :meth:`centers`.
        origin: optional metric position of the grid corner ``(x0, y0, z0)``.
        cache: derived structures (partitions, kernel maps) keyed by their settings. They are pure
            functions of ``coords``, so every voxel tensor that shares coords shares the cache
            (see :meth:`replace`).
    """

    feats: torch.Tensor
    coords: torch.Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int
    voxel_size: tuple[float, float, float] | None = None
    origin: tuple[float, float, float] | None = None
    cache: dict[Hashable, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_tensor("SparseVoxels.feats", self.feats, ndim=2)
        check_tensor("SparseVoxels.coords", self.coords, ndim=2, dtypes=(torch.int32,), last_dim=4)
        if self.feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"SparseVoxels.feats has {self.feats.shape[0]} rows but SparseVoxels.coords has "
                             f"{self.coords.shape[0]}")
        check_finite("SparseVoxels.feats", self.feats)
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        if len(self.spatial_shape) != 3 or min(self.spatial_shape) < 1:
            raise ValueError(f"SparseVoxels.spatial_shape must be 3 positive ints (Z, Y, X), got "
                             f"{self.spatial_shape}")
        if self.coords.numel():
            lo = self.coords.amin(0).tolist()
            hi = self.coords.amax(0).tolist()
            if lo[0] < 0:
                raise ValueError(f"SparseVoxels.coords has a negative batch id ({lo[0]})")
            if hi[0] >= self.batch_size:
                raise ValueError(f"SparseVoxels.coords has batch id {hi[0]} but batch_size is {self.batch_size}")
            for axis, name in enumerate("zyx", start=1):
                size = self.spatial_shape[axis - 1]
                if lo[axis] < 0 or hi[axis] >= size:
                    raise ValueError(f"SparseVoxels.coords {name} range [{lo[axis]}, {hi[axis]}] is outside "
                                     f"spatial_shape {name} extent [0, {size})")

    @property
    def num_voxels(self) -> int:
        return self.coords.shape[0]

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def batch_idx(self) -> torch.Tensor:
        """(N,) int64 sample of each voxel."""
        return self.coords[:, 0].long()

    def replace(self, feats: torch.Tensor) -> SparseVoxels:
        """Same voxels, new features; the cache is shared (it depends on coords only).

        The coordinates were validated when this object was built, so only the new features' shape is
        checked: no full read of the tensors and no host synchronisation per call (a forward calls this
        dozens of times). Non-finite values pass through to the loss, where the trainer's skip logic sees them.
        """
        if feats.ndim != 2 or feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"SparseVoxels.replace: feats must be ({self.coords.shape[0]}, C) like the coords, got "
                             f"{tuple(feats.shape)}")
        out = object.__new__(SparseVoxels)
        out.feats, out.coords, out.spatial_shape, out.batch_size = feats, self.coords, self.spatial_shape, \
            self.batch_size
        out.voxel_size, out.origin, out.cache = self.voxel_size, self.origin, self.cache
        return out

    def cached(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """Return ``cache[key]``, computing it with ``build()`` (outside autograd) the first time."""
        if key not in self.cache:
            with torch.no_grad():
                self.cache[key] = build()
        return self.cache[key]

    def centers(self) -> torch.Tensor:
        """(N, 3) metric voxel centres (x, y, z); needs ``voxel_size`` and ``origin``."""
        if self.voxel_size is None or self.origin is None:
            raise ValueError("SparseVoxels.centers needs voxel_size and origin to be set")
        xyz = self.coords[:, [3, 2, 1]].to(torch.float32) + 0.5
        size = torch.tensor(self.voxel_size, dtype=torch.float32, device=self.coords.device)
        origin = torch.tensor(self.origin, dtype=torch.float32, device=self.coords.device)
        return xyz * size + origin

    def to(self, device: torch.device | str) -> SparseVoxels:
        return SparseVoxels(self.feats.to(device), self.coords.to(device), self.spatial_shape, self.batch_size,
                            self.voxel_size, self.origin)

    def dense(self) -> torch.Tensor:
        """(B, C, Z, Y, X) dense tensor with zeros at inactive sites (for tests and small grids)."""
        Z, Y, X = self.spatial_shape
        out = self.feats.new_zeros(self.batch_size, Z, Y, X, self.feats.shape[1])
        c = self.coords.long()
        out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = self.feats
        return out.permute(0, 4, 1, 2, 3).contiguous()

    @staticmethod
    def linear_index(coords: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
        """int64 key b*Z*Y*X + z*Y*X + y*X + x of (b, z, y, x) rows: unique, and sorts like the rows."""
        Z, Y, X = (int(s) for s in spatial_shape)
        c = coords.long()
        return ((c[:, 0] * Z + c[:, 1]) * Y + c[:, 2]) * X + c[:, 3]
