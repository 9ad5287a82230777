"""Dynamic voxelization and voxel pooling against float64 naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointwin.ops import grid_shape, voxel_pool, voxelize
from pointwin.structures import Points

from .conftest import requires_cuda, shared_file


def naive_voxelize(xyz: np.ndarray, bidx: np.ndarray, voxel_size, point_range):
    """Reference: a per-point float64 loop with Python's floor; returns (sorted unique coords, point_voxel)."""
    vs = [float(v) for v in voxel_size]
    lo = [float(point_range[i]) for i in range(3)]
    hi = [float(point_range[i + 3]) for i in range(3)]
    shape = [round((hi[a] - lo[a]) / vs[a]) for a in range(3)]  # x, y, z
    cells = []
    for i in range(len(xyz)):
        cell = []
        for a in range(3):
            p = float(xyz[i, a])
            c = math.floor((p - lo[a]) / vs[a])
            if not (lo[a] <= p < hi[a]) or not (0 <= c < shape[a]):
                cell = None
                break
            cell.append(c)
        cells.append(None if cell is None else (int(bidx[i]), cell[2], cell[1], cell[0]))
    uniq = sorted({c for c in cells if c is not None})
    row = {c: i for i, c in enumerate(uniq)}
    point_voxel = np.array([-1 if c is None else row[c] for c in cells], dtype=np.int64)
    return np.array(uniq, dtype=np.int64).reshape(-1, 4), point_voxel


def random_cloud(n: int, batch_size: int, point_range, voxel_size, gen: torch.Generator, dtype=torch.float32):
    lo = torch.tensor(point_range[:3], dtype=torch.float64)
    hi = torch.tensor(point_range[3:], dtype=torch.float64)
    span = hi - lo
    # 60 % uniform in a box 20 % larger than the range, 40 % exactly on cell borders (incl. both ends).
    n_border = int(0.4 * n)
    uni = lo - 0.1 * span + torch.rand(n - n_border, 3, generator=gen, dtype=torch.float64) * 1.2 * span
    size = torch.tensor(voxel_size, dtype=torch.float64)
    shape = torch.round(span / size)
    k = torch.floor(torch.rand(n_border, 3, generator=gen, dtype=torch.float64) * (shape + 3)) - 1
    border = lo + k * size
    xyz = torch.cat([uni, border])[torch.randperm(n, generator=gen)].to(dtype)
    bidx = torch.randint(0, batch_size, (n,), generator=gen)
    return xyz, bidx


CASES = [
    # voxel_size, point_range
    ((0.1, 0.1, 0.2), (-3.2, -2.4, -1.0, 3.2, 2.4, 1.0)),
    ((0.32, 0.32, 6.0), (-5.12, -5.12, -2.0, 5.12, 5.12, 4.0)),  # pillars
    ((0.25, 0.5, 0.125), (0.0, -4.0, -0.5, 4.0, 4.0, 0.5)),  # dyadic sizes: borders are exact
    ((0.3, 0.3, 0.3), (-1.0, -1.0, -1.0, 1.05, 1.0, 1.0)),  # extent not a multiple of the size in x
]


@pytest.mark.parametrize("voxel_size,point_range", CASES)
def test_voxelize_matches_float64_loop(voxel_size, point_range):
    gen = torch.Generator().manual_seed(1)
    xyz, bidx = random_cloud(3000, 3, point_range, voxel_size, gen)
    pts = Points(torch.cat([xyz, torch.rand(len(xyz), 2, generator=gen)], 1), bidx, 3)
    vox = voxelize(pts, voxel_size, point_range)
    ref_coords, ref_pv = naive_voxelize(xyz.numpy(), bidx.numpy(), voxel_size, point_range)
    assert vox.coords.dtype == torch.int32 and vox.point_voxel.dtype == torch.int64
    np.testing.assert_array_equal(vox.coords.numpy(), ref_coords)
    np.testing.assert_array_equal(vox.point_voxel.numpy(), ref_pv)
    np.testing.assert_array_equal(vox.num_points.numpy(), np.bincount(ref_pv[ref_pv >= 0], minlength=len(ref_coords)))
    assert vox.spatial_shape == grid_shape(voxel_size, point_range)
    # The reference must have exercised both dropping and keeping border points.
    assert (ref_pv == -1).sum() > 100 and (ref_pv >= 0).sum() > 1000
    vox.to_sparse(torch.zeros(vox.num_voxels, 1))  # coords are valid for SparseVoxels


