"""Backbones: forward/backward, voxel-order permutation equivariance, batch independence; VFE and BEV scatter."""

from __future__ import annotations

import math

import pytest
import torch

from pointwin.models.backbones3d import DSVT, FlatFormer, ScatterFormer, ScatterFormerLite, SphereSeg
from pointwin.models.bev import scatter_to_bev
from pointwin.models.vfe import DynamicPillarVFE, DynamicVFE
from pointwin.structures import Points, SparseVoxels

pytestmark = pytest.mark.usefixtures("one_thread")


def random_voxels(shape, counts, channels, seed=0) -> SparseVoxels:
    """Unique random voxels, ``counts[b]`` in sample b, grid ``shape`` (Z, Y, X), 0.2 m voxels."""
    g = torch.Generator().manual_seed(seed)
    Z, Y, X = shape
    rows = []
    for b, n in enumerate(counts):
        lin = torch.randperm(Z * Y * X, generator=g)[:n]
        rows.append(torch.stack([torch.full_like(lin, b), lin // (Y * X), (lin // X) % Y, lin % X], 1))
    coords = torch.cat(rows).int()
    feats = torch.randn(len(coords), channels, generator=g)
    # origin puts the grid in front of the sensor, like a real scan (radial windows need it)
    return SparseVoxels(feats, coords, shape, len(counts), (0.2, 0.2, 0.2), (2.0, -0.2 * Y / 2, -1.0))


def sorted_by_coords(v: SparseVoxels) -> tuple[torch.Tensor, torch.Tensor]:
    order = SparseVoxels.linear_index(v.coords, v.spatial_shape).argsort()
    return v.coords[order], v.feats[order]


# (name, builder, input grid, voxels per sample)
CASES = {
    "flatformer": (lambda: FlatFormer(8, 16, 2, 1, (4, 4), 16), (1, 24, 24), (70, 13)),
    "dsvt_pillar": (lambda: DSVT(8, 16, 2, 32, 8, 2, (4, 4, 1)), (1, 24, 24), (70, 13)),
    "dsvt_voxel": (lambda: DSVT(8, 16, 2, 32, 8, 2, [(4, 4, 8), (4, 4, 2)], downsample_stride=[(1, 1, 4)]),
                   (8, 16, 16), (90, 20)),
    "scatterformer": (lambda: ScatterFormer(8, 16, 2, [2, 1], window=4, pool_heads=2), (4, 16, 16), (80, 15)),
    "scatterformer_lite": (lambda: ScatterFormerLite(8, 16, 2, [2, 1], [2], window=4, cwi_kernel=5), (4, 16, 16),
                           (80, 15)),
    "sphereseg": (lambda: SphereSeg(8, (16, 16), (2, 2), (0, 1), (4, 4, 4), (15.0, 15.0, 3.0)), (6, 12, 12),
                  (90, 20)),
}


def build(name):
    make, shape, counts = CASES[name]
    torch.manual_seed(0)
    model = make()
    if hasattr(model, "output_grid"):
        model.output_grid(shape)
    return model, shape, counts


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward_finite(name):
    model, shape, counts = build(name)
    voxels = random_voxels(shape, counts, 8)
    feats = voxels.feats.clone().requires_grad_(True)
    out = model(voxels.replace(feats))
    assert out.feats.shape[1] == model.out_channels and torch.isfinite(out.feats).all()
    (out.feats * torch.randn_like(out.feats)).sum().backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", sorted(CASES))
def test_voxel_order_permutation(name):
    model, shape, counts = build(name)
    model.eval()
    voxels = random_voxels(shape, counts, 8, seed=1)
    perm = torch.randperm(voxels.num_voxels, generator=torch.Generator().manual_seed(3))
    permuted = SparseVoxels(voxels.feats[perm], voxels.coords[perm], shape, voxels.batch_size, voxels.voxel_size,
                            voxels.origin)
    with torch.no_grad():
        a, b = model(voxels), model(permuted)
    if a.num_voxels == voxels.num_voxels and torch.equal(a.coords, voxels.coords):
        # same sites: output follows the input permutation
        torch.testing.assert_close(b.feats, a.feats[perm], atol=2e-5, rtol=1e-4)
    ca, fa = sorted_by_coords(a)
    cb, fb = sorted_by_coords(b)
    assert torch.equal(ca, cb)
    torch.testing.assert_close(fb, fa, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_batch_of_two_equals_separate_samples(name):
    model, shape, counts = build(name)
    model.eval()
    voxels = random_voxels(shape, counts, 8, seed=2)
    with torch.no_grad():
        joint = model(voxels)
        for b in range(2):
            m = voxels.coords[:, 0] == b
            coords = voxels.coords[m].clone()
            coords[:, 0] = 0
            alone = model(SparseVoxels(voxels.feats[m], coords, shape, 1, voxels.voxel_size, voxels.origin))
            jm = joint.coords[:, 0] == b
            jc = joint.coords[jm].clone()
            jc[:, 0] = 0
            ca, fa = sorted_by_coords(alone)
            cj, fj = sorted_by_coords(SparseVoxels(joint.feats[jm], jc, joint.spatial_shape, 1))
            assert torch.equal(ca, cj)
            torch.testing.assert_close(fa, fj, atol=2e-5, rtol=1e-4)


def test_dsvt_position_embedding_uses_the_layers_shift():
    torch.manual_seed(0)
    voxels = random_voxels((1, 24, 24), (60,), 8)
    calls = {}
    for mix in (False, True):
        model = DSVT(8, 16, 2, 32, 8, 4, (4, 4, 1), mix_shift_pos_embed=mix).eval()
        seen = []
        orig = model.window_position

        def record(v, stage, shift_id, orig=orig, seen=seen):
            seen.append(shift_id)
            return orig(v, stage, shift_id)

        model.window_position = record
        with torch.no_grad():
            model(voxels.replace(voxels.feats))
        calls[mix] = seen
    # 4 blocks x 2 layers; block b uses the sets of shift b % 2 in both layers
    assert calls[False] == [0, 0, 1, 1, 0, 0, 1, 1]
    # the original code's mix-up: layer i always gets the embedding of shift i
    assert calls[True] == [0, 1, 0, 1, 0, 1, 0, 1]


def test_dsvt_window_position_is_window_relative():
    model = DSVT(8, 16, 2, 32, 8, 2, (4, 4, 1), hybrid_factor=(2, 2, 1), shift=(2, 2, 0))
    coords = torch.tensor([[0, 0, 5, 7], [0, 0, 0, 0]], dtype=torch.int32)
    v = SparseVoxels(torch.zeros(2, 8), coords, (1, 16, 16), 1)
    # plain window 4: local (7 % 4, 5 % 4) = (3, 1) -> minus 2
    assert model.window_position(v, 0, 0).tolist() == [[1.0, -1.0], [-2.0, -2.0]]
    # hybrid window 8 shifted by 2: ((7 + 2) % 8, (5 + 2) % 8) = (1, 7) -> minus 4
    assert model.window_position(v, 0, 1).tolist() == [[-3.0, 3.0], [-2.0, -2.0]]


def test_pillar_vfe_matches_hand_computed_features():
    pts = torch.tensor([[0.1, 0.2, 0.5, 1.0], [0.3, 0.4, -0.5, 3.0], [1.9, 1.9, 0.0, 2.0], [5.0, 0.0, 0.0, 1.0]])
    points = Points(pts, torch.zeros(4, dtype=torch.long), 1)
    vfe = DynamicPillarVFE([1.0, 1.0], [0, 0, -1, 2, 2, 1], num_point_features=4, feat_channels=[6]).eval()
    with torch.no_grad():
        vfe.layers[0].linear.weight.copy_(torch.eye(6, 10))  # pass x, y, z, i, cluster dx, dy through
    out = vfe(points)
    assert out.coords.tolist() == [[0, 0, 0, 0], [0, 0, 1, 1]]  # the point at x = 5 is outside
    bn = vfe.layers[0].norm
    scale = 1 / torch.sqrt(bn.running_var + bn.eps)
    # voxel 0: points 0 and 1; cluster mean (0.2, 0.3); per-point features after ReLU, then max
    f0 = torch.tensor([[0.1, 0.2, 0.5, 1.0, -0.1, -0.1], [0.3, 0.4, -0.5, 3.0, 0.1, 0.1]]) * scale
    f1 = torch.tensor([[1.9, 1.9, 0.0, 2.0, 0.0, 0.0]]) * scale
    torch.testing.assert_close(out.feats, torch.stack([f0.relu().amax(0), f1.relu().amax(0)]))


def test_voxel_vfe_grid_and_scatter():
    points = Points.from_list([torch.tensor([[0.5, 0.5, 0.5, 0.0]]), torch.tensor([[1.5, 0.5, 1.5, 0.0]])])
    vfe = DynamicVFE([1.0, 1.0, 1.0], [0, 0, 0, 2, 2, 2], feat_channels=[4])
    out = vfe(points)
    assert out.spatial_shape == (2, 2, 2)
    assert out.coords.tolist() == [[0, 0, 0, 0], [1, 1, 0, 1]]
    bev = scatter_to_bev(out)
    assert bev.shape == (2, 8, 2, 2)
    torch.testing.assert_close(bev[0, :4, 0, 0], out.feats[0])
    torch.testing.assert_close(bev[1, 4:, 0, 1], out.feats[1])  # z slice 1 -> channels 4..7
    assert bev.abs().sum().item() == pytest.approx(out.feats.abs().sum().item(), rel=1e-6)


def test_seg_head_reads_voxel_logits_per_point():
    from pointwin.models.heads.seg import SegHead

    head = SegHead(3, 2)
    with torch.no_grad():
        head.cls.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        head.cls.bias.zero_()
    voxels = SparseVoxels(torch.tensor([[1.0, 2.0, 0.0], [5.0, -1.0, 0.0]]),
                          torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.int32), (1, 1, 2), 1)
    logits = head(voxels, torch.tensor([1, -1, 0, 1]))
    assert logits.tolist() == [[5.0, -1.0], [0.0, 0.0], [1.0, 2.0], [5.0, -1.0]]
    losses = head.loss(logits, torch.tensor([0, 1, -1, 1]))
    # cross-entropy over points 0 and 3 (point 2 is ignored by its label, point 1 has label 1 but zero logits)
    expected = torch.nn.functional.cross_entropy(logits[[0, 1, 3]], torch.tensor([0, 1, 1]))
    assert losses["loss"].item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="labels must be in"):
        head.loss(logits, torch.tensor([0, 2, 0, 0]))


def test_lovasz_softmax_hand_worked():
    from pointwin.models.heads.seg import lovasz_softmax

    # perfect one-hot predictions -> 0; one point wrong out of two in class 0
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert lovasz_softmax(probs, torch.tensor([0, 1])).item() == 0.0
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # class 0: errors sorted [1 (fp), 0]; Jaccard steps 1 - 1/2 = 0.5 then 0 -> loss 0.5.
    # class 1: errors [1 (missed fg), 0]; Jaccard 1 - 0/1 = 1 -> loss 1. Mean 0.75.
    assert lovasz_softmax(probs, torch.tensor([0, 1])).item() == pytest.approx(0.75)


def test_segmentor_predicts_every_point():
    from pointwin.models import build_model
    from pointwin.structures import Batch

    cfg = dict(type="Segmentor", class_names=["a", "b", "c"], point_cloud_range=[0, 0, 0, 3.2, 3.2, 1.6],
               voxel_size=[0.2, 0.2, 0.2], vfe=dict(type="DynamicVFE", feat_channels=[8]),
               backbone=dict(type="SphereSeg", channels=[8, 16], num_heads=[2, 2], attention_levels=[1],
                             cubic_window=[4, 4, 4], radial_window=[20.0, 20.0, 5.0]),
               head=dict(type="SegHead"))
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([3.1, 3.1, 1.5, 1.0])
    clouds = [torch.rand(50, 4, generator=g) * scale, torch.rand(30, 4, generator=g) * scale]
    clouds[1][0, 0] = 10.0  # outside the grid
    points = Points.from_list(clouds)
    labels = torch.randint(0, 3, (80,), generator=g)
    batch = Batch(points, ["a", "b"], point_labels=labels)
    losses = model.loss(batch)
    losses["loss"].backward()
    model.eval()
    pred = model.predict(batch)
    assert [len(p) for p in pred] == [50, 30]
    assert pred[1][0] == -1 and (pred[0] >= 0).all() and (pred[1][1:] >= 0).all()


def test_attention_pool_matches_per_cell_reference():
    from pointwin.nn import AttentionPool

    torch.manual_seed(0)
    pool = AttentionPool(8, (1, 1, 4), num_heads=2).eval()
    voxels = random_voxels((8, 4, 4), (30, 9), 8, seed=5)
    out = pool(voxels)
    # reference: for every parent cell, attention over its real voxels only (no padding at all)
    c = voxels.coords.long()
    parents = {}
    for i, (b, z, y, x) in enumerate(c.tolist()):
        parents.setdefault((b, z // 4, y, x), []).append(i)
    assert out.num_voxels == len(parents) and out.spatial_shape == (2, 4, 4)
    for row, (b, z, y, x) in enumerate(out.coords.tolist()):
        idx = parents[(b, z, y, x)]
        feats = voxels.feats[idx]
        query = feats.amax(0, keepdim=True)[None]
        inner = (c[idx, 1] % 4).tolist()
        key = (feats + pool.pos_embedding[inner])[None]
        ref, _ = pool.attn(query, key, key, need_weights=False)
        expected = pool.norm(query + ref)[0, 0]
        torch.testing.assert_close(out.feats[row], expected, atol=1e-5, rtol=1e-5)


def test_sinusoidal_encoding_hand_worked():
    from pointwin.nn import sinusoidal_encoding

    enc = sinusoidal_encoding(torch.tensor([[2.0, 3.0]]), 8, temperature=100.0)
    # per axis d = 4: frequencies 100^(-0/4) = 1 and 100^(-2/4) = 0.1
    x, y = 2.0, 3.0
    expected = [math.sin(x), math.cos(x), math.sin(x * 0.1), math.cos(x * 0.1),
                math.sin(y), math.cos(y), math.sin(y * 0.1), math.cos(y * 0.1)]
    torch.testing.assert_close(enc[0], torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["flatformer", "dsvt_pillar", "scatterformer", "scatterformer_lite"])
def test_grad_checkpointing_gives_the_same_gradients(name):
    model, shape, counts = build(name)
    voxels = random_voxels(shape, counts, 8, seed=4)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        out = model(voxels.replace(voxels.feats))
        (out.feats ** 2).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cubic_windows_golden():
    from pointwin.partition.cubic import cubic_windows

    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 3], [0, 1, 2, 1], [1, 0, 0, 0], [0, 0, 0, 2]], dtype=torch.int32)
    p = cubic_windows(coords, (4, 4, 4), (2, 2, 2)).check()
    # windows (b, z//2, y//2, x//2): v0 (0,0,0,0); v1, v4 (0,0,0,1) with x 2 before 3; v2 (0,0,1,0); v3 (1,0,0,0)
    assert p.index.tolist() == [0, 4, 1, 2, 3] and p.offsets.tolist() == [0, 1, 3, 4, 5] and p.size is None
    shifted = cubic_windows(coords, (4, 4, 4), (2, 2, 2), shift=(1, 0, 0)).check()
    # x + 1: v0 -> wx 0; v4 (x 3) and v2 (x 2, other y window) ; v1 (x 4) -> wx 2
    assert [sorted(shifted.group(g).tolist()) for g in range(shifted.num_groups)] == [[0], [4], [1], [2], [3]]


def test_dsvt_encoder_layer_matches_openpcdet_structure():
    """DSVT_EncoderLayer = LN(SetAttention(x) + x), SetAttention post-norm; rebuilt here by hand with
    nn.MultiheadAttention on one set of 5 voxels (no padding), in float64."""
    from pointwin.models.backbones3d.dsvt import SetAttentionLayer
    from pointwin.partition import Partition

    torch.manual_seed(3)
    C, H, n = 8, 2, 5
    layer = SetAttentionLayer(C, H, 16, activation="gelu").double().eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, pos = torch.randn(n, C, dtype=torch.float64), torch.randn(n, C, dtype=torch.float64)
    part = Partition(torch.arange(n), torch.tensor([0, n]), torch.arange(n), size=n)
    out = layer(x, part, pos)

    mha = torch.nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.attn.qkv.weight)
        mha.in_proj_bias.copy_(layer.attn.qkv.bias)
        mha.out_proj.weight.copy_(layer.attn.proj.weight)
        mha.out_proj.bias.copy_(layer.attn.proj.bias)
        qk = (x + pos)[None]
        attn = mha(qk, qk, x[None], need_weights=False)[0][0]
        y = layer.norm1(x + attn)
        y = layer.norm2(y + layer.ffn.fc2(torch.nn.functional.gelu(layer.ffn.fc1(y))))
        expected = layer.norm_out(y + x)
    torch.testing.assert_close(out, expected)


