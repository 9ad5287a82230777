"""Sparse 3D convolution: submanifold, strided, inverse and depthwise, in pure torch.

Kernel maps (which input row feeds which output row through which kernel offset) are built by sorting
the linearised coordinates and ``searchsorted`` lookups; the compute is gather-GEMM-scatter, one GEMM
per kernel offset. Depthwise convs on the CPU run numba kernels over a neighbour table instead
(:mod:`pointwin.ops._sparse_conv_numba`), which avoid the (pairs, C) temporaries. Maps are cached on
``SparseVoxels.cache`` keyed by their settings.

Weight layout (shared with spconv 2.x so checkpoints move between paths): ``(C_out, kz, ky, kx, C_in)``;
a depthwise conv has ``(C, kz, ky, kx, 1)``. Kernel axes follow the coordinate order (z, y, x).

Semantics (cross-correlation, like ``torch.nn.functional.conv3d``), with p an output site, o a
kernel offset, d the dilation, s the stride and pad the padding:

- submanifold: output sites = input sites, out[p] = sum_o W[o] x[p + d*o - d*(k//2)] (odd k only);
- strided: out[p] = sum_o W[o] x[s*p + d*o - pad] at every site p that some active input reaches;
- inverse (of a strided conv, found by ``indice_key``): output sites = that conv's input sites, and
  y[a] = sum_{(a, b, o) in its map} W[o] x[b], i.e. ``conv_transpose3d`` restricted to those sites.

On CUDA, when spconv is installed, the non-depthwise modules run spconv with the same weights. spconv
is never used on the CPU (its CPU scatter-add races under multi-threaded torch).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..structures.voxels import SparseVoxels

Triple = tuple[int, int, int]


def _triple(name: str, value: int | Sequence[int]) -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(x) for x in value)
    if len(value) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (z, y, x), got {value}")
    return value  # type: ignore[return-value]


@dataclass
class KernelMap:
    """Input/output row pairs of a sparse conv, sorted by kernel offset.

    Attributes:
        in_idx, out_idx: int64 (P,) rows of the input and output feature tensors of each pair.
        splits: int64 (K+1,) CPU tensor; pairs of kernel offset o are ``splits[o]:splits[o+1]``.
        num_out: number of output rows.
        identity_offset: kernel offset whose pairs are exactly (i, i) for all rows (submanifold
            centre), computed without a gather; -1 if none.
    """

    in_idx: torch.Tensor
    out_idx: torch.Tensor
    splits: torch.Tensor
    num_out: int
    identity_offset: int = -1

    _tables: dict = field(default_factory=dict, repr=False, compare=False)

    def transposed(self, num_out: int) -> KernelMap:
        """Same pairs with input and output swapped (the map of the inverse conv)."""
        return KernelMap(self.out_idx, self.in_idx, self.splits, num_out, -1)

    def neighbor_tables(self, num_in: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(num_out, K) input row per (output row, offset) and its (num_in, K) transpose, -1 where none;
        built once per map (the depthwise CPU kernels read them)."""
        from ._sparse_conv_numba import neighbor_table

        if "out" not in self._tables:
            self._tables["out"] = neighbor_table(self.in_idx, self.out_idx, self.splits, self.num_out)
        if num_in not in self._tables:
            self._tables[num_in] = neighbor_table(self.out_idx, self.in_idx, self.splits, num_in)
        return self._tables["out"], self._tables[num_in]


