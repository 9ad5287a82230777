"""SphereSeg: a SphereFormer-style sparse U-Net for LiDAR semantic segmentation.

Reference: Lai et al., "Spherical Transformer for LiDAR-based 3D Recognition" (CVPR 2023).

Encoder level l: a sparse-conv residual block, then (at ``attention_levels``) a window-attention block
whose heads are split: the first half attend inside cubic windows on the voxel grid
(:func:`pointwin.partition.cubic.cubic_windows`), the second half inside radial windows that are narrow
in azimuth and polar angle and long in range (:func:`pointwin.partition.radial_windows`, on voxel
centres). Levels are joined by stride-2 sparse convs; the decoder inverts them (same ``indice_key``),
concatenates the skip, fuses with a linear layer and a residual block. Per-point logits come from the
top level through the voxel inverse map (:class:`pointwin.models.heads.SegHead`).

Positions: as in SphereFormer, the radial heads get a relative-position bias along the ray: a learned
per-head table indexed by the exponential-split index (:func:`pointwin.partition.exponential_split_index`:
fine bins near zero, doubling outward) of the *pairwise* range difference r_i - r_j, added to the
attention logits through ``group_attention(..., pair_bias=...)``. The cubic heads add a linear
embedding of the window-relative xyz to q and k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...nn import FFN
from ...ops import SparseConv3d, SparseInverseConv3d, SubMConv3d, group_attention
from ...partition import exponential_split_index, radial_windows
from ...partition.cubic import cubic_windows
from ...structures import SparseVoxels


class SparseResBlock(nn.Module):
    """Two 3x3x3 submanifold convs with BN/ReLU and a residual. Shapes: SparseVoxels (N, C) -> (N, C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, bias=False)
        self.bn1 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.conv2 = SubMConv3d(channels, channels, 3, bias=False)
        self.bn2 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        y = torch.relu(self.bn1(self.conv1(x).feats))
        y = self.bn2(self.conv2(x.replace(y)).feats)
        return x.replace(torch.relu(y + x.feats))


