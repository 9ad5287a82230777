"""Hand-worked golden examples and edge cases of the five partition schemes.

Every expected tensor below was worked out on paper from the semantics in DESIGN.md §4 / issue 3
(the derivation is in the comments), not produced by the code under test.
"""

from __future__ import annotations

import pytest
import torch

from pointwin.partition import (
    Partition,
    bev_windows,
    cubic_windows,
    curve_patches,
    exponential_split_edges,
    exponential_split_index,
    flattened_windows,
    hilbert_encode,
    radial_windows,
    rotated_sets,
    z_order_encode,
)


def T(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def grid_coords(cells, b=0, z=0) -> torch.Tensor:
    """int32 rows (b, z, y, x) from a list of (x, y) cells."""
    return torch.tensor([[b, z, y, x] for x, y in cells], dtype=torch.int32)


FULL_4X4 = [(x, y) for y in range(4) for x in range(4)]  # voxel id = y * 4 + x


# ---------------------------------------------------------------------------------------------
# Flattened windows (FlatFormer)
# ---------------------------------------------------------------------------------------------
# 4x4 grid, window (2, 2), no shift, axis "x". Window rows y//2; row 0 columns ascending, row 1
# descending. Inside: lx major, ly ascending on lx=0, descending on lx=1; reversed on odd window rows.
#   row 0, col 0: (0,0) (0,1) (1,1) (1,0)       row 0, col 1: (2,0) (2,1) (3,1) (3,0)
#   row 1, col 1: reversed[(2,2) (2,3) (3,3) (3,2)] = (3,2) (3,3) (2,3) (2,2)
#   row 1, col 0: reversed[(0,2) (0,3) (1,3) (1,2)] = (1,2) (1,3) (0,3) (0,2)
# ids (y*4+x):
FLAT_X = [0, 4, 5, 1, 2, 6, 7, 3, 11, 15, 14, 10, 9, 13, 12, 8]
# axis "y" is the transpose: swap x and y in every cell above.
FLAT_Y = [0, 1, 5, 4, 8, 9, 13, 12, 14, 15, 11, 10, 6, 7, 3, 2]
# shift: x' = x+1, y' = y+1, 3x3 windows of which the outer ones are partial.
#   row 0 (y=0, ly=1): col0 x=0 | col1 x=1 (lx0), x=2 (lx1) | col2 x=3  -> (0,0) (1,0) (2,0) (3,0)
#   row 1 (y=1,2; odd: cols 2,1,0 and inner reversed, inner = lx*2 + (ly if lx even else 1-ly)):
#     col2 (x=3, lx0): y=1 inner 0 -> 3, y=2 inner 1 -> 2          => (3,2) (3,1)
#     col1: (1,1) 0->3, (1,2) 1->2, (2,1) 3->0, (2,2) 2->1         => (2,1) (2,2) (1,2) (1,1)
#     col0 (x=0, lx1): y=1 inner 3 -> 0, y=2 inner 2 -> 1          => (0,1) (0,2)
#   row 2 (y=3, ly0): col0 x=0 | col1 x=1, x=2 | col2 x=3          => (0,3) (1,3) (2,3) (3,3)
FLAT_X_SHIFT = [0, 1, 2, 3, 11, 7, 6, 10, 9, 5, 4, 8, 12, 13, 14, 15]


@pytest.mark.parametrize("axis,shift,expected", [("x", False, FLAT_X), ("y", False, FLAT_Y),
                                                 ("x", True, FLAT_X_SHIFT)])
def test_flattened_golden_order(axis, shift, expected):
    p = flattened_windows(grid_coords(FULL_4X4), (1, 4, 4), window=(2, 2), group_size=16, axis=axis, shift=shift)
    p.check()
    assert torch.equal(p.index, T(expected))
    assert torch.equal(p.owner, torch.argsort(T(expected)))


def test_flattened_golden_last_group_overlaps():
    # 16 voxels, G = 5: groups seq[0:5], seq[5:10], seq[10:15], and the last 5: seq[11:16].
    p = flattened_windows(grid_coords(FULL_4X4), (1, 4, 4), window=(2, 2), group_size=5).check()
    assert p.size == 5 and p.num_groups == 4
    assert torch.equal(p.index, T(FLAT_X[:15] + FLAT_X[11:16]))
    assert not bool(p.key_pad.any())
    # Overlap positions 11..14 are owned by group 2 (slots 11..14); position 15 by slot 19.
    expected_owner = torch.empty(16, dtype=torch.int64)
    expected_owner[T(FLAT_X)] = T(list(range(15)) + [19])
    assert torch.equal(p.owner, expected_owner)


def test_flattened_short_sample_repeats_own_voxels():
    # sample 0: 3 voxels, sample 1: empty, sample 2: 1 voxel; G = 4. No borrowing across samples.
    coords = torch.tensor([[2, 0, 3, 3], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.int32)
    p = flattened_windows(coords, (1, 4, 4), window=(2, 2), group_size=4).check()
    # sample 0 order: (x0,y0)=id2, (x1,y1)=id1, (x1,y0)=id3 (lx1 goes ly descending) -> [2, 1, 3, 2]
    assert torch.equal(p.index, T([2, 1, 3, 2, 0, 0, 0, 0]))
    assert torch.equal(p.key_pad, torch.tensor([False, False, False, True, False, True, True, True]))
    assert torch.equal(p.owner, T([4, 1, 0, 2]))


# ---------------------------------------------------------------------------------------------
# Rotated sets (DSVT)
# ---------------------------------------------------------------------------------------------
# Grid (1, 4, 8), window (4, 4, 1), S = 4. Sample 0 window (0,0): a=(0,1) b=(1,0) c=(1,3) d=(2,2)
# e=(3,0) as (x, y); window (1,0): f=(5,1). Sample 1: g=(0,0). Input ids: d0 a1 e2 c3 b4 f5 g6.
#   x-major key lx*4+ly: a1 b4 c7 d10 e12 -> ranked a b c d e = ids 1 4 3 0 2
#   y-major key ly*4+lx: a4 b1 c13 d10 e3 -> ranked b e a d c = ids 4 2 1 0 3
#   n=5: K=2, T=8, rank(t) = floor(t*5/8) = 0 0 1 1 | 2 3 3 4
#   f alone: K=1, T=4: ranks 0 0 0 0; g likewise.
ROT_CELLS = [(2, 2), (0, 1), (3, 0), (1, 3), (1, 0), (5, 1)]


def rot_coords() -> torch.Tensor:
    return torch.cat([grid_coords(ROT_CELLS), grid_coords([(0, 0)], b=1)])


def test_rotated_golden_x_major():
    p = rotated_sets(rot_coords(), (1, 4, 8), window=(4, 4, 1), set_size=4, axis="x").check()
    assert p.size == 4 and p.num_groups == 4
    assert torch.equal(p.index, T([1, 1, 4, 4, 3, 0, 0, 2, 5, 5, 5, 5, 6, 6, 6, 6]))
    assert torch.equal(p.key_pad, torch.tensor([0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool))
    # owner of rank r = ceil(r*8/5): 0 2 4 5 7 -> a:0 b:2 c:4 d:5 e:7
    assert torch.equal(p.owner, T([5, 0, 7, 4, 2, 8, 12]))


def test_rotated_golden_y_major():
    p = rotated_sets(rot_coords(), (1, 4, 8), window=(4, 4, 1), set_size=4, axis="y").check()
    assert torch.equal(p.index, T([4, 4, 2, 2, 1, 0, 0, 3, 5, 5, 5, 5, 6, 6, 6, 6]))
    assert torch.equal(p.owner, T([5, 4, 2, 7, 0, 8, 12]))


def test_rotated_golden_shift_past_last_window():
    # shift (2,0,0): x+2 -> nwx = (8-1+2)//4+1 = 3. Window 0: a(2,1) b(3,0) c(3,3); window 1: d(4,2) e(5,0)
    # f(7,1). x-major: window 0 keys a9 b12 c15, window 1 d2 e4 f13. n=3, T=4: ranks 0 0 1 2.
    p = rotated_sets(rot_coords(), (1, 4, 8), window=(4, 4, 1), set_size=4, axis="x", shift=(2, 0, 0)).check()
    assert torch.equal(p.index, T([1, 1, 4, 3, 0, 0, 2, 5, 6, 6, 6, 6]))
    assert torch.equal(p.key_pad, torch.tensor([0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1], dtype=torch.bool))


def test_rotated_one_window_exact_multiple():
    # 8 voxels in one window, S = 4: K = 2, T = 8 = n: ranks are the identity, no key_pad.
    cells = [(x, y) for x in range(2) for y in range(4)]
    p = rotated_sets(grid_coords(cells), (1, 4, 4), window=(4, 4, 1), set_size=4, axis="x").check()
    assert torch.equal(p.index, T(list(range(8))))  # cells are listed x-major already
    assert not bool(p.key_pad.any())


def test_rotated_3d_window_key():
    # window (2, 2, 2): x-major key lx*4 + ly*2 + lz; ids in input order below.
    coords = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 1]], dtype=torch.int32)
    # keys: id0 (x0,y0,z1) 1; id1 (x0,y1,z0) 2; id2 (x1,y0,z0) 4; id3 (x1,y1,z1) 7
    p = rotated_sets(coords, (2, 2, 2), window=(2, 2, 2), set_size=4, axis="x").check()
    assert torch.equal(p.index, T([0, 1, 2, 3]))
    # y-major key ly*4 + lx*2 + lz: id0 1, id1 4, id2 2, id3 7
    p = rotated_sets(coords, (2, 2, 2), window=(2, 2, 2), set_size=4, axis="y").check()
    assert torch.equal(p.index, T([0, 2, 1, 3]))