def _kernel_offsets(kernel_size: Triple, device: torch.device) -> torch.Tensor:
    """(K, 3) integer offsets (oz, oy, ox), row-major over (kz, ky, kx) like the weight layout."""
    axes = [torch.arange(k, device=device) for k in kernel_size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _lookup(coords: torch.Tensor, spatial_shape: Sequence[int], queries: torch.Tensor) -> torch.Tensor:
    """Row of ``coords`` holding each (b, z, y, x) query row, or -1 (also for out-of-grid queries)."""
    shape = torch.tensor(spatial_shape, device=coords.device)
    keys = SparseVoxels.linear_index(coords, spatial_shape)
    sorted_keys, order = torch.sort(keys)
    inside = ((queries[:, 1:] >= 0) & (queries[:, 1:] < shape)).all(1)
    qk = SparseVoxels.linear_index(queries.clamp(min=0), spatial_shape)
    pos = torch.searchsorted(sorted_keys, qk).clamp(max=max(sorted_keys.numel() - 1, 0))
    if sorted_keys.numel() == 0:
        return torch.full_like(qk, -1)
    found = inside & (sorted_keys[pos] == qk)
    return torch.where(found, order[pos], torch.full_like(pos, -1))


def _splits(offset_id: torch.Tensor, K: int) -> torch.Tensor:
    counts = torch.bincount(offset_id, minlength=K).cpu()
    splits = torch.zeros(K + 1, dtype=torch.int64)
    splits[1:] = torch.cumsum(counts, 0)
    return splits


def _pairs_to_map(in_idx, out_idx, offset_id, K: int, num_out: int, identity_offset: int = -1) -> KernelMap:
    order = torch.argsort(offset_id * (num_out + 1) + out_idx)  # by offset, then output row
    return KernelMap(in_idx[order], out_idx[order], _splits(offset_id, K), num_out, identity_offset)


def submanifold_kernel_map(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Triple,
                           dilation: Triple = (1, 1, 1)) -> KernelMap:
    """Kernel map of a submanifold conv: output sites are the input sites."""
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(f"submanifold conv needs odd kernel sizes, got {kernel_size}")
    device = coords.device
    N = coords.shape[0]
    offs = _kernel_offsets(kernel_size, device)
    dil = torch.tensor(dilation, device=device)
    delta = (offs - torch.tensor([k // 2 for k in kernel_size], device=device)) * dil  # (K, 3)
    centre = int(sum(k // 2 * math.prod(kernel_size[a + 1:]) for a, k in enumerate(kernel_size)))
    if device.type == "cpu":  # numba binary searches straight into the neighbour table
        from ._sparse_conv_numba import submanifold_table

        table = submanifold_table(coords, spatial_shape, delta)
        src = table.t()
        valid = src >= 0
        offset_id, out_idx = valid.nonzero(as_tuple=True)  # offset-major, then output row: the map's order
        kmap = KernelMap(src[valid], out_idx, _splits(offset_id, offs.shape[0]), N, centre)
        kmap._tables["out"] = table
        return kmap
    c = coords.long()
    queries = c[None, :, :].repeat(offs.shape[0], 1, 1)
    queries[:, :, 1:] += delta[:, None, :]
    src = _lookup(coords, spatial_shape, queries.reshape(-1, 4)).view(offs.shape[0], N)
    valid = src >= 0
    offset_id, out_idx = valid.nonzero(as_tuple=True)
    return _pairs_to_map(src[valid], out_idx, offset_id, offs.shape[0], N, identity_offset=centre)


def strided_output_shape(spatial_shape: Sequence[int], kernel_size: Triple, stride: Triple, padding: Triple,
                         dilation: Triple) -> Triple:
    out = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, k, st, p, d in zip(spatial_shape, kernel_size, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(f"sparse conv: spatial_shape {tuple(spatial_shape)} is too small for kernel {kernel_size}, "
                         f"stride {stride}, padding {padding}, dilation {dilation}")
    return out  # type: ignore[return-value]


def strided_kernel_map(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Triple, stride: Triple,
                       padding: Triple, dilation: Triple) -> tuple[KernelMap, torch.Tensor, Triple]:
    """Kernel map of a regular (strided) sparse conv.

    Returns the map, the int32 (M, 4) output coordinates (sorted by b, z, y, x) and the output shape.
    """
    device = coords.device
    out_shape = strided_output_shape(spatial_shape, kernel_size, stride, padding, dilation)
    offs = _kernel_offsets(kernel_size, device)
    K = offs.shape[0]
    st = torch.tensor(stride, device=device)
    # s*p = i - d*o + pad must be divisible by s and land inside the output grid.
    num = coords.long()[None, :, 1:] - (offs * torch.tensor(dilation, device=device))[:, None, :] + torch.tensor(
        padding, device=device)
    p = torch.div(num, st, rounding_mode="floor")
    ok = ((num - p * st) == 0).all(-1) & (p >= 0).all(-1) & (p < torch.tensor(out_shape, device=device)).all(-1)
    offset_id, in_idx = ok.nonzero(as_tuple=True)
    out_rows = torch.cat([coords.long()[in_idx, :1], p[offset_id, in_idx]], 1)
    keys = SparseVoxels.linear_index(out_rows, out_shape)
    uniq, out_idx = torch.unique(keys, return_inverse=True)
    X, Y, Z = out_shape[2], out_shape[1], out_shape[0]
    out_coords = torch.stack([uniq // (Z * Y * X), uniq // (Y * X) % Z, uniq // X % Y, uniq % X], 1).to(torch.int32)
    return _pairs_to_map(in_idx, out_idx, offset_id, K, uniq.numel()), out_coords, out_shape


def _numba_depthwise(feats: torch.Tensor) -> bool:
    """The numba depthwise kernels serve float32/float64 CPU features (the gather-scatter path the rest)."""
    return feats.device.type == "cpu" and feats.dtype in (torch.float32, torch.float64)


def sparse_conv_features(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
                         bias: torch.Tensor | None = None, depthwise: bool = False) -> torch.Tensor:
    """Gather-GEMM-scatter: (N_in, C_in) features -> (num_out, C_out).

    ``weight`` is (C_out, kz, ky, kx, C_in), or (C, kz, ky, kx, 1) when ``depthwise``.
    """
    C_out = weight.shape[0]
    w = weight.reshape(C_out, -1, weight.shape[-1])  # (C_out, K, C_in)
    if depthwise and (weight.shape[-1] != 1 or feats.shape[1] != C_out):
        raise ValueError(f"depthwise sparse conv: weight must be (C, kz, ky, kx, 1) with C = {feats.shape[1]} "
                         f"input channels, got {tuple(weight.shape)}")
    if not depthwise and feats.shape[1] != w.shape[2]:
        raise ValueError(f"sparse conv: features have {feats.shape[1]} channels but weight "
                         f"{tuple(weight.shape)} expects {w.shape[2]}")
    if w.shape[1] != kmap.splits.numel() - 1:
        raise ValueError(f"sparse conv: weight has {w.shape[1]} kernel offsets, kernel map has "
                         f"{kmap.splits.numel() - 1}")
    if depthwise and _numba_depthwise(feats):
        from ._sparse_conv_numba import depthwise_conv_cpu

        out = depthwise_conv_cpu(feats, w[:, :, 0].t().to(feats.dtype), *kmap.neighbor_tables(feats.shape[0]))
        return out if bias is None else out + bias
    out = feats.new_zeros(kmap.num_out, C_out)
    splits = kmap.splits.tolist()
    for o in range(w.shape[1]):
        s, e = splits[o], splits[o + 1]
        if e == s:
            continue
        wo = w[:, o, 0] if depthwise else w[:, o].t()
        if o == kmap.identity_offset:
            out += feats * wo if depthwise else feats @ wo
            continue
        x = feats[kmap.in_idx[s:e]]
        # .to: under autocast the matmul may come back in another precision than the features
        out.index_add_(0, kmap.out_idx[s:e], (x * wo if depthwise else x @ wo).to(out.dtype))
    if bias is not None:
        out = out + bias
    return out


# --------------------------------------------------------------------------------------------------
# Functional forms on SparseVoxels (kernel maps cached on the voxels)


def _subm_map(x: SparseVoxels, kernel_size: Triple, dilation: Triple) -> KernelMap:
    key = ("sparse_conv.subm", kernel_size, dilation)
    return x.cached(key, lambda: submanifold_kernel_map(x.coords, x.spatial_shape, kernel_size, dilation))


def subm_conv3d(x: SparseVoxels, weight: torch.Tensor, bias: torch.Tensor | None = None,
                dilation: int | Sequence[int] = 1, depthwise: bool = False) -> SparseVoxels:
    """Submanifold sparse conv: same sites in and out. ``weight`` (C_out, kz, ky, kx, C_in)."""
    kernel_size = tuple(int(k) for k in weight.shape[1:4])
    kmap = _subm_map(x, kernel_size, _triple("dilation", dilation))
    return x.replace(sparse_conv_features(x.feats, weight, kmap, bias, depthwise))


# Output metadata: one definition for every backend (torch gather-scatter, numba depthwise, spconv).
# Contract: coords int32 (b, z, y, x) rows (unique; their order is the backend's), spatial_shape a tuple of
# ints (Z, Y, X); a submanifold conv keeps its input's coords, metadata and cache; a strided conv scales
# voxel_size (x, y, z) by the stride (z, y, x) and keeps origin and batch_size, with a fresh cache; the
# inverse conv returns exactly the strided conv's input sites: its coords (same order), spatial_shape,
# batch_size, voxel_size, origin and cache.


def strided_output_voxels(x: SparseVoxels, feats: torch.Tensor, coords: torch.Tensor, spatial_shape: Sequence[int],
                          stride: Triple, indice_key: str | None, kmap: KernelMap | None) -> SparseVoxels:
    """The SparseVoxels a strided conv of ``x`` returns (any backend); with ``indice_key`` it remembers x's
    sites for :func:`inverse_output_voxels` (``kmap`` None when the backend keeps its own map, e.g. spconv)."""
    voxel_size = None if x.voxel_size is None else tuple(v * s for v, s in zip(x.voxel_size, stride[::-1]))
    out = SparseVoxels(feats, coords.to(torch.int32), tuple(int(s) for s in spatial_shape), x.batch_size,
                       voxel_size, x.origin)
    if indice_key is not None:
        # Keep coords and cache of the source sites, not its features (they would stay alive).
        out.cache[("sparse_conv.inverse", indice_key)] = (kmap, x.coords, x.spatial_shape, x.batch_size,
                                                          x.voxel_size, x.origin, x.cache)
    return out


def inverse_entry(x: SparseVoxels, indice_key: str, op: str = "sparse_inverse_conv3d") -> tuple:
    """What the strided conv registered under ``indice_key`` remembered, or a ValueError naming the keys."""
    entry = x.cache.get(("sparse_conv.inverse", indice_key))
    if entry is None:
        raise ValueError(f"{op}: no strided sparse conv with indice_key={indice_key!r} produced these voxels "
                         f"(keys present: {[k[1] for k in x.cache if k[0] == 'sparse_conv.inverse']})")
    return entry


def inverse_output_voxels(entry: tuple, feats: torch.Tensor) -> SparseVoxels:
    """The SparseVoxels an inverse conv returns (any backend): the source sites with their metadata and cache."""
    _, coords, spatial_shape, batch_size, voxel_size, origin, cache = entry
    if feats.shape[0] != coords.shape[0]:
        raise ValueError(f"inverse sparse conv: {feats.shape[0]} output rows for {coords.shape[0]} source sites")
    return SparseVoxels(feats, coords, spatial_shape, batch_size, voxel_size, origin, cache)


def sparse_conv3d(x: SparseVoxels, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                  dilation: int | Sequence[int] = 1, depthwise: bool = False,
                  indice_key: str | None = None) -> SparseVoxels:
    """Regular (strided) sparse conv: outputs at every site reached by an active input.

    With ``indice_key`` the map is remembered on the output so that :func:`sparse_inverse_conv3d` with
    the same key can return to ``x``'s sites.
    """
    kernel_size = tuple(int(k) for k in weight.shape[1:4])
    stride, padding, dilation = _triple("stride", stride), _triple("padding", padding), _triple("dilation", dilation)
    key = ("sparse_conv.strided", kernel_size, stride, padding, dilation)
    kmap, out_coords, out_shape = x.cached(
        key, lambda: strided_kernel_map(x.coords, x.spatial_shape, kernel_size, stride, padding, dilation))
    feats = sparse_conv_features(x.feats, weight, kmap, bias, depthwise)
    return strided_output_voxels(x, feats, out_coords, out_shape, stride, indice_key, kmap)


def sparse_inverse_conv3d(x: SparseVoxels, weight: torch.Tensor, indice_key: str,
                          bias: torch.Tensor | None = None, depthwise: bool = False) -> SparseVoxels:
    """Inverse of the strided conv registered under ``indice_key``: back to that conv's input sites."""
    entry = inverse_entry(x, indice_key)
    kmap, coords = entry[0], entry[1]
    if kmap is None:
        raise ValueError(f"sparse_inverse_conv3d: the strided conv under indice_key={indice_key!r} ran on spconv, "
                         f"which keeps its own map; run its inverse on spconv too (same device, use_spconv=True)")
    if kmap.splits.numel() - 1 != math.prod(weight.shape[1:4]):
        raise ValueError(f"sparse_inverse_conv3d: weight {tuple(weight.shape)} has a different kernel size than "
                         f"the conv registered under {indice_key!r}")
    feats = sparse_conv_features(x.feats, weight, kmap.transposed(coords.shape[0]), bias, depthwise)
    return inverse_output_voxels(entry, feats)


# --------------------------------------------------------------------------------------------------
# Modules


def _spconv_available(x: SparseVoxels) -> bool:
    if not x.feats.is_cuda:
        return False
    try:
        import spconv.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


class _SparseConvBase(nn.Module):
    """Shared parameters: weight (C_out, kz, ky, kx, C_in) (C_in = 1 when depthwise) and bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = True, depthwise: bool = False,
                 indice_key: str | None = None, use_spconv: bool = True) -> None:
        super().__init__()
        if depthwise and in_channels != out_channels:
            raise ValueError(f"depthwise sparse conv needs in_channels == out_channels, got {in_channels} and "
                             f"{out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _triple("kernel_size", kernel_size)
        self.stride, self.padding = _triple("stride", stride), _triple("padding", padding)
        self.dilation = _triple("dilation", dilation)
        self.depthwise, self.indice_key, self.use_spconv = depthwise, indice_key, use_spconv
        self.weight = nn.Parameter(torch.empty(out_channels, *self.kernel_size, 1 if depthwise else in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        fan_in = math.prod(self.kernel_size) * (1 if depthwise else in_channels)
        nn.init.uniform_(self.weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.__dict__["_spconv_module"] = None  # not a registered child: the weights stay ours

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, dilation={self.dilation}")
        return s + (", depthwise=True" if self.depthwise else "") + (
            f", indice_key={self.indice_key!r}" if self.indice_key else "")

    def _check(self, x: SparseVoxels) -> None:
        if not isinstance(x, SparseVoxels):
            raise ValueError(f"{type(self).__name__} takes SparseVoxels, got {type(x).__name__}")
        if x.feats.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input has {x.feats.shape[1]} channels, expected "
                             f"{self.in_channels}")

    # spconv fast path (CUDA only); returns None when it cannot be used.
    def _spconv_forward(self, x: SparseVoxels, cls_name: str) -> SparseVoxels | None:
        if self.depthwise or not self.use_spconv or not _spconv_available(x):
            return None
        import spconv.pytorch as spconv

        mod = self.__dict__["_spconv_module"]
        if mod is None:
            kwargs = dict(kernel_size=self.kernel_size, bias=False, indice_key=self.indice_key,
                          algo=spconv.ConvAlgo.MaskImplicitGemm)
            if cls_name != "SparseInverseConv3d":
                kwargs.update(stride=self.stride, padding=self.padding, dilation=self.dilation)
            mod = getattr(spconv, cls_name)(self.in_channels, self.out_channels, **kwargs)
            if tuple(mod.weight.shape) != tuple(self.weight.shape):
                warnings.warn(f"spconv {cls_name} weight layout {tuple(mod.weight.shape)} differs from "
                              f"{tuple(self.weight.shape)}; using the torch path", stacklevel=3)
                self.use_spconv = False
                return None
            self.__dict__["_spconv_module"] = mod
        mod.weight = self.weight  # shares the Parameter
        indice_dict = x.cache.setdefault(("spconv.indice_dict",), {})
        feats_in, guard = x.feats, contextlib.nullcontext()
        dev = x.feats.device.type
        if torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.bfloat16:
            # spconv's functional layer casts its inputs to fp16 under any autocast, and under bf16 autocast
            # no GradScaler guards fp16 gradients: run spconv in fp32 instead.
            feats_in, guard = x.feats.float(), torch.autocast(dev, enabled=False)
        t = spconv.SparseConvTensor(feats_in, x.coords, list(x.spatial_shape), x.batch_size)
        t.indice_dict = indice_dict  # spconv keeps its pair maps here, shared along the network
        entry = inverse_entry(x, self.indice_key, cls_name) if cls_name == "SparseInverseConv3d" else None
        with guard:
            y = mod(t)
        feats = y.features if self.bias is None else y.features + self.bias
        # metadata from the shared helpers, exactly as on the torch path
        if cls_name == "SubMConv3d":
            return x.replace(feats)
        if cls_name == "SparseInverseConv3d":
            if not torch.equal(y.indices.int(), entry[1].int()):
                raise RuntimeError("spconv's inverse conv returned its sites in another order than the strided "
                                   "conv's input; pointwin's contract needs the input's own order")
            return inverse_output_voxels(entry, feats)
        out = strided_output_voxels(x, feats, y.indices, y.spatial_shape, self.stride, self.indice_key, None)
        out.cache[("spconv.indice_dict",)] = y.indice_dict
        return out


class SubMConv3d(_SparseConvBase):
    """Submanifold sparse conv (same sites in and out); ``depthwise=True`` for a per-channel kernel.

    Input/output: SparseVoxels with (N, C_in) -> (N, C_out) features.
    """

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        self._check(x)
        y = self._spconv_forward(x, "SubMConv3d")
        if y is not None:
            return y
        return subm_conv3d(x, self.weight, self.bias, self.dilation, self.depthwise)


class SparseConv3d(_SparseConvBase):
    """Regular (strided) sparse conv; set ``indice_key`` to pair it with a :class:`SparseInverseConv3d`."""

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        self._check(x)
        y = self._spconv_forward(x, "SparseConv3d")
        if y is not None:
            return y
        return sparse_conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.depthwise,
                             self.indice_key)


class SparseInverseConv3d(_SparseConvBase):
    """Inverse of the :class:`SparseConv3d` with the same ``indice_key``: back to its input sites."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 indice_key: str | None = None, bias: bool = True, depthwise: bool = False,
                 use_spconv: bool = True) -> None:
        if indice_key is None:
            raise ValueError("SparseInverseConv3d needs the indice_key of the SparseConv3d it inverts")
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, depthwise=depthwise,
                         indice_key=indice_key, use_spconv=use_spconv)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        self._check(x)
        y = self._spconv_forward(x, "SparseInverseConv3d")
        if y is not None:
            return y
        return sparse_inverse_conv3d(x, self.weight, self.indice_key, self.bias, self.depthwise)
