"""SphereSeg: SphereFormer's sparse U-Net for LiDAR semantic segmentation, plus pointwin's variant.

Reference: Lai et al., "Spherical Transformer for LiDAR-based 3D Recognition" (CVPR 2023); official code
github.com/dvlab-research/SphereFormer (``model/unet_spherical_transformer.py``, ``spherical_transformer.py``).

Every level has a window-attention block (at ``attention_levels``) whose heads are split: the first half attend
inside cubic windows, the second half inside radial windows that are narrow in azimuth and polar angle and
long in range (:func:`pointwin.partition.radial_windows`). Levels are joined by stride-2 sparse convs; the
decoder inverts them (same ``indice_key``).

Settings (the official model is the default of the shipped ``configs/nuscenes/sphereseg.yaml``):

* ``unet: official``: per level ``block_reps`` pre-activation residual blocks (BN-ReLU-conv twice, a 1x1 conv
  on the identity where the width changes; BN eps ``bn_eps`` = 1e-4), BN-ReLU-conv down and BN-ReLU-inverse
  conv up, skip concatenated and fed to ``block_reps`` residual blocks (the first 2C -> C), BN-ReLU at the
  top; stem = one 3x3x3 submanifold conv (no norm). ``unet: pointwin``: conv-BN-ReLU blocks, Linear fusion.
* ``rpe: contextual`` (official): both head groups add learned relative-position embeddings on all three axes
  to queries, keys and values (sptr's contextual RPE): score = q.(k + sum_a Tq[a, i_a]) + k.sum_a Tk[a, i_a],
  out = sum softmax * (v + sum_a Tv[a, i_a]); cubic index = quantised in-window offset (24 steps per window
  length) per axis, radial index = the same on azimuth and polar plus the exponential split of r_q - r_k on
  range (:func:`pointwin.partition.radial_rpe_index`). Cubic windows are then taken on the voxel positions
  (``cubic_window`` voxels of the level's size, as the official 0.6 m x 2^level). ``rpe: bias`` (pointwin):
  one logit bias per exponential-split range bin on the radial heads, an absolute in-window embedding on the
  cubic heads, cubic windows on the voxel grid.
* ``window_origin: batch_min`` (official): window cells counted from the batch-wide minimum (a sample's
  windows change with its batch mates); ``fixed`` (pointwin): from a fixed origin, batch-independent.
* ``radial_window`` at level 0, angles multiplied by ``radial_window_scale`` per level (official (2, 2, 120)
  and x2 per level).
* ``positions: input_mean``: the voxel position is the mean of its points, read from the first three input
  channels (:class:`pointwin.models.vfe.MeanVFE`), a deeper voxel's the unweighted mean of its children
  (official); ``centre``: voxel centres (pointwin).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...nn import FFN
from ...nn.condaformer import drop_path
from ...ops import SparseConv3d, SparseInverseConv3d, SubMConv3d, group_attention
from ...partition import exponential_split_index, radial_windows
from ...partition.base import Partition
from ...partition.cubic import cubic_windows
from ...partition.radial import ORIGINS, position_windows, radial_rpe_index, window_rpe_index
from ...structures import SparseVoxels

RPE_MODES = ("contextual", "bias")
UNET_MODES = ("official", "pointwin")
POSITION_MODES = ("input_mean", "centre")


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


class PreActResBlock(nn.Module):
    """SphereFormer's ``ResidualBlock``: ``conv2(ReLU(BN(conv1(ReLU(BN(x)))))) + skip(x)``, skip = identity or a
    1x1 submanifold conv when the width changes. Shapes: SparseVoxels (N, Cin) -> (N, Cout)."""

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float = 1e-4, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm1d(in_channels, eps=bn_eps, momentum=bn_momentum)
        self.conv1 = SubMConv3d(in_channels, out_channels, 3, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = SubMConv3d(out_channels, out_channels, 3, bias=False)
        self.skip = SubMConv3d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        y = self.conv1(x.replace(torch.relu(self.bn1(x.feats))))
        y = self.conv2(y.replace(torch.relu(self.bn2(y.feats))))
        identity = x.feats if self.skip is None else self.skip(x).feats
        return y.replace(y.feats + identity)


def group_pairs(partition: Partition) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered (query row, key row) pairs inside each group of a variable-length partition: (M,), (M,)
    with M = sum of squared group sizes, grouped by query (queries in slot order, keys in slot order)."""
    sizes = partition.offsets.diff()
    n2 = sizes * sizes
    g = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), n2)
    base = torch.cumsum(n2, 0) - n2
    local = torch.arange(int(n2.sum()), device=sizes.device) - base[g]
    i, j = local // sizes[g], local % sizes[g]
    start = partition.offsets[:-1][g]
    return partition.index[start + i], partition.index[start + j]