# ---------------------------------------------------------------------------------------------
# BEV windows (ScatterFormer)
# ---------------------------------------------------------------------------------------------
def test_bev_golden():
    # (b, z, y, x); w = 2. windows (b, y//2, x//2): id0 (0,0,0) id1 (0,0,0) id2 (0,0,1) id3 (1,0,0)
    # id4 (0,1,1) id5 (0,1,0). Inside a window (z, y, x) ascending: id1 (z0) before id0 (z1).
    coords = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 3], [1, 0, 0, 0], [0, 1, 3, 3], [0, 0, 2, 0]],
                          dtype=torch.int32)
    p = bev_windows(coords, window=2, spatial_shape=(2, 4, 4)).check()
    assert p.size is None and p.key_pad is None
    assert torch.equal(p.index, T([1, 0, 2, 5, 4, 3]))
    assert torch.equal(p.offsets, T([0, 2, 3, 4, 5, 6]))
    assert torch.equal(p.owner, T([1, 0, 2, 5, 4, 3]))


def test_bev_all_in_one_window_and_rectangular():
    coords = grid_coords(FULL_4X4)
    p = bev_windows(coords, window=4).check()
    assert p.num_groups == 1 and torch.equal(p.index, T(list(range(16))))
    p = bev_windows(coords, window=(4, 2)).check()  # (wx, wy): windows are rows y//2
    assert torch.equal(p.offsets, T([0, 8, 16]))


