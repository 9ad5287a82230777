"""Rotated box IoU, NMS and point-in-box tests against shapely polygons and float64 loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pointwin.ops import boxes_iou3d, boxes_iou_bev, boxes_overlap_bev, circle_nms, nms_bev, points_in_boxes
from pointwin.structures import Boxes3D

from .conftest import Polygon, requires_cuda, shared_file

BACKENDS = ["numba", "torch"]


def np_corners(box) -> list[tuple[float, float]]:
    """Float64 BEV corners written out independently of pointwin."""
    x, y, _, dx, dy, _, yaw = (float(v) for v in box[:7])
    c, s = math.cos(yaw), math.sin(yaw)
    out = []
    for lx, ly in ((dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2)):
        out.append((x + lx * c - ly * s, y + lx * s + ly * c))
    return out


def shapely_inter_union(a, b) -> tuple[float, float]:
    pa, pb = Polygon(np_corners(a)), Polygon(np_corners(b))
    inter = pa.intersection(pb).area
    return inter, pa.area + pb.area - inter


def shapely_iou_bev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            inter, union = shapely_inter_union(a[i], b[j])
            out[i, j] = inter / union if union > 0 and inter > 0 else 0.0
    return out


def shapely_iou3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            inter, _ = shapely_inter_union(a[i], b[j])
            dz = min(a[i, 2] + a[i, 5] / 2, b[j, 2] + b[j, 5] / 2) - max(a[i, 2] - a[i, 5] / 2, b[j, 2] - b[j, 5] / 2)
            inter3d = inter * max(dz, 0.0)
            union = a[i, 3:6].prod() + b[j, 3:6].prod() - inter3d
            out[i, j] = inter3d / union if inter3d > 0 else 0.0
    return out


def random_boxes(n: int, rng: np.random.Generator, spread: float = 6.0) -> np.ndarray:
    b = np.zeros((n, 7))
    b[:, :2] = rng.uniform(-spread, spread, (n, 2))
    b[:, 2] = rng.uniform(-1, 1, n)
    b[:, 3:6] = rng.uniform(0.3, 5.0, (n, 3))
    b[:, 6] = rng.uniform(-math.pi, math.pi, n)
    return b


def special_pairs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a[i], b[i]) with known IoU: identical, nested, touching (edge and corner) and degenerate."""
    a, b = [], []
    for _ in range(6):
        base = random_boxes(1, rng)[0]
        yaw, c, s = base[6], math.cos(base[6]), math.sin(base[6])
        a.append(base)
        b.append(base.copy())  # identical
        inner = base.copy()
        inner[3:5] *= rng.uniform(0.2, 0.9, 2)
        a.append(base)
        b.append(inner)  # nested, same heading
        rot = base.copy()
        r = 0.45 * min(base[3], base[4])
        rot[3:5] = r * np.array([math.cos(0.3), math.sin(0.3)]) * 1.9
        rot[6] = yaw + rng.uniform(-math.pi, math.pi)
        a.append(base)
        b.append(rot)  # nested, other heading (the small box fits in the inscribed circle)
        edge = base.copy()
        edge[4] = rng.uniform(0.3, 3.0)
        shift = base[3] / 2 + rng.uniform(0.3, 3.0) / 2
        edge[3] = 2 * (shift - base[3] / 2)
        edge[0] += shift * c
        edge[1] += shift * s
        a.append(base)
        b.append(edge)  # touching along a's front face
        corner = base.copy()
        corner[0] += base[3] * c - base[4] * s
        corner[1] += base[3] * s + base[4] * c
        a.append(base)
        b.append(corner)  # touching at a corner only
        for cols in ([3], [4], [3, 4]):
            degenerate = base.copy()
            degenerate[cols] = 0.0
            a.append(base)
            b.append(degenerate)
            a.append(degenerate)
            b.append(degenerate.copy())
    return np.array(a), np.array(b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_bev_matches_shapely_random(backend):
    rng = np.random.default_rng(0)
    a, b = random_boxes(40, rng), random_boxes(30, rng)
    ref = shapely_iou_bev(a, b)
    assert (ref > 0).sum() > 50  # plenty of overlapping pairs
    got = boxes_iou_bev(torch.from_numpy(a), torch.from_numpy(b), backend=backend)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_special_pairs(backend):
    rng = np.random.default_rng(1)
    a, b = special_pairs(rng)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    got = boxes_iou_bev(ta, tb, aligned=True, backend=backend).numpy()
    ref = np.array([shapely_iou_bev(a[i:i + 1], b[i:i + 1])[0, 0] for i in range(len(a))])
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, ref, atol=1e-9, rtol=0)
    # Hand-worked values independent of shapely.
    kinds = ["identical", "nested", "nested_rot", "edge", "corner"] + ["degenerate"] * 6
    for i, kind in enumerate(kinds * 6):
        area_a, area_b = a[i, 3] * a[i, 4], b[i, 3] * b[i, 4]
        expected = area_b / area_a if kind.startswith("nested") else float(kind == "identical")
        assert got[i] == pytest.approx(expected, abs=1e-9), (kind, i)
    # The full matrix agrees with the aligned pairs on its diagonal.
    full = boxes_iou_bev(ta, tb, backend=backend).numpy()
    np.testing.assert_allclose(np.diag(full), got, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_far_from_origin_and_float32(backend):
    rng = np.random.default_rng(2)
    a, b = random_boxes(20, rng, spread=3.0), random_boxes(20, rng, spread=3.0)
    a[:, :2] += 1000.0
    b[:, :2] += 1000.0
    ref = shapely_iou_bev(a, b)
    got = boxes_iou_bev(torch.from_numpy(a), torch.from_numpy(b), backend=backend)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-8)
    got32 = boxes_iou_bev(Boxes3D(torch.from_numpy(a).float()), Boxes3D(torch.from_numpy(b).float()), backend=backend)
    assert got32.dtype == torch.float32
    # float32 inputs are themselves rounded (~6e-5 m at 1 km): compare with the rounded boxes' IoU.
    ref32 = shapely_iou_bev(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(got32.numpy(), ref32, atol=2e-4 if backend == "torch" else 1e-6)


def test_iou_empty_and_overlap_area():
    empty = torch.zeros(0, 7)
    assert boxes_iou_bev(empty, torch.zeros(3, 7)).shape == (0, 3)
    assert boxes_iou_bev(empty, empty, backend="torch").shape == (0, 0)
    # Two unit squares offset by 0.5 along x (second rotated 90 deg, a no-op): overlap 0.5, IoU 1/3.
    a = torch.tensor([[0.0, 0, 0, 1, 1, 1, 0], [0.5, 0, 0, 1, 1, 1, math.pi / 2]], dtype=torch.float64)
    for backend in BACKENDS:
        assert boxes_overlap_bev(a[:1], a[1:], backend=backend).item() == pytest.approx(0.5, abs=1e-12)
        assert boxes_iou_bev(a[:1], a[1:], backend=backend).item() == pytest.approx(1 / 3, abs=1e-12)
        # A square and the same square rotated 45 deg: overlap is the regular octagon 2 (sqrt 2 - 1).
        b = torch.tensor([[0.0, 0, 0, 1, 1, 1, math.pi / 4]], dtype=torch.float64)
        assert boxes_overlap_bev(a[:1], b, backend=backend).item() == pytest.approx(2 * (2**0.5 - 1), abs=1e-12)
    with pytest.raises(ValueError, match="aligned"):
        boxes_iou_bev(a, a[:1], aligned=True)
    with pytest.raises(ValueError, match="boxes_iou_bev a"):
        boxes_iou_bev(torch.zeros(2, 5), a)
    with pytest.raises(ValueError, match="backend"):
        boxes_iou_bev(a, a, backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou3d_matches_shapely(backend):
    rng = np.random.default_rng(3)
    a, b = random_boxes(25, rng, spread=4.0), random_boxes(25, rng, spread=4.0)
    a2, b2 = special_pairs(rng)
    a, b = np.concatenate([a, a2[:25]]), np.concatenate([b, b2[:25]])
    ref = shapely_iou3d(a, b)
    got = boxes_iou3d(torch.from_numpy(a), torch.from_numpy(b), backend=backend).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-9)
    aligned = boxes_iou3d(torch.from_numpy(a), torch.from_numpy(b), aligned=True, backend=backend).numpy()
    np.testing.assert_allclose(aligned, np.diag(ref), atol=1e-9)
    # Hand-worked: same footprint, heights [0, 2] and [1, 4]: inter 1 * 1, union 2 + 3 - 1.
    u = torch.tensor([[0.0, 0, 1, 1, 1, 2, 0.3]], dtype=torch.float64)
    v = torch.tensor([[0.0, 0, 2.5, 1, 1, 3, 0.3]], dtype=torch.float64)
    assert boxes_iou3d(u, v, backend=backend).item() == pytest.approx(1 / 4, abs=1e-12)
    w = v.clone()
    w[0, 2] = 3.5  # stacked on top: touching faces only
    assert boxes_iou3d(u, w, backend=backend).item() == 0.0


def test_torch_backend_is_differentiable():
    a = torch.tensor([[0.0, 0, 0, 2, 1, 1, 0.3], [1.0, 0.5, 0.2, 1.5, 2, 1, 1.0]], dtype=torch.float64,
                     requires_grad=True)
    b = torch.tensor([[0.5, 0.2, 0, 1.5, 1, 1, -0.2], [1.2, 0.1, 0.0, 1.0, 1.0, 1.2, 0.2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: boxes_iou_bev(x, b, aligned=True, backend="torch"), (a,))
    assert torch.autograd.gradcheck(lambda x: boxes_iou3d(x, b, backend="torch"), (a,))


def naive_nms(iou: np.ndarray, scores: np.ndarray, thr: float, pre_max=None, post_max=None) -> list[int]:
    """Greedy NMS over a precomputed (shapely) IoU matrix."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if pre_max is not None:
        order = order[:pre_max]
    keep: list[int] = []
    for i in order:
        if all(iou[k, i] <= thr for k in keep):
            keep.append(i)
    return keep if post_max is None else keep[:post_max]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_matches_naive_greedy(backend):
    rng = np.random.default_rng(4)
    boxes = random_boxes(120, rng, spread=5.0)
    scores = rng.uniform(size=120)
    scores[10:20] = scores[0]  # ties keep the lower index first
    tb, ts = torch.from_numpy(boxes).float(), torch.from_numpy(scores).float()
    iou = shapely_iou_bev(tb.double().numpy(), tb.double().numpy())
    for thr, pre, post in ((0.1, None, None), (0.5, None, None), (0.3, 60, None), (0.2, None, 7)):
        ref = naive_nms(iou, ts.double().numpy(), thr, pre, post)
        got = nms_bev(Boxes3D(tb), ts, thr, pre_max=pre, post_max=post, backend=backend)
        assert got.dtype == torch.int64
        assert got.tolist() == ref, (thr, pre, post)
        assert len(ref) < (pre or 120)  # something was suppressed
    assert nms_bev(tb[:0], ts[:0], 0.5, backend=backend).tolist() == []
    # Identical boxes: only the best survives at any threshold below 1.
    same = tb[:1].repeat(4, 1)
    assert nms_bev(same, torch.tensor([0.1, 0.9, 0.5, 0.3]), 0.99, backend=backend).tolist() == [1]
    with pytest.raises(ValueError, match="scores"):
        nms_bev(tb, ts[:3], 0.5)


def test_circle_nms_matches_loop():
    rng = np.random.default_rng(5)
    centers = rng.uniform(-10, 10, (300, 2))
    scores = rng.uniform(size=300)
    for radius in (0.5, 2.0):
        order = np.argsort(-scores, kind="stable")
        keep: list[int] = []
        for i in order:
            if all(np.hypot(*(centers[i] - centers[k])) > radius for k in keep):
                keep.append(int(i))
        got = circle_nms(torch.from_numpy(centers), torch.from_numpy(scores), radius)
        assert got.tolist() == keep
        assert circle_nms(torch.from_numpy(centers), torch.from_numpy(scores), radius, post_max=5).tolist() == keep[:5]
    # Hand-worked: distance exactly equal to the radius suppresses.
    c = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 5.1]])
    assert circle_nms(c, torch.tensor([0.9, 0.8, 0.7]), 5.0).tolist() == [0, 2]
    assert circle_nms(Boxes3D(torch.zeros(0, 7)), torch.zeros(0), 1.0).tolist() == []


def naive_points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    out = np.zeros((len(boxes), len(points)), dtype=bool)
    for m, (x, y, z, dx, dy, dz, yaw) in enumerate(boxes[:, :7]):
        c, s = math.cos(-yaw), math.sin(-yaw)
        for n, (px, py, pz) in enumerate(points[:, :3]):
            lx = (px - x) * c - (py - y) * s
            ly = (px - x) * s + (py - y) * c
            out[m, n] = abs(lx) <= dx / 2 and abs(ly) <= dy / 2 and abs(pz - z) <= dz / 2
    return out


def test_points_in_boxes_matches_float64_loop():
    rng = np.random.default_rng(6)
    boxes = random_boxes(15, rng, spread=3.0)
    points = rng.uniform(-6, 6, (400, 3))
    points[:, 2] = rng.uniform(-2, 2, 400)
    ref = naive_points_in_boxes(points, boxes)
    assert ref.sum() > 100
    for max_elements in (1, 1000, 1 << 22):  # one box per chunk (over budget), a few boxes per chunk, all at once
        got = points_in_boxes(torch.from_numpy(points), torch.from_numpy(boxes), max_elements=max_elements)
        np.testing.assert_array_equal(got.numpy(), ref)
    # float32: identical except possibly within 1e-4 m of a face.
    got32 = points_in_boxes(torch.from_numpy(points).float(), Boxes3D(torch.from_numpy(boxes).float()))
    diff = got32.numpy() != ref
    assert diff.sum() <= 2


def test_points_in_boxes_boundary_is_inside():
    # Axis-aligned unit cube at the origin and the same cube yawed by 90 degrees (exact sin/cos not needed:
    # the test points are on the faces/corners of the cube, which is symmetric under the rotation).
    box = torch.tensor([[0.0, 0.0, 0.0, 2.0, 1.0, 4.0, 0.0]], dtype=torch.float64)
    pts = torch.tensor([[1.0, 0.5, 2.0], [-1.0, -0.5, -2.0], [1.0, 0.0, 0.0], [1.0 + 1e-12, 0.0, 0.0],
                        [0.0, 0.5 + 1e-12, 0.0], [0.0, 0.0, -2.0 - 1e-12], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert points_in_boxes(pts, box)[0].tolist() == [True, True, True, False, False, False, True]
    empty = points_in_boxes(torch.zeros(0, 3), box)
    assert empty.shape == (1, 0)
    assert points_in_boxes(pts, torch.zeros(0, 7)).shape == (0, 7)
    with pytest.raises(ValueError, match="points_in_boxes: points"):
        points_in_boxes(torch.zeros(4, 2), box)


def test_points_in_boxes_reproduces_nuscenes_num_lidar_pts():
    meta_path = shared_file("nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.boxes.json")
    pts_path = shared_file("nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin")
    meta = json.loads(meta_path.read_text())
    points = torch.from_numpy(np.fromfile(pts_path, dtype=np.float32).reshape(-1, 5))
    boxes = torch.tensor([b["box"] for b in meta["boxes"]], dtype=torch.float32)
    expected = np.array([b["num_lidar_pts"] for b in meta["boxes"]])
    counts = points_in_boxes(points, boxes).sum(1).numpy()
    # The data README documents ~61 of 69 exact matches (the rest differ by a few border points).
    assert (counts == expected).sum() >= 61
    assert (np.abs(counts - expected) <= np.maximum(5, 0.05 * expected)).all()


@requires_cuda
def test_cuda_matches_cpu():
    rng = np.random.default_rng(7)
    a, b = random_boxes(200, rng), random_boxes(150, rng)
    ta, tb = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    cpu = boxes_iou_bev(ta, tb)
    gpu = boxes_iou_bev(ta.cuda(), tb.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes_iou3d(ta.cuda(), tb.cuda()).cpu(), boxes_iou3d(ta, tb), atol=1e-4, rtol=0)
    scores = torch.rand(200)
    assert nms_bev(ta.cuda(), scores.cuda(), 0.3).cpu().tolist() == nms_bev(ta, scores, 0.3).tolist()
    pts = torch.rand(5000, 3) * 12 - 6
    assert torch.equal(points_in_boxes(pts.cuda(), ta.cuda()).cpu(), points_in_boxes(pts, ta))
