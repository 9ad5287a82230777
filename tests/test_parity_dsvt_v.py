"""DSVT-V backbone against the official DSVT code (fixture ``parity/dsvt_v_backbone``), the reference mode of
attention pooling against a naive per-cell loop, and the new DSVT / AttentionPool arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from pointwin.models.backbones3d.dsvt import DSVT
from pointwin.nn import AttentionPool
from pointwin.nn.pooling import reference_slot
from pointwin.structures import SparseVoxels

from .conftest import SHARED_DATA

FIXTURE = SHARED_DATA / "parity" / "dsvt_v_backbone"

pytestmark = pytest.mark.usefixtures("one_thread")


def _fixture_dsvt(cfg: dict) -> DSVT:
    """pointwin's DSVT with the fixture's settings and the official flags."""
    bb = cfg["BACKBONE_3D"]
    inp = bb["INPUT_LAYER"]
    shifts = [s[1] for s in inp["shifts_list"]]
    # the official plain partition is never shifted; pointwin's plain partition has no shift by construction
    assert all(s[0] == [0, 0, 0] for s in inp["shifts_list"])
    return DSVT(in_channels=bb["d_model"][0], channels=bb["d_model"][0], num_heads=bb["nhead"][0],
                ffn_channels=bb["dim_feedforward"][0], set_size=bb["set_info"][0][0],
                num_blocks=bb["set_info"][0][1], window=inp["window_shape"], hybrid_factor=inp["hybrid_factor"],
                shift=shifts, downsample_stride=inp["downsample_stride"], activation=bb["activation"],
                mix_shift_pos_embed=True, pool_mode="reference", shift_counter="global")


def _sorted_rows(coords: torch.Tensor, feats: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    order = SparseVoxels.linear_index(coords, shape).argsort()
    return coords[order], feats[order]


def test_dsvt_v_backbone_matches_official():
    if not FIXTURE.is_dir():
        pytest.skip(f"parity fixture {FIXTURE} not present (official DSVT outputs, see ../shared/data/parity)")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    with np.load(FIXTURE / "weights.npz", allow_pickle=False) as w:
        state = {k: torch.from_numpy(w[k]) for k in w.files}
    with np.load(FIXTURE / "inputs.npz", allow_pickle=False) as f:
        feats, coords = torch.from_numpy(f["voxel_features"]), torch.from_numpy(f["voxel_coords"])
    with np.load(FIXTURE / "outputs.npz", allow_pickle=False) as f:
        expected = {k: torch.from_numpy(f[k]) for k in f.files}

    from pointwin.export.converters import from_reference

    dsvt = _fixture_dsvt(cfg)
    wrapper = nn.Module()
    wrapper.backbone = dsvt
    result = from_reference(state, wrapper, "openpcdet")
    assert [k for k in result.unmatched_reference if not k.endswith("num_batches_tracked")] == [], result.report()
    assert result.missing_pointwin == [] and result.shape_mismatch == [], result.report()
    wrapper.load_state_dict(result.state_dict, strict=True)
    dsvt.eval()

    # capture every stage's output (after its last residual LayerNorm) and its voxels' coords
    n_stages = len(dsvt.stages)
    outs, grids = {}, {0: (coords, (32, 468, 468))}
    hooks = [dsvt.residual_norms[s][-1].register_forward_hook(
        lambda _m, _i, out, s=s: outs.__setitem__(s, out)) for s in range(n_stages)]
    hooks += [dsvt.pools[s - 1].register_forward_hook(
        lambda _m, _i, out, s=s: grids.__setitem__(s, (out.coords, out.spatial_shape))) for s in range(1, n_stages)]
    x_size, y_size, z_size = cfg["BACKBONE_3D"]["INPUT_LAYER"]["sparse_shape"]
    voxels = SparseVoxels(feats, coords, (z_size, y_size, x_size), 1)
    try:
        with torch.no_grad():
            final = dsvt(voxels)
    finally:
        for h in hooks:
            h.remove()

    diffs = []
    for s in range(n_stages):
        c, shape = grids[s]
        got_c, got_f = _sorted_rows(c, outs[s], shape)
        ref_c, ref_f = _sorted_rows(expected[f"stage{s}_coords"], expected[f"stage{s}_features"], shape)
        assert torch.equal(got_c, ref_c.to(got_c.dtype)), f"stage {s}: coordinate sets differ"
        diffs.append(float((got_f - ref_f).abs().max()))
    print("DSVT-V vs official, max abs per stage:", ", ".join(f"stage{s} {d:.2e}" for s, d in enumerate(diffs)))
    assert max(diffs) <= 1e-4, diffs
    assert torch.equal(final.feats, outs[n_stages - 1]) and final.spatial_shape == (1, 468, 468)


# ------------------------------------------------------------------ attention pooling, reference mode

def _naive_reference_pool(pool: AttentionPool, coords: torch.Tensor, feats: torch.Tensor) -> dict:
    """float64 per-cell loop written from the official block's description: (cell) -> pooled feature."""
    sx, sy, sz = pool.stride
    volume = sx * sy * sz
    C = feats.shape[1]
    H = pool.attn.num_heads
    D = C // H
    w = {k: v.detach().double() for k, v in pool.state_dict().items()}
    w_q, w_k, w_v = w["attn.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = w["attn.in_proj_bias"].chunk(3)
    cells: dict = {}
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        cells.setdefault((b, z // sz, y // sy, x // sx), []).append((i, x % sx, y % sy, z % sz))
    out = {}
    for cell, members in cells.items():
        slots = torch.zeros(volume, C, dtype=torch.float64)
        for i, xi, yi, zi in members:
            slots[(xi * sy + yi) * sz + zi] = feats[i].double()  # official numbering: x slowest, z fastest
        query = slots.max(0).values  # over all slots, empty ones are zeros
        key = slots + w["pos_embedding"]
        q = (w_q @ query + b_q).view(H, D)
        k = (key @ w_k.T + b_k).view(volume, H, D)
        v = (slots @ w_v.T + b_v).view(volume, H, D)
        heads = []
        for h in range(H):
            a = torch.softmax(k[:, h] @ q[h] / D ** 0.5, 0)
            heads.append(a @ v[:, h])
        attn = w["attn.out_proj.weight"] @ torch.cat(heads) + w["attn.out_proj.bias"]
        y = attn + query
        y = (y - y.mean()) / torch.sqrt(y.var(unbiased=False) + pool.norm.eps)
        out[cell] = y * w["norm.weight"] + w["norm.bias"]
    return out


def test_reference_pool_matches_naive_loop():
    g = torch.Generator().manual_seed(3)
    Z, Y, X = 4, 6, 6
    lin = torch.randperm(Z * Y * X, generator=g)[:70]
    coords = torch.stack([torch.zeros_like(lin), lin // (Y * X), (lin // X) % Y, lin % X], 1).int()
    feats = torch.randn(len(coords), 16, generator=g) - 0.5  # many negative channels: the zero slots matter
    pool = AttentionPool(16, (2, 2, 2), num_heads=4, mode="reference").eval()
    with torch.no_grad():
        pool.pos_embedding.normal_(0, 1.0, generator=g)  # large enough that a row permutation would show
        pool.attn.in_proj_bias.normal_(0, 0.1, generator=g)
        pool.norm.weight.uniform_(0.5, 1.5, generator=g)
        pool.norm.bias.normal_(0, 0.1, generator=g)
        out = pool(SparseVoxels(feats, coords, (Z, Y, X), 1))
    expected = _naive_reference_pool(pool, coords, feats)
    assert out.num_voxels == len(expected) and out.spatial_shape == (2, 3, 3)
    assert any(len([1 for c in coords.tolist() if (c[1] // 2, c[2] // 2, c[3] // 2) == k[1:]]) < 8 for k in expected)
    for row, cell in enumerate(out.coords.tolist()):
        torch.testing.assert_close(out.feats[row].double(), expected[tuple(cell)], atol=2e-5, rtol=1e-5)


def test_reference_slot_numbering():
    # pointwin's z-major slot -> the official x-major slot, stride (sx, sy, sz) = (2, 3, 2)
    sx, sy, sz = 2, 3, 2
    for zi in range(sz):
        for yi in range(sy):
            for xi in range(sx):
                inner = torch.tensor((zi * sy + yi) * sx + xi)
                assert int(reference_slot(inner, (sx, sy, sz))) == (xi * sy + yi) * sz + zi
    # z-only strides (DSVT-V's) number slots the same way in both conventions
    assert torch.equal(reference_slot(torch.arange(4), (1, 1, 4)), torch.arange(4))


def test_masked_mode_is_the_default_and_differs_from_reference():
    g = torch.Generator().manual_seed(1)
    lin = torch.randperm(4 * 4 * 4, generator=g)[:30]
    coords = torch.stack([torch.zeros_like(lin), lin // 16, (lin // 4) % 4, lin % 4], 1).int()
    feats = torch.randn(len(coords), 8, generator=g)
    torch.manual_seed(0)
    masked = AttentionPool(8, (1, 1, 4), num_heads=2).eval()
    assert masked.mode == "masked"
    ref = AttentionPool(8, (1, 1, 4), num_heads=2, mode="reference").eval()
    ref.load_state_dict(masked.state_dict())  # same parameter names in both modes
    with torch.no_grad():
        a = masked(SparseVoxels(feats, coords, (4, 4, 4), 1))
        b = ref(SparseVoxels(feats, coords, (4, 4, 4), 1))
    assert torch.equal(a.coords, b.coords)
    assert not torch.allclose(a.feats, b.feats, atol=1e-3)


def test_reference_pool_backward_and_full_cells_agree_on_the_query():
    """Every slot filled: both modes take the max over the same voxels (only keys/values differ)."""
    coords = torch.stack(torch.meshgrid(torch.zeros(1, dtype=torch.long), torch.arange(4), torch.arange(2),
                                        torch.arange(2), indexing="ij"), -1).view(-1, 4).int()
    feats = torch.randn(len(coords), 8, requires_grad=True)
    pool = AttentionPool(8, (1, 1, 4), num_heads=2, mode="reference")
    out = pool(SparseVoxels(feats, coords, (4, 2, 2), 1))
    out.feats.square().sum().backward()
    assert out.num_voxels == 4 and feats.grad is not None and torch.isfinite(feats.grad).all()
    assert pool.pos_embedding.grad is not None and pool.pos_embedding.grad.abs().sum() > 0


# ------------------------------------------------------------------ argument validation

def test_attention_pool_rejects_unknown_mode():
    with pytest.raises(ValueError,
                       match=r"mode must be one of \['masked', 'reference', 'scatterformer'\], got 'official'"):
        AttentionPool(8, (1, 1, 2), mode="official")


@pytest.mark.parametrize("kwargs,match", [
    ({"pool_mode": "dense"}, r"pool_mode must be one of \['masked', 'reference', 'scatterformer'\], got 'dense'"),
    ({"shift_counter": "per_block"}, r"shift_counter must be one of \['global', 'per_stage'\], got 'per_block'"),
])
def test_dsvt_rejects_unknown_flags(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSVT(8, 16, 2, 32, 8, 1, (4, 4, 2), downsample_stride=[(1, 1, 2)], **kwargs)


def test_dsvt_flags_reach_the_pools_and_blocks():
    model = DSVT(8, 16, 2, 32, 8, [1, 3, 1], [(4, 4, 4), (4, 4, 2), (4, 4, 1)],
                 downsample_stride=[(1, 1, 2), (1, 1, 2)], pool_mode="reference")
    assert [p.pool.mode for p in model.pools] == ["reference", "reference"]
    assert model.shift_counter == "global"
    assert model.block_shifts() == [[0], [1, 0, 1], [0]]
    per_stage = DSVT(8, 16, 2, 32, 8, [1, 3, 1], [(4, 4, 4), (4, 4, 2), (4, 4, 1)],
                     downsample_stride=[(1, 1, 2), (1, 1, 2)], shift_counter="per_stage")
    assert per_stage.block_shifts() == [[0], [0, 1, 0], [0]]
    assert [p.pool.mode for p in per_stage.pools] == ["masked", "masked"]


@pytest.mark.parametrize("counter,mix,expected", [
    # (partition shift, position shift) of every layer; stage 0 then stage 1, one block each
    ("global", True, [(0, 0), (0, 1), (1, 0), (1, 1)]),
    ("global", False, [(0, 0), (0, 0), (1, 1), (1, 1)]),
    ("per_stage", True, [(0, 0), (0, 1), (0, 0), (0, 1)]),
])
def test_dsvt_shift_counter_and_position_mix(counter, mix, expected):
    """README warning 2: the sets follow the global block counter, the positions follow the layer index."""
    g = torch.Generator().manual_seed(0)
    lin = torch.randperm(4 * 16 * 16, generator=g)[:120]
    coords = torch.stack([torch.zeros_like(lin), lin // 256, (lin // 16) % 16, lin % 16], 1).int()
    voxels = SparseVoxels(torch.randn(len(coords), 8, generator=g), coords, (4, 16, 16), 1)
    model = DSVT(8, 16, 2, 32, 8, 1, [(4, 4, 4), (4, 4, 2)], downsample_stride=[(1, 1, 2)],
                 mix_shift_pos_embed=mix, shift_counter=counter).eval()
    parts, poses = [], []
    orig_part, orig_pos = model.partition, model.window_position

    def partition(v, stage, shift_id, axis):
        parts.append(shift_id)
        return orig_part(v, stage, shift_id, axis)

    def window_position(v, stage, shift_id):
        poses.append(shift_id)
        return orig_pos(v, stage, shift_id)

    model.partition, model.window_position = partition, window_position
    with torch.no_grad():
        model(voxels)
    assert list(zip(parts, poses, strict=True)) == expected


# ------------------------------------------------------------------ ONNX export of the reference pooling

def test_reference_pool_exports_to_onnx(tmp_path):
    """Two-stage DSVT with the official flags: the graph runs the reference pooling on the runtime's map."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pointwin.export.onnx import export_onnx, parity_check

    from .test_export import NUSCENES_FRAME, SMALL_RANGE, _model, _nuscenes_points

    model, cfg = _model("configs/synthetic/dsvt_pillar_tiny.yaml",
                        [SMALL_RANGE, "+model.backbone.downsample_stride=[[2, 2, 1]]",
                         "+model.backbone.pool_mode=reference", "+model.backbone.mix_shift_pos_embed=true"])
    assert model.backbone.pools[0].pool.mode == "reference"
    points = _nuscenes_points(NUSCENES_FRAME)
    export_onnx(model, points, tmp_path, model_cfg=cfg["model"])
    report = parity_check(model, tmp_path, points, printer=lambda s: None)
    assert report.failures() == [] and report.num_unique > 0


def test_shipped_dsvt_voxel_config_is_the_official_backbone():
    """configs/waymo/dsvt_voxel.yaml's backbone, at the fixture's shrunk widths, loads the official weights
    cleanly (flags checked by the converter) and gives the official backbone output."""
    if not FIXTURE.is_dir():
        pytest.skip(f"parity fixture {FIXTURE} not present (official DSVT outputs, see ../shared/data/parity)")
    from pointwin.config import load_config
    from pointwin.export.converters import load_reference_state
    from pointwin.models.builder import BACKBONES

    cfg = load_config("configs/waymo/dsvt_voxel.yaml", ["model.backbone.channels=64",
                                                         "model.backbone.ffn_channels=128"])
    wrapper = nn.Module()
    wrapper.backbone = BACKBONES.build(cfg["model"]["backbone"], "model.backbone", in_channels=64).eval()
    with np.load(FIXTURE / "weights.npz", allow_pickle=False) as w:
        state = {k: torch.from_numpy(w[k]) for k in w.files}
    result = load_reference_state(wrapper, state, "openpcdet", strict=True, origin="dsvt_v_backbone fixture")
    assert result.clean
    with np.load(FIXTURE / "inputs.npz", allow_pickle=False) as f:
        voxels = SparseVoxels(torch.from_numpy(f["voxel_features"]), torch.from_numpy(f["voxel_coords"]),
                              (32, 468, 468), 1)
    with np.load(FIXTURE / "outputs.npz", allow_pickle=False) as f:
        ref_c, ref_f = torch.from_numpy(f["stage3_coords"]), torch.from_numpy(f["stage3_features"])
    with torch.no_grad():
        out = wrapper.backbone(voxels)
    got_c, got_f = _sorted_rows(out.coords, out.feats, out.spatial_shape)
    ref_c, ref_f = _sorted_rows(ref_c, ref_f, out.spatial_shape)
    assert torch.equal(got_c, ref_c.to(got_c.dtype))
    assert float((got_f - ref_f).abs().max()) <= 1e-4
