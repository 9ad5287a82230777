"""Depthwise sparse convolution on the CPU: numba kernels over a neighbour table.

A depthwise conv does only C multiply-adds per (output, kernel offset) pair, so the gather-multiply-
scatter of the generic path spends its time moving (pairs, C) temporaries through memory. Here every
output row reads its (at most K) neighbour rows once and accumulates in place, in parallel over rows.

The neighbour table of a kernel map is ``table[row, offset] = input row`` (or -1): a conv has at most one
input per (output, offset) pair, submanifold or strided. The backward pass runs the same gather with the
transposed table (input rows x offsets -> output row) and reduces the weight gradient per offset.
"""

from __future__ import annotations

import numba
import torch

from ..structures.voxels import SparseVoxels


@numba.njit(parallel=True, cache=True)
def _gather_multiply_add(feats, weight, table, out):  # pragma: no cover - compiled
    """out[i, c] += sum_o weight[o, c] * feats[table[i, o], c] over the offsets with table[i, o] >= 0."""
    C = feats.shape[1]
    K = table.shape[1]
    for i in numba.prange(table.shape[0]):
        for o in range(K):
            j = table[i, o]
            if j >= 0:
                for c in range(C):
                    out[i, c] += weight[o, c] * feats[j, c]


@numba.njit(parallel=True, cache=True)
def _weight_grad(feats, grad_out, table, grad_weight):  # pragma: no cover - compiled
    """grad_weight[o, c] = sum_i feats[table[i, o], c] * grad_out[i, c]."""
    C = feats.shape[1]
    for o in numba.prange(table.shape[1]):
        for i in range(table.shape[0]):
            j = table[i, o]
            if j >= 0:
                for c in range(C):
                    grad_weight[o, c] += feats[j, c] * grad_out[i, c]


@numba.njit(parallel=True, cache=True)
def _submanifold_table(coords, sorted_keys, order, deltas, shape, table):  # pragma: no cover - compiled
    """table[i, o] = row of the voxel at coords[i] + deltas[o] (same batch), or -1 (absent / off the grid)."""
    Z, Y, X = shape[0], shape[1], shape[2]
    n = sorted_keys.shape[0]
    for i in numba.prange(coords.shape[0]):
        b, z, y, x = coords[i, 0], coords[i, 1], coords[i, 2], coords[i, 3]
        for o in range(deltas.shape[0]):
            zz, yy, xx = z + deltas[o, 0], y + deltas[o, 1], x + deltas[o, 2]
            table[i, o] = -1
            if zz < 0 or zz >= Z or yy < 0 or yy >= Y or xx < 0 or xx >= X:
                continue
            key = ((b * Z + zz) * Y + yy) * X + xx
            lo, hi = 0, n
            while lo < hi:  # first sorted key >= key
                mid = (lo + hi) // 2
                if sorted_keys[mid] < key:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < n and sorted_keys[lo] == key:
                table[i, o] = order[lo]


def submanifold_table(coords: torch.Tensor, spatial_shape, deltas: torch.Tensor) -> torch.Tensor:
    """(N, K) int64: the row of each voxel's neighbour at each (dz, dy, dx) of ``deltas`` (K, 3), or -1.

    ``coords`` (N, 4) (b, z, y, x) of unique voxels on the CPU.
    """
    Z, Y, X = (int(v) for v in spatial_shape)
    c = coords.long().contiguous()
    sorted_keys, order = torch.sort(SparseVoxels.linear_index(c, spatial_shape))
    table = torch.empty(c.shape[0], deltas.shape[0], dtype=torch.int64)
    _set_threads()
    _submanifold_table(c.numpy(), sorted_keys.numpy(), order.numpy(), deltas.long().contiguous().numpy(),
                       torch.tensor([Z, Y, X], dtype=torch.int64).numpy(), table.numpy())
    return table


def neighbor_table(in_idx: torch.Tensor, out_idx: torch.Tensor, splits: torch.Tensor, num_rows: int) -> torch.Tensor:
    """(num_rows, K) int64 table of ``in_idx`` by (``out_idx``, offset); -1 where an offset has no pair.

    Pairs of offset o are ``splits[o]:splits[o + 1]`` of ``in_idx`` / ``out_idx``.
    """
    K = splits.numel() - 1
    offset = torch.repeat_interleave(torch.arange(K, device=in_idx.device), torch.diff(splits).to(in_idx.device))
    table = torch.full((num_rows, K), -1, dtype=torch.int64, device=in_idx.device)
    table[out_idx, offset] = in_idx
    return table


def _set_threads() -> None:
    # follow torch's thread setting (e.g. one thread per test worker or data-loader process)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _gather(feats: torch.Tensor, weight: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(table.shape[0], feats.shape[1], dtype=feats.dtype)
    _set_threads()
    _gather_multiply_add(feats.detach().contiguous().numpy(), weight.detach().contiguous().numpy(),
                         table.numpy(), out.numpy())
    return out


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats, weight, table, table_t):
        ctx.save_for_backward(feats, weight, table, table_t)
        return _gather(feats, weight, table)

    @staticmethod
    def backward(ctx, grad_out):
        feats, weight, table, table_t = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_feats = _gather(grad_out, weight, table_t) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            _set_threads()
            _weight_grad(feats.detach().contiguous().numpy(), grad_out.numpy(), table.numpy(), grad_weight.numpy())
        return grad_feats, grad_weight, None, None


def depthwise_conv_cpu(feats: torch.Tensor, weight: torch.Tensor, table: torch.Tensor,
                       table_t: torch.Tensor) -> torch.Tensor:
    """Depthwise sparse conv: (N_in, C) features, (K, C) weights, (N_out, K) table and its (N_in, K)
    transpose -> (N_out, C). float32 / float64 CPU tensors; differentiable in feats and weight."""
    return _DepthwiseConv.apply(feats, weight, table, table_t)


__all__ = ["depthwise_conv_cpu", "neighbor_table", "submanifold_table"]
