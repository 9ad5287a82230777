"""Dynamic voxelization: points -> unique voxel coordinates plus the point -> voxel inverse map.

Border convention (half-open cells, exact):

* A point ``p`` (x, y, z) lies in cell ``i = floor((p - p0) / v)`` per axis, evaluated in float64 on the
  point's stored value and the float64 range/size. float64 makes the index exact for float16/float32
  inputs regardless of device, so CPU and CUDA agree bit for bit.
* ``cell_dtype="float32"`` evaluates the same formula in float32 (``p0`` and ``v`` rounded to float32),
  as OpenPCDet's and mmdetection3d's dynamic voxelizers do. Points within ~1e-5 m of a cell border can
  then land in the neighbouring cell; a model converted from those frameworks needs this mode to see
  exactly the voxel sets it was trained on. Kept iff ``0 <= i < shape`` on every axis (their rule).
* A point is kept iff, on every axis, ``p0 <= p < p1`` and ``0 <= i < shape``: a point exactly at ``p1``
  is outside (dropped, never clamped), a point exactly at ``p0`` is in cell 0. The second condition only
  matters when ``(p1 - p0) / v`` is not an integer: the grid then covers ``[p0, p0 + shape * v)``.
* ``spatial_shape = (Z, Y, X)`` with ``X = round((x1 - x0) / vx)`` etc. A pillar grid uses
  ``vz = z1 - z0`` (so Z = 1).

Voxels are listed in ascending linear index ``((b * Z + z) * Y + y) * X + x``, i.e. sorted by
(batch, z, y, x), which makes the output deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..structures.points import Points
from ..structures.voxels import SparseVoxels

__all__ = ["Voxelization", "grid_shape", "voxel_pool", "voxelize"]


def grid_shape(voxel_size: Sequence[float], point_range: Sequence[float]) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of the grid covering ``point_range = (x0, y0, z0, x1, y1, z1)`` with ``voxel_size``."""
    if len(voxel_size) != 3:
        raise ValueError(f"voxel_size must be (vx, vy, vz), got {tuple(voxel_size)}")
    if len(point_range) != 6:
        raise ValueError(f"point_range must be (x0, y0, z0, x1, y1, z1), got {tuple(point_range)}")
    shape = []
    for axis, name in enumerate("xyz"):
        v, lo, hi = float(voxel_size[axis]), float(point_range[axis]), float(point_range[axis + 3])
        if not v > 0:
            raise ValueError(f"voxel_size {name} must be > 0, got {v}")
        if not hi > lo:
            raise ValueError(f"point_range {name}: upper bound {hi} must exceed lower bound {lo}")
        n = round((hi - lo) / v)
        if n < 1:
            raise ValueError(f"point_range {name} extent {hi - lo} is smaller than voxel_size {name} {v}")
        shape.append(n)
    return shape[2], shape[1], shape[0]


