"""PTv3 against Pointcept (fixture ``parity/ptv3_serialization``): serialization codes, patches and one Block
through the shipped official config (``configs/nuscenes/ptv3_lidarseg.yaml``) and the ``pointcept`` converter;
the Pointcept grid mode, order shuffling and converter checks on small inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointwin.config import load_config
from pointwin.export.converters import ConversionError, build_keymap, from_reference, load_reference_state
from pointwin.models import build_model
from pointwin.models.backbones3d.ptv3 import PTv3
from pointwin.partition import CURVES, curve_patches, serialize
from pointwin.partition.curve import data_depth
from pointwin.structures import SparseVoxels

from .conftest import SHARED_DATA

FIXTURE = SHARED_DATA / "parity" / "ptv3_serialization"
CONFIG = "configs/nuscenes/ptv3_lidarseg.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")

#: the fixture's names for the Block's tensors -> the names the same tensors carry in a Pointcept checkpoint
#: (Block of PT-v3m1 at encoder stage 0, block 0 of ``DefaultSegmentorV2``)
FIXTURE_TO_POINTCEPT = {
    "cpe_conv.weight_spconv_CoutKxKyKzCin": "cpe.0.weight", "cpe_conv.bias": "cpe.0.bias",
    "cpe_linear.weight": "cpe.1.weight", "cpe_linear.bias": "cpe.1.bias",
    "cpe_norm.weight": "cpe.2.weight", "cpe_norm.bias": "cpe.2.bias",
    "norm1.weight": "norm1.0.weight", "norm1.bias": "norm1.0.bias",
    "attn.qkv.weight": "attn.qkv.weight", "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.proj.weight", "attn.proj.bias": "attn.proj.bias",
    "norm2.weight": "norm2.0.weight", "norm2.bias": "norm2.0.bias",
    "mlp.fc1.weight": "mlp.0.fc1.weight", "mlp.fc1.bias": "mlp.0.fc1.bias",
    "mlp.fc2.weight": "mlp.0.fc2.weight", "mlp.fc2.bias": "mlp.0.fc2.bias",
}


def _fixture():
    if not FIXTURE.is_dir():
        pytest.skip(f"parity fixture {FIXTURE} not present (official PTv3 outputs, see ../shared/data/parity)")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    out = {}
    for name in ("inputs", "outputs", "weights"):
        with np.load(FIXTURE / f"{name}.npz", allow_pickle=False) as f:
            out[name] = {k: torch.from_numpy(f[k]) for k in f.files}
    return cfg, out["inputs"], out["outputs"], out["weights"]


def _voxels(grid_xyz: torch.Tensor, batch: torch.Tensor, feats: torch.Tensor | None = None) -> SparseVoxels:
    coords = torch.cat([batch.long()[:, None], grid_xyz.long().flip(1)], 1).int()  # (b, z, y, x)
    shape = tuple(int(v) + 1 for v in coords[:, 1:].amax(0))
    f = torch.zeros(coords.shape[0], 1) if feats is None else feats
    return SparseVoxels(f, coords, shape, int(batch.max()) + 1)


def _shipped_model():
    return build_model(load_config(CONFIG)["model"])


def test_shipped_config_is_the_pointcept_model():
    model = _shipped_model()
    bb = model.backbone
    assert isinstance(bb, PTv3) and bb.grid == "data" and bb.shuffle_orders == "always"
    assert type(model.vfe).__name__ == "MeanVFE" and model.vfe.out_channels == 4
    assert model.vfe.feature_scale == pytest.approx((1.0, 1.0, 1.0, 1 / 255))  # Pointcept's strength
    assert bb.stem_norm.eps == pytest.approx(1e-3) and bb.stem_norm.momentum == pytest.approx(0.01)
    assert from_reference({}, model, "pointcept").incompatible == []
    # every tensor has a Pointcept name
    assert build_keymap(model, "pointcept").pointwin_only == []


@pytest.mark.parametrize("curve", CURVES)
def test_codes_equal_pointcept(curve):
    _, inputs, outputs, _ = _fixture()
    v, depth = PTv3.data_grid(_voxels(inputs["grid_coord"], inputs["batch"]))
    assert depth == 12
    code = serialize(v.coords, curve, v.spatial_shape, depth)
    n_diff = int((code != outputs[f"code_{curve}"]).sum())
    print(f"{curve}: {n_diff} of {code.numel()} codes differ (depth {depth})")
    assert n_diff == 0


def test_depth_edge_and_patches_equal_pointcept():
    _, inputs, outputs, _ = _fixture()
    # grid coordinates as Pointcept got them (not re-counted): largest 1023 -> Pointcept's depth 11, not 10
    edge = _voxels(inputs["grid_coord_depth_edge"], torch.zeros(len(inputs["grid_coord_depth_edge"]), dtype=torch.long))
    depth = data_depth(edge.coords)
    assert int(edge.coords[:, 1:].max()) == 1023 and depth == 11
    assert torch.equal(serialize(edge.coords, "hilbert", None, depth), outputs["depth_edge_code_hilbert"])
    assert not torch.equal(serialize(edge.coords, "hilbert"), outputs["depth_edge_code_hilbert"])  # depth 10
    v, depth = PTv3.data_grid(_voxels(inputs["grid_coord"], inputs["batch"]))
    part = curve_patches(v.coords, "hilbert", 1024, v.spatial_shape, depth)
    assert torch.equal(part.index, outputs["patch_slots_hilbert_K1024"])
    assert torch.equal(part.owner, outputs["patch_inverse_hilbert_K1024"])


def test_block_through_converter_equals_pointcept():
    cfg, inputs, outputs, weights = _fixture()
    model = _shipped_model().eval()
    bcfg = cfg["block"]
    blk = model.backbone.enc[0][0]
    assert (blk.attn.channels, blk.attn.num_heads, blk.patch_size) == (bcfg["channels"], bcfg["num_heads"],
                                                                      bcfg["patch_size"])
    state = {f"backbone.enc.enc0.block0.{FIXTURE_TO_POINTCEPT[k]}": t for k, t in weights.items()}
    result = from_reference(state, model, "pointcept")
    assert result.unmatched_reference == [] and result.shape_mismatch == [] and result.incompatible == []
    assert any("cpe_conv.weight" in r and "(C_out, kx, ky, kz, C_in)" in r for r in result.relaid)
    with pytest.raises(ConversionError, match="missing pointwin keys"):  # strict: a Block is not a whole model
        load_reference_state(model, state, "pointcept")
    load_reference_state(model, state, "pointcept", strict=False)
    v, depth = PTv3.data_grid(_voxels(inputs["block_grid_coord"], inputs["block_batch"], inputs["block_feat_in"]))
    with torch.no_grad():
        out = blk(v, bcfg["order"], depth).feats
    ref = outputs["block_out_z"]
    diff = float((out - ref).abs().max())
    print(f"PTv3 Block vs Pointcept: max abs diff {diff:.2e} (|out| max {float(ref.abs().max()):.2f})")
    assert diff < 1e-5
    # the CPE conv with the weight copied unpermuted is a different conv (the layout conversion matters)
    blk.cpe_conv.weight.data.copy_(weights["cpe_conv.weight_spconv_CoutKxKyKzCin"])
    with torch.no_grad():
        wrong = blk(v, bcfg["order"], depth).feats
    assert float((wrong - ref).abs().max()) > 1e-2


def test_converter_round_trip_and_refusals():
    model = _shipped_model()
    from pointwin.export.converters import to_reference

    ref = to_reference(model.state_dict(), model, "pointcept")
    assert "backbone.embedding.stem.conv.weight" in ref and "seg_head.weight" in ref
    assert "backbone.dec.dec0.up.proj_skip.1.running_var" in ref
    assert "backbone.dec.dec3.block1.mlp.0.fc2.bias" in ref and "backbone.enc.enc4.down.norm.0.weight" in ref
    w = model.backbone.stem_conv.weight
    assert torch.equal(ref["backbone.embedding.stem.conv.weight"], w.permute(0, 3, 2, 1, 4))
    back = from_reference(ref, model, "pointcept")
    assert back.clean, back.report()
    assert torch.equal(back.state_dict["backbone.stem_conv.weight"], w)
    # settings a state dict does not show
    cfg = load_config(CONFIG)["model"]
    cfg["backbone"].update(grid="shape", bn_eps=1e-5)
    problems = from_reference(ref, build_model(cfg), "pointcept").incompatible
    assert any("model.backbone.grid" in p for p in problems) and any("bn_eps" in p for p in problems)


def test_data_grid_counts_from_each_sample_minimum():
    g = torch.Generator().manual_seed(0)
    c0 = torch.randint(5, 40, (200, 3), generator=g)
    c1 = torch.randint(100, 131, (150, 3), generator=g)
    v = _voxels(torch.cat([c0, c1]), torch.cat([torch.zeros(200), torch.ones(150)]).long())
    shifted, depth = PTv3.data_grid(v)
    xyz = shifted.coords[:, 1:].long()
    assert xyz[:200].amin(0).tolist() == [0, 0, 0] and xyz[200:].amin(0).tolist() == [0, 0, 0]
    assert depth == data_depth(shifted.coords) == int(xyz.max() + 1).bit_length()
    assert torch.equal(shifted.coords[:, 0], v.coords[:, 0])


def test_orders_shuffle_per_stage_and_always_mode():
    model = PTv3(4, enc_channels=(8, 8), enc_depths=(1, 1), enc_num_heads=(2, 2), enc_patch_size=8,
                 dec_channels=(8,), dec_depths=(1,), dec_num_heads=(2,), dec_patch_size=8, stem_kernel=3,
                 shuffle_orders="always", grid="data")
    g = torch.Generator().manual_seed(1)
    xyz = torch.unique(torch.randint(0, 12, (300, 3), generator=g), dim=0)
    v = _voxels(xyz, torch.zeros(len(xyz), dtype=torch.long), torch.randn(len(xyz), 4, generator=g))
    model.eval()
    seen = set()
    for _ in range(12):
        model(v)
        assert len(model.last_stage_orders) == 2
        seen.add(model.last_stage_orders[0])
    assert len(seen) > 1  # shuffled in eval mode too
    model.shuffle_orders = True
    model(v)
    assert model.last_stage_orders == [model.orders, model.orders]
    with pytest.raises(ValueError, match="shuffle_orders"):
        PTv3(4, shuffle_orders="sometimes")
    with pytest.raises(ValueError, match="grid"):
        PTv3(4, grid="crop")


def test_shipped_voxelization_gives_pointcept_grid_coords():
    """The shipped config (MeanVFE over a range whose minimum is a multiple of 0.05 m, then the Pointcept grid)
    turns the raw keyframe into exactly the fixture's ``grid_coord`` (floor(p / 0.05) - per-sample minimum)."""
    _, inputs, _, _ = _fixture()
    from pointwin.structures import Points

    frame = SHARED_DATA / "nuscenes" / "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
    if not frame.exists():
        pytest.skip(f"{frame} not present")
    pts = torch.from_numpy(np.fromfile(frame, dtype=np.float32).reshape(-1, 5)[:, :4].copy())
    model = _shipped_model()
    vox = model.vfe(Points(pts, torch.zeros(len(pts), dtype=torch.long), 1))
    grid, depth = PTv3.data_grid(vox)
    ours = set(map(tuple, grid.coords[:, 1:].flip(1).tolist()))  # (x, y, z)
    ref = set(map(tuple, inputs["grid_coord"].tolist()))
    print(f"keyframe at 0.05 m: {len(ours)} voxels ours, {len(ref)} Pointcept, {len(ours & ref)} common, depth {depth}")
    assert len(ours) == len(ref) and len(ours ^ ref) <= 4 and depth == 12  # float borders aside