def contextual_rpe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_rows: torch.Tensor,
                             key_rows: torch.Tensor, rel_idx: torch.Tensor, table_q: torch.Tensor,
                             table_k: torch.Tensor, table_v: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """Softmax attention over explicit (query, key) pairs with sptr's contextual relative-position embedding.

    Args:
        q, k, v: (N, H, D); ``q`` already scaled by D**-0.5 (the official code scales q before the RPE terms).
        query_rows, key_rows: (M,) pairs; every row must be a query of at least one pair.
        rel_idx: (M, 3) int table row per pair and axis.
        table_q, table_k, table_v: (L, 3, H, D).
        chunk: elements of the (pairs, H, D) gathers computed at a time (bounds the memory).

    Returns (N, H, D): ``sum_j softmax_j(q.(k_j + Tq_ij) + k_j.Tk_ij) (v_j + Tv_ij)`` with
    ``T_ij = sum_a table[rel_idx[ij, a], a]``. The table terms are never gathered per pair: ``q . table`` and
    ``k . table`` are formed per row and table entry ((N, 3, L, H)) and picked per pair, and the value term is
    the per-(query, entry) sum of the weights times the table.
    """
    n, h, d = q.shape
    L = table_q.shape[0]
    m = query_rows.shape[0]
    qt = torch.einsum("nhd,rahd->narh", q, table_q)
    kt = torch.einsum("nhd,rahd->narh", k, table_k)
    step = max(1, chunk // max(h * d, 1))
    score = torch.cat([(q[query_rows[i:i + step]] * k[key_rows[i:i + step]]).sum(-1) for i in range(0, m, step)]) \
        if m else q.new_zeros(0, h)
    for a in range(3):
        score = score + qt[query_rows, a, rel_idx[:, a]] + kt[key_rows, a, rel_idx[:, a]]
    idx = query_rows[:, None].expand(-1, h)
    top = score.new_full((n, h), float("-inf")).scatter_reduce(0, idx, score.detach(), "amax", include_self=True)
    # softmax and sums in fp32: index_add needs one dtype (CUDA autocast runs exp in fp32, v may be bf16/fp16)
    e = torch.exp(score - top[query_rows])
    e = e.to(torch.promote_types(e.dtype, torch.float32))
    den = e.new_zeros(n, h).index_add(0, query_rows, e)
    w = e / den[query_rows]
    out = w.new_zeros(v.shape)
    for i in range(0, m, step):
        out = out.index_add(0, query_rows[i:i + step], w[i:i + step, :, None] * v[key_rows[i:i + step]])
    for a in range(3):
        acc = w.new_zeros(n * L, h).index_add(0, query_rows * L + rel_idx[:, a], w)
        out = out + torch.einsum("nrh,rhd->nhd", acc.view(n, L, h), table_v[:, a])
    return out.to(v.dtype)


class SphereAttention(nn.Module):
    """Multi-head attention with heads split between cubic and radial windows (see the module docstring).

    Windows and relative-position indices are cached on ``voxels``: ``positions`` must be a function of the
    voxel set (as the U-Net's are).

    Shapes: SparseVoxels (N, C) (with voxel_size and origin set), x (N, C), positions (N, 3) or None (voxel
    centres) -> (N, C).
    """

    def __init__(self, channels: int, num_heads: int, cubic_window: Sequence[int], radial_window: Sequence[float],
                 range_unit: float = 0.1, range_bins: int = 10, rpe: str = "bias", window_origin: str = "fixed",
                 quant_grid_length: int = 24, range_a: float = 0.0125) -> None:
        super().__init__()
        if num_heads < 2 or num_heads % 2 or channels % num_heads:
            raise ValueError(f"SphereAttention needs an even num_heads >= 2 dividing channels, got {num_heads} "
                             f"heads for {channels} channels")
        if rpe not in RPE_MODES:
            raise ValueError(f"SphereAttention rpe must be one of {RPE_MODES}, got {rpe!r}")
        if window_origin not in ORIGINS:
            raise ValueError(f"SphereAttention window_origin must be one of {ORIGINS}, got {window_origin!r}")
        self.num_heads, self.channels, self.rpe, self.window_origin = num_heads, channels, rpe, window_origin
        self.cubic_window = tuple(int(w) for w in cubic_window)
        self.radial_window = tuple(float(w) for w in radial_window)
        self.range_unit, self.range_bins = range_unit, range_bins
        self.quant_grid_length, self.range_a = int(quant_grid_length), float(range_a)
        half, d = channels // 2, channels // num_heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        if rpe == "bias":
            self.cubic_pos = nn.Linear(3, half)
            # (2 * range_bins + 1, radial heads): logit bias per exponential-split bin of r_i - r_j
            self.range_bias = nn.Parameter(torch.zeros(2 * range_bins + 1, num_heads // 2))
            nn.init.trunc_normal_(self.range_bias, std=0.02)
        else:
            L, h = self.quant_grid_length, num_heads // 2
            # official layout (rows, axis, heads, head dim): 2L - 1 rows for the cubic heads, 2L for the radial
            for name, rows in (("cubic", 2 * L - 1), ("radial", 2 * L)):
                for t in "qkv":
                    table = nn.Parameter(torch.zeros(rows, 3, h, d))
                    nn.init.trunc_normal_(table, std=0.02)
                    self.register_parameter(f"{name}_table_{t}", table)

    def _structures(self, voxels: SparseVoxels, positions: torch.Tensor | None = None):
        positions = voxels.centers() if positions is None else positions

        def build():
            if self.rpe == "bias":
                cubic = cubic_windows(voxels.coords, voxels.spatial_shape, self.cubic_window)
                radial = radial_windows(positions, voxels.batch_idx, self.radial_window, self.window_origin)
                w = torch.tensor(self.cubic_window, device=voxels.device)
                local = (voxels.coords[:, [3, 2, 1]].long() % w).float() / w - 0.5
                return cubic, radial, local, positions.double().norm(dim=1)
            L = self.quant_grid_length
            window_m = [float(c) * float(s) for c, s in zip(self.cubic_window, voxels.voxel_size, strict=True)]
            cubic, values, start = position_windows(positions, voxels.batch_idx, window_m, self.window_origin)
            cq, ck = group_pairs(cubic)
            cubic_idx = window_rpe_index(values, start, cq, ck, window_m, L)
            radial = radial_windows(positions, voxels.batch_idx, self.radial_window, self.window_origin)
            rq, rk = group_pairs(radial)
            radial_idx = radial_rpe_index(positions, rq, rk, self.radial_window, L, self.range_a, self.window_origin)
            return (cq, ck, cubic_idx), (rq, rk, radial_idx)

        key = ("sphere_attention", self.rpe, self.window_origin, self.cubic_window, self.radial_window,
               self.range_unit, self.range_bins, self.quant_grid_length, self.range_a)
        return voxels.cached(key, build)

    def range_pair_bias(self, ranges: torch.Tensor):
        """``pair_bias`` for the radial heads: table[split(r_q - r_k)] -> (B, H/2, Lq, Lk)."""

        def pair_bias(query_voxels: torch.Tensor, key_voxels: torch.Tensor) -> torch.Tensor:
            delta = ranges[query_voxels][:, :, None] - ranges[key_voxels][:, None, :]
            idx = exponential_split_index(delta, self.range_unit, self.range_bins)
            return self.range_bias[idx].permute(0, 3, 1, 2)

        return pair_bias

    def forward(self, voxels: SparseVoxels, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        positions = voxels.centers() if positions is None else positions
        n, c = x.shape
        h, half, d = self.num_heads // 2, c // 2, c // self.num_heads
        q, k, v = self.qkv(x).chunk(3, 1)
        if self.rpe == "contextual":
            (cq, ck, cidx), (rq, rk, ridx) = self._structures(voxels, positions)
            q = q.reshape(n, self.num_heads, d) * d ** -0.5
            k, v = k.reshape(n, self.num_heads, d), v.reshape(n, self.num_heads, d)
            out_c = contextual_rpe_attention(q[:, :h], k[:, :h], v[:, :h], cq, ck, cidx, self.cubic_table_q,
                                             self.cubic_table_k, self.cubic_table_v)
            out_r = contextual_rpe_attention(q[:, h:], k[:, h:], v[:, h:], rq, rk, ridx, self.radial_table_q,
                                             self.radial_table_k, self.radial_table_v)
            return self.proj(torch.cat([out_c.reshape(n, half), out_r.reshape(n, half)], 1))
        cubic, radial, local, ranges = self._structures(voxels, positions)
        pos = self.cubic_pos(local).to(q.dtype)  # q's dtype (bf16 under autocast; x is fp32 after LayerNorm)
        out_c = group_attention((q[:, :half] + pos).reshape(n, h, d), (k[:, :half] + pos).reshape(n, h, d),
                                v[:, :half].reshape(n, h, d), cubic)
        out_r = group_attention(q[:, half:].reshape(n, h, d), k[:, half:].reshape(n, h, d),
                                v[:, half:].reshape(n, h, d), radial, pair_bias=self.range_pair_bias(ranges))
        return self.proj(torch.cat([out_c.reshape(n, half), out_r.reshape(n, half)], 1))


class SphereBlock(nn.Module):
    """Pre-norm transformer block: x += DropPath(Attn(LN x)); x += DropPath(FFN(LN x)).

    Shapes: SparseVoxels (N, C), positions (N, 3) or None (voxel centres) -> SparseVoxels (N, C).
    """

    def __init__(self, channels: int, num_heads: int, cubic_window: Sequence[int], radial_window: Sequence[float],
                 range_unit: float, range_bins: int, ffn_ratio: float = 2.0, drop_path: float = 0.0,
                 rpe: str = "bias", window_origin: str = "fixed", quant_grid_length: int = 24,
                 range_a: float = 0.0125) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = SphereAttention(channels, num_heads, cubic_window, radial_window, range_unit, range_bins, rpe,
                                    window_origin, quant_grid_length, range_a)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = FFN(channels, int(channels * ffn_ratio), "gelu")
        self.drop_path = float(drop_path)

    def forward(self, x: SparseVoxels, positions: torch.Tensor | None = None) -> SparseVoxels:
        f = x.feats
        b, B = x.batch_idx, x.batch_size
        f = f + drop_path(self.attn(x, self.norm1(f), positions), self.drop_path, self.training, b, B)
        f = f + drop_path(self.ffn(self.norm2(f)), self.drop_path, self.training, b, B)
        return x.replace(f)


def parent_positions(child: SparseVoxels, parent: SparseVoxels, positions: torch.Tensor) -> torch.Tensor:
    """Unweighted mean of the children's positions per parent of a kernel-2 stride-2 conv (the official
    ``get_downsample_info``); children without a parent (the odd last slice of a grid) are skipped."""
    c = child.coords.long()
    key = SparseVoxels.linear_index(torch.cat([c[:, :1], c[:, 1:] // 2], 1), parent.spatial_shape)
    pkey = SparseVoxels.linear_index(parent.coords.long(), parent.spatial_shape)
    sorted_pkey, order = torch.sort(pkey)
    pos = torch.searchsorted(sorted_pkey, key).clamp_(max=max(sorted_pkey.numel() - 1, 0))
    ok = sorted_pkey[pos] == key
    ok &= (c[:, 1:] // 2 < torch.tensor(parent.spatial_shape, device=c.device)).all(1)
    rows = order[pos[ok]]
    out = positions.new_zeros(parent.coords.shape[0], 3).index_add_(0, rows, positions[ok])
    count = positions.new_zeros(parent.coords.shape[0]).index_add_(0, rows, positions.new_ones(int(ok.sum())))
    return out / count.clamp(min=1)[:, None]


class SphereSeg(nn.Module):
    """Sparse-conv + radial/cubic window-attention U-Net (see the module docstring for the settings).

    Args:
        in_channels: VFE width (with ``positions: input_mean`` the first three channels are the point mean).
        channels: width per level (level 0 is the input resolution).
        num_heads: heads per level (even), used at ``attention_levels``.
        attention_levels: levels that get a window-attention block after their convolution blocks.
        cubic_window: (wx, wy, wz) voxels of the cubic heads' windows (same in voxels at every level).
        radial_window: (azimuth deg, polar deg, range m) of the radial heads' windows at level 0.
        radial_window_scale: factors on (azimuth, polar) from one level to the next (range kept).
        range_unit, range_bins: exponential split of ``rpe: bias`` (finest bin width in metres, bins per sign).
        ffn_ratio: hidden width of the attention blocks' MLP over C.
        rpe, window_origin, quant_grid_length, range_a: see :class:`SphereAttention`.
        unet, block_reps, bn_eps, bn_momentum: U-Net structure (``official`` / ``pointwin``) and its blocks.
        drop_path: stochastic depth of the attention blocks, level l gets ``linspace(0, drop_path, 7)[l]``
            (the official schedule).
        positions: ``input_mean`` or ``centre`` (see the module docstring).

    The argument defaults are pointwin's variant; ``configs/nuscenes/sphereseg.yaml`` sets the official model.

    Shapes: SparseVoxels (N, in_channels) with voxel_size/origin -> SparseVoxels (N, channels[0]), same sites.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128, 256, 256),
                 num_heads: Sequence[int] = (2, 4, 8, 16, 16), attention_levels: Sequence[int] = (0, 1, 2, 3, 4),
                 cubic_window: Sequence[int] = (6, 6, 6), radial_window: Sequence[float] = (2.0, 2.0, 80.0),
                 radial_window_scale: Sequence[float] = (1.0, 1.0), range_unit: float = 0.1, range_bins: int = 10,
                 ffn_ratio: float = 2.0, rpe: str = "bias", window_origin: str = "fixed",
                 quant_grid_length: int = 24, range_a: float = 0.0125, unet: str = "pointwin", block_reps: int = 2,
                 bn_eps: float = 1e-4, bn_momentum: float = 0.1, drop_path: float = 0.0,
                 positions: str = "centre") -> None:
        super().__init__()
        n = len(channels)
        if len(num_heads) != n:
            raise ValueError(f"SphereSeg: num_heads needs one value per level ({n}), got {list(num_heads)}")
        if unet not in UNET_MODES:
            raise ValueError(f"SphereSeg: unet must be one of {UNET_MODES}, got {unet!r}")
        if positions not in POSITION_MODES:
            raise ValueError(f"SphereSeg: positions must be one of {POSITION_MODES}, got {positions!r}")
        if positions == "input_mean" and in_channels < 3:
            raise ValueError(f"SphereSeg: positions 'input_mean' reads the first 3 input channels (x, y, z mean), "
                             f"but in_channels is {in_channels}")
        if len(radial_window_scale) != 2:
            raise ValueError(f"SphereSeg: radial_window_scale needs 2 factors (azimuth, polar), got "
                             f"{list(radial_window_scale)}")
        self.channels = [int(c) for c in channels]
        self.unet, self.positions, self.window_origin, self.rpe = unet, positions, window_origin, rpe
        self.radial_window = tuple(float(w) for w in radial_window)
        self.radial_window_scale = tuple(float(s) for s in radial_window_scale)
        dpr = torch.linspace(0, drop_path, 7).tolist()
        self.enc_attn = nn.ModuleList(
            SphereBlock(c, h, cubic_window, self.radial_window_at(i), range_unit, range_bins, ffn_ratio,
                        dpr[i] if i < len(dpr) else drop_path, rpe, window_origin, quant_grid_length, range_a)
            if i in attention_levels else nn.Identity()
            for i, (c, h) in enumerate(zip(channels, num_heads, strict=True)))
        self.down = nn.ModuleList(SparseConv3d(channels[i], channels[i + 1], 2, stride=2, bias=False,
                                               indice_key=f"sphereseg_down{i}") for i in range(n - 1))
        self.up = nn.ModuleList(SparseInverseConv3d(channels[i + 1], channels[i], 2, indice_key=f"sphereseg_down{i}",
                                                    bias=False) for i in range(n - 1))
        if unet == "official":
            def bn(c: int) -> nn.BatchNorm1d:
                return nn.BatchNorm1d(c, eps=bn_eps, momentum=bn_momentum)

            self.stem_conv = SubMConv3d(in_channels, channels[0], 3, bias=False)
            self.enc_blocks = nn.ModuleList(
                nn.ModuleList(PreActResBlock(c, c, bn_eps, bn_momentum) for _ in range(block_reps)) for c in channels)
            self.down_bn = nn.ModuleList(bn(channels[i]) for i in range(n - 1))
            self.up_bn = nn.ModuleList(bn(channels[i + 1]) for i in range(n - 1))
            self.dec_blocks = nn.ModuleList(
                nn.ModuleList(PreActResBlock(channels[i] * (2 if r == 0 else 1), channels[i], bn_eps, bn_momentum)
                              for r in range(block_reps)) for i in range(n - 1))
            self.out_bn = bn(channels[0])
        else:
            self.stem_conv = SubMConv3d(in_channels, channels[0], 3, bias=False)
            self.stem_bn = nn.BatchNorm1d(channels[0], eps=1e-3, momentum=0.01)
            self.enc_res = nn.ModuleList(SparseResBlock(c) for c in channels)
            self.down_bn = nn.ModuleList(nn.BatchNorm1d(channels[i + 1], eps=1e-3, momentum=0.01)
                                         for i in range(n - 1))
            self.up_bn = nn.ModuleList(nn.BatchNorm1d(channels[i], eps=1e-3, momentum=0.01) for i in range(n - 1))
            self.fuse = nn.ModuleList(nn.Linear(2 * channels[i], channels[i]) for i in range(n - 1))
            self.dec_res = nn.ModuleList(SparseResBlock(channels[i]) for i in range(n - 1))
        self.out_channels = self.channels[0]

    def radial_window_at(self, level: int) -> tuple[float, float, float]:
        """The radial window of ``level`` (0-based): level 0's angles times ``radial_window_scale ** level``."""
        a, p, r = self.radial_window
        sa, sp = self.radial_window_scale
        return (a * sa ** level, p * sp ** level, r)

    def _attend(self, i: int, x: SparseVoxels, pos: torch.Tensor | None) -> SparseVoxels:
        blk = self.enc_attn[i]
        return blk(x, pos) if isinstance(blk, SphereBlock) else x

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        if voxels.voxel_size is None or voxels.origin is None:
            raise ValueError("SphereSeg needs SparseVoxels with voxel_size and origin (windows use positions)")
        pos = voxels.feats[:, :3].detach().float() if self.positions == "input_mean" else voxels.centers()
        if self.unet == "pointwin":
            return self._forward_pointwin(voxels, pos)
        x = self.stem_conv(voxels)
        skips = []
        for i in range(len(self.channels)):
            for blk in self.enc_blocks[i]:
                x = blk(x)
            x = self._attend(i, x, pos)
            if i + 1 < len(self.channels):
                skips.append((x, pos))
                y = self.down[i](x.replace(torch.relu(self.down_bn[i](x.feats))))
                pos = parent_positions(x, y, pos) if self.positions == "input_mean" else y.centers()
                x = y
        for i in reversed(range(len(self.channels) - 1)):
            up = self.up[i](x.replace(torch.relu(self.up_bn[i](x.feats))))
            skip = skips[i][0]
            x = skip.replace(torch.cat([skip.feats, up.feats], 1))
            for blk in self.dec_blocks[i]:
                x = blk(x)
        return x.replace(torch.relu(self.out_bn(x.feats)))

    def _forward_pointwin(self, voxels: SparseVoxels, pos: torch.Tensor) -> SparseVoxels:
        x = voxels.replace(torch.relu(self.stem_bn(self.stem_conv(voxels).feats)))
        skips = []
        for i in range(len(self.channels)):
            x = self.enc_res[i](x)
            x = self._attend(i, x, pos)
            if i + 1 < len(self.channels):
                skips.append(x)
                y = self.down[i](x)
                pos = parent_positions(x, y, pos) if self.positions == "input_mean" else y.centers()
                x = y.replace(torch.relu(self.down_bn[i](y.feats)))
        for i in reversed(range(len(self.channels) - 1)):
            up = self.up[i](x)
            skip = skips[i]
            f = torch.relu(self.up_bn[i](up.feats))
            x = skip.replace(self.fuse[i](torch.cat([skip.feats, f], 1)))
            x = self.dec_res[i](x)
        return x