@dataclass
class Voxelization:
    """Result of :func:`voxelize`.

    Attributes:
        coords: int32 (V, 4) unique ``(b, z, y, x)`` rows, sorted by linear index.
        point_voxel: int64 (N,) row of ``coords`` holding each input point, -1 for dropped points.
        num_points: int64 (V,) points per voxel (all >= 1).
        spatial_shape: ``(Z, Y, X)``.
        batch_size: samples in the batch (copied from the Points).
        voxel_size: ``(vx, vy, vz)`` in metres.
        origin: ``(x0, y0, z0)``, the metric corner of cell (0, 0, 0).
        cell_dtype: "float64" or "float32", the arithmetic of the cell assignment (and of the centres).
    """

    coords: torch.Tensor
    point_voxel: torch.Tensor
    num_points: torch.Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float]
    cell_dtype: str = "float64"

    @property
    def num_voxels(self) -> int:
        return self.coords.shape[0]

    @property
    def kept(self) -> torch.Tensor:
        """(N,) bool, True for points inside the grid."""
        return self.point_voxel >= 0

    def voxel_centers(self) -> torch.Tensor:
        """(V, 3) float32 metric centres (x, y, z) of the voxels.

        In float32 mode the centre is ``cell * v + (v / 2 + p0)`` in float32 arithmetic, the expression the
        reference frameworks evaluate, so the VFE's centre offsets agree with theirs to the last bit.
        """
        if self.cell_dtype == "float32":
            dev = self.coords.device
            size = torch.tensor(self.voxel_size, dtype=torch.float32, device=dev)
            offset = torch.tensor([v / 2 + o for v, o in zip(self.voxel_size, self.origin, strict=True)],
                                  dtype=torch.float32, device=dev)
            return self.coords[:, [3, 2, 1]].float() * size + offset
        xyz = self.coords[:, [3, 2, 1]].to(torch.float64) + 0.5
        size = torch.tensor(self.voxel_size, dtype=torch.float64, device=self.coords.device)
        origin = torch.tensor(self.origin, dtype=torch.float64, device=self.coords.device)
        return (xyz * size + origin).to(torch.float32)

    def pool(self, feats: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
        """(V, C) per-voxel ``reduce`` of per-point ``feats`` (N, C); see :func:`voxel_pool`."""
        return voxel_pool(feats, self.point_voxel, self.num_voxels, reduce)

    def to_sparse(self, feats: torch.Tensor) -> SparseVoxels:
        """Wrap per-voxel features (V, C) as :class:`SparseVoxels` on this grid."""
        return SparseVoxels(feats, self.coords, self.spatial_shape, self.batch_size, self.voxel_size, self.origin)


CELL_DTYPES = ("float64", "float32")


def voxelize(points: Points | torch.Tensor, voxel_size: Sequence[float], point_range: Sequence[float],
             batch_idx: torch.Tensor | None = None, batch_size: int | None = None,
             cell_dtype: str = "float64") -> Voxelization:
    """Dynamic voxelization of a batch of points (3D voxels or pillars).

    Args:
        points: :class:`Points`, or a float tensor (N, >=3) with ``batch_idx`` (N,) and ``batch_size``
            (defaults: one sample).
        voxel_size: ``(vx, vy, vz)`` metres; pillars use ``vz = z1 - z0``.
        point_range: ``(x0, y0, z0, x1, y1, z1)``; half-open per axis (see the module docstring).
        cell_dtype: "float64" (exact, the default) or "float32" (the reference frameworks' arithmetic).

    Returns:
        :class:`Voxelization`; an empty cloud (or one with every point outside) gives V = 0.
    """
    if isinstance(points, Points):
        xyz, bidx, bsize = points.xyz, points.batch_idx, points.batch_size
    else:
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"voxelize: points must be Points or a (N, >=3) tensor, got "
                             f"{type(points).__name__} {tuple(getattr(points, 'shape', ()))}")
        xyz = points[:, :3]
        bidx = torch.zeros(len(points), dtype=torch.long, device=points.device) if batch_idx is None \
            else batch_idx.long()
        bsize = batch_size if batch_size is not None else (int(bidx.max()) + 1 if bidx.numel() else 1)
        if bidx.shape != (len(points),):
            raise ValueError(f"voxelize: batch_idx must be ({len(points)},), got {tuple(bidx.shape)}")
        if bidx.numel() and (int(bidx.min()) < 0 or int(bidx.max()) >= bsize):
            raise ValueError(f"voxelize: batch_idx must lie in [0, {bsize}), got range "
                             f"[{int(bidx.min())}, {int(bidx.max())}]")
    if cell_dtype not in CELL_DTYPES:
        raise ValueError(f"voxelize: cell_dtype must be one of {list(CELL_DTYPES)}, got {cell_dtype!r}")
    shape_zyx = grid_shape(voxel_size, point_range)
    device = xyz.device
    dtype = torch.float64 if cell_dtype == "float64" else torch.float32
    lo = torch.tensor([float(point_range[i]) for i in range(3)], dtype=dtype, device=device)
    hi = torch.tensor([float(point_range[i + 3]) for i in range(3)], dtype=dtype, device=device)
    size = torch.tensor([float(v) for v in voxel_size], dtype=dtype, device=device)
    shape_xyz = torch.tensor(shape_zyx[::-1], dtype=torch.int64, device=device)

    p = xyz.to(dtype)
    cellf = torch.floor((p - lo) / size)
    # NaN coordinates compare False everywhere, so they are dropped too (before the integer cast, which
    # would turn NaN and huge values into arbitrary integers).
    inside = (cellf >= 0) & (cellf < shape_xyz.to(dtype))
    if cell_dtype == "float64":
        inside &= (p >= lo) & (p < hi)
    keep = inside.all(1)
    cell = torch.where(inside, cellf, 0).to(torch.int64)  # (N, 3) x, y, z

    Z, Y, X = shape_zyx
    kept_idx = keep.nonzero().squeeze(1)
    c = cell[kept_idx]
    key = ((bidx[kept_idx] * Z + c[:, 2]) * Y + c[:, 1]) * X + c[:, 0]
    uniq, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)

    point_voxel = torch.full((xyz.shape[0],), -1, dtype=torch.int64, device=device)
    point_voxel[kept_idx] = inverse
    coords = torch.stack([uniq // (Z * Y * X), (uniq // (Y * X)) % Z, (uniq // X) % Y, uniq % X], 1)
    return Voxelization(
        coords=coords.to(torch.int32),
        point_voxel=point_voxel,
        num_points=counts.to(torch.int64),
        spatial_shape=shape_zyx,
        batch_size=int(bsize),
        voxel_size=tuple(float(v) for v in voxel_size),
        origin=tuple(float(point_range[i]) for i in range(3)),
        cell_dtype=cell_dtype,
    )


def voxel_pool(feats: torch.Tensor, point_voxel: torch.Tensor, num_voxels: int, reduce: str = "mean") -> torch.Tensor:
    """Pool per-point features into voxels with ``torch.scatter_reduce`` (differentiable).

    Args:
        feats: (N, C) per-point features.
        point_voxel: int64 (N,) voxel of each point, -1 for points to ignore.
        num_voxels: V.
        reduce: "mean", "max" or "sum".

    Returns:
        (V, C); a voxel that receives no point is 0.
    """
    if feats.ndim != 2 or point_voxel.shape != (feats.shape[0],):
        raise ValueError(f"voxel_pool: feats must be (N, C) and point_voxel (N,), got {tuple(feats.shape)} and "
                         f"{tuple(point_voxel.shape)}")
    ops = {"mean": "mean", "max": "amax", "sum": "sum"}
    if reduce not in ops:
        raise ValueError(f"voxel_pool: reduce must be one of {sorted(ops)}, got {reduce!r}")
    valid = point_voxel >= 0
    if not bool(valid.all()):
        feats, point_voxel = feats[valid], point_voxel[valid]
    out = feats.new_zeros(num_voxels, feats.shape[1])
    if feats.shape[0] == 0:
        return out
    index = point_voxel.long()[:, None].expand(-1, feats.shape[1])
    return out.scatter_reduce(0, index, feats, ops[reduce], include_self=False)
