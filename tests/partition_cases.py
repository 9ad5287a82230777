"""Real partitions of small random voxel sets, for tests of code that consumes a Partition.

``random_partitions(seed)`` yields ``(name, coords, spatial_shape, partition)`` for all five schemes
(and both axes / shifted variants). Each voxel set has 4 samples on a (2, 20, 24) grid:

- sample 0: ~40 scattered voxels;
- sample 1: empty (an empty sample in the middle of the batch);
- sample 2: a dense 8 x 8 block in one BEV window (one very long group) plus one isolated voxel at the
  grid corner (a group of size 1 for the variable-length schemes);
- sample 3: 3 voxels (fewer than a group: padded by repeats with key_pad).

Rows are shuffled so no scheme can rely on input order. Total ~110 voxels: small enough for the
Triton interpreter.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pointwin.partition import Partition, bev_windows, curve_patches, flattened_windows, radial_windows, rotated_sets

SPATIAL_SHAPE = (2, 20, 24)


def random_coords(seed: int, spatial_shape: tuple[int, int, int] = SPATIAL_SHAPE) -> torch.Tensor:
    """int32 (N, 4) unique rows (b, z, y, x) laid out as described in the module docstring."""
    g = torch.Generator().manual_seed(seed)
    Z, Y, X = spatial_shape
    cells = Z * Y * X

    def sample(b: int, lin: torch.Tensor) -> torch.Tensor:
        z, y, x = lin // (Y * X), (lin // X) % Y, lin % X
        return torch.stack([torch.full_like(lin, b), z, y, x], 1)

    s0 = sample(0, torch.randperm(cells, generator=g)[: 36 + int(torch.randint(0, 9, (1,), generator=g))])
    oy, ox = 8 * int(torch.randint(0, 2, (1,), generator=g)), 8 * int(torch.randint(0, 2, (1,), generator=g))
    yy, xx = torch.meshgrid(torch.arange(8) + oy, torch.arange(8) + ox, indexing="ij")
    block = torch.stack([torch.full((64,), 2), torch.zeros(64, dtype=torch.long), yy.reshape(-1), xx.reshape(-1)], 1)
    corner = torch.tensor([[2, Z - 1, Y - 1, X - 1]])
    s3 = sample(3, torch.randperm(cells, generator=g)[:3])
    coords = torch.cat([s0, block, corner, s3])
    return coords[torch.randperm(coords.shape[0], generator=g)].to(torch.int32)


def voxel_centres(coords: torch.Tensor, spatial_shape: tuple[int, int, int] = SPATIAL_SHAPE,
                  voxel_size: float = 0.5) -> torch.Tensor:
    """float32 (N, 3) metric centres (x, y, z) with the sensor at the middle of the grid."""
    Z, Y, X = spatial_shape
    xyz = coords[:, [3, 2, 1]].float() + 0.5
    return (xyz - torch.tensor([X / 2, Y / 2, -1.0])) * voxel_size


def random_partitions(seed: int = 0) -> Iterator[tuple[str, torch.Tensor, tuple[int, int, int], Partition]]:
    """Yield ``(name, coords, spatial_shape, partition)`` for every scheme on ``random_coords(seed)``."""
    shape = SPATIAL_SHAPE
    c = random_coords(seed, shape)
    yield "flattened_x", c, shape, flattened_windows(c, shape, window=(6, 5), group_size=16, axis="x")
    yield "flattened_y_shift", c, shape, flattened_windows(c, shape, window=(6, 5), group_size=16, axis="y",
                                                          shift=True)
    yield "rotated_x", c, shape, rotated_sets(c, shape, window=(8, 8, 2), set_size=12, axis="x")
    yield "rotated_y_shift", c, shape, rotated_sets(c, shape, window=(8, 8, 2), set_size=12, axis="y",
                                                    shift=(4, 4, 1))
    yield "bev", c, shape, bev_windows(c, window=8, spatial_shape=shape)
    yield "radial", c, shape, radial_windows(voxel_centres(c, shape), c[:, 0].long(), window=(30.0, 30.0, 4.0))
    yield "curve_z", c, shape, curve_patches(c, curve="z", patch_size=16, spatial_shape=shape)
    yield "curve_hilbert_trans", c, shape, curve_patches(c, curve="hilbert-trans", patch_size=16,
                                                         spatial_shape=shape)
