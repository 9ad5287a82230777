"""Attention-style pooling of sparse voxels into coarser cells (DSVT's reduction, ScatterFormer's height pooling)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..structures import SparseVoxels


@dataclass
class PoolingMap:
    """How the voxels of a grid fall into cells of ``stride``.

    Attributes:
        coords: int32 (V', 4) unique parent cells (b, z // sz, y // sy, x // sx), sorted.
        spatial_shape: parent grid (ceil(Z / sz), ceil(Y / sy), ceil(X / sx)).
        parent: int64 (N,) parent row of each voxel.
        inner: int64 (N,) position of each voxel inside its parent, ``(z % sz) * sy * sx + (y % sy) * sx + x % sx``.
        volume: sx * sy * sz slots per parent.
    """

    coords: torch.Tensor
    spatial_shape: tuple[int, int, int]
    parent: torch.Tensor
    inner: torch.Tensor
    volume: int


def pooling_map(coords: torch.Tensor, spatial_shape: Sequence[int], stride: Sequence[int]) -> PoolingMap:
    """Parent cells of voxel ``coords`` (N, 4) (b, z, y, x) for ``stride = (sx, sy, sz)``."""
    sx, sy, sz = (int(s) for s in stride)
    if min(sx, sy, sz) < 1:
        raise ValueError(f"pooling stride must be positive (sx, sy, sz), got {tuple(stride)}")
    Z, Y, X = spatial_shape
    shape = (-(-Z // sz), -(-Y // sy), -(-X // sx))
    c = coords.long()
    pc = torch.stack([c[:, 0], c[:, 1] // sz, c[:, 2] // sy, c[:, 3] // sx], 1)
    key = SparseVoxels.linear_index(pc, shape)
    uniq, parent = torch.unique(key, sorted=True, return_inverse=True)
    Zp, Yp, Xp = shape
    out = torch.stack([uniq // (Zp * Yp * Xp), (uniq // (Yp * Xp)) % Zp, (uniq // Xp) % Yp, uniq % Xp], 1)
    inner = ((c[:, 1] % sz) * sy + c[:, 2] % sy) * sx + c[:, 3] % sx
    return PoolingMap(out.to(torch.int32), shape, parent, inner, sx * sy * sz)


class AttentionPool(nn.Module):
    """Pool voxels into cells of ``stride`` with one attention query per cell.

    The query is the channel-wise max over the cell's voxels, keys/values are the voxels plus a learned
    embedding of their slot inside the cell; only the cell's real voxels take part (DSVT's reduction
    padded every cell to ``stride`` volume, took the max over zero-filled empty slots and masked them
    with an int mask; neither happens here). Output = LayerNorm(query + attention). The attention is a
    per-cell softmax over the cell's voxels computed with segment reductions, so the cost is linear in
    the number of voxels, not in cells x volume. The parameters are those of ``nn.MultiheadAttention``.

    Shapes: SparseVoxels (N, C) on (Z, Y, X) -> SparseVoxels (V', C) on the parent grid.
    """

    def __init__(self, channels: int, stride: Sequence[int], num_heads: int = 8) -> None:
        super().__init__()
        self.stride = tuple(int(s) for s in stride)
        volume = self.stride[0] * self.stride[1] * self.stride[2]
        self.pos_embedding = nn.Parameter(torch.randn(volume, channels) * 0.01)
        self.attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def pool_features(self, x: torch.Tensor, parent: torch.Tensor, inner: torch.Tensor,
                      num_cells: int) -> torch.Tensor:
        """(N, C) voxel features, (N,) parent cell and slot of each voxel -> (num_cells, C) pooled features.

        Every cell must hold at least one voxel (as the cells of :func:`pooling_map` do).
        """
        N, C = x.shape
        H = self.attn.num_heads
        D = C // H
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3, 0)
        b_q, b_k, b_v = (self.attn.in_proj_bias.chunk(3, 0) if self.attn.in_proj_bias is not None
                         else (None, None, None))
        cell = parent[:, None].expand(-1, C)
        query = x.new_full((num_cells, C), float("-inf")).scatter_reduce(0, cell, x, "amax", include_self=True)
        kv_in = x + self.pos_embedding.to(x.dtype)[inner]
        q = nn.functional.linear(query, w_q, b_q).view(num_cells, H, D) * D ** -0.5
        k = nn.functional.linear(kv_in, w_k, b_k).view(N, H, D)
        v = nn.functional.linear(kv_in, w_v, b_v).view(N, H, D)
        logits = (q[parent] * k).sum(-1)  # (N, H)
        # softmax over the voxels of each cell; the per-cell max only stabilises it (no gradient needed)
        cell_h = parent[:, None].expand(-1, H)
        peak = logits.new_full((num_cells, H), float("-inf")).scatter_reduce(0, cell_h, logits.detach(), "amax")
        e = torch.exp(logits - peak[parent])
        weights = e / e.new_zeros(num_cells, H).index_add_(0, parent, e)[parent]
        weights = nn.functional.dropout(weights, self.attn.dropout, self.training)
        out = v.new_zeros(num_cells, H, D).index_add_(0, parent, weights[..., None] * v).view(num_cells, C)
        out = nn.functional.linear(out, self.attn.out_proj.weight, self.attn.out_proj.bias)
        return self.norm(query + out)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        pmap: PoolingMap = voxels.cached(("pooling_map", self.stride),
                                         lambda: pooling_map(voxels.coords, voxels.spatial_shape, self.stride))
        vs = voxels.voxel_size
        new_size = None if vs is None else tuple(v * s for v, s in zip(vs, self.stride, strict=True))
        feats = self.pool_features(voxels.feats, pmap.parent, pmap.inner, pmap.coords.shape[0])
        return SparseVoxels(feats, pmap.coords, pmap.spatial_shape, voxels.batch_size, new_size, voxels.origin)