def _pointcept_forward(W, feat, grid, batch, cfg):
    """Pointcept's PT-v3m1 + seg head written against its checkpoint names, float64: grid from each sample's
    minimum, depth = bit length of (max + 1), dense convs on the (x, y, z) grid with the spconv kernels as
    stored, patches per sample with the missing slots of the last patch taken K slots earlier (flash path),
    orders not shuffled. Serialization codes come from pointwin's ``serialize`` (checked exact above)."""
    import torch.nn.functional as F

    B = int(batch.max()) + 1
    grid = grid.clone()
    for b in range(B):
        grid[batch == b] -= grid[batch == b].amin(0)
    depth = int(grid.max() + 1).bit_length()

    def bn(x, p):
        return (x - W[p + "running_mean"]) / torch.sqrt(W[p + "running_var"] + 1e-3) * W[p + "weight"] + W[p + "bias"]

    def ln(x, p):
        return F.layer_norm(x, x.shape[1:], W[p + "weight"], W[p + "bias"])

    def lin(x, p):
        return x @ W[p + "weight"].T + W[p + "bias"]

    def subm(x, g, w, bias=None):
        shape = tuple(int(v) + 1 for v in g.amax(0))
        d = x.new_zeros(B, x.shape[1], *shape)
        d[batch_of[id(g)], :, g[:, 0], g[:, 1], g[:, 2]] = x
        y = F.conv3d(d, w.permute(0, 4, 1, 2, 3), bias, padding=w.shape[1] // 2)
        return y[batch_of[id(g)], :, g[:, 0], g[:, 1], g[:, 2]]

    def codes(g, b, order, dep):
        c = torch.cat([b[:, None], g.flip(1)], 1)
        return serialize(c, order, None, dep)

    def block(x, g, b, dep, p, heads, K, order):
        x = x + ln(lin(subm(x, g, W[p + "cpe.0.weight"], W[p + "cpe.0.bias"]), p + "cpe.1."), p + "cpe.2.")
        h = ln(x, p + "norm1.0.")
        qkv = lin(h, p + "attn.qkv.")
        C = x.shape[1]
        d = C // heads
        out = torch.zeros_like(x)
        code = codes(g, b, order, dep)
        for s in range(B):
            rows = torch.nonzero(b == s)[:, 0]
            rows = rows[torch.argsort(code[rows])]
            n = len(rows)
            k = min(K, n)
            slots = rows.tolist()
            while len(slots) % k:
                slots.append(slots[len(slots) - k])
            for start in range(0, len(slots), k):
                idx = torch.tensor(slots[start:start + k])
                q, kk, v = qkv[idx].reshape(k, 3, heads, d).permute(1, 2, 0, 3)
                a = torch.softmax((q * d ** -0.5) @ kk.transpose(-1, -2), -1) @ v  # (heads, k, d)
                o = a.permute(1, 0, 2).reshape(k, C)
                for j, r in enumerate(idx.tolist()):
                    if start + j < n:  # a voxel's output comes from its own slot
                        out[r] = o[j]
        x = x + lin(out, p + "attn.proj.")
        m = lin(F.gelu(lin(ln(x, p + "norm2.0."), p + "mlp.0.fc1.")), p + "mlp.0.fc2.")
        return x + m

    batch_of = {}
    g, b, dep = grid, batch, depth
    batch_of[id(g)] = b
    x = F.gelu(bn(subm(feat, g, W["backbone.embedding.stem.conv.weight"]), "backbone.embedding.stem.norm."))
    skips = []
    for s in range(len(cfg["enc_depths"])):
        if s > 0:
            parent_code, cluster = torch.unique(codes(g, b, cfg["orders"][0], dep) >> 3, return_inverse=True)
            y = lin(x, f"backbone.enc.enc{s}.down.proj.")
            pooled = y.new_full((len(parent_code), y.shape[1]), float("-inf")).scatter_reduce(
                0, cluster[:, None].expand_as(y), y, "amax")
            skips.append((x, g, b, dep, cluster))
            pg = torch.zeros(len(parent_code), 3, dtype=g.dtype).index_copy_(0, cluster, g >> 1)
            pb = torch.zeros(len(parent_code), dtype=b.dtype).index_copy_(0, cluster, b)
            x, g, b, dep = F.gelu(bn(pooled, f"backbone.enc.enc{s}.down.norm.0.")), pg, pb, dep - 1
            batch_of[id(g)] = b
        for i in range(cfg["enc_depths"][s]):
            x = block(x, g, b, dep, f"backbone.enc.enc{s}.block{i}.", cfg["enc_heads"][s], cfg["K"],
                      cfg["orders"][i % len(cfg["orders"])])
    for s in reversed(range(len(cfg["enc_depths"]) - 1)):
        sx, g, b, dep, cluster = skips.pop()
        p = f"backbone.dec.dec{s}.up."
        up = F.gelu(bn(lin(x, p + "proj.0."), p + "proj.1."))
        x = F.gelu(bn(lin(sx, p + "proj_skip.0."), p + "proj_skip.1.")) + up[cluster]
        for i in range(cfg["dec_depths"][s]):
            x = block(x, g, b, dep, f"backbone.dec.dec{s}.block{i}.", cfg["dec_heads"][s], cfg["K"],
                      cfg["orders"][i % len(cfg["orders"])])
    return lin(x, "seg_head.")


def test_pointcept_network_through_converter_matches_float64_reference():
    """Random weights under Pointcept's names -> ``--from pointcept`` -> pointwin's logits equal an independent
    float64 forward of PT-v3m1 written against those names (stem, CPE, patches with padding, pooling,
    unpooling, seg head; orders not shuffled on either side)."""
    from pointwin.export.converters import load_reference_state, to_reference

    cfg = {"enc_depths": (2, 1), "enc_heads": (2, 2), "dec_depths": (1,), "dec_heads": (2,), "K": 16,
           "orders": ("z", "hilbert-trans")}
    model_cfg = {"type": "Segmentor", "class_names": ["a", "b", "c"], "point_cloud_range": [0, 0, 0, 1.0, 1.0, 0.5],
                 "voxel_size": [0.05, 0.05, 0.05], "vfe": {"type": "MeanVFE", "num_point_features": 4},
                 "backbone": {"type": "PTv3", "enc_channels": [8, 16], "enc_depths": list(cfg["enc_depths"]),
                              "enc_num_heads": list(cfg["enc_heads"]), "enc_patch_size": cfg["K"],
                              "dec_channels": [8], "dec_depths": list(cfg["dec_depths"]),
                              "dec_num_heads": list(cfg["dec_heads"]), "dec_patch_size": cfg["K"],
                              "orders": list(cfg["orders"]), "shuffle_orders": False, "grid": "data",
                              "bn_eps": 1e-3, "bn_momentum": 0.01, "stem_kernel": 5},
                 "head": {"type": "SegHead", "ignore_index": -1}}
    model = build_model(model_cfg).double().eval()
    g = torch.Generator().manual_seed(3)
    ref = {k: (torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.3 if v.is_floating_point() else v)
           for k, v in to_reference(model.state_dict(), model, "pointcept").items()}
    for k in ref:
        if k.endswith("running_var"):
            ref[k] = ref[k].abs() + 0.5
    load_reference_state(model, ref, "pointcept")
    # sample 0: 70 voxels (patches of 16 with padding), sample 1: 11 voxels (one short patch); not at the origin
    rows = []
    for b, n in ((0, 70), (1, 11)):
        lin = torch.randperm(10 * 10 * 6, generator=g)[:n]
        rows.append(torch.stack([torch.full((n,), b), 3 + lin // 60, 5 + (lin // 6) % 10, 2 + lin % 6], 1))
    coords = torch.cat(rows)  # (b, x, y, z)
    feats = torch.randn(len(coords), 4, generator=g, dtype=torch.float64)
    vox = SparseVoxels(feats, torch.cat([coords[:, :1], coords[:, 1:].flip(1)], 1).int(), (10, 20, 16), 2)
    with torch.no_grad():
        ours = model.head.cls(model.backbone(vox).feats)
        want = _pointcept_forward(ref, feats, coords[:, 1:].clone(), coords[:, 0], cfg)
    diff = float((ours - want).abs().max())
    print(f"Pointcept PT-v3m1 network (2 stages, random weights) vs float64 reference: max abs diff {diff:.1e} "
          f"(|logits| max {float(want.abs().max()):.2f})")
    assert diff < 1e-8 * max(1.0, float(want.abs().max()))
    # the checks bite: pointwin's grid (cells from the grid origin) pools other 2x2x2 cells here (odd x offset)
    model.backbone.grid = "shape"
    with torch.no_grad():
        assert float((model.head.cls(model.backbone(vox).feats) - want).abs().max()) > 1e-3
