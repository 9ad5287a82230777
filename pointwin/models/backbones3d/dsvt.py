"""DSVT: Dynamic Sparse Voxel Transformer, pillar (DSVT-P) and 3D voxel (DSVT-V) variants.

Reference: Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets" (CVPR 2023).

Each stage partitions its voxels into windows twice: the plain window with no shift, and the "hybrid"
window (window * hybrid_factor) shifted by ``shift``. Blocks alternate between the two. A block is two
post-norm set-attention layers, the first over y-major sets, the second over x-major sets
(:func:`pointwin.partition.rotated_sets`), and a residual LayerNorm around the pair. Queries and keys get
a learned MLP embedding of the voxel's window-relative position ``local - window / 2`` (2D when the window
is one voxel tall, else 3D), one MLP per (stage, block, layer).

Flags (the official code's behaviour is what its checkpoints were trained with):

* ``shift_counter`` — which blocks use the shifted partition. ``"global"`` (default, official): the block
  counter runs over the whole backbone, block k (counted from the first block of stage 0) uses shift
  k % 2; with one block per stage, stages 1 and 3 use the shifted hybrid windows. ``"per_stage"``: the
  counter restarts at every stage (block b of a stage uses shift b % 2; pointwin's former behaviour).
  Both agree when every stage before the last has an even number of blocks (e.g. single-stage DSVT-P).
* ``mix_shift_pos_embed`` — the official code feeds layer i of every block the embedding computed for
  shift i, whatever the block's shift (its TODO "mismatch of pos_embed"), so in shifted blocks the first
  layer (and in plain blocks the second) sees positions relative to the other partition's windows.
  ``False`` (default) gives every layer the positions of the shift its sets come from; ``True`` reproduces
  the official mix-up (it combines with either counter: the sets follow the block's shift, the positions
  follow the layer index).
* ``pool_mode`` — attention pooling between the stages of the 3D variant
  (:class:`pointwin.nn.AttentionPool`, one per ``downsample_stride``): ``"masked"`` (default, pointwin's
  pooling over real voxels only) or ``"reference"`` (the official zero-padded pooling).

To reproduce the official DSVT (and run its checkpoints, see :mod:`pointwin.export.converters`) use
``mix_shift_pos_embed=True, pool_mode="reference", shift_counter="global"``; this matches the official
DSVT-V backbone on every stage to ~5e-6 (``tests/test_parity_dsvt_v.py``). The single-stage DSVT-P needs
only ``mix_shift_pos_embed=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...nn import FFN, AttentionPool, LearnedPositionEncoding, PartitionAttention
from ...nn.pooling import POOL_MODES
from ...partition import rotated_sets
from ...structures import SparseVoxels

#: set rankings of the two layers of a block
LAYER_AXES = ("y", "x")
#: values of DSVT's ``shift_counter``
SHIFT_COUNTERS = ("global", "per_stage")


class SetAttentionLayer(nn.Module):
    """Post-norm set attention wrapped in one more residual LayerNorm, as DSVT's public encoder layer:
    y = LN1(x + Attn(x + pos)); y = LN2(y + FFN(y)); out = LN_out(y + x). Shapes: (N, C) -> (N, C)."""

    def __init__(self, channels: int, num_heads: int, ffn_channels: int, dropout: float = 0.0,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.attn = PartitionAttention(channels, num_heads, "softmax", dropout)
        self.norm1 = nn.LayerNorm(channels)
        self.ffn = FFN(channels, ffn_channels, activation, dropout)
        self.norm2 = nn.LayerNorm(channels)
        self.norm_out = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, partition, pos: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x + self.drop(self.attn(x, partition, pos)))
        y = self.norm2(y + self.drop(self.ffn(y)))
        return self.norm_out(y + x)


def _per_stage(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)) and len(value) and isinstance(value[0], (list, tuple)):
        if len(value) != n:
            raise ValueError(f"DSVT: {name} has {len(value)} entries for {n} stages")
        return [tuple(v) for v in value]
    if isinstance(value, (list, tuple)) and len(value) == n and not isinstance(value[0], (list, tuple)) \
            and name in ("channels", "num_heads", "ffn_channels", "set_size", "num_blocks"):
        return list(value)
    return [tuple(value) if isinstance(value, (list, tuple)) else value] * n


class DSVT(nn.Module):
    """DSVT backbone.

    Args:
        in_channels: VFE width (projected to ``channels[0]`` if different).
        channels, num_heads, ffn_channels, set_size, num_blocks: one value per stage (or one for all).
        window: (wx, wy, wz) per stage (or one for all); wz = 1 for pillars.
        hybrid_factor: (fx, fy, fz) multiplying the window of the shifted partition.
        shift: (sx, sy, sz) of the shifted partition per stage (default: half the plain window in x, y).
        downsample_stride: (sx, sy, sz) between consecutive stages (len = stages - 1).
        mix_shift_pos_embed: reproduce the original code's position-embedding/shift mix-up (see module doc).
        pool_mode: ``mode`` of every :class:`~pointwin.nn.AttentionPool` between stages, "masked" or
            "reference" (see module doc).
        shift_counter: "global" (official: block k of the whole backbone uses shift k % 2) or
            "per_stage" (block b of each stage uses shift b % 2).

    Shapes: SparseVoxels (N, in_channels) -> SparseVoxels (N', channels[-1]) on the last stage's grid.
    """

    def __init__(self, in_channels: int, channels: int | Sequence[int] = 192, num_heads: int | Sequence[int] = 8,
                 ffn_channels: int | Sequence[int] = 384, set_size: int | Sequence[int] = 36,
                 num_blocks: int | Sequence[int] = 4, window: Sequence = (12, 12, 1),
                 hybrid_factor: Sequence[int] = (2, 2, 1), shift: Sequence | None = None,
                 downsample_stride: Sequence[Sequence[int]] = (), pool_heads: int = 8, dropout: float = 0.0,
                 activation: str = "gelu", mix_shift_pos_embed: bool = False, pool_mode: str = "masked",
                 shift_counter: str = "global") -> None:
        super().__init__()
        if shift_counter not in SHIFT_COUNTERS:
            raise ValueError(f"DSVT: shift_counter must be one of {list(SHIFT_COUNTERS)}, got {shift_counter!r}")
        if pool_mode not in POOL_MODES:
            raise ValueError(f"DSVT: pool_mode must be one of {list(POOL_MODES)}, got {pool_mode!r}")
        self.shift_counter = shift_counter
        self.pool_mode = pool_mode
        n_stages = len(downsample_stride) + 1
        self.channels = _per_stage(channels, n_stages, "channels")
        heads = _per_stage(num_heads, n_stages, "num_heads")
        ffn = _per_stage(ffn_channels, n_stages, "ffn_channels")
        self.set_size = _per_stage(set_size, n_stages, "set_size")
        self.num_blocks = _per_stage(num_blocks, n_stages, "num_blocks")
        self.window = [tuple(int(v) for v in w) for w in _per_stage(window, n_stages, "window")]
        hf = tuple(int(v) for v in hybrid_factor)
        if shift is None:
            shifts = [(w[0] // 2, w[1] // 2, 0) for w in self.window]
        else:
            shifts = [tuple(int(v) for v in s) for s in _per_stage(shift, n_stages, "shift")]
        # (window, shift) of the two partitions of each stage: plain, then shifted hybrid.
        self.configs = [((w, (0, 0, 0)), (tuple(a * f for a, f in zip(w, hf, strict=True)), s))
                        for w, s in zip(self.window, shifts, strict=True)]
        self.mix_shift_pos_embed = mix_shift_pos_embed
        self.input_proj = nn.Identity() if in_channels == self.channels[0] else nn.Linear(in_channels,
                                                                                          self.channels[0])
        self.stages = nn.ModuleList()
        self.pos_embed = nn.ModuleList()
        self.residual_norms = nn.ModuleList()
        self.pools = nn.ModuleList()
        for s in range(n_stages):
            c = self.channels[s]
            blocks, pos, norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for _ in range(self.num_blocks[s]):
                blocks.append(nn.ModuleList(SetAttentionLayer(c, heads[s], ffn[s], dropout, activation)
                                            for _ in LAYER_AXES))
                # one MLP per layer; its input is the window-relative position of the layer's shift
                pos.append(nn.ModuleList(LearnedPositionEncoding(self._pos_dim(s), c) for _ in LAYER_AXES))
                norms.append(nn.LayerNorm(c))
            self.stages.append(blocks)
            self.pos_embed.append(pos)
            self.residual_norms.append(norms)
            if s + 1 < n_stages:
                pool = nn.Sequential()
                pool.add_module("pool", AttentionPool(c, downsample_stride[s], pool_heads, pool_mode))
                self.pools.append(pool)
                if self.channels[s + 1] != c:
                    raise ValueError("DSVT: channels must stay equal across stages (pooling keeps the width)")
        self.out_channels = self.channels[-1]
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in the backward pass (saves memory, costs time)."""
        self.grad_checkpointing = enable

    def output_grid(self, spatial_shape) -> tuple[int, int, int]:
        """(Z, Y, X) of the output grid for an input grid ``spatial_shape``."""
        Z, Y, X = spatial_shape
        for sx, sy, sz in (pool.pool.stride for pool in self.pools):
            Z, Y, X = -(-Z // sz), -(-Y // sy), -(-X // sx)
        return Z, Y, X

    def _pos_dim(self, stage: int) -> int:
        return 2 if all(cfg[0][2] == 1 for cfg in self.configs[stage]) else 3

    # ---- cached per-stage structures -------------------------------------------------------------
    def partition(self, voxels: SparseVoxels, stage: int, shift_id: int, axis: str):
        window, shift = self.configs[stage][shift_id]
        key = ("rotated_sets", window, self.set_size[stage], axis, shift)
        return voxels.cached(key, lambda: rotated_sets(voxels.coords, voxels.spatial_shape, window,
                                                       self.set_size[stage], axis, shift))

    def window_position(self, voxels: SparseVoxels, stage: int, shift_id: int) -> torch.Tensor:
        """(N, 2|3) float position of each voxel relative to its window centre, ``local - window / 2``."""
        window, shift = self.configs[stage][shift_id]
        dim = self._pos_dim(stage)

        def build() -> torch.Tensor:
            c = voxels.coords.long()
            xyz = torch.stack([c[:, 3], c[:, 2], c[:, 1]], 1) + torch.tensor(shift, device=c.device)
            w = torch.tensor(window, device=c.device)
            local = (xyz % w).float() - w.float() / 2
            return local[:, :dim]

        return voxels.cached(("dsvt_window_position", window, shift, dim), build)

    def block_shifts(self) -> list[list[int]]:
        """Shift id (0 plain, 1 shifted hybrid) of every block, per stage, as ``shift_counter`` says."""
        out, k = [], 0
        for n in self.num_blocks:
            if self.shift_counter == "global":
                out.append([(k + b) % 2 for b in range(n)])
            else:
                out.append([b % 2 for b in range(n)])
            k += n
        return out

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        x = self.input_proj(voxels.feats)
        shifts = self.block_shifts()
        for s, blocks in enumerate(self.stages):
            if s > 0:
                voxels = self.pools[s - 1](voxels.replace(x))
                x = voxels.feats
            for b, layers in enumerate(blocks):
                shift_id = shifts[s][b]
                residual = x
                for i, (axis, layer) in enumerate(zip(LAYER_AXES, layers, strict=True)):
                    pos_shift = i if self.mix_shift_pos_embed else shift_id
                    pos = self.pos_embed[s][b][i](self.window_position(voxels, s, pos_shift)).to(x.dtype)
                    part = self.partition(voxels, s, shift_id, axis)
                    if self.grad_checkpointing and self.training:
                        x = checkpoint(layer, x, part, pos, use_reentrant=False)
                    else:
                        x = layer(x, part, pos)
                x = self.residual_norms[s][b](x + residual)
        return voxels.replace(x)