def test_border_convention_hand_worked():
    # Grid x in [0, 1) with 0.25 cells: x = 0 -> cell 0, 0.25 -> 1, 0.999 -> 3, 1.0 and -1e-7 -> dropped.
    xs = [0.0, 0.25, 0.5, 0.999, 1.0, -1e-7, 0.2499999]
    pts = torch.tensor([[x, 0.5, 0.5] for x in xs])
    vox = voxelize(pts, (0.25, 1.0, 1.0), (0.0, 0.0, 0.0, 1.0, 1.0, 1.0))
    assert vox.spatial_shape == (1, 1, 4)
    assert vox.coords[:, 3].tolist() == [0, 1, 2, 3]
    assert vox.point_voxel.tolist() == [0, 1, 2, 3, -1, -1, 0]
    assert vox.num_points.tolist() == [2, 1, 1, 1]


def test_float32_value_near_border_uses_exact_arithmetic():
    # float32(0.7) = 0.69999998..., which lies in cell 6 of a 0.1 grid; float32 division would say 7.
    pts = torch.tensor([[0.7, 0.3, 0.05]], dtype=torch.float32)
    vox = voxelize(pts, (0.1, 0.1, 0.1), (0.0, 0.0, 0.0, 1.0, 1.0, 1.0))
    assert vox.coords.tolist() == [[0, 0, 3, 6]]


def test_float32_cell_mode_is_the_reference_frameworks_arithmetic():
    """cell_dtype="float32": floor((p - p0) / v) in float32 with p0 and v rounded to float32, as OpenPCDet /
    mmdetection3d compute it. Hand-worked: float32(0.7) = 0.699999988; (0.699999988 - 0) / float32(0.1)
    = 0.699999988 / 0.100000001 rounds to 7.0 in float32, so the point moves from cell 6 (exact) to 7."""
    pts = torch.tensor([[0.7, 0.3, 0.05]], dtype=torch.float32)
    vox = voxelize(pts, (0.1, 0.1, 0.1), (0.0, 0.0, 0.0, 1.0, 1.0, 1.0), cell_dtype="float32")
    assert vox.coords.tolist() == [[0, 0, 3, 7]]
    assert np.floor(np.float32(0.7) / np.float32(0.1)) == 7  # the float32 arithmetic, independently
    # the reference's centre expression in float32: cell * v + (v / 2 + p0)
    c = vox.voxel_centers()
    assert c.dtype == torch.float32
    assert c[0, 0].item() == float(np.float32(7) * np.float32(0.1) + np.float32(0.05))
    with pytest.raises(ValueError, match="cell_dtype must be one of"):
        voxelize(pts, (0.1, 0.1, 0.1), (0.0, 0.0, 0.0, 1.0, 1.0, 1.0), cell_dtype="float16")


