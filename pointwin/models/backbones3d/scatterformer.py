"""ScatterFormer: scattered linear attention over BEV windows with cross-window interaction.

Reference: He et al., "ScatterFormer: Efficient Voxel Transformer with Scattered Linear Attention"
(ECCV 2024) and its official OpenPCDet-based code (``pcdet/models/backbones_3d/scatterformer.py``).
:class:`ScatterFormer` is the official network; its checkpoints load with
``pointwin convert --from openpcdet`` (:mod:`pointwin.export.converters`). Structure, for an input grid
(Z, Y, X) of ``in_channels`` voxel features:

1. the grid gets ``z_pad`` extra z slices (the official ``sparse_shape = grid_size[::-1] + [1, 0, 0]``);
2. stem (:class:`ScatterFormerStem`): 3x3x3 submanifold conv -> BN -> ReLU, ``stem_blocks`` sparse
   residual blocks, then a (3, 1, 1) conv of z-stride 2 -> BN -> ReLU (z: ``(Z + z_pad - 3) // 2 + 1``);
3. stages (:class:`ScatterFormerStage`): ``num_layers[s]`` layers (:class:`ScatterFormerLayer`), a
   BatchNorm, and between stages a 3x3x3 stride-2 sparse conv (no norm or activation after it), so the
   BEV stride is ``2 ** (stages - 1)``;
4. height pooling: one attention pool over each whole z column (:class:`pointwin.nn.AttentionPool`,
   ``mode="scatterformer"``: query ``max(0, max over the column)``, slot embedding on keys only, empty
   slots masked) -> BEV pillars on (1, Y', X').

A layer is ``x += SLA(BN x)`` over BEV windows ``(b, y // w, x // w)`` (all z together; 4 heads, qkv
without bias, ReLU feature map, no positional encoding), then the cross-window interaction
(:class:`CrossWindowInteraction`) ``x = BN(x) + cat[dw 3x3x3, dw along x, dw along y, identity]`` on four
channel groups of ``BN(x)``, then ``x += FFN(BN x)`` (ReLU, hidden 2C). Every norm is
``BatchNorm1d(eps=1e-3, momentum=0.01)``. The long depthwise kernel is ``window + 1`` (13 on Waymo, 21
on nuScenes).

:class:`ScatterFormerLite` is pointwin's earlier, smaller variant (LayerNorm, summed CWI, z-pooling
between stages, BEV stride 1); it is not the official network and is kept for models trained with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...nn import FFN, AttentionPool, PartitionAttention, build_norm1d
from ...ops import SparseConv3d, SubMConv3d
from ...partition import bev_windows
from ...structures import SparseVoxels


def _bn(channels: int) -> nn.BatchNorm1d:
    """The official ScatterFormer norm: BatchNorm1d(eps=1e-3, momentum=0.01)."""
    return build_norm1d("batchnorm", channels)


def _windows(voxels: SparseVoxels, window: int):
    """BEV window partition (b, y // w, x // w), cached on the voxels."""
    return voxels.cached(("bev_windows", window, 0), lambda: bev_windows(voxels.coords, window))


def _run(module: nn.Module, voxels: SparseVoxels, checkpointed: bool) -> SparseVoxels:
    """``module(voxels)`` (same coords in and out), with activation checkpointing over the features if asked."""
    if not checkpointed:
        return module(voxels)
    return voxels.replace(checkpoint(lambda f: module(voxels.replace(f)).feats, voxels.feats, use_reentrant=False))


class SparseBasicBlock3d(nn.Module):
    """Sparse residual block: relu(x + BN(conv(relu(BN(conv(x)))))) with 3x3x3 submanifold convs (with bias).

    The official stem's ``SparseBasicBlock`` (OpenPCDet ``spconv_backbone.py``). Shapes: (N, C) -> (N, C).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, bias=True)
        self.norm1 = _bn(channels)
        self.conv2 = SubMConv3d(channels, channels, 3, bias=True)
        self.norm2 = _bn(channels)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        h = torch.relu(self.norm1(self.conv1(voxels).feats))
        h = self.norm2(self.conv2(voxels.replace(h)).feats)
        return voxels.replace(torch.relu(h + voxels.feats))


class ScatterFormerStem(nn.Module):
    """Conv stem: 3x3x3 submanifold conv (no bias) -> BN -> ReLU, ``num_blocks`` :class:`SparseBasicBlock3d`,
    then a (3, 1, 1) sparse conv of stride (2, 1, 1), no padding, no bias -> BN -> ReLU.

    Shapes: SparseVoxels (N, Cin) on (Z, Y, X) -> (N', C) on ((Z - 3) // 2 + 1, Y, X).
    """

    def __init__(self, in_channels: int, channels: int, num_blocks: int = 3) -> None:
        super().__init__()
        self.conv_in = SubMConv3d(in_channels, channels, 3, bias=False)
        self.norm_in = _bn(channels)
        self.blocks = nn.ModuleList(SparseBasicBlock3d(channels) for _ in range(num_blocks))
        self.down = SparseConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False)
        self.norm_down = _bn(channels)

    @staticmethod
    def output_z(z: int) -> int:
        return (z - 3) // 2 + 1

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        x = self.conv_in(voxels)
        x = x.replace(torch.relu(self.norm_in(x.feats)))
        for block in self.blocks:
            x = block(x)
        x = self.down(x)
        return x.replace(torch.relu(self.norm_down(x.feats)))


class CrossWindowInteraction(nn.Module):
    """Official CWI: ``h = BN(x)``; channels split in 4 equal groups; ``out = h + cat[dw3x3x3(h0),
    dw_x(h1), dw_y(h2), h3]`` with depthwise submanifold convs without bias (``dw_x`` kernel (1, 1, k)
    along x, ``dw_y`` (1, k, 1) along y; kernel axes are (z, y, x)). No activation, no projection; the
    residual adds to ``BN(x)``, not to ``x``.

    Shapes: SparseVoxels (N, C) -> (N, C) features (same sites). C must be divisible by 4.
    """

    def __init__(self, channels: int, kernel: int = 13) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"CrossWindowInteraction: channels must be divisible by 4 (four groups), got {channels}")
        if kernel % 2 == 0:
            raise ValueError(f"CrossWindowInteraction kernel must be odd (submanifold conv), got {kernel}")
        g = channels // 4
        self.group = g
        self.norm = _bn(channels)
        self.conv_local = SubMConv3d(g, g, 3, bias=False, depthwise=True)
        self.conv_x = SubMConv3d(g, g, (1, 1, kernel), bias=False, depthwise=True)
        self.conv_y = SubMConv3d(g, g, (1, kernel, 1), bias=False, depthwise=True)

    def forward(self, voxels: SparseVoxels) -> torch.Tensor:
        h = self.norm(voxels.feats)
        g = self.group
        parts = [conv(voxels.replace(h[:, i * g:(i + 1) * g])).feats
                 for i, conv in enumerate((self.conv_local, self.conv_x, self.conv_y))]
        return h + torch.cat(parts + [h[:, 3 * g:]], 1)


class ScatterFormerLayer(nn.Module):
    """One official layer: ``x1 = x + SLA(BN x)``; ``x2 = CWI(x1)``; ``out = x2 + FFN(BN x2)``.

    SLA: :class:`PartitionAttention` (``kind="linear"``, no qkv bias) over BEV windows of side ``window``.
    Shapes: SparseVoxels (N, C) -> (N, C).
    """

    def __init__(self, channels: int, num_heads: int = 4, window: int = 12, cwi_kernel: int = 13,
                 ffn_ratio: float = 2.0) -> None:
        super().__init__()
        self.window = window
        self.norm_attn = _bn(channels)
        self.attn = PartitionAttention(channels, num_heads, "linear", qkv_bias=False)
        self.cwi = CrossWindowInteraction(channels, cwi_kernel)
        self.norm_ffn = _bn(channels)
        self.ffn = FFN(channels, int(channels * ffn_ratio), "relu")

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        x = voxels.feats
        x = x + self.attn(self.norm_attn(x), _windows(voxels, self.window))
        x = self.cwi(voxels.replace(x))
        return voxels.replace(x + self.ffn(self.norm_ffn(x)))


class ScatterFormerStage(nn.Module):
    """``num_layers`` :class:`ScatterFormerLayer`, a BatchNorm, and (``downsample``) a 3x3x3 sparse conv of
    stride 2, padding 1, no bias, with no norm or activation after it.

    Shapes: SparseVoxels (N, C) on (Z, Y, X) -> (N, C), or with ``downsample`` (N', C) on
    ((Z - 1) // 2 + 1, (Y - 1) // 2 + 1, (X - 1) // 2 + 1).
    """

    def __init__(self, channels: int, num_layers: int, num_heads: int, window: int, cwi_kernel: int,
                 ffn_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ScatterFormerLayer(channels, num_heads, window, cwi_kernel, ffn_ratio)
                                    for _ in range(num_layers))
        self.norm = _bn(channels)
        self.down = SparseConv3d(channels, channels, 3, stride=2, padding=1, bias=False) if downsample else None
        self.grad_checkpointing = False

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        for layer in self.layers:
            voxels = _run(layer, voxels, self.grad_checkpointing and self.training)
        voxels = voxels.replace(self.norm(voxels.feats))
        return voxels if self.down is None else self.down(voxels)


#: values of :class:`ScatterFormer`'s ``pool_mode`` (see :class:`pointwin.nn.AttentionPool`)
SCATTERFORMER_POOL_MODES = ("scatterformer", "masked")


class ScatterFormer(nn.Module):
    """The official ScatterFormer backbone (module docstring), ending in BEV pillars.

    Args:
        in_channels: VFE width.
        channels: model width (official 128).
        num_heads: SLA heads (official 4).
        num_layers: layers per stage (official (3, 3)); stages after the first start with a stride-2 conv.
        window: BEV window side in voxels, the same on every stage (official 12 Waymo, 20 nuScenes).
        cwi_kernel: long depthwise kernel of the CWI; ``None`` = ``window + 1`` (the official rule).
        ffn_ratio: FFN hidden width / channels (official 2).
        stem_blocks: sparse residual blocks in the stem (official 3).
        z_pad: z slices added to the input grid before the stem (official 1).
        pool_heads: heads of the final height pooling (official 8).
        pool_mode: ``"scatterformer"`` (official, default) or ``"masked"`` (pointwin's: query max over the
            column's voxels only, slot embedding also in the values).

    Shapes: SparseVoxels (N, in_channels) on (Z, Y, X) -> SparseVoxels (P, channels) on (1, Y', X'),
    Y' = Y / 2 ** (stages - 1) rounded up. Call :meth:`output_grid` once with the input grid before
    ``forward`` (the Detector does) so the height pooling knows the z extent.
    """

    def __init__(self, in_channels: int, channels: int = 128, num_heads: int = 4,
                 num_layers: Sequence[int] = (3, 3), window: int = 12, cwi_kernel: int | None = None,
                 ffn_ratio: float = 2.0, stem_blocks: int = 3, z_pad: int = 1, pool_heads: int = 8,
                 pool_mode: str = "scatterformer") -> None:
        super().__init__()
        if pool_mode not in SCATTERFORMER_POOL_MODES:
            raise ValueError(f"ScatterFormer: pool_mode must be one of {list(SCATTERFORMER_POOL_MODES)}, "
                             f"got {pool_mode!r}")
        num_layers = [int(n) for n in num_layers]
        if not num_layers or min(num_layers) < 1:
            raise ValueError(f"ScatterFormer: num_layers must list at least one stage of >= 1 layers, got {num_layers}")
        if z_pad < 0:
            raise ValueError(f"ScatterFormer: z_pad must be >= 0, got {z_pad}")
        self.channels = self.out_channels = channels
        self.num_heads, self.window, self.pool_heads, self.pool_mode = num_heads, int(window), pool_heads, pool_mode
        self.cwi_kernel = int(window) + 1 if cwi_kernel is None else int(cwi_kernel)
        self.z_pad = int(z_pad)
        self.stem = ScatterFormerStem(in_channels, channels, stem_blocks)
        self.stages = nn.ModuleList(
            ScatterFormerStage(channels, n, num_heads, self.window, self.cwi_kernel, ffn_ratio, s < len(num_layers) - 1)
            for s, n in enumerate(num_layers))
        self.height_pool: AttentionPool | None = None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in the backward pass (saves memory, costs time).

        The layers' BatchNorms run twice per training step then, so their running statistics take two
        momentum updates per step (the gradients are unchanged).
        """
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def output_grid(self, spatial_shape: Sequence[int]) -> tuple[int, int, int]:
        """(1, Y', X') of the output for an input grid (Z, Y, X); builds the height pooling for that extent."""
        Z, Y, X = (int(s) for s in spatial_shape)
        Zs = Z + self.z_pad
        if Zs < 3:
            raise ValueError(f"ScatterFormer: the stem's (3, 1, 1) z-stride-2 conv needs Z + z_pad >= 3, got grid "
                             f"{tuple(spatial_shape)} with z_pad {self.z_pad} (a pillar grid cannot feed it)")
        Z = ScatterFormerStem.output_z(Zs)
        for _ in range(len(self.stages) - 1):
            Z, Y, X = ((n - 1) // 2 + 1 for n in (Z, Y, X))
        if self.height_pool is None or self.height_pool.stride[2] != Z:
            self.height_pool = AttentionPool(self.channels, (1, 1, Z), self.pool_heads, mode=self.pool_mode)
        return 1, Y, X

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        if self.height_pool is None:
            raise RuntimeError("ScatterFormer: call output_grid(input spatial_shape) once before forward "
                               "(the Detector does) so the height pooling knows the z extent")
        Z, Y, X = voxels.spatial_shape
        x = SparseVoxels(voxels.feats, voxels.coords, (Z + self.z_pad, Y, X), voxels.batch_size,
                         voxels.voxel_size, voxels.origin)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        if x.spatial_shape[0] != self.height_pool.stride[2]:
            raise ValueError(f"ScatterFormer height pooling was built for {self.height_pool.stride[2]} z slices, got "
                             f"{x.spatial_shape[0]} (output_grid was called with another grid)")
        return self.height_pool(x)


class SummedCrossWindowInteraction(nn.Module):
    """ScatterFormerLite's CWI: sum of depthwise sparse convs along x, along y and over 3x3x3, then a linear projection.

    Shapes: SparseVoxels (N, C) -> (N, C) features (same sites).
    """

    def __init__(self, channels: int, kernel: int = 13) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"SummedCrossWindowInteraction kernel must be odd (submanifold conv), got {kernel}")
        # kernel axes follow the coordinate order (z, y, x)
        self.conv_x = SubMConv3d(channels, channels, (1, 1, kernel), depthwise=True)
        self.conv_y = SubMConv3d(channels, channels, (1, kernel, 1), depthwise=True)
        self.conv_local = SubMConv3d(channels, channels, 3, depthwise=True)
        self.proj = nn.Linear(channels, channels)

    def forward(self, voxels: SparseVoxels) -> torch.Tensor:
        y = self.conv_x(voxels).feats + self.conv_y(voxels).feats + self.conv_local(voxels).feats
        return self.proj(nn.functional.gelu(y))


class ScatterFormerLiteBlock(nn.Module):
    """ScatterFormerLite block: SLA over BEV windows + CWI + FFN, pre-norm residuals.

    Shapes: SparseVoxels (N, C) -> (N, C)."""

    def __init__(self, channels: int, num_heads: int, window: int, shift: bool, ffn_ratio: float = 2.0,
                 cwi_kernel: int = 13, dropout: float = 0.0) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(channels)
        self.attn = PartitionAttention(channels, num_heads, "linear")
        self.norm2 = nn.LayerNorm(channels)
        self.cwi = SummedCrossWindowInteraction(channels, cwi_kernel)
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


class ScatterFormerLite(nn.Module):
    """pointwin's earlier ScatterFormer-style backbone (not the official network; kept for models trained with it).

    LayerNorm pre-norm blocks (SLA, summed CWI with a GELU + projection, GELU FFN) on the input grid, no conv
    stem, attention z-pooling (:class:`AttentionPool`, masked mode) between stages and at the end, BEV
    stride 1. Use :class:`ScatterFormer` for the official model.

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
            raise ValueError(f"ScatterFormerLite: num_blocks has {len(blocks_per_stage)} stages but z_strides gives "
                             f"{len(z_strides) + 1}")
        self.z_strides = [int(s) for s in z_strides]
        self.input_proj = nn.Identity() if in_channels == channels else nn.Linear(in_channels, channels)
        self.stages = nn.ModuleList(
            nn.ModuleList(ScatterFormerLiteBlock(channels, num_heads, window, shift_windows and b % 2 == 1, ffn_ratio,
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
                voxels = _run(block, voxels, self.grad_checkpointing and self.training)
        if self.height_pool and voxels.spatial_shape[0] > 1:
            if self.final_pool is None:
                raise RuntimeError("ScatterFormerLite: call output_grid(input spatial_shape) once before forward "
                                   "(the Detector does) so the height pooling knows the z extent")
            if self.final_pool.stride[2] != voxels.spatial_shape[0]:
                raise ValueError(f"ScatterFormerLite height pooling was built for {self.final_pool.stride[2]} "
                                 f"z slices, got {voxels.spatial_shape[0]}")
            voxels = self.final_pool(voxels)
        return voxels
