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
