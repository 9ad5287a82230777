"""PTv3: a serialized-patch attention U-Net (Point Transformer V3 style) for semantic segmentation.

Reference: Wu et al., "Point Transformer V3: Simpler, Faster, Stronger" (CVPR 2024).

- Serialization: voxels are ordered along a space-filling curve and cut into patches of K
  (:func:`pointwin.partition.curve_patches`); attention runs inside each patch through
  :func:`pointwin.ops.group_attention` (equal-size groups: one SDPA call).
- Orders: block i of a stage uses ``orders[i % len(orders)]`` (z, z-trans, hilbert, hilbert-trans by
  default). As in Pointcept the order list is re-shuffled for every encoder stage (at the serialization and
  at every pooling; decoder stage s uses encoder stage s's orders), drawn from the global torch RNG.
  ``shuffle_orders="always"`` shuffles in eval mode too (Pointcept's behaviour); ``True`` (pointwin's
  choice) shuffles in training only, so evaluation is deterministic; ``False`` never.
- Grid (``grid``): ``"data"`` (Pointcept) serializes coordinates counted from each sample's own minimum
  with depth = bit length of (largest coordinate + 1) over the batch, minus one per pooled stage; pooling
  cells are 2x2x2 cells of those shifted coordinates. ``"shape"`` (pointwin) counts from the grid origin
  (the crop range) with the depth of the grid, so a sample's orders never depend on its batch mates.
- BatchNorm in the stem, pooling and unpooling: ``bn_eps`` / ``bn_momentum`` (Pointcept: 1e-3 / 0.01).
- Conditional positional encoding before every block: a 3x3x3 submanifold conv, Linear, LayerNorm, added
  to the features.
- Serialized pooling: parent cell = serialized code >> 3 (the 2x2x2 cell, for every curve), features
  Linear -> max over the cell -> BN -> GELU; the parent grid is the child grid halved (ceil). The
  parents' own serialization equals the children's code >> 3 (tested).
- Unpooling: ``proj(parent)[cluster] + proj_skip(skip)`` (each Linear -> BN -> GELU), back to the skip's
  sites; per-point logits come from the top level through the voxel inverse map
  (:class:`pointwin.models.heads.SegHead`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...nn import FFN, PartitionAttention
from ...nn.condaformer import drop_path
from ...ops import SubMConv3d
from ...partition import CURVES, curve_patches, serialize
from ...partition.curve import data_depth
from ...structures import SparseVoxels


@dataclass
class SerializedPoolMap:
    """Child -> parent map of one serialized pooling step.

    Attributes:
        coords: int32 (P, 4) parent cells ``(b, z >> 1, y >> 1, x >> 1)``, in serialized (z-order) order.
        spatial_shape: parent grid ``ceil((Z, Y, X) / 2)``.
        cluster: int64 (N,) parent row of each child voxel.
    """

    coords: torch.Tensor
    spatial_shape: tuple[int, int, int]
    cluster: torch.Tensor


def serialized_pool_map(coords: torch.Tensor, spatial_shape: Sequence[int],
                        depth: int | None = None) -> SerializedPoolMap:
    """Parents of voxels ``coords`` (N, 4): unique ``serialize(coords, "z") >> 3``, sorted."""
    code = serialize(coords, "z", spatial_shape, depth)
    parent_code, cluster = torch.unique(code >> 3, sorted=True, return_inverse=True)
    child = coords.clone()
    child[:, 1:] >>= 1
    parents = torch.empty(parent_code.numel(), 4, dtype=coords.dtype, device=coords.device)
    parents[cluster] = child  # every member of a cell writes the same row
    shape = tuple((int(s) + 1) // 2 for s in spatial_shape)
    return SerializedPoolMap(parents.to(torch.int32), shape, cluster)  # type: ignore[arg-type]


class SerializedPooling(nn.Module):
    """Pool 2x2x2 cells: Linear(Cin, Cout) -> max per parent -> BN -> GELU.

    Shapes: SparseVoxels (N, Cin) -> (SparseVoxels (P, Cout) on the halved grid, cluster (N,)).
    """

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.BatchNorm1d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = nn.GELU()

    def forward(self, x: SparseVoxels, depth: int | None = None) -> tuple[SparseVoxels, torch.Tensor]:
        pmap: SerializedPoolMap = x.cached(("ptv3.pool", depth),
                                           lambda: serialized_pool_map(x.coords, x.spatial_shape, depth))
        f = self.proj(x.feats)
        P = pmap.coords.shape[0]
        idx = pmap.cluster[:, None].expand_as(f)
        pooled = f.new_zeros(P, f.shape[1]).scatter_reduce(0, idx, f, "amax", include_self=False)
        vs = None if x.voxel_size is None else tuple(2 * v for v in x.voxel_size)
        out = SparseVoxels(self.act(self.norm(pooled)), pmap.coords, pmap.spatial_shape, x.batch_size, vs, x.origin)
        return out, pmap.cluster


class SerializedUnpooling(nn.Module):
    """Back to the skip's sites: ``GELU(BN(Linear(skip))) + GELU(BN(Linear(parent)))[cluster]``.

    Shapes: parent SparseVoxels (P, Cin), skip SparseVoxels (N, Cskip), cluster (N,) -> SparseVoxels (N, Cout).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_channels, out_channels),
                                  nn.BatchNorm1d(out_channels, eps=bn_eps, momentum=bn_momentum), nn.GELU())
        self.proj_skip = nn.Sequential(nn.Linear(skip_channels, out_channels),
                                       nn.BatchNorm1d(out_channels, eps=bn_eps, momentum=bn_momentum), nn.GELU())

    def forward(self, parent: SparseVoxels, skip: SparseVoxels, cluster: torch.Tensor) -> SparseVoxels:
        return skip.replace(self.proj_skip(skip.feats) + self.proj(parent.feats)[cluster])