def test_cubic_golden():
    # window (2, 2, 2), shift (1, 0, 0) on grid (2, 2, 4): window (b, (z)//2, y//2, (x+1)//2).
    # id0 (0,1,1,0) -> (0,0,0,0); id1 (0,0,0,1) -> (0,0,0,1); id2 (0,0,0,0) -> (0,0,0,0); id3 (0,0,1,3) -> (0,0,0,2)
    # id4 (1,0,0,0) -> sample 1. Inside window (z, y, x): id2 (z0) before id0 (z1).
    coords = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 3], [1, 0, 0, 0]], dtype=torch.int32)
    p = cubic_windows(coords, (2, 2, 4), window=(2, 2, 2), shift=(1, 0, 0)).check()
    assert torch.equal(p.index, T([2, 0, 1, 3, 4]))
    assert torch.equal(p.offsets, T([0, 2, 3, 4, 5]))


# ---------------------------------------------------------------------------------------------
# Radial windows (SphereFormer)
# ---------------------------------------------------------------------------------------------
def test_radial_golden():
    # window (90 deg, 90 deg, 10 m). cells (azimuth, polar, range):
    #   p0 (1,1,1): az 45, polar 54.7, r 1.73 -> (0,0,0)     p1 (-1,0,-1): 180, 135, 1.41 -> (2,1,0)
    #   p2 (0,-5,0): 270, 90, 5 -> (3,1,0)                  p3 (20,1,0): 2.9, 90, 20.02 -> (0,1,2)
    #   p4 (2,2,2) -> (0,0,0)   p5 (1,1,1) in sample 1      p6 (0,-3,0) -> (3,1,0)
    xyz = torch.tensor([[1, 1, 1], [-1, 0, -1], [0, -5, 0], [20, 1, 0], [2, 2, 2], [1, 1, 1], [0, -3, 0]],
                       dtype=torch.float32)
    b = T([0, 0, 0, 0, 0, 1, 0])
    p = radial_windows(xyz, b, window=(90.0, 90.0, 10.0)).check()
    assert torch.equal(p.index, T([0, 4, 3, 1, 2, 6, 5]))
    assert torch.equal(p.offsets, T([0, 2, 3, 4, 6, 7]))


