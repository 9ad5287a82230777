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

    The query is the channel-wise max over the cell's voxels (empty slots excluded), keys/values are the
    voxels plus a learned embedding of their slot inside the cell; empty slots are masked with a boolean
    ``key_padding_mask`` (True = ignore). Output = LayerNorm(query + attention). DSVT's reduction did the
    max over zero-filled empty slots and passed an int mask; neither happens here.

    Shapes: SparseVoxels (N, C) on (Z, Y, X) -> SparseVoxels (V', C) on the parent grid.
    """

    def __init__(self, channels: int, stride: Sequence[int], num_heads: int = 8) -> None:
        super().__init__()
        self.stride = tuple(int(s) for s in stride)
        volume = self.stride[0] * self.stride[1] * self.stride[2]
        self.pos_embedding = nn.Parameter(torch.randn(volume, channels) * 0.01)
        self.attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        pmap: PoolingMap = voxels.cached(("pooling_map", self.stride),
                                         lambda: pooling_map(voxels.coords, voxels.spatial_shape, self.stride))
        x = voxels.feats
        V, P, C = pmap.coords.shape[0], pmap.volume, x.shape[1]
        vs = voxels.voxel_size
        new_size = None if vs is None else tuple(v * s for v, s in zip(vs, self.stride, strict=True))
        if V == 0:  # no voxels in the whole batch: nothing to attend (MultiheadAttention rejects batch 0)
            return SparseVoxels(x[:0], pmap.coords, pmap.spatial_shape, voxels.batch_size, new_size, voxels.origin)
        key = x.new_zeros(V, P, C).index_put((pmap.parent, pmap.inner), x)
        pad = torch.ones(V, P, dtype=torch.bool, device=x.device)
        pad[pmap.parent, pmap.inner] = False
        query = key.masked_fill(pad[..., None], float("-inf")).amax(1, keepdim=True)  # (V, 1, C)
        key = key + self.pos_embedding.to(key.dtype)
        out, _ = self.attn(query, key, key, key_padding_mask=pad, need_weights=False)
        feats = self.norm((query + out)[:, 0])
        return SparseVoxels(feats, pmap.coords, pmap.spatial_shape, voxels.batch_size, new_size, voxels.origin)