def test_float32_cell_mode_matches_a_float32_loop_on_real_points():
    """Every point of a real frame against a per-point float32 numpy loop of the same formula, kept iff
    0 <= cell < shape on every axis."""
    pts = np.fromfile(shared_file("nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"),
                      dtype=np.float32).reshape(-1, 5)[:, :3]
    size, rng = (0.32, 0.32, 6.0), (-74.88, -74.88, -2.0, 74.88, 74.88, 4.0)
    vox = voxelize(torch.from_numpy(pts), size, rng, cell_dtype="float32")
    lo, v = np.float32(rng[:3]), np.float32(size)
    cell = np.floor((pts - lo) / v).astype(np.int64)
    keep = ((cell >= 0) & (cell < np.array([468, 468, 1]))).all(1)
    own = vox.coords[vox.point_voxel[torch.from_numpy(keep)]][:, [3, 2, 1]].numpy()
    np.testing.assert_array_equal(vox.kept.numpy(), keep)
    np.testing.assert_array_equal(own, cell[keep])
    # the parity fixtures' README counts 5 points of this frame whose cell differs in float64
    exact = voxelize(torch.from_numpy(pts), size, rng)

    def cells(v):
        return torch.where(v.kept[:, None], v.coords[v.point_voxel.clamp(min=0)].long(), -1)

    assert int((cells(vox) != cells(exact)).any(1).sum()) == 5


def test_pillars_and_centers():
    pts = torch.tensor([[0.1, 0.1, -1.9], [0.15, 0.05, 3.9], [1.0, 0.5, 0.0], [0.3, 0.3, 4.0]])
    vox = voxelize(pts, (0.2, 0.2, 6.0), (0.0, 0.0, -2.0, 2.0, 2.0, 4.0))
    assert vox.spatial_shape == (1, 10, 10)
    assert vox.coords.tolist() == [[0, 0, 0, 0], [0, 0, 2, 5]]
    assert vox.point_voxel.tolist() == [0, 0, 1, -1]  # z = 4.0 is the open upper end
    torch.testing.assert_close(vox.voxel_centers(), torch.tensor([[0.1, 0.1, 1.0], [1.1, 0.5, 1.0]]))


def test_empty_cloud_and_all_outside():
    for pts in (Points(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2),
                Points(torch.full((5, 3), 100.0), torch.zeros(5, dtype=torch.long), 1)):
        vox = voxelize(pts, (0.5, 0.5, 0.5), (0, 0, 0, 4, 4, 4))
        assert vox.num_voxels == 0 and vox.coords.shape == (0, 4)
        assert bool((vox.point_voxel == -1).all()) and vox.point_voxel.shape == (len(pts),)
        pooled = vox.pool(pts.data[:, :3], "max")
        assert pooled.shape == (0, 3)
        sv = vox.to_sparse(pooled)
        assert sv.num_voxels == 0


def test_batch_ids_separate_voxels():
    a = torch.tensor([[0.5, 0.5, 0.5], [0.6, 0.6, 0.6]])
    pts = Points.from_list([a, torch.zeros(0, 3), a])
    vox = voxelize(pts, (1.0, 1.0, 1.0), (0, 0, 0, 2, 2, 2))
    assert vox.coords.tolist() == [[0, 0, 0, 0], [2, 0, 0, 0]]
    assert vox.point_voxel.tolist() == [0, 0, 1, 1]
    assert vox.batch_size == 3


def test_bad_arguments():
    pts = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="voxel_size x"):
        voxelize(pts, (0.0, 1.0, 1.0), (0, 0, 0, 1, 1, 1))
    with pytest.raises(ValueError, match="upper bound"):
        voxelize(pts, (1.0, 1.0, 1.0), (0, 0, 0, 1, -1, 1))
    with pytest.raises(ValueError, match="point_range"):
        voxelize(pts, (1.0, 1.0, 1.0), (0, 0, 0, 1, 1))
    with pytest.raises(ValueError, match="points must be"):
        voxelize(torch.zeros(3, 2), (1.0, 1.0, 1.0), (0, 0, 0, 1, 1, 1))
    with pytest.raises(ValueError, match=r"batch_idx must lie in \[0, 2\), got range \[0, 2\]"):
        voxelize(pts, (1.0, 1.0, 1.0), (0, 0, 0, 1, 1, 1), batch_idx=torch.tensor([0, 1, 2]), batch_size=2)
    with pytest.raises(ValueError, match=r"batch_idx must be \(3,\)"):
        voxelize(pts, (1.0, 1.0, 1.0), (0, 0, 0, 1, 1, 1), batch_idx=torch.tensor([0, 1]))
    # A plain tensor with batch_idx: the batch size defaults to max id + 1.
    vox = voxelize(torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]), (1.0, 1.0, 1.0), (0, 0, 0, 1, 1, 1),
                   batch_idx=torch.tensor([3, 1]))
    assert vox.batch_size == 4 and vox.coords.tolist() == [[1, 0, 0, 0], [3, 0, 0, 0]]
    assert vox.point_voxel.tolist() == [1, 0]


