"""The deployable pieces of a :class:`~pointwin.models.detector.Detector`.

A detector is cut into four stages; two are ONNX graphs, two are small pure-torch runtime steps::

    points --[Preprocessor]--> point features, point->voxel map, partitions, positions   (runtime, no weights)
           --[BackboneGraph]--> voxel features (N, C)                                      (ONNX graph 1)
           --[HeadGraph]-----> per-task heatmap / box regression maps                     (ONNX graph 2)
           --[Postprocessor]-> list of Detections (top-K decode, score threshold, NMS)    (runtime, no weights)

Why this cut: voxelization and partitioning sort and de-duplicate integer keys (``torch.unique``,
data-dependent output sizes); they are cheap, exact integer work that belongs in the runtime. Everything
with learned weights (VFE PointNet, transformer blocks, BEV backbone, head) is inside the graphs, with
dynamic voxel (N), point (P) and group (G_i) counts.

How graph 1 runs the model's own backbone code: the backbones obtain every coordinate-derived structure
(partitions, position inputs) through ``SparseVoxels.cached(key, build)``. The preprocessor fills that
cache; :class:`BackboneGraph` rebuilds the same cache from its plain tensor inputs and calls the
unchanged backbone ``forward``. A cache miss inside the graph is an error naming the key.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..partition.base import Partition
from ..structures import Detections, Points, SparseVoxels

# --------------------------------------------------------------------------------------------------
# cache entries <-> flat graph inputs


@dataclass(frozen=True)
class CacheEntry:
    """One coordinate-derived structure a backbone reads from ``SparseVoxels.cached``.

    Attributes:
        key: the backbone's cache key (a tuple of plain values).
        kind: "partition" (equal-size :class:`Partition`, 3 graph inputs: index (G, S) int64,
            key_pad (G, S) bool, owner (N,) int64), "tensor" (1 float input (N, k)) or "pooling"
            (a :class:`~pointwin.nn.pooling.PoolingMap` to the next stage, 3 inputs: parent (N,) int64,
            inner (N,) int64, coords (N', 4) int32 of the pooled voxels).
        size: S for partitions, k (columns) for tensors, cells per parent for poolings.
        stage: the backbone stage whose voxels own the entry (0 = the VFE's voxels).
        shape: the pooled grid (Z, Y, X) for poolings, else ().
    """

    key: tuple
    kind: str
    size: int
    stage: int = 0
    shape: tuple = ()

    def input_names(self, i: int) -> list[str]:
        if self.kind == "partition":
            return [f"p{i}_index", f"p{i}_key_pad", f"p{i}_owner"]
        if self.kind == "pooling":
            return [f"q{i}_parent", f"q{i}_inner", f"q{i}_coords"]
        return [f"t{i}_value"]

    def to_json(self) -> dict:
        return {"key": _to_list(self.key), "kind": self.kind, "size": self.size, "stage": self.stage,
                "shape": list(self.shape)}

    @staticmethod
    def from_json(d: dict) -> CacheEntry:
        return CacheEntry(_to_tuple(d["key"]), str(d["kind"]), int(d["size"]), int(d.get("stage", 0)),
                          tuple(d.get("shape", ())))


def _to_list(v):
    return [_to_list(x) for x in v] if isinstance(v, (tuple, list)) else v


def _to_tuple(v):
    return tuple(_to_tuple(x) for x in v) if isinstance(v, (tuple, list)) else v


def flatten_cache(cache: dict[Hashable, object], stage: int = 0) -> tuple[list[CacheEntry], list[torch.Tensor]]:
    """The cache of one stage's voxels as (entries, flat tensors), in insertion order."""
    from ..nn.pooling import PoolingMap

    entries, tensors = [], []
    for key, value in cache.items():
        if isinstance(value, Partition):
            if value.size is None:
                raise ValueError(f"export: partition {key!r} has variable-size groups; only equal-size partitions "
                                 "(FlatFormer groups, DSVT sets) are exportable")
            S, G = int(value.size), value.num_groups
            kp = value.key_pad if value.key_pad is not None else torch.zeros(G * S, dtype=torch.bool,
                                                                              device=value.device)
            entries.append(CacheEntry(_to_tuple(key), "partition", S, stage))
            tensors += [value.index.view(G, S), kp.view(G, S), value.owner]
        elif isinstance(value, PoolingMap):
            entries.append(CacheEntry(_to_tuple(key), "pooling", int(value.volume), stage,
                                      tuple(int(v) for v in value.spatial_shape)))
            tensors += [value.parent, value.inner, value.coords]
        elif isinstance(value, torch.Tensor) and value.ndim == 2 and value.is_floating_point():
            entries.append(CacheEntry(_to_tuple(key), "tensor", int(value.shape[1]), stage))
            tensors.append(value.float())
        else:
            raise ValueError(f"export: cache entry {key!r} is a {type(value).__name__}; only Partition, PoolingMap "
                             "and float (N, k) tensors can be graph inputs")
    return entries, tensors


def num_inputs(entry: CacheEntry) -> int:
    return 1 if entry.kind == "tensor" else 3


def unflatten_cache(entries: Sequence[CacheEntry], tensors: Sequence[torch.Tensor]) -> list[dict[Hashable, object]]:
    """Inverse of :func:`flatten_cache`: one cache per stage (inside the graph: offsets rebuilt from G, S)."""
    from ..nn.pooling import PoolingMap

    caches: list[dict[Hashable, object]] = [{} for _ in range(max((e.stage for e in entries), default=0) + 1)]
    i = 0
    for e in entries:
        t = tensors[i:i + num_inputs(e)]
        i += num_inputs(e)
        if e.kind == "partition":
            index, key_pad, owner = t
            G = index.shape[0]
            offsets = torch.arange(G + 1, device=index.device, dtype=torch.int64) * e.size
            caches[e.stage][e.key] = Partition(index.reshape(-1), offsets, owner, e.size, key_pad.reshape(-1))
        elif e.kind == "pooling":
            parent, inner, coords = t
            caches[e.stage][e.key] = PoolingMap(coords, e.shape, parent, inner, e.size)
        else:
            caches[e.stage][e.key] = t[0]
    if i != len(tensors):
        raise ValueError(f"export: {len(tensors)} cache tensors for entries needing {i}")
    return caches


class _GraphVoxels(SparseVoxels):
    """SparseVoxels without the data-dependent input checks (they cannot be traced) and with a closed cache:
    a structure the runtime did not provide is an error, never computed inside the graph."""

    def __post_init__(self) -> None:
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)

    def replace(self, feats: torch.Tensor) -> SparseVoxels:
        return _GraphVoxels(feats, self.coords, self.spatial_shape, self.batch_size, self.voxel_size, self.origin,
                            self.cache)

    def cached(self, key: Hashable, build: Callable[[], object]) -> object:
        if key not in self.cache:
            raise KeyError(f"export: the backbone asks for cached structure {key!r} which the runtime preprocessing "
                           f"does not provide (provided: {list(self.cache)})")
        return self.cache[key]


# --------------------------------------------------------------------------------------------------
# runtime pre-processing


def _fill_flatformer(backbone, voxels: SparseVoxels) -> list[SparseVoxels]:
    from ..models.backbones3d.flatformer import BLOCK_ORDERS

    for axis, shift in BLOCK_ORDERS:
        backbone.partition(voxels, axis, shift)
    backbone.position_encoding(voxels)
    return [voxels]


def _fill_dsvt(backbone, voxels: SparseVoxels) -> list[SparseVoxels]:
    from ..models.backbones3d.dsvt import LAYER_AXES
    from ..nn.pooling import pooling_map

    stages = [voxels]
    for s in range(len(backbone.stages)):
        v = stages[-1]
        for shift_id in (0, 1):
            for axis in LAYER_AXES:
                backbone.partition(v, s, shift_id, axis)
            backbone.window_position(v, s, shift_id)
        if s + 1 < len(backbone.stages):
            stride = backbone.pools[s].pool.stride
            pmap = v.cached(("pooling_map", stride), lambda v=v, st=stride: pooling_map(v.coords, v.spatial_shape, st))
            stages.append(SparseVoxels(v.feats.new_zeros(pmap.coords.shape[0], 1), pmap.coords, pmap.spatial_shape,
                                       v.batch_size))
    return stages


#: backbone class name -> function filling the caches of the voxels of every stage with everything the
#: backbone's forward reads; returns the voxels of each stage
CACHE_FILLERS: dict[str, Callable] = {"FlatFormer": _fill_flatformer, "DSVT": _fill_dsvt}


@dataclass
class PreprocessedFrame:
    """Inputs of the two graphs for one batch of points.

    Attributes:
        point_feats: (P, Cin) float32 decorated features of the kept points (VFE input).
        point_voxel: (P,) int64 voxel row of each kept point.
        coords: (N, 4) int32 voxel coords (b, z, y, x) of the backbone's output (its last stage).
        entries / cache_tensors: the flattened backbone cache (see :func:`flatten_cache`).
        batch_size: samples in the batch.
    """

    point_feats: torch.Tensor
    point_voxel: torch.Tensor
    coords: torch.Tensor
    entries: list[CacheEntry]
    cache_tensors: list[torch.Tensor]
    batch_size: int

    @property
    def num_voxels(self) -> int:
        """Voxels of the backbone's output (the last stage)."""
        return int(self.coords.shape[0])

    def backbone_inputs(self) -> list[torch.Tensor]:
        return [self.point_feats, self.point_voxel, *self.cache_tensors]

    def group_counts(self) -> dict[str, int]:
        """Groups per partition input (the dynamic G_i dimensions), named like the graph inputs."""
        out, i = {}, 0
        for j, e in enumerate(self.entries):
            if e.kind == "partition":
                out[f"p{j}_index"] = int(self.cache_tensors[i].shape[0])
            i += num_inputs(e)
        return out

    def stage_voxel_counts(self) -> list[int]:
        """Voxels per backbone stage (the dynamic N_s dimensions)."""
        counts, i = {0: int(self.point_voxel.max()) + 1 if self.point_voxel.numel() else 0}, 0
        for e in self.entries:
            if e.kind == "pooling":
                counts[e.stage + 1] = int(self.cache_tensors[i + 2].shape[0])
            i += num_inputs(e)
        return [counts[s] for s in sorted(counts)]


class Preprocessor:
    """Pure-torch pre-processing (no learned weights): voxelize, decorate points, partitions, positions.

    Built from a detector (only its geometry and settings are read).
    """

    def __init__(self, detector: nn.Module) -> None:
        name = type(detector.backbone).__name__
        if name not in CACHE_FILLERS:
            raise NotImplementedError(f"export: backbone {name} is not exportable; supported: {sorted(CACHE_FILLERS)}")
        if len(detector.vfe.layers) < 1:
            raise ValueError("export: the VFE has no layers")
        self.vfe = detector.vfe
        self.backbone = detector.backbone
        self._fill = CACHE_FILLERS[name]

    @torch.no_grad()
    def __call__(self, points: Points) -> PreprocessedFrame:
        vox = self.vfe.voxelize(points)
        if vox.num_voxels == 0:
            raise ValueError("export runtime: no point of the cloud lies inside point_cloud_range")
        feats = self.vfe.point_features(points, vox).float()
        pv = vox.point_voxel[vox.kept]
        voxels = SparseVoxels(feats.new_zeros(vox.num_voxels, 1), vox.coords, vox.spatial_shape, vox.batch_size,
                              vox.voxel_size, vox.origin)
        stages = self._fill(self.backbone, voxels)
        entries, tensors = [], []
        for s, v in enumerate(stages):
            e, t = flatten_cache(v.cache, s)
            entries += e
            tensors += t
        return PreprocessedFrame(feats.contiguous(), pv.contiguous(), stages[-1].coords, entries, tensors,
                                 vox.batch_size)


# --------------------------------------------------------------------------------------------------
# graph 1: VFE PointNet + 3D backbone


class BackboneGraph(nn.Module):
    """Graph 1: per-point features -> per-voxel features after the 3D backbone.

    Inputs: ``point_feats`` (P, Cin) float32, ``point_voxel`` (P,) int64, then per cache entry the tensors
    of :func:`flatten_cache`. Output: ``voxel_feats`` (N, C).

    The VFE's voxel-wise max is a ``scatter_reduce(amax)`` onto zeros, which equals the max over the
    voxel's points because every PFN output is a ReLU (>= 0) and every voxel has at least one point.
    """

    def __init__(self, detector: nn.Module, entries: Sequence[CacheEntry]) -> None:
        super().__init__()
        self.vfe_layers = detector.vfe.layers
        self.entries = list(entries)
        self.spatial_shape = tuple(detector.vfe.spatial_shape)
        if not any(e.kind == "partition" and e.stage == 0 for e in self.entries):
            raise ValueError("export: the backbone reads no partition; nothing gives the voxel count N")
        self._caches: dict[str, list] = {}  # per-forward stage caches, shared with the pool wrappers
        backbone = detector.backbone
        pools = getattr(backbone, "pools", None)
        if pools is not None and len(pools):
            # a shallow copy sharing every parameter, whose pools read the pooled voxels' caches
            backbone = copy.copy(backbone)
            backbone._modules = dict(backbone._modules)
            backbone._modules["pools"] = nn.ModuleList(
                nn.Sequential(OrderedDict(pool=_GraphPool(p.pool, s, self._caches))) for s, p in enumerate(pools))
        self.backbone = backbone

    def forward(self, point_feats: torch.Tensor, point_voxel: torch.Tensor, *cache_tensors: torch.Tensor
                ) -> torch.Tensor:
        caches = unflatten_cache(self.entries, cache_tensors)
        self._caches["stages"] = caches
        owner = next(v for v in caches[0].values() if isinstance(v, Partition)).owner
        num_voxels = owner.shape[0]
        x = point_feats
        pooled = x
        for i, layer in enumerate(self.vfe_layers):
            x = torch.relu(layer.norm(layer.linear(x)))
            index = point_voxel[:, None].expand(-1, x.shape[1])
            pooled = x.new_zeros(num_voxels, x.shape[1]).scatter_reduce(0, index, x, "amax", include_self=True)
            if i + 1 < len(self.vfe_layers):
                x = torch.cat([x, pooled[point_voxel]], 1)
        coords = torch.zeros(num_voxels, 4, dtype=torch.int32, device=x.device)
        voxels = _GraphVoxels(pooled, coords, self.spatial_shape, 1, None, None, caches[0])
        return self.backbone(voxels).feats


class _GraphPool(nn.Module):
    """:class:`~pointwin.nn.AttentionPool`'s computation on graph voxels: the same parameters and maths, the
    pooling map from the runtime, and the pooled voxels carrying the next stage's cache."""

    def __init__(self, pool: nn.Module, stage: int, caches: dict) -> None:
        super().__init__()
        self.inner_pool = pool
        self.stage = stage
        self._caches = caches

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        pool = self.inner_pool
        pmap = voxels.cached(("pooling_map", pool.stride), None)
        feats = pool.pool_features(voxels.feats, pmap.parent, pmap.inner, pmap.coords.shape[0])
        return _GraphVoxels(feats, pmap.coords, pmap.spatial_shape, voxels.batch_size, None, None,
                            self._caches["stages"][self.stage + 1])


# --------------------------------------------------------------------------------------------------
# graph 2: BEV scatter + 2D backbone + head


def head_output_names(head: nn.Module) -> list[str]:
    """Output names of graph 2: ``task{t}.{branch}`` in head order."""
    names = []
    for t, sep in enumerate(head.heads):
        names += [f"task{t}.{b}" for b in sep.branches]
    return names


class HeadGraph(nn.Module):
    """Graph 2: voxel features on the backbone's output grid -> head maps.

    Inputs: ``voxel_feats`` (N, C) float32, ``voxel_coords`` (N, 4) int64 (b, z, y, x).
    Outputs: every branch of every task, (B, k, H, W), named by :func:`head_output_names`.
    ``batch_size`` is fixed at export (the dense BEV canvas is (B, C * Z, Y, X)).
    """

    def __init__(self, detector: nn.Module, batch_size: int = 1) -> None:
        super().__init__()
        backbone = detector.backbone
        grid = backbone.output_grid(detector.vfe.spatial_shape) if hasattr(backbone, "output_grid") \
            else detector.vfe.spatial_shape
        self.grid = tuple(int(g) for g in grid)
        self.batch_size = int(batch_size)
        self.backbone_2d = detector.backbone_2d
        self.head = detector.head

    def forward(self, voxel_feats: torch.Tensor, voxel_coords: torch.Tensor) -> tuple[torch.Tensor, ...]:
        Z, Y, X = self.grid
        B, C = self.batch_size, voxel_feats.shape[1]
        c = voxel_coords
        cell = (c[:, 0] * Y + c[:, 2]) * X + c[:, 3]
        rows = cell[:, None].expand(-1, C)
        cols = c[:, 1:2] * C + torch.arange(C, device=c.device)
        flat = voxel_feats.new_zeros(B * Y * X, Z * C).index_put((rows, cols), voxel_feats)
        bev = flat.view(B, Y, X, Z * C).permute(0, 3, 1, 2)
        out = self.head(self.backbone_2d(bev))
        return tuple(getattr(task, b) for task, sep in zip(out.tasks, self.head.heads, strict=True)
                     for b in sep.branches)


# --------------------------------------------------------------------------------------------------
# runtime post-processing


class Postprocessor:
    """Pure-torch post-processing: head maps -> Detections with the head's own decode, threshold and NMS."""

    def __init__(self, head: nn.Module) -> None:
        self.head = head
        self.names = head_output_names(head)

    @torch.no_grad()
    def __call__(self, outputs: Sequence[torch.Tensor]) -> list[Detections]:
        from ..models.heads.centerpoint import CenterHeadOutput, TaskPrediction

        if len(outputs) != len(self.names):
            raise ValueError(f"postprocess: expected {len(self.names)} head outputs ({self.names}), got {len(outputs)}")
        tasks, i = [], 0
        for sep in self.head.heads:
            branches = list(sep.branches)
            tasks.append(TaskPrediction(**{b: torch.as_tensor(outputs[i + j]).float()
                                           for j, b in enumerate(branches)}))
            i += len(branches)
        return self.head.predict(CenterHeadOutput(tasks))
