"""Points, SparseVoxels, Boxes3D, Detections, Sample/collate and Partition.check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointwin.partition.base import Partition
from pointwin.structures import Batch, Boxes3D, Detections, Points, Sample, SparseVoxels, collate, limit_period

# ---- Points -----------------------------------------------------------------------------------------------


def test_points_basics():
    a = np.array([[0.0, 1, 2, 0.5], [1, 1, 1, 0.1]], np.float32)
    b = torch.tensor([[5.0, 5, 5, 0.9]])
    pts = Points.from_list([a, torch.zeros(0, 4), b], channels=("x", "y", "z", "intensity"))
    assert pts.batch_idx.tolist() == [0, 0, 2] and pts.batch_size == 3
    assert pts.counts().tolist() == [2, 0, 1]
    assert torch.equal(pts.sample(2), b)
    assert pts.channel("intensity").tolist() == pytest.approx([0.5, 0.1, 0.9])
    sel = pts.select(pts.xyz[:, 0] > 0.5)
    assert sel.batch_idx.tolist() == [0, 2] and sel.batch_size == 3
    with pytest.raises(KeyError, match="no channel 'ring'"):
        pts.channel("ring")
    assert Points(torch.zeros(2, 5), torch.zeros(2, dtype=torch.int32), 1).channels == ("x", "y", "z", "f0", "f1")


@pytest.mark.parametrize("kwargs,match", [
    ({"data": torch.tensor([[0.0, float("nan"), 0.0]])},
     r"Points.data\[:, :3\] contains NaN or Inf \(first at index \[0, 1\]\)"),
    ({"data": torch.tensor([[0.0, 0.0, float("inf")]])}, r"contains NaN or Inf"),
    ({"data": torch.zeros(1, 3, dtype=torch.int64)}, r"Points.data must have dtype in"),
    ({"data": torch.zeros(1, 2)}, r"at least 3 columns"),
    ({"data": torch.zeros(3)}, r"Points.data must be 2-D"),
    ({"data": np.zeros((1, 3), np.float32)}, r"Points.data must be a torch.Tensor, got ndarray"),
    ({"batch_idx": torch.tensor([-1])}, r"batch_idx must lie in \[0, 1\), got range \[-1, -1\]"),
    ({"batch_idx": torch.tensor([1])}, r"batch_idx must lie in \[0, 1\)"),
    ({"batch_idx": torch.tensor([0.0])}, r"Points.batch_idx must have dtype in \(int64, int32\)"),
    ({"batch_idx": torch.tensor([0, 0])}, r"batch_idx has 2 entries but Points.data has 1"),
    ({"batch_size": -1, "batch_idx": torch.zeros(0, dtype=torch.long), "data": torch.zeros(0, 3)}, r"batch_size"),
    ({"channels": ("x", "y")}, r"channels names 2 columns"),
])
def test_points_validation(kwargs, match):
    args = {"data": torch.zeros(1, 3), "batch_idx": torch.zeros(1, dtype=torch.long), "batch_size": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        Points(**args)


def test_points_from_list_errors():
    with pytest.raises(ValueError, match="at least one cloud"):
        Points.from_list([])
    with pytest.raises(ValueError, match="same number of columns"):
        Points.from_list([torch.zeros(2, 3), torch.zeros(2, 4)])


# ---- SparseVoxels ------------------------------------------------------------------------------------------


def make_voxels(**kw) -> SparseVoxels:
    args = {"feats": torch.arange(6.0).reshape(3, 2),
            "coords": torch.tensor([[0, 0, 1, 2], [1, 1, 0, 0], [0, 1, 2, 3]], dtype=torch.int32),
            "spatial_shape": (2, 3, 4), "batch_size": 2} | kw
    return SparseVoxels(**args)


def test_sparse_voxels_dense_centers_and_index():
    sv = make_voxels(voxel_size=(0.5, 0.25, 2.0), origin=(-1.0, 0.0, -3.0))
    dense = sv.dense()
    assert dense.shape == (2, 2, 2, 3, 4)
    assert dense[0, :, 0, 1, 2].tolist() == [0.0, 1.0] and dense[1, :, 1, 0, 0].tolist() == [2.0, 3.0]
    assert dense[0, :, 1, 2, 3].tolist() == [4.0, 5.0] and float(dense.abs().sum()) == 15.0
    # Centre of (z=0, y=1, x=2): x = -1 + 2.5 * 0.5, y = 1.5 * 0.25, z = -3 + 0.5 * 2.
    torch.testing.assert_close(sv.centers()[0], torch.tensor([0.25, 0.375, -2.0]))
    key = SparseVoxels.linear_index(sv.coords, sv.spatial_shape)
    assert key.tolist() == [0 * 24 + 0 * 12 + 1 * 4 + 2, 24 + 12, 12 + 2 * 4 + 3]
    rows = sorted(range(3), key=lambda i: tuple(sv.coords[i].tolist()))
    assert torch.argsort(key).tolist() == rows
    assert sv.batch_idx.tolist() == [0, 1, 0] and sv.batch_idx.dtype == torch.int64
    with pytest.raises(ValueError, match="needs voxel_size and origin"):
        make_voxels().centers()


def test_sparse_voxels_cache_is_shared_and_built_once():
    sv = make_voxels()
    calls = []

    def build():
        calls.append(1)
        x = torch.ones(1, requires_grad=True)
        return x * 2

    first = sv.cached(("flat", 8), build)
    assert not first.requires_grad  # built outside autograd
    other = sv.replace(sv.feats * 2)
    assert other.cached(("flat", 8), build) is first and len(calls) == 1
    assert other.feats[1].tolist() == [4.0, 6.0] and other.coords is sv.coords


def test_sparse_voxels_replace_reads_nothing_back_and_checks_the_shape():
    """replace() inside a forward: no host synchronisation (no .item() / .tolist() / bool() of a tensor, counted
    with a TorchDispatchMode on aten._local_scalar_dense), the new features' shape checked, every field kept;
    non-finite features pass through to the loss (the trainer's skip logic) instead of raising mid-forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountSyncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.syncs = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                self.syncs += 1
            return func(*args, **(kwargs or {}))

    sv = SparseVoxels(torch.randn(3, 2), torch.tensor([[0, 0, 1, 2], [0, 0, 3, 4], [1, 0, 0, 0]], dtype=torch.int32),
                      (1, 8, 8), 2, (0.5, 0.5, 4.0), (0.0, 0.0, -2.0))
    new = torch.full((3, 5), float("nan"))
    with CountSyncs() as mode:
        out = sv.replace(new)
    assert mode.syncs == 0
    with CountSyncs() as mode:  # the constructor from outside data does validate (and reads back)
        SparseVoxels(sv.feats, sv.coords, sv.spatial_shape, 2)
    assert mode.syncs > 0
    assert out.feats is new and out.coords is sv.coords and out.cache is sv.cache
    assert (out.spatial_shape, out.batch_size, out.voxel_size, out.origin) == ((1, 8, 8), 2, (0.5, 0.5, 4.0),
                                                                               (0.0, 0.0, -2.0))
    with pytest.raises(ValueError, match=r"feats must be \(3, C\) like the coords, got \(2, 5\)"):
        sv.replace(torch.zeros(2, 5))


@pytest.mark.parametrize("kwargs,match", [
    ({"coords": torch.zeros(3, 4, dtype=torch.int64)}, r"SparseVoxels.coords must have dtype in \(int32\)"),
    ({"coords": torch.zeros(3, 3, dtype=torch.int32)}, r"last dimension in \(4,\)"),
    ({"feats": torch.zeros(2, 2)}, r"feats has 2 rows but SparseVoxels.coords has 3"),
    ({"feats": torch.tensor([[0.0, 1], [2, float("nan")], [4, 5]])}, r"SparseVoxels.feats contains NaN"),
    ({"coords": torch.tensor([[-1, 0, 0, 0]] * 3, dtype=torch.int32)}, r"negative batch id \(-1\)"),
    ({"coords": torch.tensor([[2, 0, 0, 0]] * 3, dtype=torch.int32)}, r"batch id 2 but batch_size is 2"),
    ({"coords": torch.tensor([[0, 2, 0, 0]] * 3, dtype=torch.int32)}, r"z range \[2, 2\] is outside .* \[0, 2\)"),
    ({"coords": torch.tensor([[0, 0, 3, 0]] * 3, dtype=torch.int32)}, r"y range \[3, 3\] is outside .* \[0, 3\)"),
    ({"coords": torch.tensor([[0, 0, 0, -1]] * 3, dtype=torch.int32)}, r"x range \[-1, -1\] is outside"),
    ({"spatial_shape": (2, 0, 4)}, r"spatial_shape must be 3 positive ints"),
    ({"spatial_shape": (2, 4)}, r"spatial_shape must be 3 positive ints"),
])
def test_sparse_voxels_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_voxels(**kwargs)


# ---- Boxes3D ------------------------------------------------------------------------------------------------


def ref_corners(box: np.ndarray) -> np.ndarray:
    """(8, 3) float64 corners: bottom then top, each front-left, rear-left, rear-right, front-right."""
    x, y, z, dx, dy, dz, yaw = box[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    out = []
    for zz in (z - dz / 2, z + dz / 2):
        for lx, ly in ((dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2)):
            out.append((x + c * lx - s * ly, y + s * lx + c * ly, zz))
    return np.array(out)


def test_boxes_corners_vs_float64_reference():
    rng = np.random.default_rng(0)
    arr = np.concatenate([rng.uniform(-60, 60, (50, 3)), rng.uniform(0.1, 10, (50, 3)),
                          rng.uniform(-4, 4, (50, 1))], 1)
    boxes = Boxes3D(torch.from_numpy(arr).float())
    ref = np.stack([ref_corners(a) for a in arr.astype(np.float32).astype(np.float64)])
    np.testing.assert_allclose(boxes.corners().numpy(), ref, atol=2e-5)
    np.testing.assert_allclose(boxes.bev_corners().numpy(), ref[:, :4, :2], atol=2e-5)
    # Hand-worked: 4 x 2 box yawed 90 deg has its front-left corner at (-1, 2).
    b = Boxes3D(torch.tensor([[0.0, 0, 0, 4, 2, 1, math.pi / 2]], dtype=torch.float64))
    np.testing.assert_allclose(b.bev_corners()[0].numpy(), [[-1, 2], [-1, -2], [1, -2], [1, 2]], atol=1e-12)
    np.testing.assert_allclose(boxes.volume().numpy(), arr[:, 3:6].prod(1), rtol=1e-5)
    np.testing.assert_allclose(boxes.bottom_center[:, 2].numpy(), (arr[:, 2] - arr[:, 5] / 2), atol=1e-5)


def test_boxes_transforms_hand_worked():
    t = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3, 1.0, 2.0]], dtype=torch.float64)
    b = Boxes3D(t)
    torch.testing.assert_close(b.translate((1.0, -1.0, 0.5)).tensor, torch.tensor(
        [[2.0, 1.0, 1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(b.rotate(math.pi / 2).tensor, torch.tensor(
        [[-2.0, 1.0, 0.5, 4.0, 2.0, 1.5, 0.3 + math.pi / 2, -2.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(b.flip("y").tensor, torch.tensor(
        [[1.0, -2.0, 0.5, 4.0, 2.0, 1.5, -0.3, 1.0, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(b.flip("x").tensor, torch.tensor(
        [[-1.0, 2.0, 0.5, 4.0, 2.0, 1.5, math.pi - 0.3, -1.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(b.scale(2.0).tensor, torch.tensor(
        [[2.0, 4.0, 1.0, 8.0, 4.0, 3.0, 0.3, 2.0, 4.0]], dtype=torch.float64))
    # Yaw wraps into [-pi, pi): 0.3 + pi -> 0.3 - pi.
    assert b.rotate(math.pi).yaw.item() == pytest.approx(0.3 - math.pi)
    assert t[0, 6].item() == 0.3  # transforms never modify their input
    with pytest.raises(ValueError, match="flip axis must be 'x' or 'y'"):
        b.flip("z")


@pytest.mark.parametrize("op", ["rotate", "flip_x", "flip_y", "scale", "translate"])
def test_boxes_transforms_move_corners_like_points(op):
    rng = np.random.default_rng(1)
    arr = np.concatenate([rng.uniform(-20, 20, (20, 3)), rng.uniform(0.5, 5, (20, 3)),
                          rng.uniform(-3, 3, (20, 1))], 1)
    boxes = Boxes3D(torch.from_numpy(arr))
    pts = boxes.corners()
    if op == "rotate":
        a = 0.7
        out = boxes.rotate(a)
        rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]],
                           dtype=torch.float64)
        moved = pts @ rot.T
    elif op == "scale":
        out, moved = boxes.scale(1.5), pts * 1.5
    elif op == "translate":
        out, moved = boxes.translate(torch.tensor([1.0, -2.0, 3.0])), pts + torch.tensor([1.0, -2.0, 3.0],
                                                                                          dtype=torch.float64)
    else:
        axis = 0 if op == "flip_x" else 1
        out = boxes.flip(op[-1])
        moved = pts.clone()
        moved[..., axis] = -moved[..., axis]
    # Mirroring reverses the corner order, so compare corner sets.
    got = out.corners()
    for g, m in zip(got, moved):
        d = torch.cdist(g, m)
        assert float(d.min(1).values.max()) < 1e-9
    assert bool(((out.yaw >= -math.pi) & (out.yaw < math.pi)).all())


def test_boxes_helpers():
    pi = math.pi
    torch.testing.assert_close(limit_period(torch.tensor([pi, -pi, 1.5 * pi, 0.2], dtype=torch.float64)),
                               torch.tensor([-pi, -pi, -0.5 * pi, 0.2], dtype=torch.float64))
    b = Boxes3D(torch.tensor([[0.0, 0, 0, 4, 2, 1, 0.2], [0.0, 0, 0, 4, 2, 1, 1.4], [1.0, 1, 0, 4, 2, 1, pi - 0.2]]))
    torch.testing.assert_close(b.nearest_bev(), torch.tensor([[-2.0, -1, 2, 1], [-1, -2, 1, 2], [-1, 0, 3, 2]]))
    rng_mask = Boxes3D(torch.tensor([[0.0, 0, 0, 1, 1, 1, 0], [5.0, 0, 0, 1, 1, 1, 0], [-5.0, 4.9, 0, 1, 1, 1, 0]]))
    assert rng_mask.in_range_bev((-5, -5, -3, 5, 5, 3)).tolist() == [True, False, True]
    assert len(b[1]) == 1 and b[1].tensor[0, 6].item() == pytest.approx(1.4)
    assert not b.has_velocity and b.velocity is None
    assert Boxes3D.empty(with_velocity=True).tensor.shape == (0, 9)
    assert Boxes3D(torch.zeros(0)).tensor.shape == (0, 7)
    assert Boxes3D(np.zeros((2, 7))).tensor.dtype == torch.float32


@pytest.mark.parametrize("tensor,match", [
    (torch.tensor([[0.0, 0, float("nan"), 1, 1, 1, 0]]),
     r"Boxes3D.tensor contains NaN or Inf \(first at index \[0, 2\]\)"),
    (torch.tensor([[0.0, 0, 0, 1, 1, 1, float("inf")]]), r"NaN or Inf"),
    (torch.tensor([[0.0, 0, 0, -1, 1, 1, 0]]), r"negative size"),
    (torch.zeros(2, 8), r"last dimension in \(7, 9\)"),
    (torch.zeros(7), r"Boxes3D.tensor must be 2-D"),
    (torch.zeros(2, 7, dtype=torch.int32), r"Boxes3D.tensor must have dtype in"),
    ([[0.0] * 7], r"Boxes3D.tensor must be a torch.Tensor, got list"),
])
def test_boxes_validation(tensor, match):
    with pytest.raises(ValueError, match=match):
        Boxes3D(tensor)


def test_detections():
    boxes = Boxes3D(torch.tensor([[0.0, 0, 0, 1, 1, 1, 0], [1.0, 0, 0, 1, 1, 1, 0]]))
    det = Detections(boxes, torch.tensor([0.9, 0.2]), torch.tensor([1, 0]))
    sel = det.select(det.scores > 0.5)
    assert len(sel) == 1 and sel.labels.tolist() == [1] and sel.boxes.tensor[0, 0].item() == 0.0
    with pytest.raises(ValueError, match=r"scores \(3,\) and labels \(2,\) must both be \(2,\)"):
        Detections(boxes, torch.zeros(3), torch.zeros(2, dtype=torch.long))


# ---- Sample / collate --------------------------------------------------------------------------------------

CH = ("x", "y", "z", "intensity")


def make_sample(i: int, n: int, m: int, seg: bool = True) -> Sample:
    g = torch.Generator().manual_seed(i)
    return Sample(points=torch.rand(n, 4, generator=g), channels=CH, frame_id=f"f{i}",
                  boxes=Boxes3D(torch.rand(m, 7, generator=g)), labels=torch.arange(m),
                  point_labels=torch.arange(n) % 3 if seg else None, meta={"i": i})


def test_collate():
    samples = [make_sample(0, 3, 2), make_sample(1, 0, 0), make_sample(2, 4, 1)]
    batch = collate(samples)
    assert isinstance(batch, Batch) and batch.batch_size == 3
    assert batch.points.batch_idx.tolist() == [0, 0, 0, 2, 2, 2, 2]
    assert torch.equal(batch.points.data, torch.cat([s.points for s in samples]))
    assert batch.points.channels == CH and batch.frame_ids == ["f0", "f1", "f2"]
    assert [len(b) for b in batch.boxes] == [2, 0, 1] and batch.labels[0].tolist() == [0, 1]
    assert batch.point_labels.tolist() == [0, 1, 2, 0, 1, 2, 0] and batch.metas[2] == {"i": 2}
    unlabelled = make_sample(3, 2, 0, seg=False)
    unlabelled.boxes, unlabelled.labels = None, None
    mixed = collate([samples[0], unlabelled])
    assert mixed.boxes is None and mixed.labels is None and mixed.point_labels is None
    no_labels = make_sample(4, 2, 2)
    no_labels.labels = None
    assert collate([no_labels]).labels[0].tolist() == [0, 0]  # boxes without labels get class 0
    assert collate(samples).to("cpu").points.batch_size == 3


def test_collate_and_sample_errors():
    with pytest.raises(ValueError, match="collate needs at least one sample"):
        collate([])
    other = make_sample(1, 2, 1)
    other.channels = ("x", "y", "z", "ring")
    with pytest.raises(ValueError, match=r"frame f1 has channels \('x', 'y', 'z', 'ring'\)"):
        collate([make_sample(0, 2, 1), other])
    bad = {
        "points": (torch.zeros(2, 3), r"Sample 'f': channels .* must name the 3 point columns"),
        "points_nan": (torch.tensor([[0.0, float("nan"), 0, 0]]), r"Sample 'f' points\[:, :3\] contains NaN"),
        "points_int": (torch.zeros(2, 4, dtype=torch.int64), r"Sample 'f' points must have dtype"),
        "labels": (torch.zeros(3, dtype=torch.long), r"Sample 'f': labels has 3 entries for 1 boxes"),
        "point_labels": (torch.zeros(5, dtype=torch.long), r"point_labels has 5 entries for 2 points"),
        "boxes": (torch.zeros(1, 7), r"boxes must be Boxes3D or None, got Tensor"),
    }
    for key, (value, match) in bad.items():
        args = {"points": torch.zeros(2, 4), "channels": CH, "frame_id": "f", "boxes": Boxes3D(torch.zeros(1, 7)),
                "labels": torch.zeros(1, dtype=torch.long), "point_labels": torch.zeros(2, dtype=torch.long)}
        args[key.split("_")[0] if key.startswith("points_") else key] = value
        with pytest.raises(ValueError, match=match):
            Sample(**args)


# ---- Partition.check -----------------------------------------------------------------------------------


def good_partition() -> Partition:
    # 5 voxels, groups of 3: [0, 1, 2] and [3, 4, 4(pad)]; voxel n is owned by slot n.
    return Partition(index=torch.tensor([0, 1, 2, 3, 4, 4]), offsets=torch.tensor([0, 3, 6]),
                     owner=torch.tensor([0, 1, 2, 3, 4]), size=3,
                     key_pad=torch.tensor([False, False, False, False, False, True]))


def test_partition_check_accepts_good():
    p = good_partition()
    assert p.check() is p
    assert p.num_groups == 2 and p.num_slots == 6 and p.num_voxels == 5
    assert p.slot_group().tolist() == [0, 0, 0, 1, 1, 1] and p.group(1).tolist() == [3, 4, 4]
    # Variable-length groups without padding, a voxel in two groups, owner in the second group.
    var = Partition(index=torch.tensor([2, 0, 1, 0]), offsets=torch.tensor([0, 1, 3, 4]),
                    owner=torch.tensor([3, 2, 0]))
    var.check()
    empty = torch.zeros(0, dtype=torch.long)
    Partition(empty, torch.zeros(1, dtype=torch.long), empty).check()


BROKEN = {
    "index dtype": (dict(index=torch.tensor([0, 1, 2, 3, 4, 4], dtype=torch.int32)),
                    r"Partition.index must be a 1-D int64"),
    "offsets start": (dict(offsets=torch.tensor([1, 3, 6])), r"offsets must start at 0 and end at M=6"),
    "offsets end": (dict(offsets=torch.tensor([0, 3, 5])), r"offsets must start at 0 and end at M=6"),
    "empty group": (dict(offsets=torch.tensor([0, 3, 3, 6])), r"strictly increasing"),
    "size": (dict(size=2), r"Partition.size is 2 but group sizes are \[3\]"),
    "index range": (dict(index=torch.tensor([0, 1, 2, 3, 4, 5])), r"index values must lie in \[0, 5\)"),
    "owner range": (dict(owner=torch.tensor([0, 1, 2, 3, 6])), r"owner values must lie in \[0, 6\)"),
    "owner voxel": (dict(owner=torch.tensor([0, 2, 1, 3, 4])), r"owner\[1\] = 2 holds voxel 2, not 1"),
    "key_pad dtype": (dict(key_pad=torch.zeros(6, dtype=torch.uint8)), r"key_pad must be bool \(6,\)"),
    "key_pad first": (dict(key_pad=torch.tensor([True, False, False, False, False, True])), r"first slot of a group"),
    "key_pad missing repeat": (dict(key_pad=torch.zeros(6, dtype=torch.bool)), r"exactly where a slot repeats"),
    "key_pad extra": (dict(key_pad=torch.tensor([False, True, False, False, False, True])), r"exactly where"),
    "no key_pad": (dict(key_pad=None), r"repeated inside a group but no key_pad"),
    "owner on pad": (dict(owner=torch.tensor([0, 1, 2, 3, 5])), r"owner points at a key_pad slot"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_partition_check_rejects_each_broken_invariant(name):
    change, match = BROKEN[name]
    p = good_partition()
    for key, value in change.items():
        setattr(p, key, value)
    with pytest.raises(ValueError, match=match):
        p.check()