@pytest.mark.parametrize("reduce", ["mean", "max", "sum"])
def test_voxel_pool_matches_loop(reduce):
    gen = torch.Generator().manual_seed(3)
    n, v, c = 500, 40, 5
    feats = torch.randn(n, c, generator=gen, dtype=torch.float64)
    pv = torch.randint(-1, v, (n,), generator=gen)
    pv[:v] = torch.arange(v)  # every voxel gets a point
    out = voxel_pool(feats, pv, v, reduce)
    ref = np.zeros((v, c))
    for j in range(v):
        rows = feats.numpy()[pv.numpy() == j]
        ref[j] = {"mean": rows.mean(0), "max": rows.max(0), "sum": rows.sum(0)}[reduce]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_voxel_pool_gradient_and_errors():
    feats = torch.tensor([[1.0], [3.0], [2.0], [7.0]], requires_grad=True)
    pv = torch.tensor([0, 0, 1, -1])
    out = voxel_pool(feats, pv, 3, "mean")
    assert out.detach().tolist() == [[2.0], [2.0], [0.0]]  # voxel 2 has no point -> 0
    out.sum().backward()
    assert feats.grad.tolist() == [[0.5], [0.5], [1.0], [0.0]]
    feats.grad = None
    voxel_pool(feats, pv, 2, "max").sum().backward()
    assert feats.grad.tolist() == [[0.0], [1.0], [1.0], [0.0]]
    with pytest.raises(ValueError, match="reduce"):
        voxel_pool(feats, pv, 2, "median")
    with pytest.raises(ValueError, match="point_voxel"):
        voxel_pool(feats, pv[:2], 2)


def test_real_nuscenes_sweeps():
    path = shared_file("nuscenes/sweeps10_ff9eff4389a740848f9a56ad749a4ae8.fp16.bin")
    data = torch.from_numpy(np.fromfile(path, dtype=np.float16).reshape(-1, 5).astype(np.float32))
    voxel_size, point_range = (0.2, 0.2, 8.0), (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    vox = voxelize(data, voxel_size, point_range)
    assert vox.spatial_shape == (1, 512, 512)
    # Check a random 5000-point subset against the loop (the full loop is too slow for a unit test).
    sub = torch.randperm(len(data))[:5000]
    ref_coords, ref_pv = naive_voxelize(data[sub, :3].numpy(), np.zeros(5000, np.int64), voxel_size, point_range)
    got = vox.coords[vox.point_voxel[sub].clamp(min=0)].numpy()
    kept = ref_pv >= 0
    np.testing.assert_array_equal(vox.point_voxel[sub].numpy() >= 0, kept)
    np.testing.assert_array_equal(got[kept], ref_coords[ref_pv[kept]])
    assert int(vox.num_points.sum()) == int(vox.kept.sum()) > 200_000


@requires_cuda
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(5)
    voxel_size, point_range = CASES[0]
    xyz, bidx = random_cloud(20000, 4, point_range, voxel_size, gen)
    cpu = voxelize(Points(xyz, bidx, 4), voxel_size, point_range)
    gpu = voxelize(Points(xyz, bidx, 4).to("cuda"), voxel_size, point_range)
    assert torch.equal(cpu.coords, gpu.coords.cpu())
    assert torch.equal(cpu.point_voxel, gpu.point_voxel.cpu())
    feats = torch.randn(len(xyz), 8, generator=gen)
    for reduce in ("mean", "max"):
        torch.testing.assert_close(cpu.pool(feats, reduce), gpu.pool(feats.cuda(), reduce).cpu())
