"""ConDaFormerSeg: a U-Net of disassembled (tri-plane) window attention for semantic segmentation.

Reference: Duan et al., "ConDaFormer: Disassembled Transformer with Local Structure Enhancement for 3D
Point Cloud Understanding" (NeurIPS 2023). Layout as in the paper's segmentation model: a sparse-conv stem
(SubM 3x3x3, BN, LeakyReLU, residual block) at the input grid; each encoder stage halves the grid with a
grid pooling (LayerNorm -> Linear -> max over the 2x2x2 cell) and runs :class:`ConDaFormerBlock`s
(alternate blocks shifted by half a window); the decoder returns level by level with
``Linear(LN(parent))[cell] + Linear(LN(skip))`` and optional blocks. The paper's unpooling interpolates
the parent features from the three nearest parents; here each voxel takes its own parent cell's
feature (the sites are voxels, the parent cell always exists).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...nn.condaformer import ConDaFormerBlock
from ...nn.pooling import PoolingMap, pooling_map
from ...ops import SubMConv3d
from ...structures import SparseVoxels
from .sphereseg import SparseResBlock


class GridPool(nn.Module):
    """2x2x2 grid pooling: LayerNorm -> Linear(Cin, Cout) -> max over each parent cell.

    Shapes: SparseVoxels (N, Cin) -> (SparseVoxels (P, Cout) on the halved grid, parent (N,)).
    """

    STRIDE = (2, 2, 2)

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_channels, eps=1e-6)
        self.proj = nn.Linear(in_channels, out_channels, bias=False)

    def forward(self, x: SparseVoxels) -> tuple[SparseVoxels, torch.Tensor]:
        pmap: PoolingMap = x.cached(("pooling_map", self.STRIDE),
                                    lambda: pooling_map(x.coords, x.spatial_shape, self.STRIDE))
        f = self.proj(self.norm(x.feats))
        P = pmap.coords.shape[0]
        pooled = f.new_zeros(P, f.shape[1]).scatter_reduce(0, pmap.parent[:, None].expand_as(f), f, "amax",
                                                           include_self=False)
        vs = None if x.voxel_size is None else tuple(2 * v for v in x.voxel_size)
        return SparseVoxels(pooled, pmap.coords, pmap.spatial_shape, x.batch_size, vs, x.origin), pmap.parent


class GridUnpool(nn.Module):
    """Back to the skip's sites: ``Linear(LN(parent))[parent_of] + Linear(LN(skip))``.

    Shapes: parent (P, Cin), skip (N, Cskip), parent_of (N,) -> SparseVoxels (N, Cout).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_channels, eps=1e-6), nn.Linear(in_channels, out_channels))
        self.proj_skip = nn.Sequential(nn.LayerNorm(skip_channels, eps=1e-6), nn.Linear(skip_channels, out_channels))

    def forward(self, parent: SparseVoxels, skip: SparseVoxels, parent_of: torch.Tensor) -> SparseVoxels:
        return skip.replace(self.proj_skip(skip.feats) + self.proj(parent.feats)[parent_of])


def _per_level(name: str, value: int | Sequence[int], n: int) -> list[int]:
    vals = [int(value)] * n if isinstance(value, int) else [int(v) for v in value]
    if len(vals) != n:
        raise ValueError(f"ConDaFormerSeg: {name} needs {n} values, got {list(vals)}")
    return vals


class ConDaFormerSeg(nn.Module):
    """ConDaFormer segmentation backbone.

    Args:
        in_channels: VFE width.
        base_channels: stem width (level 0 = the input grid).
        enc_channels, enc_depths, enc_num_heads: per encoder stage s (grid stride 2^(s+1)); heads a multiple of 3.
        dec_channels: width after returning to level l (l = 0 is the stem's sites, l >= 1 encoder stage l-1);
            ``dec_channels[-1]`` is the first unpooling's width.
        dec_depths, dec_num_heads: blocks after returning to level l (0 = none, as in the paper).
        window: cube side (or ``(wx, wy, wz)``) disassembled into plane windows, in voxels of each stage's grid.
        ffn_ratio, drop_path, rpe, lse: block settings (drop path grows linearly over the encoder blocks).

    Shapes: SparseVoxels (N, in_channels) -> SparseVoxels (N, dec_channels[0]), same sites and order.
    """

    def __init__(self, in_channels: int, base_channels: int = 48, enc_channels: Sequence[int] = (48, 96, 192, 384),
                 enc_depths: Sequence[int] = (3, 9, 3, 3), enc_num_heads: Sequence[int] = (3, 6, 12, 24),
                 dec_channels: Sequence[int] = (48, 96, 192, 384), dec_depths: Sequence[int] = (0, 0, 0, 0),
                 dec_num_heads: Sequence[int] = (3, 6, 12, 24), window: int | Sequence[int] = 4,
                 ffn_ratio: float = 4.0, drop_path: float = 0.3, rpe: bool = True, lse: bool = True) -> None:
        super().__init__()
        n = len(enc_channels)
        if n < 1:
            raise ValueError("ConDaFormerSeg: enc_channels needs at least one stage")
        enc_channels = _per_level("enc_channels", enc_channels, n)
        enc_depths, enc_heads = _per_level("enc_depths", enc_depths, n), _per_level("enc_num_heads", enc_num_heads, n)
        dec_channels = _per_level("dec_channels", dec_channels, n)
        dec_depths, dec_heads = _per_level("dec_depths", dec_depths, n), _per_level("dec_num_heads", dec_num_heads, n)
        self.stem_conv = SubMConv3d(in_channels, base_channels, 3, bias=False)
        self.stem_norm = nn.BatchNorm1d(base_channels)
        self.stem_res = SparseResBlock(base_channels)
        dp = torch.linspace(0, drop_path, max(sum(enc_depths), 1)).tolist()
        widths = [base_channels] + enc_channels  # width at level l after the encoder
        self.pools = nn.ModuleList(GridPool(widths[s], widths[s + 1]) for s in range(n))
        self.enc = nn.ModuleList()
        i = 0
        for s in range(n):
            self.enc.append(nn.ModuleList(
                ConDaFormerBlock(enc_channels[s], enc_heads[s], window, shifted=j % 2 == 1, ffn_ratio=ffn_ratio,
                                 drop_path=dp[i + j], rpe=rpe, lse=lse) for j in range(enc_depths[s])))
            i += enc_depths[s]
        self.unpools = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in reversed(range(n)):  # return to level `level` from level + 1
            above = enc_channels[-1] if level == n - 1 else dec_channels[level + 1]
            self.unpools.append(GridUnpool(above, widths[level], dec_channels[level]))
            self.dec.append(nn.ModuleList(
                ConDaFormerBlock(dec_channels[level], dec_heads[level], window, shifted=j % 2 == 1,
                                 ffn_ratio=ffn_ratio, rpe=rpe, lse=lse) for j in range(dec_depths[level])))
        self.out_channels = dec_channels[0]

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        x = voxels.replace(nn.functional.leaky_relu(self.stem_norm(self.stem_conv(voxels).feats), 0.2))
        x = self.stem_res(x)
        skips, parents = [], []
        for pool, blocks in zip(self.pools, self.enc, strict=True):
            skips.append(x)
            x, parent = pool(x)
            parents.append(parent)
            for blk in blocks:
                x = blk(x)
        for unpool, blocks in zip(self.unpools, self.dec, strict=True):
            x = unpool(x, skips.pop(), parents.pop())
            for blk in blocks:
                x = blk(x)
        return x
