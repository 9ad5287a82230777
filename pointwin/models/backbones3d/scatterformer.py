"""ScatterFormer: scattered linear attention over BEV windows with cross-window interaction.

Reference: He et al., "ScatterFormer: Efficient Voxel Transformer with Scattered Linear Attention"
(ECCV 2024). Voxels are grouped by BEV window (all z of a window together, variable length; no sorting
into padded sets) and attend with scattered linear attention (:func:`pointwin.ops.scattered_linear_attention`).
Information crosses windows through the cross-window interaction (CWI) module: depthwise sparse convs
along x (1 x 1 x k), along y (1 x k x 1) and a 3 x 3 x 3 one, summed and projected. Each block is
pre-norm: x += SLA(LN x); x += CWI(LN x); x += FFN(LN x). The paper drops window shifting (CWI carries
information across windows); ``shift_windows=True`` shifts odd blocks by half a window anyway.
Attention-based height pooling (:class:`pointwin.nn.AttentionPool`) turns the voxels into BEV pillars.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...nn import FFN, AttentionPool, PartitionAttention
from ...ops import SubMConv3d
from ...partition import bev_windows
from ...structures import SparseVoxels


class CrossWindowInteraction(nn.Module):
    """Sum of depthwise sparse convs along x, along y and over 3x3x3, then a linear projection.

    Shapes: SparseVoxels (N, C) -> (N, C) features (same sites).
    """

    def __init__(self, channels: int, kernel: int = 13) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"CrossWindowInteraction kernel must be odd (submanifold conv), got {kernel}")
        # kernel axes follow the coordinate order (z, y, x)
        self.conv_x = SubMConv3d(channels, channels, (1, 1, kernel), depthwise=True)
        self.conv_y = SubMConv3d(channels, channels, (1, kernel, 1), depthwise=True)
        self.conv_local = SubMConv3d(channels, channels, 3, depthwise=True)
        self.proj = nn.Linear(channels, channels)

    def forward(self, voxels: SparseVoxels) -> torch.Tensor:
        y = self.conv_x(voxels).feats + self.conv_y(voxels).feats + self.conv_local(voxels).feats
        return self.proj(nn.functional.gelu(y))


class ScatterFormerBlock(nn.Module):
    """SLA over BEV windows + CWI + FFN, pre-norm residuals. Shapes: SparseVoxels (N, C) -> (N, C)."""

    def __init__(self, channels: int, num_heads: int, window: int, shift: bool, ffn_ratio: float = 2.0,
                 cwi_kernel: int = 13, dropout: float = 0.0) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(channels)
        self.attn = PartitionAttention(channels, num_heads, "linear")
        self.norm2 = nn.LayerNorm(channels)
        self.cwi = CrossWindowInteraction(channels, cwi_kernel)
        self.norm3 = nn.LayerNorm(channels)
        self.ffn = FFN(channels, int(channels * ffn_ratio), "gelu", dropout)

    def partition(self, voxels: SparseVoxels):
        s = self.window // 2 if self.shift else 0

        def build():
            coords = voxels.coords.clone()
            coords[:, 2:] += s
            return bev_windows(coords, self.window)

        return voxels.cached(("bev_windows", self.window, s), build)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        x = voxels.feats
        x = x + self.attn(self.norm1(x), self.partition(voxels))
        x = x + self.cwi(voxels.replace(self.norm2(x)))
        x = x + self.ffn(self.norm3(x))
        return voxels.replace(x)


class ScatterFormer(nn.Module):
    """ScatterFormer backbone on a 3D voxel grid, ending in BEV pillars.

    Args:
        in_channels: VFE width (projected to ``channels``).
        channels, num_heads: model width and heads.
        num_blocks: blocks per stage; stages are separated by attention pooling over z with
            ``z_strides`` (len = stages - 1).
        window: BEV window side in voxels.
        cwi_kernel: the long depthwise kernel of the cross-window interaction (odd).
        height_pool: pool the remaining z extent into one pillar at the end (attention pooling).
        shift_windows: shift the windows of odd blocks by half a window (off, as in the paper).

    Shapes: SparseVoxels (N, in_channels) on (Z, Y, X) -> SparseVoxels (P, channels) on (1, Y, X).
    """

    def __init__(self, in_channels: int, channels: int = 128, num_heads: int = 8,
                 num_blocks: int | Sequence[int] = (2, 2, 2), z_strides: Sequence[int] = (4, 4), window: int = 12,
                 cwi_kernel: int = 13, ffn_ratio: float = 2.0, dropout: float = 0.0, height_pool: bool = True,
                 pool_heads: int = 8, shift_windows: bool = False) -> None:
        super().__init__()
        blocks_per_stage = list(num_blocks) if isinstance(num_blocks, (list, tuple)) else [num_blocks]
        if len(blocks_per_stage) != len(z_strides) + 1:
            raise ValueError(f"ScatterFormer: num_blocks has {len(blocks_per_stage)} stages but z_strides gives "
                             f"{len(z_strides) + 1}")
        self.z_strides = [int(s) for s in z_strides]
        self.input_proj = nn.Identity() if in_channels == channels else nn.Linear(in_channels, channels)
        self.stages = nn.ModuleList(
            nn.ModuleList(ScatterFormerBlock(channels, num_heads, window, shift_windows and b % 2 == 1, ffn_ratio,
                                             cwi_kernel, dropout)
                          for b in range(n)) for n in blocks_per_stage)
        self.z_pools = nn.ModuleList(AttentionPool(channels, (1, 1, s), pool_heads) for s in self.z_strides)
        self.height_pool = height_pool
        self.pool_heads = pool_heads
        self.final_pool: AttentionPool | None = None
        self.channels = channels
        self.out_channels = channels
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (saves memory, costs time)."""
        self.grad_checkpointing = enable

    def output_grid(self, spatial_shape: Sequence[int]) -> tuple[int, int, int]:
        """(Z, Y, X) of the output for an input grid; builds the final height pooling for that extent."""
        Z, Y, X = spatial_shape
        for s in self.z_strides:
            Z = -(-Z // s)
        if self.height_pool and Z > 1 and self.final_pool is None:
            self.final_pool = AttentionPool(self.channels, (1, 1, Z), self.pool_heads)
        return (1 if self.height_pool else Z), Y, X

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        voxels = voxels.replace(self.input_proj(voxels.feats))
        for s, blocks in enumerate(self.stages):
            if s > 0:
                voxels = self.z_pools[s - 1](voxels)
            for block in blocks:
                if self.grad_checkpointing and self.training:
                    v = voxels
                    voxels = v.replace(checkpoint(lambda f, b=block, v=v: b(v.replace(f)).feats, v.feats,
                                                  use_reentrant=False))
                else:
                    voxels = block(voxels)
        if self.height_pool and voxels.spatial_shape[0] > 1:
            if self.final_pool is None:
                raise RuntimeError("ScatterFormer: call output_grid(input spatial_shape) once before forward "
                                   "(the Detector does) so the height pooling knows the z extent")
            if self.final_pool.stride[2] != voxels.spatial_shape[0]:
                raise ValueError(f"ScatterFormer height pooling was built for {self.final_pool.stride[2]} z slices, "
                                 f"got {voxels.spatial_shape[0]}")
            voxels = self.final_pool(voxels)
        return voxels