class SphereAttention(nn.Module):
    """Multi-head attention with heads split between cubic and radial windows.

    Shapes: SparseVoxels (N, C) (with voxel_size and origin set, for the centres) -> (N, C).
    """

    def __init__(self, channels: int, num_heads: int, cubic_window: Sequence[int], radial_window: Sequence[float],
                 range_unit: float = 0.1, range_bins: int = 10) -> None:
        super().__init__()
        if num_heads < 2 or num_heads % 2 or channels % num_heads:
            raise ValueError(f"SphereAttention needs an even num_heads >= 2 dividing channels, got {num_heads} "
                             f"heads for {channels} channels")
        self.num_heads, self.channels = num_heads, channels
        self.cubic_window = tuple(int(w) for w in cubic_window)
        self.radial_window = tuple(float(w) for w in radial_window)
        self.range_unit, self.range_bins = range_unit, range_bins
        half = channels // 2
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.cubic_pos = nn.Linear(3, half)
        # (2 * range_bins + 1, radial heads): logit bias per exponential-split bin of r_i - r_j
        self.range_bias = nn.Parameter(torch.zeros(2 * range_bins + 1, num_heads // 2))
        nn.init.trunc_normal_(self.range_bias, std=0.02)

    def _structures(self, voxels: SparseVoxels):
        def build():
            cubic = cubic_windows(voxels.coords, voxels.spatial_shape, self.cubic_window)
            centres = voxels.centers()
            radial = radial_windows(centres, voxels.batch_idx, self.radial_window)
            w = torch.tensor(self.cubic_window, device=voxels.device)
            local = (voxels.coords[:, [3, 2, 1]].long() % w).float() / w - 0.5
            return cubic, radial, local, centres.double().norm(dim=1)

        return voxels.cached(("sphere_attention", self.cubic_window, self.radial_window, self.range_unit,
                              self.range_bins), build)

    def range_pair_bias(self, ranges: torch.Tensor):
        """``pair_bias`` for the radial heads: table[split(r_q - r_k)] -> (B, H/2, Lq, Lk)."""

        def pair_bias(query_voxels: torch.Tensor, key_voxels: torch.Tensor) -> torch.Tensor:
            delta = ranges[query_voxels][:, :, None] - ranges[key_voxels][:, None, :]
            idx = exponential_split_index(delta, self.range_unit, self.range_bins)
            return self.range_bias[idx].permute(0, 3, 1, 2)

        return pair_bias

    def forward(self, voxels: SparseVoxels, x: torch.Tensor) -> torch.Tensor:
        cubic, radial, local, ranges = self._structures(voxels)
        n, c = x.shape
        h, half = self.num_heads // 2, c // 2
        q, k, v = self.qkv(x).chunk(3, 1)
        pos = self.cubic_pos(local).to(x.dtype)
        d = c // self.num_heads
        out_c = group_attention((q[:, :half] + pos).reshape(n, h, d), (k[:, :half] + pos).reshape(n, h, d),
                                v[:, :half].reshape(n, h, d), cubic)
        out_r = group_attention(q[:, half:].reshape(n, h, d), k[:, half:].reshape(n, h, d),
                                v[:, half:].reshape(n, h, d), radial, pair_bias=self.range_pair_bias(ranges))
        return self.proj(torch.cat([out_c.reshape(n, half), out_r.reshape(n, half)], 1))


class SphereBlock(nn.Module):
    """Pre-norm transformer block: x += Attn(LN x); x += FFN(LN x). Shapes: SparseVoxels (N, C) -> (N, C)."""

    def __init__(self, channels: int, num_heads: int, cubic_window: Sequence[int], radial_window: Sequence[float],
                 range_unit: float, range_bins: int, ffn_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = SphereAttention(channels, num_heads, cubic_window, radial_window, range_unit, range_bins)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = FFN(channels, int(channels * ffn_ratio), "gelu")

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        f = x.feats
        f = f + self.attn(x, self.norm1(f))
        f = f + self.ffn(self.norm2(f))
        return x.replace(f)


class SphereSeg(nn.Module):
    """Sparse-conv + radial/cubic window-attention U-Net.

    Args:
        in_channels: VFE width.
        channels: width per level (level 0 is the input resolution).
        num_heads: heads per level (even), used at ``attention_levels``.
        attention_levels: levels that get a window-attention block after their residual block.
        cubic_window: (wx, wy, wz) voxels of the cubic heads' windows (same at every level).
        radial_window: (azimuth deg, polar deg, range m) of the radial heads' windows.
        range_unit, range_bins: exponential split of the range offset (finest bin width in metres, bins per
            sign).

    Shapes: SparseVoxels (N, in_channels) with voxel_size/origin -> SparseVoxels (N, channels[0]), same sites.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128, 256, 256),
                 num_heads: Sequence[int] = (2, 4, 8, 16, 16), attention_levels: Sequence[int] = (0, 1, 2, 3, 4),
                 cubic_window: Sequence[int] = (6, 6, 6), radial_window: Sequence[float] = (2.0, 2.0, 80.0),
                 range_unit: float = 0.1, range_bins: int = 10, ffn_ratio: float = 2.0) -> None:
        super().__init__()
        n = len(channels)
        if len(num_heads) != n:
            raise ValueError(f"SphereSeg: num_heads needs one value per level ({n}), got {list(num_heads)}")
        self.channels = [int(c) for c in channels]
        self.stem_conv = SubMConv3d(in_channels, channels[0], 3, bias=False)
        self.stem_bn = nn.BatchNorm1d(channels[0], eps=1e-3, momentum=0.01)
        self.enc_res = nn.ModuleList(SparseResBlock(c) for c in channels)
        self.enc_attn = nn.ModuleList(
            SphereBlock(c, h, cubic_window, radial_window, range_unit, range_bins, ffn_ratio)
            if i in attention_levels else nn.Identity() for i, (c, h) in enumerate(zip(channels, num_heads,
                                                                                        strict=True)))
        self.down = nn.ModuleList(SparseConv3d(channels[i], channels[i + 1], 2, stride=2, bias=False,
                                               indice_key=f"sphereseg_down{i}") for i in range(n - 1))
        self.down_bn = nn.ModuleList(nn.BatchNorm1d(channels[i + 1], eps=1e-3, momentum=0.01) for i in range(n - 1))
        self.up = nn.ModuleList(SparseInverseConv3d(channels[i + 1], channels[i], 2, indice_key=f"sphereseg_down{i}",
                                                    bias=False) for i in range(n - 1))
        self.up_bn = nn.ModuleList(nn.BatchNorm1d(channels[i], eps=1e-3, momentum=0.01) for i in range(n - 1))
        self.fuse = nn.ModuleList(nn.Linear(2 * channels[i], channels[i]) for i in range(n - 1))
        self.dec_res = nn.ModuleList(SparseResBlock(channels[i]) for i in range(n - 1))
        self.out_channels = self.channels[0]

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        if voxels.voxel_size is None or voxels.origin is None:
            raise ValueError("SphereSeg needs SparseVoxels with voxel_size and origin (radial windows use centres)")
        x = voxels.replace(torch.relu(self.stem_bn(self.stem_conv(voxels).feats)))
        skips = []
        for i in range(len(self.channels)):
            x = self.enc_res[i](x)
            if isinstance(self.enc_attn[i], SphereBlock):
                x = self.enc_attn[i](x)
            if i + 1 < len(self.channels):
                skips.append(x)
                y = self.down[i](x)
                x = y.replace(torch.relu(self.down_bn[i](y.feats)))
        for i in reversed(range(len(self.channels) - 1)):
            up = self.up[i](x)
            skip = skips[i]
            f = torch.relu(self.up_bn[i](up.feats))
            x = skip.replace(self.fuse[i](torch.cat([skip.feats, f], 1)))
            x = self.dec_res[i](x)
        return x