class PTv3Block(nn.Module):
    """CPE, then pre-norm patch attention and FFN with stochastic depth.

    ``f += LN(Linear(SubM3x3x3(f)))``; ``f += DropPath(Attn_patches(LN f))``; ``f += DropPath(FFN(LN f))``.

    Shapes: SparseVoxels (N, C), curve name -> SparseVoxels (N, C), same sites.
    """

    def __init__(self, channels: int, num_heads: int, patch_size: int, ffn_ratio: float = 4.0,
                 drop_path: float = 0.0, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.cpe_conv = SubMConv3d(channels, channels, 3, bias=True)
        self.cpe_linear = nn.Linear(channels, channels)
        self.cpe_norm = nn.LayerNorm(channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = PartitionAttention(channels, num_heads, "softmax", attn_drop)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = FFN(channels, int(channels * ffn_ratio), "gelu")
        self.drop_path = drop_path

    def patches(self, x: SparseVoxels, curve: str, depth: int | None = None):
        return x.cached(("ptv3.patches", curve, self.patch_size, depth),
                        lambda: curve_patches(x.coords, curve, self.patch_size, x.spatial_shape, depth))

    def forward(self, x: SparseVoxels, curve: str, depth: int | None = None) -> SparseVoxels:
        """``depth``: serialization bits per axis (None: from the grid, see :func:`curve_patches`)."""
        f = x.feats + self.cpe_norm(self.cpe_linear(self.cpe_conv(x).feats))
        b, B = x.batch_idx, x.batch_size
        f = f + drop_path(self.attn(self.norm1(f), self.patches(x, curve, depth)), self.drop_path, self.training,
                          b, B)
        f = f + drop_path(self.ffn(self.norm2(f)), self.drop_path, self.training, b, B)
        return x.replace(f)


def _per_stage(name: str, value: int | Sequence[int], n: int) -> list[int]:
    vals = [int(value)] * n if isinstance(value, int) else [int(v) for v in value]
    if len(vals) != n:
        raise ValueError(f"PTv3: {name} needs one value per stage ({n}), got {list(vals)}")
    return vals


class PTv3(nn.Module):
    """Serialized-patch attention encoder-decoder.

    Args:
        in_channels: VFE width.
        enc_channels, enc_depths, enc_num_heads, enc_patch_size: per encoder stage (stage 0 is the input grid;
            each later stage starts with a serialized pooling).
        dec_channels, dec_depths, dec_num_heads, dec_patch_size: per decoder stage, one fewer than the encoder;
            decoder stage s returns to encoder stage s's sites.
        orders: curves cycled over the blocks of a stage (see :data:`pointwin.partition.CURVES`).
        shuffle_orders: ``True``: shuffle ``orders`` per encoder stage in training only (pointwin);
            ``"always"``: also in eval mode (Pointcept); ``False``: never.
        grid: ``"data"`` (Pointcept: coordinates from each sample's minimum, depth from the data) or
            ``"shape"`` (pointwin: from the grid origin, depth of the grid); see the module docstring.
        bn_eps, bn_momentum: BatchNorm of the stem, pooling and unpooling (Pointcept: 1e-3, 0.01; the defaults
            are torch's, ``configs/nuscenes/ptv3_lidarseg.yaml`` sets Pointcept's).
        stem_kernel: kernel of the stem submanifold conv (PTv3 uses 5).
        ffn_ratio, drop_path, attn_drop: block settings; drop path grows linearly over the encoder blocks and
            shrinks over the decoder blocks.

    Shapes: SparseVoxels (N, in_channels) -> SparseVoxels (N, dec_channels[0]), same sites and order.
    """

    def __init__(self, in_channels: int, enc_channels: Sequence[int] = (32, 64, 128, 256, 512),
                 enc_depths: Sequence[int] = (2, 2, 2, 6, 2), enc_num_heads: Sequence[int] = (2, 4, 8, 16, 32),
                 enc_patch_size: int | Sequence[int] = 1024, dec_channels: Sequence[int] = (64, 64, 128, 256),
                 dec_depths: Sequence[int] = (2, 2, 2, 2), dec_num_heads: Sequence[int] = (4, 4, 8, 16),
                 dec_patch_size: int | Sequence[int] = 1024,
                 orders: Sequence[str] = ("z", "z-trans", "hilbert", "hilbert-trans"),
                 shuffle_orders: bool | str = True, stem_kernel: int = 5, ffn_ratio: float = 4.0,
                 drop_path: float = 0.3, attn_drop: float = 0.0, grid: str = "shape", bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        n = len(enc_channels)
        if n < 1:
            raise ValueError("PTv3: enc_channels needs at least one stage")
        enc_depths, enc_heads = _per_stage("enc_depths", enc_depths, n), _per_stage("enc_num_heads", enc_num_heads, n)
        enc_patch = _per_stage("enc_patch_size", enc_patch_size, n)
        dec_channels = _per_stage("dec_channels", dec_channels, n - 1)
        dec_depths, dec_heads = (_per_stage("dec_depths", dec_depths, n - 1),
                                 _per_stage("dec_num_heads", dec_num_heads, n - 1))
        dec_patch = _per_stage("dec_patch_size", dec_patch_size, n - 1)
        self.orders = tuple(orders)
        bad = [o for o in self.orders if o not in CURVES]
        if not self.orders or bad:
            raise ValueError(f"PTv3: orders must be a non-empty list of {CURVES}, got {list(orders)}")
        if shuffle_orders not in (True, False, "always"):
            raise ValueError(f"PTv3: shuffle_orders must be true, false or 'always', got {shuffle_orders!r}")
        if grid not in ("data", "shape"):
            raise ValueError(f"PTv3: grid must be 'data' (Pointcept) or 'shape' (pointwin), got {grid!r}")
        self.shuffle_orders, self.grid = shuffle_orders, grid
        self.last_orders: tuple[str, ...] = self.orders  # the orders of encoder stage 0 in the latest forward
        self.last_stage_orders: list[tuple[str, ...]] = []
        self.stem_conv = SubMConv3d(in_channels, enc_channels[0], stem_kernel, bias=False)
        self.stem_norm = nn.BatchNorm1d(enc_channels[0], eps=bn_eps, momentum=bn_momentum)
        enc_dp = torch.linspace(0, drop_path, sum(enc_depths)).tolist()
        dec_dp = torch.linspace(0, drop_path, max(sum(dec_depths), 1)).tolist()[::-1]
        self.pools = nn.ModuleList(SerializedPooling(enc_channels[s - 1], enc_channels[s], bn_eps, bn_momentum)
                                   for s in range(1, n))
        self.enc = nn.ModuleList()
        i = 0
        for s in range(n):
            self.enc.append(nn.ModuleList(PTv3Block(enc_channels[s], enc_heads[s], enc_patch[s], ffn_ratio,
                                                    enc_dp[i + j], attn_drop) for j in range(enc_depths[s])))
            i += enc_depths[s]
        self.unpools = nn.ModuleList()
        self.dec = nn.ModuleList()
        i = 0
        for s in reversed(range(n - 1)):
            above = enc_channels[-1] if s == n - 2 else dec_channels[s + 1]
            self.unpools.append(SerializedUnpooling(above, enc_channels[s], dec_channels[s], bn_eps, bn_momentum))
            self.dec.append(nn.ModuleList(PTv3Block(dec_channels[s], dec_heads[s], dec_patch[s], ffn_ratio,
                                                    dec_dp[i + j], attn_drop) for j in range(dec_depths[s])))
            i += dec_depths[s]
        self.out_channels = int(dec_channels[0]) if n > 1 else int(enc_channels[0])

    def forward_orders(self) -> tuple[str, ...]:
        """The curves of one stage: shuffled when ``shuffle_orders`` applies (training, or always), else as
        configured."""
        shuffle = self.shuffle_orders == "always" or (self.training and self.shuffle_orders)
        if shuffle and len(self.orders) > 1:
            return tuple(self.orders[i] for i in torch.randperm(len(self.orders)).tolist())
        return self.orders

    def _stage(self, blocks: nn.ModuleList, x: SparseVoxels, orders: tuple[str, ...], depth: int | None
               ) -> SparseVoxels:
        for j, blk in enumerate(blocks):
            x = blk(x, orders[j % len(orders)], depth)
        return x

    @staticmethod
    def data_grid(voxels: SparseVoxels) -> tuple[SparseVoxels, int]:
        """Pointcept's grid: voxels re-counted from each sample's minimum, and the serialization depth."""
        c = voxels.coords.long()
        b = c[:, 0]
        mins = torch.full((voxels.batch_size, 3), torch.iinfo(torch.int64).max, dtype=torch.long, device=c.device)
        mins = mins.scatter_reduce(0, b[:, None].expand(-1, 3), c[:, 1:], "amin")
        shifted = c.clone()
        shifted[:, 1:] -= mins[b]
        shifted = shifted.to(voxels.coords.dtype)
        out = SparseVoxels(voxels.feats, shifted, voxels.spatial_shape, voxels.batch_size, voxels.voxel_size,
                           voxels.origin)
        return out, data_depth(shifted)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        x, depth = self.data_grid(voxels) if self.grid == "data" else (voxels, None)
        x = x.replace(nn.functional.gelu(self.stem_norm(self.stem_conv(x).feats)))
        skips, clusters, stage_orders = [], [], []
        for s, blocks in enumerate(self.enc):
            if s > 0:
                skips.append(x)
                x, cluster = self.pools[s - 1](x, depth)
                clusters.append(cluster)
                depth = None if depth is None else depth - 1
            stage_orders.append(self.forward_orders())
            x = self._stage(blocks, x, stage_orders[-1], depth)
        self.last_orders, self.last_stage_orders = stage_orders[0], stage_orders
        for s, (unpool, blocks) in zip(reversed(range(len(self.enc) - 1)), zip(self.unpools, self.dec, strict=True),
                                       strict=True):
            x = unpool(x, skips.pop(), clusters.pop())
            depth = None if depth is None else depth + 1
            x = self._stage(blocks, x, stage_orders[s], depth)
        return voxels.replace(x.feats) if self.grid == "data" else x