def test_radial_fixed_origin_independent_of_batch():
    g = torch.Generator().manual_seed(3)
    xyz = torch.randn(200, 3, generator=g) * 20
    alone = radial_windows(xyz, torch.zeros(200, dtype=torch.long), window=(5.0, 5.0, 30.0))
    other = torch.randn(50, 3, generator=g) * 40
    both = radial_windows(torch.cat([xyz, other]), torch.cat([torch.zeros(200), torch.ones(50)]).long(),
                          window=(5.0, 5.0, 30.0))
    k = alone.num_groups
    assert torch.equal(both.offsets[: k + 1], alone.offsets) and torch.equal(both.index[: alone.num_slots],
                                                                             alone.index)


def test_exponential_split_golden():
    # unit 1, 4 bins: edges 1 2 4 8. |d| in [0,1) -> 0, [1,2) -> 1, [2,4) -> 2, [4,8) -> 3, >= 8 -> 4; +4.
    assert torch.equal(exponential_split_edges(1.0, 4), torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64))
    d = torch.tensor([0.0, 0.5, -0.5, 1.0, 1.9, 2.0, 3.9, 4.0, 8.0, 100.0, -1.0, -2.5, -100.0])
    assert torch.equal(exponential_split_index(d, unit=1.0, num_bins=4), T([4, 4, 4, 5, 5, 6, 6, 7, 8, 8, 3, 2, 0]))
    e = torch.linspace(-50, 50, 1001, dtype=torch.float64)
    assert torch.equal(exponential_split_index(-e, 0.3, 6), 12 - exponential_split_index(e, 0.3, 6))


# ---------------------------------------------------------------------------------------------
# Curve patches
# ---------------------------------------------------------------------------------------------
# Grid (1, 4, 4): depth 2. Morton bit i: x -> 3i+2, y -> 3i+1, z -> 3i.
# ids (x, y): 0 (3,3) 54 | 1 (1,0) 4 | 2 (0,1) 2 | 3 (2,0) 32 | 4 (0,2) 16 | 5 (1,1) 6 | 6 (2,1) 34
CURVE_CELLS = [(3, 3), (1, 0), (0, 1), (2, 0), (0, 2), (1, 1), (2, 1)]


def test_z_order_golden():
    xyz = torch.tensor([[x, y, 0] for x, y in CURVE_CELLS])
    assert torch.equal(z_order_encode(xyz, 2), T([54, 4, 2, 32, 16, 6, 34]))


def test_curve_patches_z_golden_borrow():
    # sorted: 2 1 5 4 3 6 0; K = 3 -> patches [2 1 5] [4 3 6] [0 + borrowed positions 4, 5 = 3 6]
    p = curve_patches(grid_coords(CURVE_CELLS), "z", patch_size=3, spatial_shape=(1, 4, 4)).check()
    assert torch.equal(p.index, T([2, 1, 5, 4, 3, 6, 0, 3, 6]))
    assert not bool(p.key_pad.any())
    assert torch.equal(p.owner, T([6, 1, 0, 4, 3, 2, 5]))


def test_curve_patches_z_trans_golden():
    # trans: code(x, y) = morton(y, x): ids 0 54, 1 2, 2 4, 3 16, 4 32, 5 6, 6 20 -> 1 2 5 3 6 4 0
    p = curve_patches(grid_coords(CURVE_CELLS), "z-trans", patch_size=7, spatial_shape=(1, 4, 4)).check()
    assert torch.equal(p.index, T([1, 2, 5, 3, 6, 4, 0]))


