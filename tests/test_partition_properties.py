"""Seeded-random property tests of the partition schemes against plain-Python references.

The references enumerate windows and cells with explicit loops straight from the written semantics
(DESIGN.md §4), so they share no code with the vectorised implementations.
"""

from __future__ import annotations

import math

import pytest
import torch

from pointwin.partition import (
    Partition,
    bev_windows,
    cubic_windows,
    curve_patches,
    flattened_windows,
    radial_windows,
    rotated_sets,
)
from tests.conftest import requires_cuda
from tests.partition_cases import random_partitions

SEEDS = range(12)


def random_coords(seed: int):
    """(coords int32 (N, 4), spatial_shape): unique voxels, random samples (some empty), shuffled rows."""
    g = torch.Generator().manual_seed(seed)
    Z = int(torch.randint(1, 4, (1,), generator=g))
    Y, X = (int(v) for v in torch.randint(3, 30, (2,), generator=g))
    B = int(torch.randint(1, 5, (1,), generator=g))
    rows = []
    for b in range(B):
        cells = Z * Y * X
        n = int(torch.randint(0, min(cells, 120) + 1, (1,), generator=g))
        if seed % 3 == 0 and b == 1:
            n = 0  # empty sample in the middle
        lin = torch.randperm(cells, generator=g)[:n]
        rows.append(torch.stack([torch.full_like(lin, b), lin // (Y * X), (lin // X) % Y, lin % X], 1))
    coords = torch.cat(rows)
    coords = coords[torch.randperm(coords.shape[0], generator=g)]
    return coords.to(torch.int32), (Z, Y, X)


def rand_int(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def equal_cut(seqs, G, tail):
    """Reference cutting of per-sample sequences into groups of G: (index, key_pad) lists."""
    index, key_pad = [], []
    for seq in seqs:
        n = len(seq)
        if n == 0:
            continue
        if n < G:
            index += [seq[j % n] for j in range(G)]
            key_pad += [j >= n for j in range(G)]
            continue
        K = -(-n // G)
        for i in range(K):
            if i < K - 1:
                index += seq[i * G:(i + 1) * G]
            elif tail == "last":
                index += seq[n - G:]
            else:
                index += [seq[p] if p < n else seq[p - G] for p in range(i * G, (i + 1) * G)]
            key_pad += [False] * G
    return index, key_pad


def first_owner(index, N):
    owner = [-1] * N
    for s, v in enumerate(index):
        if owner[v] < 0:
            owner[v] = s
    return owner


def assert_matches(p: Partition, index, key_pad, owner, size):
    p.check()
    assert p.size == size
    assert p.index.tolist() == index
    if key_pad is None:
        assert p.key_pad is None
    else:
        assert p.key_pad.tolist() == key_pad
    assert p.owner.tolist() == owner


def batch_separated(p: Partition, coords: torch.Tensor) -> bool:
    b = coords[:, 0].long()[p.index]
    return bool((b == b[p.offsets[:-1]].repeat_interleave(p.group_sizes())).all())


# ----------------------------------------------------------------------------------------------
def ref_flattened(coords, shape, window, G, axis, shift):
    Z, Y, X = shape
    wx, wy = window
    rows = [tuple(r) for r in coords.tolist()]
    if axis == "y":  # the y variant is the x variant with x and y exchanged
        rows = [(b, z, x, y) for b, z, y, x in rows]
        Y, X, wx, wy = X, Y, wy, wx
    sx, sy = (wx // 2, wy // 2) if shift else (0, 0)
    nwx, nwy = (X - 1 + sx) // wx + 1, (Y - 1 + sy) // wy + 1
    where = {r: i for i, r in enumerate(rows)}
    seqs = []
    for b in range(max([r[0] for r in rows], default=-1) + 1):
        seq = []
        for r in range(nwy):
            for c in (range(nwx) if r % 2 == 0 else reversed(range(nwx))):
                inner = [(lx, ly) for lx in range(wx) for ly in (range(wy) if lx % 2 == 0 else reversed(range(wy)))]
                if r % 2 == 1:
                    inner.reverse()
                for lx, ly in inner:
                    x, y = c * wx + lx - sx, r * wy + ly - sy
                    seq += [where[(b, z, y, x)] for z in range(Z) if (b, z, y, x) in where]
        seqs.append(seq)
    index, key_pad = equal_cut(seqs, G, "last")
    return index, key_pad, first_owner(index, len(rows))


@pytest.mark.parametrize("seed", SEEDS)
def test_flattened_matches_reference(seed):
    coords, shape = random_coords(seed)
    g = torch.Generator().manual_seed(100 + seed)
    window = (rand_int(g, 1, 7), rand_int(g, 1, 7))
    G = rand_int(g, 1, 40)
    for axis in ("x", "y"):
        for shift in (False, True):
            p = flattened_windows(coords, shape, window=window, group_size=G, axis=axis, shift=shift)
            assert_matches(p, *ref_flattened(coords, shape, window, G, axis, shift), size=G)
            assert batch_separated(p, coords)


# ----------------------------------------------------------------------------------------------
def ref_rotated(coords, window, S, axis, shift):
    wx, wy, wz = window
    sx, sy, sz = shift
    windows: dict[tuple, list] = {}
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        x, y, z = x + sx, y + sy, z + sz
        lx, ly, lz = x % wx, y % wy, z % wz
        key = lx * wy * wz + ly * wz + lz if axis == "x" else ly * wx * wz + lx * wz + lz
        windows.setdefault((b, z // wz, y // wy, x // wx), []).append((key, i))
    index, key_pad = [], []
    for w in sorted(windows):
        ranked = [i for _, i in sorted(windows[w])]
        n = len(ranked)
        K = -(-n // S)
        for k in range(K):
            for j in range(S):
                index.append(ranked[(k * S + j) * n // (K * S)])
                key_pad.append(j > 0 and index[-1] == index[-2])
    return index, key_pad, first_owner(index, coords.shape[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_rotated_matches_reference(seed):
    coords, shape = random_coords(seed)
    g = torch.Generator().manual_seed(200 + seed)
    window = (rand_int(g, 1, 8), rand_int(g, 1, 8), rand_int(g, 1, 2))
    S = rand_int(g, 1, 20)
    for axis in ("x", "y"):
        for shift in ((0, 0, 0), (window[0] // 2, window[1] // 2, rand_int(g, 0, 1))):
            p = rotated_sets(coords, shape, window=window, set_size=S, axis=axis, shift=shift)
            assert_matches(p, *ref_rotated(coords, window, S, axis, shift), size=S)
            assert batch_separated(p, coords)


@pytest.mark.parametrize("seed", SEEDS)
def test_rotated_sets_are_contiguous_rank_runs(seed):
    """Each set's distinct voxels are consecutive ranks of its window, sets ascend, and the union is all ranks."""
    coords, shape = random_coords(seed)
    window, S = (5, 4, 1), 7
    p = rotated_sets(coords, shape, window=window, set_size=S, axis="y").check()
    c = coords.long()
    win = ((c[:, 0] * 100 + c[:, 1]) * 100 + c[:, 2] // 4) * 100 + c[:, 3] // 5  # wz = 1: z is a window axis
    rank_key = (c[:, 2] % 4) * 5 + c[:, 3] % 5  # y-major, wz = 1
    rank = torch.empty_like(win)
    for w in win.unique().tolist():
        members = (win == w).nonzero().flatten()
        rank[members[torch.argsort(rank_key[members])]] = torch.arange(members.numel())
    sets = p.index.view(-1, S)
    prev_win, prev_max = None, -1
    for s in sets:
        w = win[s]
        assert bool((w == w[0]).all())
        r = rank[s]
        assert bool((r[1:] >= r[:-1]).all()) and int(r[-1] - r[0]) == len(set(r.tolist())) - 1
        if int(w[0]) == prev_win:
            assert int(r[0]) in (prev_max, prev_max + 1)  # next run starts where the previous ended
        else:
            assert int(r[0]) == 0
        prev_win, prev_max = int(w[0]), int(r[-1])


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_bev_matches_reference(seed):
    coords, shape = random_coords(seed)
    g = torch.Generator().manual_seed(300 + seed)
    wx, wy = rand_int(g, 1, 9), rand_int(g, 1, 9)
    groups: dict[tuple, list] = {}
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        groups.setdefault((b, y // wy, x // wx), []).append(((z, y, x), i))
    index = [i for key in sorted(groups) for _, i in sorted(groups[key])]
    p = bev_windows(coords, window=(wx, wy), spatial_shape=shape)
    assert_matches(p, index, None, first_owner(index, coords.shape[0]), size=None)
    assert p.group_sizes().tolist() == [len(groups[k]) for k in sorted(groups)]


@pytest.mark.parametrize("seed", SEEDS)
def test_cubic_matches_reference(seed):
    coords, shape = random_coords(seed)
    g = torch.Generator().manual_seed(350 + seed)
    window = (rand_int(g, 1, 9), rand_int(g, 1, 9), rand_int(g, 1, 3))
    shift = tuple(rand_int(g, 0, w - 1) for w in window)
    groups: dict[tuple, list] = {}
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        key = (b, (z + shift[2]) // window[2], (y + shift[1]) // window[1], (x + shift[0]) // window[0])
        groups.setdefault(key, []).append(((z, y, x), i))
    index = [i for key in sorted(groups) for _, i in sorted(groups[key])]
    p = cubic_windows(coords, shape, window=window, shift=shift)
    assert_matches(p, index, None, first_owner(index, coords.shape[0]), size=None)


@pytest.mark.parametrize("seed", SEEDS)
def test_radial_matches_reference(seed):
    g = torch.Generator().manual_seed(400 + seed)
    N = rand_int(g, 0, 300)
    xyz = torch.randn(N, 3, generator=g) * torch.tensor([30.0, 30.0, 3.0])
    b = torch.randint(0, 3, (N,), generator=g)
    window = (float(rand_int(g, 1, 20)), float(rand_int(g, 1, 20)), float(rand_int(g, 1, 50)))
    groups: dict[tuple, list] = {}
    for i, ((x, y, z), bi) in enumerate(zip(xyz.double().tolist(), b.tolist())):
        az = math.degrees(math.atan2(y, x)) % 360.0
        polar = math.degrees(math.atan2(math.hypot(x, y), z))
        rng = math.sqrt(x * x + y * y + z * z)
        groups.setdefault((bi, math.floor(az / window[0]), math.floor(polar / window[1]),
                           math.floor(rng / window[2])), []).append(i)
    index = [i for key in sorted(groups) for i in groups[key]]
    p = radial_windows(xyz, b, window=window)
    assert_matches(p, index, None, first_owner(index, N), size=None)


# ----------------------------------------------------------------------------------------------
def py_morton(x, y, z, depth):
    code = 0
    for i in range(depth):
        code |= ((x >> i) & 1) << (3 * i + 2) | ((y >> i) & 1) << (3 * i + 1) | ((z >> i) & 1) << (3 * i)
    return code


def py_hilbert(x, y, z, depth):
    """Scalar Skilling transform (AxestoTranspose) and MSB-first interleave."""
    X = [x, y, z]
    M = 1 << (depth - 1)
    Q = M
    while Q > 1:
        P = Q - 1
        for i in range(3):
            if X[i] & Q:
                X[0] ^= P
            else:
                t = (X[0] ^ X[i]) & P
                X[0] ^= t
                X[i] ^= t
        Q >>= 1
    for i in range(1, 3):
        X[i] ^= X[i - 1]
    t, Q = 0, M
    while Q > 1:
        if X[2] & Q:
            t ^= Q - 1
        Q >>= 1
    X = [v ^ t for v in X]
    code = 0
    for level in range(depth - 1, -1, -1):
        for v in X:
            code = (code << 1) | ((v >> level) & 1)
    return code


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("curve", ["z", "z-trans", "hilbert", "hilbert-trans"])
def test_curve_matches_reference(seed, curve):
    coords, shape = random_coords(seed)
    K = rand_int(torch.Generator().manual_seed(500 + seed), 1, 40)
    depth = max(max(shape) - 1, 1).bit_length()
    encode = py_morton if curve.startswith("z") else py_hilbert
    rows = coords.tolist()
    seqs = []
    for b in range(max([r[0] for r in rows], default=-1) + 1):
        members = []
        for i, (bb, z, y, x) in enumerate(rows):
            if bb == b:
                if curve.endswith("-trans"):
                    x, y = y, x
                members.append((encode(x, y, z, depth), i))
        seqs.append([i for _, i in sorted(members)])
    index, key_pad = equal_cut(seqs, K, "borrow")
    p = curve_patches(coords, curve, patch_size=K, spatial_shape=shape)
    assert_matches(p, index, key_pad, first_owner(index, len(rows)), size=K)
    assert batch_separated(p, coords)


# ----------------------------------------------------------------------------------------------
def schemes(shape):
    return [
        lambda c: flattened_windows(c, shape, window=(4, 3), group_size=9, axis="y", shift=True),
        lambda c: rotated_sets(c, shape, window=(4, 5, 2), set_size=6, axis="x", shift=(2, 2, 1)),
        lambda c: bev_windows(c, window=3),
        lambda c: curve_patches(c, "hilbert", patch_size=11, spatial_shape=shape),
    ]


@pytest.mark.parametrize("seed", range(6))
def test_invariant_to_input_row_order(seed):
    """Permuting the input rows relabels the voxels and changes nothing else (coords are unique)."""
    coords, shape = random_coords(seed)
    perm = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(seed))
    for make in schemes(shape):
        a, b = make(coords), make(coords[perm])
        inv = torch.argsort(perm)
        assert torch.equal(inv[a.index], b.index)
        assert torch.equal(a.offsets, b.offsets)
        assert torch.equal(a.owner[perm], b.owner)


@pytest.mark.parametrize("seed", range(3))
def test_partition_cases_are_valid(seed):
    names = []
    for name, coords, shape, p in random_partitions(seed):
        p.check()
        assert batch_separated(p, coords), name
        assert coords.dtype == torch.int32 and len(shape) == 3
        names.append(name)
        if name == "bev":
            sizes = p.group_sizes()
            assert int(sizes.min()) == 1 and int(sizes.max()) >= 64
    assert {"flattened_x", "rotated_x", "bev", "radial", "curve_z"} <= set(names)


def test_partitions_do_not_track_gradients():
    coords, shape = random_coords(1)
    xyz = coords[:, 1:].float().requires_grad_(True)
    p = radial_windows(xyz, coords[:, 0].long(), window=(10.0, 10.0, 5.0))
    assert not p.index.requires_grad and not p.owner.requires_grad


@requires_cuda
@pytest.mark.parametrize("seed", range(4))
def test_cpu_and_cuda_identical(seed):
    coords, shape = random_coords(seed)
    xyz = coords[:, [3, 2, 1]].float() * 0.37 - 5.0
    makers = [
        lambda c, x: flattened_windows(c, shape, window=(5, 3), group_size=7, shift=True),
        lambda c, x: flattened_windows(c, shape, window=(5, 3), group_size=7, axis="y"),
        lambda c, x: rotated_sets(c, shape, window=(4, 6, 2), set_size=5, axis="y", shift=(2, 3, 1)),
        lambda c, x: bev_windows(c, window=(3, 4)),
        lambda c, x: radial_windows(x, c[:, 0].long(), window=(7.0, 9.0, 3.0)),
        lambda c, x: curve_patches(c, "hilbert-trans", patch_size=13, spatial_shape=shape),
        lambda c, x: curve_patches(c, "z", patch_size=13),
    ]
    for make in makers:
        cpu = make(coords, xyz)
        gpu = make(coords.cuda(), xyz.cuda()).check().to("cpu")
        for name in ("index", "offsets", "owner", "key_pad"):
            a, b = getattr(cpu, name), getattr(gpu, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        assert cpu.size == gpu.size
