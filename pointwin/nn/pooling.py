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


#: values of :class:`AttentionPool`'s ``mode``
POOL_MODES = ("masked", "reference", "scatterformer")


def reference_slot(inner: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """The official DSVT slot number of each voxel inside its pooled cell, from pointwin's z-major ``inner``.

    pointwin numbers slots ``(z % sz * sy + y % sy) * sx + x % sx`` (z slowest); the official
    ``get_pooling_index`` numbers them ``(x % sx * sy + y % sy) * sz + z % sz`` (x slowest, z fastest).
    The two agree when only one stride is > 1 (e.g. DSVT-V's z-only (1, 1, 4)) and differ otherwise.
    """
    sx, sy, sz = (int(s) for s in stride)
    xi = inner % sx
    yi = (inner // sx) % sy
    zi = inner // (sx * sy)
    return (xi * sy + yi) * sz + zi


class AttentionPool(nn.Module):
    """Pool voxels into cells of ``stride`` with one attention query per cell.

    Output = LayerNorm(query + attention) in both modes; the parameters are those of
    ``nn.MultiheadAttention`` (``attn``), a learned ``(volume, C)`` slot embedding ``pos_embedding`` and
    the LayerNorm ``norm``.

    ``mode="masked"`` (pointwin's own, the default): the query is the channel-wise max over the cell's real
    voxels; keys and values are the voxels plus the embedding of their slot (z-major numbering, see
    :class:`PoolingMap`); only real voxels take part (no padding). The per-cell softmax is computed with
    segment reductions, so the cost is linear in the number of voxels, not in cells x volume.

    ``mode="reference"`` (the semantics of the official DSVT ``Stage_ReductionAtt_Block``): the
    cell's voxels are placed in ``volume`` slots whose empty slots are zero; query = max over ALL slots
    (so an all-negative channel of a partly filled cell pools to 0); keys = slots + slot embedding (empty
    slots too: zero + embedding); values = slots without the embedding (empty slots give zero values); no
    key padding, every slot is attended to. Slots use the official numbering (:func:`reference_slot`, x
    slowest, z fastest), so a checkpoint's ``pos_embedding`` rows land on the right slots for any stride.
    Uses a dense (cells, volume, C) layout, which is cheap for DSVT's volumes (<= 8).

    ``mode="scatterformer"`` (the semantics of the official ScatterFormer ``AttnPillarPool``): query =
    ``max(0, max over the cell's voxels)`` (spconv's max-pool starts from 0); keys = voxels + the
    embedding of their slot, values = voxels without it; empty slots are masked out of the keys (only
    real voxels are attended to). Same segment-softmax path as the masked mode, so linear in the voxels.
    The official block pools whole z columns (stride (1, 1, Z)), where the slot is the z index.

    On the position embedding in the values (masked mode): this is a deliberate design, not a bug. Like
    ViT's token + position inputs, it lets the pooled feature carry *where* in the cell (which z slice) the
    information came from, which the max query and a softmax over content alone discard; the reference
    only uses the slot embedding to weight the slots. It differs from the official block, so checkpoints
    of the official code must be run with ``mode="reference"``; masked-mode numbers are kept unchanged for
    models trained with it.

    Shapes: SparseVoxels (N, C) on (Z, Y, X) -> SparseVoxels (V', C) on the parent grid.
    """

    def __init__(self, channels: int, stride: Sequence[int], num_heads: int = 8, mode: str = "masked") -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"AttentionPool: mode must be one of {list(POOL_MODES)}, got {mode!r}")
        self.mode = mode
        self.stride = tuple(int(s) for s in stride)
        volume = self.stride[0] * self.stride[1] * self.stride[2]
        self.volume = volume
        self.pos_embedding = nn.Parameter(torch.randn(volume, channels) * 0.01)
        self.attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, mode={self.mode!r}"

    def pool_features(self, x: torch.Tensor, parent: torch.Tensor, inner: torch.Tensor,
                      num_cells: int) -> torch.Tensor:
        """(N, C) voxel features, (N,) parent cell and slot of each voxel -> (num_cells, C) pooled features.

        ``inner`` is pointwin's z-major slot (:class:`PoolingMap`); the reference mode renumbers it itself.
        Every cell must hold at least one voxel (as the cells of :func:`pooling_map` do).
        """
        if self.mode == "reference":
            return self._pool_reference(x, parent, inner, num_cells)
        if self.mode == "scatterformer":
            return self._pool_masked(x, parent, inner, num_cells, query_floor=0.0, pos_in_values=False)
        return self._pool_masked(x, parent, inner, num_cells)

    def _projections(self):
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3, 0)
        b_q, b_k, b_v = (self.attn.in_proj_bias.chunk(3, 0) if self.attn.in_proj_bias is not None
                         else (None, None, None))
        return w_q, w_k, w_v, b_q, b_k, b_v

    def _pool_masked(self, x: torch.Tensor, parent: torch.Tensor, inner: torch.Tensor, num_cells: int,
                     query_floor: float = float("-inf"), pos_in_values: bool = True) -> torch.Tensor:
        N, C = x.shape
        H = self.attn.num_heads
        D = C // H
        w_q, w_k, w_v, b_q, b_k, b_v = self._projections()
        cell = parent[:, None].expand(-1, C)
        query = x.new_full((num_cells, C), query_floor).scatter_reduce(0, cell, x, "amax", include_self=True)
        kv_in = x + self.pos_embedding.to(x.dtype)[inner]
        q = nn.functional.linear(query, w_q, b_q).view(num_cells, H, D) * D ** -0.5
        k = nn.functional.linear(kv_in, w_k, b_k).view(N, H, D)
        v = nn.functional.linear(kv_in if pos_in_values else x, w_v, b_v).view(N, H, D)
        # The segment softmax and the weighted sum run in float32 whatever autocast does: CUDA autocast
        # runs exp in fp32 while the projections are bf16/fp16, and index_add_ needs one dtype.
        acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
        logits = (q[parent].to(acc) * k.to(acc)).sum(-1)  # (N, H)
        # softmax over the voxels of each cell; the per-cell max only stabilises it (no gradient needed)
        cell_h = parent[:, None].expand(-1, H)
        peak = logits.new_full((num_cells, H), float("-inf")).scatter_reduce(0, cell_h, logits.detach(), "amax")
        e = torch.exp(logits - peak[parent]).to(acc)
        weights = e / e.new_zeros(num_cells, H).index_add_(0, parent, e)[parent]
        weights = nn.functional.dropout(weights, self.attn.dropout, self.training)
        out = weights.new_zeros(num_cells, H, D).index_add_(0, parent, weights[..., None] * v.to(acc))
        out = out.view(num_cells, C).to(v.dtype)
        out = nn.functional.linear(out, self.attn.out_proj.weight, self.attn.out_proj.bias)
        return self.norm(query + out)

    def _pool_reference(self, x: torch.Tensor, parent: torch.Tensor, inner: torch.Tensor,
                        num_cells: int) -> torch.Tensor:
        N, C = x.shape
        H = self.attn.num_heads
        D = C // H
        V = self.volume
        w_q, w_k, w_v, b_q, b_k, b_v = self._projections()
        # dense slots in pointwin's z-major order; slot j gets the embedding row of its official number
        # (attention and max are permutation-invariant over slots, only the embedding row matters)
        slots = torch.arange(V, device=x.device)
        pos = self.pos_embedding.to(x.dtype)[reference_slot(slots, self.stride)]  # (V, C)
        dense = x.new_zeros(num_cells * V, C).index_put((parent * V + inner,), x).view(num_cells, V, C)
        query = dense.amax(1)  # (cells, C): empty slots take part as zeros
        q = nn.functional.linear(query, w_q, b_q).view(num_cells, H, 1, D) * D ** -0.5
        k = nn.functional.linear(dense + pos, w_k, b_k).view(num_cells, V, H, D).transpose(1, 2)
        v = nn.functional.linear(dense, w_v, b_v).view(num_cells, V, H, D).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2), -1)  # (cells, H, 1, V), no key padding
        weights = nn.functional.dropout(weights, self.attn.dropout, self.training)
        out = (weights @ v).reshape(num_cells, C)
        out = nn.functional.linear(out, self.attn.out_proj.weight, self.attn.out_proj.bias)
        return self.norm(query + out)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        pmap: PoolingMap = voxels.cached(("pooling_map", self.stride),
                                         lambda: pooling_map(voxels.coords, voxels.spatial_shape, self.stride))
        vs = voxels.voxel_size
        new_size = None if vs is None else tuple(v * s for v, s in zip(vs, self.stride, strict=True))
        feats = self.pool_features(voxels.feats, pmap.parent, pmap.inner, pmap.coords.shape[0])
        return SparseVoxels(feats, pmap.coords, pmap.spatial_shape, voxels.batch_size, new_size, voxels.origin)
