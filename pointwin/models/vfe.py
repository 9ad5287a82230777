"""Voxel feature encoders: a PointNet over the points of each voxel (dynamic, no point cap).

Per-point input = the first ``num_point_features`` columns of :class:`~pointwin.structures.Points`
(x, y, z then intensity, elongation, time lag ... as the dataset provides), plus the offset to the
voxel's point mean (``with_cluster_center``), the offset to the voxel's geometric centre
(``with_voxel_center``) and the distance to the sensor (``with_distance``). Each PFN layer is
Linear (no bias) -> BatchNorm -> ReLU per point; between layers the voxel-wise max is concatenated back
to every point; the last layer's voxel-wise max is the voxel feature (PointPillars / DynamicVFE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..nn.conv import fold_batchnorm, foldable
from ..ops import voxel_pool, voxelize
from ..ops.voxelize import CELL_DTYPES, Voxelization, grid_shape
from ..structures import Points, SparseVoxels


class PFNLayer(nn.Module):
    """One PointNet layer: (P, Cin) points -> (P, Cout) per point and (V, Cout) per-voxel max.

    From the second layer on, the input of a point is its previous feature concatenated with its voxel's
    previous max (``context``). The linear map of that concatenation is computed as two parts, the point
    part on P rows and the voxel part on V rows gathered to the points, which is the same number without
    materialising the (P, 2 Cin) concatenation. In eval mode the BatchNorm is folded into the weights.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)
        self.norm = nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor, point_voxel: torch.Tensor, num_voxels: int,
                context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (P, Cx), point_voxel (P,), context (V, Cin - Cx) or None -> ((P, Cout), (V, Cout))."""
        fold = foldable(self.norm)
        weight, bias = fold_batchnorm(self.linear.weight, None, self.norm) if fold else (self.linear.weight, None)
        cx = x.shape[1]
        expected = cx + (0 if context is None else context.shape[1])
        if expected != self.linear.in_features:
            raise ValueError(f"PFNLayer expects {self.linear.in_features} input channels (point + voxel context), "
                             f"got {expected}")
        if context is None:
            y = x @ weight.t()
            if bias is not None:
                y += bias
        else:
            per_voxel = context @ weight[:, cx:].t()
            if bias is not None:
                per_voxel = per_voxel + bias
            gathered, w_point = per_voxel[point_voxel], weight[:, :cx].t()
            if gathered.dtype == x.dtype == w_point.dtype:
                # in place on the fresh gathered rows: one pass over (P, Cout) fewer than addmm
                y = gathered.addmm_(x, w_point)
            else:  # mixed precision (autocast): the out-of-place op casts its inputs
                y = torch.addmm(gathered, x, w_point)
        # The ReLU may overwrite its input: neither the matmul nor the BatchNorm needs its output for backward.
        y = torch.relu_(y if fold else self.norm(y))
        return y, voxel_pool(y, point_voxel, num_voxels, "max")


class DynamicVFE(nn.Module):
    """Dynamic voxel / pillar feature encoder.

    Args:
        voxel_size: (vx, vy, vz) metres; a pillar VFE uses vz = z1 - z0 (see :class:`DynamicPillarVFE`).
        point_cloud_range: (x0, y0, z0, x1, y1, z1).
        num_point_features: columns of ``Points.data`` fed in (x, y, z first).
        feat_channels: widths of the PFN layers; ``out_channels`` is the last. Layer i > 0 reads
            ``2 * feat_channels[i - 1]`` channels (point feature + voxel max). mmdetection3d's
            ``feat_channels`` mean the same; OpenPCDet's ``NUM_FILTERS`` halve every non-last layer, so
            its ``[192, 192]`` is ``[96, 192]`` here.
        cell_dtype: arithmetic of the cell assignment, "float64" (exact) or "float32" (as OpenPCDet and
            mmdetection3d compute it; see :mod:`pointwin.ops.voxelize`).

    Shapes: Points (N, C) -> SparseVoxels feats (V, feat_channels[-1]) on the grid ``grid_shape``.
    """

    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float], num_point_features: int = 4,
                 feat_channels: Sequence[int] = (64, 128), with_cluster_center: bool = True,
                 with_voxel_center: bool = True, with_distance: bool = False, cell_dtype: str = "float64") -> None:
        super().__init__()
        if cell_dtype not in CELL_DTYPES:
            raise ValueError(f"DynamicVFE: cell_dtype must be one of {list(CELL_DTYPES)}, got {cell_dtype!r}")
        self.cell_dtype = cell_dtype
        if len(feat_channels) < 1:
            raise ValueError("DynamicVFE: feat_channels needs at least one layer width")
        if num_point_features < 3:
            raise ValueError(f"DynamicVFE: num_point_features must be >= 3 (x, y, z), got {num_point_features}")
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.spatial_shape = grid_shape(self.voxel_size, self.point_cloud_range)
        self.num_point_features = num_point_features
        self.with_cluster_center, self.with_voxel_center = with_cluster_center, with_voxel_center
        self.with_distance = with_distance
        cin = num_point_features + 3 * with_cluster_center + 3 * with_voxel_center + int(with_distance)
        layers = []
        for i, cout in enumerate(feat_channels):
            layers.append(PFNLayer(cin if i == 0 else 2 * feat_channels[i - 1], cout))
        self.layers = nn.ModuleList(layers)
        self.out_channels = int(feat_channels[-1])

    def voxelize(self, points: Points) -> Voxelization:
        """Grid assignment of every point (outside the range: -1)."""
        return voxelize(points, self.voxel_size, self.point_cloud_range, cell_dtype=self.cell_dtype)

    def point_features(self, points: Points, vox: Voxelization) -> torch.Tensor:
        """(P, Cin) decorated features of the P kept points (in input order)."""
        if points.data.shape[1] < self.num_point_features:
            raise ValueError(f"DynamicVFE expects >= {self.num_point_features} point columns, the points have "
                             f"{points.data.shape[1]} ({points.channels})")
        kept = vox.kept
        data = points.data[kept, : self.num_point_features].float()
        pv = vox.point_voxel[kept]
        xyz = data[:, :3]
        parts = [data]
        if self.with_cluster_center:
            mean = voxel_pool(xyz, pv, vox.num_voxels, "mean")
            parts.append(xyz - mean[pv])
        if self.with_voxel_center:
            parts.append(xyz - vox.voxel_centers()[pv])
        if self.with_distance:
            parts.append(xyz.norm(dim=1, keepdim=True))
        return torch.cat(parts, 1)

    def forward(self, points: Points, vox: Voxelization | None = None) -> SparseVoxels:
        vox = self.voxelize(points) if vox is None else vox
        x = self.point_features(points, vox)
        pv = vox.point_voxel[vox.kept]
        pooled = None
        for layer in self.layers:
            x, pooled = layer(x, pv, vox.num_voxels, pooled)
        return vox.to_sparse(pooled)


class DynamicPillarVFE(DynamicVFE):
    """:class:`DynamicVFE` on pillars: ``voxel_size`` may give (vx, vy) or (vx, vy, anything); the z size is
    set to the full z extent of ``point_cloud_range`` so the grid has Z = 1."""

    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float], num_point_features: int = 4,
                 feat_channels: Sequence[int] = (64, 128), with_cluster_center: bool = True,
                 with_voxel_center: bool = True, with_distance: bool = False, cell_dtype: str = "float64") -> None:
        r = [float(v) for v in point_cloud_range]
        size = (float(voxel_size[0]), float(voxel_size[1]), r[5] - r[2])
        super().__init__(size, r, num_point_features, feat_channels, with_cluster_center, with_voxel_center,
                         with_distance, cell_dtype)


class MeanVFE(nn.Module):
    """Parameter-free voxel features: the mean of each voxel's points, column by column.

    The input of the official SphereFormer (its ``collation_fn_voxelmean``: per voxel the mean of
    x, y, z, intensity, fed straight to a submanifold-conv stem) and the closest deterministic stand-in for
    Pointcept's grid sampling (one point's x, y, z, strength per voxel). The first three output channels are
    the mean point position, which :class:`pointwin.models.backbones3d.sphereseg.SphereSeg` can use as the
    voxel position (``positions: input_mean``).

    ``cell_origin``: ``"range"`` counts cells from the range minimum (pointwin); ``"sample_min"`` from each
    sample's smallest x, y, z (the official SphereFormer ``floor((p - min p) / voxel_size)``): the points are
    voxelized shifted by their sample's ``(min - range min) mod (cell_align * voxel_size)``, so cell borders fall
    where the reference puts them and a sample's cells are the reference's plus a multiple of ``cell_align``
    (so stride-2 levels below group the same children, up to log2(cell_align) levels), while the grid and
    the features (unshifted means) stay pointwin's.

    ``feature_scale``: one factor per output channel applied to the means (Pointcept feeds nuScenes intensity
    / 255 as "strength": ``[1, 1, 1, 1/255]``); None keeps the raw values (SphereFormer).

    Shapes: Points (N, C) -> SparseVoxels feats (V, num_point_features).
    """

    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float], num_point_features: int = 4,
                 cell_dtype: str = "float64", cell_origin: str = "range", cell_align: int = 32,
                 feature_scale: Sequence[float] | None = None) -> None:
        super().__init__()
        if cell_dtype not in CELL_DTYPES:
            raise ValueError(f"MeanVFE: cell_dtype must be one of {list(CELL_DTYPES)}, got {cell_dtype!r}")
        if cell_origin not in ("range", "sample_min"):
            raise ValueError(f"MeanVFE: cell_origin must be 'range' or 'sample_min', got {cell_origin!r}")
        if int(cell_align) < 1:
            raise ValueError(f"MeanVFE: cell_align must be a positive number of cells, got {cell_align!r}")
        self.cell_origin, self.cell_align = cell_origin, int(cell_align)
        if feature_scale is not None and len(feature_scale) != num_point_features:
            raise ValueError(f"MeanVFE: feature_scale needs one factor per feature ({num_point_features}), got "
                             f"{list(feature_scale)}")
        self.feature_scale = None if feature_scale is None else tuple(float(f) for f in feature_scale)
        if num_point_features < 3:
            raise ValueError(f"MeanVFE: num_point_features must be >= 3 (x, y, z), got {num_point_features}")
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.spatial_shape = grid_shape(self.voxel_size, self.point_cloud_range)
        self.num_point_features, self.cell_dtype = int(num_point_features), cell_dtype
        self.out_channels = self.num_point_features

    def voxelize(self, points: Points) -> Voxelization:
        if self.cell_origin == "range" or points.data.shape[0] == 0:
            return voxelize(points, self.voxel_size, self.point_cloud_range, cell_dtype=self.cell_dtype)
        xyz = points.data[:, :3].double()
        b = points.batch_idx.long()
        big = torch.finfo(torch.float64).max
        mins = xyz.new_full((points.batch_size, 3), big).scatter_reduce(0, b[:, None].expand(-1, 3), xyz, "amin")
        r0 = xyz.new_tensor(self.point_cloud_range[:3])
        v = xyz.new_tensor(self.voxel_size)
        shift = torch.remainder(mins - r0, v * self.cell_align)
        shifted = (xyz - shift[b]).to(points.data.dtype)
        return voxelize(shifted, self.voxel_size, self.point_cloud_range, b, points.batch_size, self.cell_dtype)

    def forward(self, points: Points, vox: Voxelization | None = None) -> SparseVoxels:
        if points.data.shape[1] < self.num_point_features:
            raise ValueError(f"MeanVFE expects >= {self.num_point_features} point columns, the points have "
                             f"{points.data.shape[1]} ({points.channels})")
        vox = self.voxelize(points) if vox is None else vox
        kept = vox.kept
        data = points.data[kept, : self.num_point_features].float()
        mean = voxel_pool(data, vox.point_voxel[kept], vox.num_voxels, "mean")
        if self.feature_scale is not None:
            mean = mean * mean.new_tensor(self.feature_scale)
        return vox.to_sparse(mean)
