"""PTv3 (serialized patches): pooling golden example, curve consistency, block/backbone checks, tiny overfit."""

from __future__ import annotations

import pytest
import torch

from pointwin.models.backbones3d.ptv3 import PTv3, PTv3Block, serialized_pool_map
from pointwin.partition import CURVES, curve_patches, serialize
from pointwin.structures import Batch, Points, SparseVoxels
from tests.test_models import random_voxels

pytestmark = pytest.mark.usefixtures("one_thread")



def tiny_ptv3(**kw) -> PTv3:
    args = dict(enc_channels=(16, 24, 32), enc_depths=(2, 1, 2), enc_num_heads=(2, 2, 4), enc_patch_size=16,
                dec_channels=(16, 24), dec_depths=(1, 1), dec_num_heads=(2, 2), dec_patch_size=16, stem_kernel=3,
                ffn_ratio=2.0, drop_path=0.0)
    args.update(kw)
    return PTv3(8, **args)


def test_serialized_pool_map_golden():
    # Grid (Z, Y, X) = (4, 2, 4): depth 2 bits per axis. Parent cell = (b, z>>1, y>>1, x>>1), ordered by the
    # z-order code >> 3 of the children = batch << 6 | morton(x>>1, y>>1, z>>1) (x at bit 2, y bit 1, z bit 0):
    #   ids 0 (0,0,0,0), 1 (0,0,0,1), 2 (0,1,1,1) -> parent (0,0,0,0) code 0
    #   ids 5 (0,2,0,0), 6 (0,3,1,0)             -> parent (0,1,0,0) code 1 (z bit)
    #   id 3 (0,0,0,2)                           -> parent (0,0,0,1) code 4 (x bit)
    #   id 4 (1,1,1,1)                           -> parent (1,0,0,0) code 64
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 2], [1, 1, 1, 1], [0, 2, 0, 0],
                           [0, 3, 1, 0]], dtype=torch.int32)
    pmap = serialized_pool_map(coords, (4, 2, 4))
    assert pmap.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]
    assert pmap.cluster.tolist() == [0, 0, 0, 2, 3, 1, 1]
    assert pmap.spatial_shape == (2, 1, 2) and pmap.coords.dtype == torch.int32


@pytest.mark.parametrize("shape", [(7, 50, 41), (1, 33, 16), (16, 16, 16)])
def test_parent_serialization_is_code_shift_3(shape):
    g = torch.Generator().manual_seed(sum(shape))
    n = 600
    coords = torch.stack([torch.randint(0, 3, (n,), generator=g)] + [torch.randint(0, s, (n,), generator=g)
                                                                     for s in shape], 1).int()
    coords = torch.unique(coords, dim=0)
    pmap = serialized_pool_map(coords, shape)
    for curve in CURVES:
        child = serialize(coords, curve, shape)
        parent = serialize(pmap.coords, curve, pmap.spatial_shape)
        assert torch.equal(parent[pmap.cluster], child >> 3), curve


def test_pooling_takes_the_cell_max():
    torch.manual_seed(0)
    model = tiny_ptv3()
    v = random_voxels((6, 12, 12), (80, 30), 16, seed=1)
    pool = model.pools[0].eval()
    out, cluster = pool(v)
    f = pool.proj(v.feats)
    ref = torch.stack([f[cluster == p].amax(0) for p in range(out.num_voxels)])
    torch.testing.assert_close(out.feats, pool.act(pool.norm(ref)))
    assert torch.equal(out.coords[cluster][:, 1:], (v.coords[:, 1:] >> 1))


def test_block_attends_inside_curve_patches():
    """Zeroing a voxel's features changes the attention output only for voxels of its patches."""
    torch.manual_seed(0)
    blk = PTv3Block(16, 2, patch_size=8).eval()
    v = random_voxels((4, 10, 10), (50,), 16, seed=2)
    part = curve_patches(v.coords, "hilbert", 8, v.spatial_shape)
    with torch.no_grad():
        a = blk.attn(v.feats, part)
        f2 = v.feats.clone()
        f2[7] = 0
        b = blk.attn(f2, part)
    changed = ((a - b).abs().amax(1) > 0).nonzero()[:, 0].tolist()
    groups = part.slot_group()
    with_7 = set(groups[part.index == 7].tolist())
    partners = {int(i) for g in with_7 for i in part.group(g)}
    assert 7 in changed and set(changed) <= partners