def test_hilbert_depth1_golden():
    # depth 1: no undo step; Gray encode gives code bits (x, x^y, x^y^z), so the curve is the Gray code
    # 000 001 011 010 110 111 101 100 over (x, y, z).
    cube = torch.tensor([[x, y, z] for x in range(2) for y in range(2) for z in range(2)])
    code = hilbert_encode(cube, 1)
    expected_path = [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1), (1, 0, 0)]
    assert [tuple(v) for v in cube[torch.argsort(code)].tolist()] == expected_path
    coords = torch.tensor([[0, z, y, x] for x, y, z in cube.tolist()], dtype=torch.int32)
    p = curve_patches(coords, "hilbert", patch_size=8, spatial_shape=(2, 2, 2)).check()
    assert [tuple(v) for v in coords[p.index][:, [3, 2, 1]].tolist()] == expected_path


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_hilbert_is_a_continuous_bijection(depth):
    n = 1 << depth
    cube = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    code = hilbert_encode(cube, depth)
    assert torch.equal(torch.sort(code)[0], torch.arange(n**3))
    path = cube[torch.argsort(code)]
    assert torch.equal((path[1:] - path[:-1]).abs().sum(1), torch.ones(n**3 - 1, dtype=torch.int64))
    assert path[0].tolist() == [0, 0, 0]


def test_curve_short_sample_and_batch_high_bits():
    # sample 0 has 2 voxels, sample 1 has 1; K = 3. Sample 1's voxel has a smaller code but comes after.
    coords = torch.tensor([[1, 0, 0, 0], [0, 0, 3, 3], [0, 0, 1, 1]], dtype=torch.int32)
    p = curve_patches(coords, "z", patch_size=3, spatial_shape=(1, 4, 4)).check()
    assert torch.equal(p.index, T([2, 1, 2, 0, 0, 0]))
    assert torch.equal(p.key_pad, torch.tensor([False, False, True, False, True, True]))


def test_curve_bit_budget_error():
    big = torch.tensor([[0, 0, 0, 1 << 21]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"coordinates \(z, y, x\) in .*2097152.*22 bits"):
        curve_patches(big, "z", patch_size=4)
    edge = torch.tensor([[0, 0, 0, (1 << 21) - 1]], dtype=torch.int32)
    curve_patches(edge, "hilbert", patch_size=4).check()  # 63 bits, one sample: fits
    with pytest.raises(ValueError, match="batch bits"):
        curve_patches(torch.cat([edge, edge + T([1, 0, 0, 0]).int()]), "z", patch_size=4)
    with pytest.raises(ValueError, match="curve must be one of"):
        curve_patches(edge, "peano", patch_size=4)


# ---------------------------------------------------------------------------------------------
# Edge cases shared by all schemes
# ---------------------------------------------------------------------------------------------
def all_schemes(coords: torch.Tensor, shape, G: int = 4) -> dict[str, Partition]:
    xyz = coords[:, [3, 2, 1]].float() - torch.tensor([shape[2] / 2, shape[1] / 2, 0.0])
    return {
        "flattened": flattened_windows(coords, shape, window=(2, 2), group_size=G),
        "flattened_shift": flattened_windows(coords, shape, window=(2, 2), group_size=G, axis="y", shift=True),
        "rotated": rotated_sets(coords, shape, window=(2, 2, 1), set_size=G),
        "rotated_shift": rotated_sets(coords, shape, window=(2, 2, 1), set_size=G, axis="y", shift=(1, 1, 0)),
        "bev": bev_windows(coords, window=2, spatial_shape=shape),
        "radial": radial_windows(xyz, coords[:, 0].long(), window=(30.0, 30.0, 2.0)),
        "curve": curve_patches(coords, "hilbert", patch_size=G, spatial_shape=shape),
    }


def test_one_voxel():
    coords = torch.tensor([[0, 0, 3, 3]], dtype=torch.int32)  # at the grid border
    for name, p in all_schemes(coords, (1, 4, 4)).items():
        p.check()
        assert p.num_groups == 1, name
        assert bool((p.index == 0).all()) and int(p.owner[0]) == 0, name
        if p.size is not None:
            assert p.key_pad.tolist() == [False, True, True, True], name


def test_no_voxels():
    coords = torch.zeros(0, 4, dtype=torch.int32)
    for name, p in all_schemes(coords, (1, 4, 4)).items():
        p.check()
        assert p.num_groups == 0 and p.num_slots == 0, name


def test_empty_sample_in_the_middle():
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0], [2, 0, 0, 0], [2, 0, 3, 3], [2, 0, 2, 1]], dtype=torch.int32)
    for name, p in all_schemes(coords, (1, 4, 4)).items():
        p.check()
        b = coords[:, 0].long()[p.index]
        assert bool((b[p.offsets[:-1]].repeat_interleave(p.group_sizes()) == b).all()), name
        # sample 0's groups all come before sample 2's
        assert bool((b[1:] >= b[:-1]).all()), name