def test_sphere_attention_radial_heads_use_pairwise_range_bias():
    """The radial heads add table[exponential_split(r_i - r_j)] to each logit: checked against the float64
    per-voxel loop of the group-attention tests, with the bias written out pair by pair."""
    from pointwin.models.backbones3d.sphereseg import SphereAttention
    from pointwin.partition import exponential_split_index
    from tests.test_group_attention import naive_group_attention

    torch.manual_seed(0)
    n, C, H = 60, 8, 4
    coords = torch.unique(torch.randint(0, 12, (n, 3)), dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
    vox = SparseVoxels(torch.randn(len(coords), C), coords, (12, 12, 12), 1, (0.5, 0.5, 0.5), (-3.0, -3.0, -3.0))
    attn = SphereAttention(C, H, (4, 4, 4), (60.0, 60.0, 3.0), range_unit=0.1, range_bins=5).double().eval()
    torch.nn.init.normal_(attn.range_bias, std=1.0)
    x = vox.feats.double()
    _, radial, _, ranges = attn._structures(vox)
    q, k, v = (t[:, C // 2:].reshape(-1, H // 2, C // H) for t in attn.qkv(x).chunk(3, 1))

    def bias(i, j, h):
        return attn.range_bias[exponential_split_index(ranges[i] - ranges[j], 0.1, 5), h]

    expected = naive_group_attention(q, k, v, radial, (C // H) ** -0.5, bias)
    from pointwin.ops import group_attention

    got = group_attention(q, k, v, radial, pair_bias=attn.range_pair_bias(ranges))
    torch.testing.assert_close(got, expected)
    assert radial.group_sizes().max() > 1  # windows with several voxels, so the bias matters


@pytest.mark.parametrize("backbone", [
    dict(type="ScatterFormer", channels=16, num_heads=2, num_layers=[1, 1], window=4, pool_heads=2),
    dict(type="ScatterFormerLite", channels=16, num_heads=2, num_blocks=[1, 1], z_strides=[2], window=4, cwi_kernel=3,
         pool_heads=2),
    dict(type="DSVT", channels=16, num_heads=2, ffn_channels=32, set_size=8, num_blocks=1, window=[4, 4, 4]),
])
def test_detector_under_bf16_autocast_matches_fp32(backbone):
    """Mixed precision (the CUDA AMP path, exercised here with CPU bf16 autocast): every stage accepts the
    lower-precision outputs of autocast ops (VFE split linear, sparse conv, attention pooling, folded BN)."""
    from pointwin.models import build_model
    from pointwin.structures import Batch

    torch.manual_seed(0)
    cfg = dict(type="Detector", class_names=["a", "b"], point_cloud_range=[0, 0, 0, 6.4, 6.4, 1.6],
               voxel_size=[0.2, 0.2, 0.2], vfe=dict(type="DynamicVFE", feat_channels=[8, 16]), backbone=backbone,
               backbone_2d=dict(type="BEVBackbone", layer_nums=[1], layer_strides=[1], num_filters=[16],
                                upsample_strides=[1], num_upsample_filters=[16], block="basic"),
               head=dict(type="CenterPointHead", tasks=[["a"], ["b"]], shared_channels=8, head_channels=8))
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([6.3, 6.3, 1.5, 1.0])
    batch = Batch(Points.from_list([torch.rand(400, 4, generator=g) * scale, torch.rand(300, 4, generator=g) * scale]),
                  ["a", "b"])
    with torch.no_grad():
        ref = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            model.head.predict(out)
    for a, b in zip(ref.tasks, out.tasks, strict=True):
        assert b.heatmap.dtype == torch.bfloat16  # autocast really ran in bf16
        torch.testing.assert_close(b.heatmap.float(), a.heatmap, atol=0.15, rtol=0.05)
