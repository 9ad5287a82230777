"""FlatFormer: flattened window attention on pillars.

Reference: Liu et al., "FlatFormer: Flattened Window Attention for Efficient Point Cloud Transformer"
(CVPR 2023). Pillars are sorted in a window-serpentine order and cut into equal-size groups
(:func:`pointwin.partition.flattened_windows`); a block is four post-norm attention layers over the
orders x, x-shift, y, y-shift, each with a sinusoidal absolute position encoding (voxel x, y) added to
queries and keys, and an FFN of hidden width 2C with GELU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...nn import FFN, PartitionAttention, sinusoidal_encoding
from ...partition import flattened_windows
from ...structures import SparseVoxels

#: (axis, shift) of the four layers of a block.
BLOCK_ORDERS = (("x", False), ("x", True), ("y", False), ("y", True))


class FlatFormerLayer(nn.Module):
    """Post-norm transformer layer over one flattened order: x = LN(x + Attn(x)); x = LN(x + FFN(x)).

    Shapes: (N, C) -> (N, C).
    """

    def __init__(self, channels: int, num_heads: int, ffn_ratio: float = 2.0, dropout: float = 0.0,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.attn = PartitionAttention(channels, num_heads, "softmax", dropout)
        self.norm1 = nn.LayerNorm(channels)
        self.ffn = FFN(channels, int(channels * ffn_ratio), activation, dropout)
        self.norm2 = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, partition, pos: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, partition, pos)))
        return self.norm2(x + self.drop(self.ffn(x)))


class FlatFormer(nn.Module):
    """FlatFormer backbone on a pillar grid.

    Args:
        in_channels: VFE output width (projected to ``channels`` when different).
        channels: model width C.
        num_heads: attention heads.
        num_blocks: blocks of 4 layers (x, x-shift, y, y-shift).
        window: (wx, wy) in pillars.
        group_size: voxels per equal-size group.
        ffn_ratio: FFN hidden = ffn_ratio * C (2 in the paper).
        pos_temperature: sinusoidal wavelength base.

    Shapes: SparseVoxels (N, in_channels) with Z = 1 -> SparseVoxels (N, channels), same coords.
    """

    def __init__(self, in_channels: int, channels: int = 128, num_heads: int = 8, num_blocks: int = 2,
                 window: Sequence[int] = (13, 13), group_size: int = 144, ffn_ratio: float = 2.0,
                 dropout: float = 0.0, activation: str = "gelu", pos_temperature: float = 10000.0) -> None:
        super().__init__()
        self.window = (int(window[0]), int(window[1]))
        self.group_size = int(group_size)
        self.channels, self.pos_temperature = channels, pos_temperature
        self.input_proj = nn.Identity() if in_channels == channels else nn.Linear(in_channels, channels)
        self.layers = nn.ModuleList(FlatFormerLayer(channels, num_heads, ffn_ratio, dropout, activation)
                                    for _ in range(4 * num_blocks))
        self.out_channels = channels
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in the backward pass (saves memory, costs time)."""
        self.grad_checkpointing = enable

    def partition(self, voxels: SparseVoxels, axis: str, shift: bool):
        key = ("flattened_windows", self.window, self.group_size, axis, shift)
        return voxels.cached(key, lambda: flattened_windows(voxels.coords, voxels.spatial_shape, self.window,
                                                            self.group_size, axis, shift))

    def position_encoding(self, voxels: SparseVoxels) -> torch.Tensor:
        key = ("sinusoidal_xy", self.channels, self.pos_temperature)
        return voxels.cached(key, lambda: sinusoidal_encoding(voxels.coords[:, [3, 2]].float(), self.channels,
                                                              self.pos_temperature))

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        if voxels.spatial_shape[0] != 1:
            raise ValueError(f"FlatFormer runs on pillars (Z = 1), got spatial_shape {voxels.spatial_shape}")
        x = self.input_proj(voxels.feats)
        pos = self.position_encoding(voxels).to(x.dtype)
        for i, layer in enumerate(self.layers):
            axis, shift = BLOCK_ORDERS[i % 4]
            part = self.partition(voxels, axis, shift)
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, part, pos, use_reentrant=False)
            else:
                x = layer(x, part, pos)
        return voxels.replace(x)
