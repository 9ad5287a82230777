"""From sparse voxels to a dense bird's-eye-view map, and the 2D backbone + neck on it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..nn.conv import FoldingSequential, conv_norm
from ..structures import SparseVoxels


def scatter_to_bev(voxels: SparseVoxels) -> torch.Tensor:
    """Dense BEV tensor of sparse voxels.

    Pillars (Z = 1) scatter as they are; a 3D grid has its z slices stacked into channels
    (``channel = z * C + c``, SECOND's height compression). Empty cells are zero.

    Shapes: feats (N, C), coords (N, 4) (b, z, y, x) -> (B, C * Z, Y, X), in ``torch.channels_last`` layout.
    """
    Z, Y, X = voxels.spatial_shape
    C = voxels.feats.shape[1]
    c = voxels.coords.long()
    flat = voxels.feats.new_zeros(voxels.batch_size * Y * X, Z * C)
    cell = (c[:, 0] * Y + c[:, 2]) * X + c[:, 3]
    # (cell, z) pairs are unique because voxel coords are unique; index_put keeps autograd.
    rows = cell[:, None].expand(-1, C)
    cols = c[:, 1:2] * C + torch.arange(C, device=c.device)
    flat = flat.index_put((rows, cols), voxels.feats)
    # Left in channels_last layout: the 2D convs run faster on it (oneDNN on the CPU, tensor cores on GPUs).
    return flat.view(voxels.batch_size, Y, X, Z * C).permute(0, 3, 1, 2)


class PillarScatter(nn.Module):
    """Module wrapper of :func:`scatter_to_bev`; ``out_channels = in_channels * num_z``."""

    def __init__(self, in_channels: int, num_z: int = 1) -> None:
        super().__init__()
        self.out_channels = in_channels * num_z
        self.num_z = num_z

    def forward(self, voxels: SparseVoxels) -> torch.Tensor:
        if voxels.spatial_shape[0] != self.num_z:
            raise ValueError(f"PillarScatter was built for {self.num_z} z slices but the voxels have spatial_shape "
                             f"{voxels.spatial_shape}")
        return scatter_to_bev(voxels)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return FoldingSequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))


class BasicResBlock2d(nn.Module):
    """ResNet basic block (two 3x3 convs) with an optional strided 1x1 conv + BN projection on the skip.

    ``project=None`` adds the projection only when the shape changes; OpenPCDet's ``BaseBEVResBackbone``
    gives the first block of every level one whatever the shapes (``project=True``).

    Shapes: (B, Cin, H, W) -> (B, Cout, H / stride, W / stride).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, project: bool | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.relu = nn.ReLU(inplace=True)
        self.skip = None
        if project or (project is None and (stride != 1 or cin != cout)):
            self.skip = FoldingSequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.skip is None else self.skip(x)
        out = self.relu(conv_norm(x, self.conv1, self.bn1))
        out = conv_norm(out, self.conv2, self.bn2)
        return self.relu(out + identity)


class SkipConvLevel(nn.Sequential):
    """A level of conv-BN-ReLU layers where each layer whose output has its input's shape adds that input
    (``x = layer(x) + x``), as the FlatFormer code's SECOND with ``residual=True``. Shapes: (B, Cin, H, W) ->
    (B, Cout, H / stride, W / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            y = layer(x)
            x = y + x if y.shape == x.shape else y
        return x


#: 2D backbone block types (see :class:`BEVBackbone`)
BLOCK_TYPES = ("conv", "conv_skip", "basic")


class BEVBackbone(nn.Module):
    """SECOND-style 2D backbone with an FPN-like neck (upsample every level to one scale, concat).

    Level i: a (strided) first layer then ``layer_nums[i]`` more layers with ``num_filters[i]`` channels, of
    one ``block`` type:

    * ``"conv"``: 3x3 conv-BN-ReLU layers (SECOND; mmdetection3d ``SECOND``, OpenPCDet ``BaseBEVBackbone``);
    * ``"conv_skip"``: the same layers, each adding its input where the shapes agree (the FlatFormer code's
      ``SECOND(residual=True)``: every layer but the first of a level);
    * ``"basic"``: ResNet basic blocks, the first of each level with a 1x1 projection on the skip
      (OpenPCDet ``BaseBEVResBackbone``, used by DSVT).

    Each level is brought to a common scale by a transposed conv (``upsample_strides[i] >= 1``; kernel =
    stride) or a strided conv (``< 1``, given as 1/k), then BN-ReLU, and the levels are concatenated.

    Shapes: (B, in_channels, H, W) -> (B, sum(num_upsample_filters), H / out_stride, W / out_stride),
    ``out_stride = prod(layer_strides[:1]) / upsample_strides[0]``.
    """

    def __init__(self, in_channels: int, layer_nums: Sequence[int], layer_strides: Sequence[int],
                 num_filters: Sequence[int], upsample_strides: Sequence[float], num_upsample_filters: Sequence[int],
                 block: str = "conv") -> None:
        super().__init__()
        n = len(layer_nums)
        if not (len(layer_strides) == len(num_filters) == len(upsample_strides) == len(num_upsample_filters) == n):
            raise ValueError("BEVBackbone: layer_nums, layer_strides, num_filters, upsample_strides and "
                             "num_upsample_filters must have the same length")
        if block not in BLOCK_TYPES:
            raise ValueError(f"BEVBackbone: block must be one of {list(BLOCK_TYPES)}, got {block!r}")
        self.block = block
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        cin = in_channels
        cum_stride = 1
        scales = []
        for i in range(n):
            cout = num_filters[i]
            if block == "basic":
                layers: list[nn.Module] = [BasicResBlock2d(cin, cout, layer_strides[i], project=True)]
                layers += [BasicResBlock2d(cout, cout) for _ in range(layer_nums[i])]
            else:
                layers = [_conv_bn_relu(cin, cout, layer_strides[i])]
                layers += [_conv_bn_relu(cout, cout) for _ in range(layer_nums[i])]
            self.blocks.append(SkipConvLevel(*layers) if block == "conv_skip" else nn.Sequential(*layers))
            cum_stride *= layer_strides[i]
            up = upsample_strides[i]
            if up >= 1:
                k = int(round(up))
                de = nn.ConvTranspose2d(cout, num_upsample_filters[i], k, k, bias=False)
            else:
                k = int(round(1 / up))
                de = nn.Conv2d(cout, num_upsample_filters[i], k, k, bias=False)
            self.deblocks.append(FoldingSequential(de, nn.BatchNorm2d(num_upsample_filters[i], eps=1e-3, momentum=0.01),
                                                   nn.ReLU(inplace=True)))
            scales.append(cum_stride / up)
            cin = cout
        if len(set(scales)) != 1:
            raise ValueError(f"BEVBackbone: levels end at different strides {scales}; fix upsample_strides")
        self.out_stride = scales[0]
        self.out_channels = int(sum(num_upsample_filters))

    def level_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every level before its upsampling: [(B, num_filters[i], H_i, W_i)]."""
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ups = [deblock(y) for deblock, y in zip(self.deblocks, self.level_outputs(x), strict=True)]
        return torch.cat(ups, 1) if len(ups) > 1 else ups[0]