def test_shift_pushes_border_coords_into_an_extra_window():
    # X = 4, window 2, shift 1: x = 3 -> x' = 4 -> window column 2 (a third column exists only when shifted).
    coords = grid_coords([(3, 0), (3, 3), (0, 3), (0, 0)])
    p = rotated_sets(coords, (1, 4, 4), window=(2, 2, 1), set_size=1, shift=(1, 1, 0)).check()
    # windows (b, wz, wy, wx): (0,0)->(x'1,y'1): w(0,0); (3,0)->(4,1): w(0,2); (0,3)->(1,4): w(2,0); (3,3): w(2,2)
    assert torch.equal(p.index, T([3, 0, 2, 1]))
    p = flattened_windows(coords, (1, 4, 4), window=(2, 2), group_size=4, shift=True).check()
    assert torch.equal(p.index, T([3, 0, 2, 1]))  # per FLAT_X_SHIFT: (0,0) (3,0) ... (0,3) (3,3)


def test_bad_inputs_raise_clear_errors():
    ok = torch.tensor([[0, 0, 1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"flattened_windows coords must have shape \(N, 4\)"):
        flattened_windows(ok[:, :3], (1, 4, 4), window=2, group_size=4)
    with pytest.raises(ValueError, match="int32"):
        rotated_sets(ok.float(), (1, 4, 4), window=2, set_size=4)
    with pytest.raises(ValueError, match=r"x range \[1, 1\] is outside spatial_shape x extent \[0, 1\)"):
        rotated_sets(ok, (1, 4, 1), window=2, set_size=4)
    with pytest.raises(ValueError, match="negative b"):
        bev_windows(torch.tensor([[-1, 0, 0, 0]], dtype=torch.int32), window=2)
    with pytest.raises(ValueError, match="axis must be"):
        flattened_windows(ok, (1, 4, 4), window=2, group_size=4, axis="z")
    with pytest.raises(ValueError, match="group_size"):
        flattened_windows(ok, (1, 4, 4), window=2, group_size=0)
    with pytest.raises(ValueError, match="window must be 3 positive numbers"):
        radial_windows(torch.zeros(1, 3), T([0]), window=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="batch_idx"):
        radial_windows(torch.zeros(2, 3), T([0]), window=(1.0, 1.0, 1.0))


def test_check_rejects_broken_partitions():
    good = Partition(index=T([0, 1, 1]), offsets=T([0, 3]), owner=T([0, 1]), size=3,
                     key_pad=torch.tensor([False, False, True])).check()
    with pytest.raises(ValueError, match="key_pad must be True exactly"):
        Partition(good.index, good.offsets, good.owner, 3, torch.tensor([False, False, False])).check()
    with pytest.raises(ValueError, match="owner"):
        Partition(good.index, good.offsets, T([0, 2]), 3, good.key_pad).check()
    with pytest.raises(ValueError, match=r"owner\[1\] = 1 holds voxel 0"):
        Partition(T([0, 0]), T([0, 1, 2]), T([0, 1]), None, None).check()
    with pytest.raises(ValueError, match="repeated inside a group but no key_pad"):
        Partition(T([0, 1, 0]), T([0, 3]), T([0, 1]), None, None).check()
    with pytest.raises(ValueError, match="first slot"):
        Partition(T([0, 1]), T([0, 1, 2]), T([0, 1]), None, torch.tensor([True, False])).check()


def test_equal_and_to():
    a = flattened_windows(grid_coords(FULL_4X4), (1, 4, 4), window=(2, 2), group_size=5)
    b = flattened_windows(grid_coords(FULL_4X4), (1, 4, 4), window=(2, 2), group_size=5)
    assert a.equal(b) and a.to("cpu").equal(a)
    assert not a.equal(flattened_windows(grid_coords(FULL_4X4), (1, 4, 4), window=(2, 2), group_size=5, axis="y"))
    assert not a.equal(bev_windows(grid_coords(FULL_4X4), window=2))