def test_forward_backward_all_parameters():
    torch.manual_seed(0)
    model = tiny_ptv3()
    v = random_voxels((6, 12, 12), (70, 30), 8)
    feats = v.feats.clone().requires_grad_(True)
    out = model(v.replace(feats))
    assert out.feats.shape == (v.num_voxels, model.out_channels) and torch.equal(out.coords, v.coords)
    (out.feats * torch.randn_like(out.feats)).sum().backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_orders_shuffle_in_training_and_are_fixed_in_eval():
    model = tiny_ptv3()
    seen = set()
    torch.manual_seed(0)
    for _ in range(12):
        seen.add(model.train().forward_orders())
    assert len(seen) > 1 and all(sorted(o) == sorted(CURVES) for o in seen)
    assert model.eval().forward_orders() == ("z", "z-trans", "hilbert", "hilbert-trans")
    assert tiny_ptv3(shuffle_orders=False).train().forward_orders() == ("z", "z-trans", "hilbert", "hilbert-trans")
    with pytest.raises(ValueError, match="orders"):
        tiny_ptv3(orders=("z", "peano"))


def test_eval_determinism_permutation_and_batch_independence():
    torch.manual_seed(0)
    model = tiny_ptv3().eval()
    v = random_voxels((6, 16, 16), (110, 45), 8, seed=3)
    perm = torch.randperm(v.num_voxels, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = model(v).feats
        b = model(SparseVoxels(v.feats, v.coords, v.spatial_shape, 2)).feats
        c = model(SparseVoxels(v.feats[perm], v.coords[perm], v.spatial_shape, 2)).feats
        m = v.coords[:, 0] == 1
        coords1 = v.coords[m].clone()
        coords1[:, 0] = 0
        alone = model(SparseVoxels(v.feats[m], coords1, v.spatial_shape, 1)).feats
    assert torch.equal(a, b)
    torch.testing.assert_close(c, a[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, a[m], atol=1e-5, rtol=1e-5)
    assert model.last_orders == ("z", "z-trans", "hilbert", "hilbert-trans")


def test_bad_stage_lists_raise():
    with pytest.raises(ValueError, match="dec_channels needs one value per stage"):
        PTv3(4, enc_channels=(8, 16), enc_depths=(1, 1), enc_num_heads=(1, 1), dec_channels=(8, 8))


# -------------------------------------------------------------------------------------------------------
# Tiny segmentation nets overfit two synthetic frames (shared with tests/test_condaformer.py)
# -------------------------------------------------------------------------------------------------------
def tiny_synthetic_batch(points_per_frame: int = 2500, half: float = 6.0) -> Batch:
    """Two synthetic frames cropped to |x|, |y| < half and subsampled (their per-point labels kept)."""
    from pointwin.datasets.synthetic import SyntheticDataset

    ds = SyntheticDataset("train", 2, seed=0, scene={"extent": 12.0})
    g = torch.Generator().manual_seed(0)
    clouds, labels = [], []
    for i in range(2):
        s = ds[i]
        keep = (s.points.data[:, :2].abs() < half).all(1).nonzero()[:, 0]
        keep = keep[torch.randperm(keep.numel(), generator=g)[:points_per_frame]]
        clouds.append(s.points.data[keep])
        labels.append(s.point_labels[keep].long())
    return Batch(Points.from_list(clouds), ["f0", "f1"], point_labels=torch.cat(labels))


def overfit(backbone: dict, steps: int, lr: float = 0.01) -> tuple[float, float, float]:
    """Train a Segmentor on the tiny batch; returns (initial loss, final loss, final point accuracy)."""
    from pointwin.datasets.synthetic import SEG_CLASSES
    from pointwin.models import build_model

    torch.manual_seed(0)
    batch = tiny_synthetic_batch()
    model = build_model(dict(type="Segmentor", class_names=list(SEG_CLASSES),
                             point_cloud_range=[-6.4, -6.4, -3.2, 6.4, 6.4, 3.2], voxel_size=[0.4, 0.4, 0.4],
                             vfe=dict(type="DynamicVFE", num_point_features=4, feat_channels=[16]),
                             backbone=backbone, head=dict(type="SegHead")))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    first = last = None
    for _ in range(steps):
        model.train()
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    model.eval()
    pred = torch.cat(model.predict(batch))
    kept = pred >= 0
    acc = float((pred[kept] == batch.point_labels[kept]).float().mean())
    return first, last, acc


def majority_accuracy() -> float:
    labels = tiny_synthetic_batch().point_labels
    return float(labels.bincount().max()) / labels.numel()


def test_tiny_ptv3_segmentor_overfits_synthetic_frames():
    first, last, acc = overfit(dict(type="PTv3", enc_channels=[16, 32], enc_depths=[1, 1], enc_num_heads=[2, 2],
                                    enc_patch_size=48, dec_channels=[16], dec_depths=[1], dec_num_heads=[2],
                                    dec_patch_size=48, stem_kernel=3, ffn_ratio=2.0, drop_path=0.0), steps=30)
    base = majority_accuracy()
    assert last < 0.35 * first, (first, last)
    assert acc > max(0.93, base + 0.1), (acc, base)
