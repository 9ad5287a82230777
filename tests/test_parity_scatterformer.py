"""ScatterFormer against the official code (fixture ``parity/scatterformer_block``: one official layer with
its weights, through the OpenPCDet converter into the shipped nuScenes config), and the official network's
pieces against float64 re-computations written from the official semantics (stem convs as dense conv3d,
CWI as a per-voxel loop, the height pooling as ``nn.MultiheadAttention`` over zero-filled, masked columns)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pointwin.config import load_config
from pointwin.export.converters import build_keymap, compatibility_problems, from_reference, to_reference
from pointwin.models import build_model
from pointwin.models.backbones3d.scatterformer import (
    CrossWindowInteraction,
    ScatterFormer,
    ScatterFormerStem,
)
from pointwin.nn import AttentionPool
from pointwin.structures import SparseVoxels

from .conftest import SHARED_DATA

FIXTURE = SHARED_DATA / "parity" / "scatterformer_block"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytestmark = pytest.mark.usefixtures("one_thread")


def random_voxels(shape, n, channels, batch=2, seed=0, dtype=torch.float64) -> SparseVoxels:
    """``n`` distinct random voxels per sample on grid ``shape`` (Z, Y, X) with standard normal features."""
    g = torch.Generator().manual_seed(seed)
    Z, Y, X = shape
    rows = []
    for b in range(batch):
        lin = torch.randperm(Z * Y * X, generator=g)[:n]
        rows.append(torch.stack([torch.full_like(lin, b), lin // (Y * X), (lin // X) % Y, lin % X], 1))
    coords = torch.cat(rows).int()
    return SparseVoxels(torch.randn(coords.shape[0], channels, generator=g, dtype=dtype), coords, shape, batch)


def randomise_norms(module: nn.Module, seed: int = 0) -> None:
    """BN/LN affine and running statistics away from identity, so a misplaced norm shows."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                if isinstance(m, nn.BatchNorm1d):
                    m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


# ------------------------------------------------------------------ the official layer (fixture)
def test_scatterformer_layer_matches_official_through_converter():
    if not FIXTURE.is_dir():
        pytest.skip(f"parity fixture {FIXTURE} not present (official ScatterFormer layer outputs, see "
                    "../shared/data/parity/README.md)")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    with np.load(FIXTURE / "weights.npz", allow_pickle=False) as w:
        # one ScatterFormerLayer3x(num_layers=1): its names inside an OpenPCDet checkpoint of the whole model
        state = {f"backbone_3d.stage1.0.{k}": torch.from_numpy(w[k]) for k in w.files}
    with np.load(FIXTURE / "inputs.npz", allow_pickle=False) as f:
        feats, coords, shape = (torch.from_numpy(f["feats"]), torch.from_numpy(f["coords"]),
                                tuple(int(s) for s in f["spatial_shape"]))
    with np.load(FIXTURE / "outputs.npz", allow_pickle=False) as f:
        expected = {k: torch.from_numpy(f[k]) for k in f.files}

    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / "nuscenes" / "scatterformer.yaml")["model"]).eval()
    layer = model.backbone.stages[0].layers[0]
    assert (model.backbone.window, model.backbone.cwi_kernel, model.backbone.num_heads) == (
        cfg["dims"]["window"], cfg["dims"]["cwi_long_kernel"], cfg["dims"]["heads"])

    result = from_reference(state, model, "openpcdet")
    assert result.unmatched_reference == [] and result.shape_mismatch == [], result.report()
    assert result.incompatible == [], result.report()
    assert sorted(r.split(" <- ")[0] for r in result.relaid) == [
        f"backbone.stages.0.layers.0.cwi.{c}.weight" for c in ("conv_local", "conv_x", "conv_y")]
    loaded = {k for k in result.state_dict}
    assert all(k.startswith("backbone.stages.0.layers.0.") for k in loaded) and len(loaded) == len(state)
    model.load_state_dict(result.state_dict, strict=False)
    # and back: the reference names and layouts (depthwise (kz, ky, kx, C)) are restored exactly
    back = to_reference(model.state_dict(), model, "openpcdet")
    for k, v in state.items():
        assert torch.equal(back[k], v), k

    captured = {}
    hook = layer.cwi.register_forward_hook(
        lambda _m, args, out: captured.update(after_sla=args[0].feats, after_cwi=out))
    try:
        with torch.no_grad():
            out = layer(SparseVoxels(feats, coords, shape, 1)).feats
    finally:
        hook.remove()
    got = {"after_sla": captured["after_sla"], "after_cwi": captured["after_cwi"], "out": out}
    tol = {"after_sla": 1e-5, "after_cwi": 1e-4, "out": 1e-4}
    for name, t in tol.items():
        diff = (got[name] - expected[name]).abs().max().item()
        print(f"scatterformer_block {name}: max abs diff {diff:.2e} (|ref| max {expected[name].abs().max():.1f}, "
              f"tolerance {t:g})")
        assert diff <= t, f"{name}: max abs diff {diff:.3e} > {t:g}"
    # the same windows as the reference (as sets of voxels)
    from pointwin.partition import bev_windows

    part = bev_windows(coords, cfg["dims"]["window"])
    ours = torch.empty(coords.shape[0], dtype=torch.long)
    ours[part.index] = torch.repeat_interleave(torch.arange(part.num_groups), part.group_sizes())
    pairs = torch.unique(torch.stack([ours, expected["window_id"]], 1), dim=0)
    assert pairs.shape[0] == part.num_groups == int(expected["window_id"].max()) + 1


# ------------------------------------------------------------------ pieces against float64 references
def dense_conv_at(voxels: SparseVoxels, weight: torch.Tensor, bias, stride=(1, 1, 1), padding=(0, 0, 0),
                  sites: torch.Tensor | None = None, depthwise: bool = False) -> torch.Tensor:
    """Sparse conv computed as a dense ``conv3d`` on the zero-filled grid, read at ``sites`` (default: the
    input sites). ``weight`` in pointwin's (C_out, kz, ky, kx, C_in) layout."""
    Z, Y, X = voxels.spatial_shape
    B, C = voxels.batch_size, voxels.feats.shape[1]
    grid = voxels.feats.new_zeros(B, C, Z, Y, X)
    c = voxels.coords.long()
    grid[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = voxels.feats
    w = weight.permute(0, 4, 1, 2, 3)  # (C_out, C_in, kz, ky, kx)
    out = F.conv3d(grid, w, bias, stride, padding, groups=C if depthwise else 1)
    s = c if sites is None else sites.long()
    return out[s[:, 0], :, s[:, 1], s[:, 2], s[:, 3]]


def test_stem_matches_dense_conv_reference():
    torch.manual_seed(0)
    stem = ScatterFormerStem(4, 8, num_blocks=2).double()
    randomise_norms(stem)
    stem.eval()
    x = random_voxels((7, 6, 5), 60, 4, seed=1)
    with torch.no_grad():
        got = stem(x)
        # reference, step by step on the dense grid
        bn = lambda m, t: (t - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias  # noqa: E731
        h = torch.relu(bn(stem.norm_in, dense_conv_at(x, stem.conv_in.weight, None, padding=(1, 1, 1))))
        for blk in stem.blocks:
            v = x.replace(h)
            a = torch.relu(bn(blk.norm1, dense_conv_at(v, blk.conv1.weight, blk.conv1.bias, padding=(1, 1, 1))))
            a = bn(blk.norm2, dense_conv_at(x.replace(a), blk.conv2.weight, blk.conv2.bias, padding=(1, 1, 1)))
            h = torch.relu(a + h)
        # output sites of the (3, 1, 1) z-stride-2 conv: every site some active input reaches
        Zo = (7 - 3) // 2 + 1
        grid = torch.zeros(2, 1, 7, 6, 5, dtype=h.dtype)
        c = x.coords.long()
        grid[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] = 1
        reach = F.conv3d(grid, torch.ones(1, 1, 3, 1, 1, dtype=h.dtype), stride=(2, 1, 1)) > 0
        sites = reach[:, 0].nonzero().int()
        assert got.spatial_shape == (Zo, 6, 5)
        order = SparseVoxels.linear_index(got.coords, got.spatial_shape).argsort()
        assert torch.equal(got.coords[order], sites)  # nonzero() is lexicographic (b, z, y, x)
        ref = torch.relu(bn(stem.norm_down, dense_conv_at(x.replace(h), stem.down.weight, None, stride=(2, 1, 1),
                                                          sites=sites)))
    torch.testing.assert_close(got.feats[order], ref, atol=1e-10, rtol=1e-10)


def test_cross_window_interaction_matches_loop_reference():
    torch.manual_seed(0)
    cwi = CrossWindowInteraction(8, kernel=5).double()
    randomise_norms(cwi)
    cwi.eval()
    x = random_voxels((3, 9, 9), 70, 8, seed=2)
    with torch.no_grad():
        got = cwi(x)
        bn = cwi.norm
        h = (x.feats - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        where = {tuple(r): i for i, r in enumerate(x.coords.tolist())}
        ref = h.clone()
        for conv, lo in ((cwi.conv_local, 0), (cwi.conv_x, 2), (cwi.conv_y, 4)):
            w = conv.weight[..., 0]  # (g, kz, ky, kx)
            kz, ky, kx = w.shape[1:]
            for i, (b, z, y, xx) in enumerate(x.coords.tolist()):
                acc = torch.zeros(2, dtype=h.dtype)
                for dz in range(kz):
                    for dy in range(ky):
                        for dx in range(kx):
                            j = where.get((b, z + dz - kz // 2, y + dy - ky // 2, xx + dx - kx // 2))
                            if j is not None:
                                acc += w[:, dz, dy, dx] * h[j, lo:lo + 2]
                ref[i, lo:lo + 2] = h[i, lo:lo + 2] + acc
        ref[:, 6:] = 2 * h[:, 6:]  # identity group: BN(x) + BN(x)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    assert cwi.conv_x.kernel_size == (1, 1, 5) and cwi.conv_y.kernel_size == (1, 5, 1)


def official_pillar_pool(pool: AttentionPool, voxels: SparseVoxels) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``AttnPillarPool`` semantics with ``nn.MultiheadAttention``: columns (b, y, x) in sorted
    order, zero-filled slots by z, query = max(0, max over the column), keys = slots + embedding, values =
    slots, empty slots masked; output LayerNorm(query + attention). Returns (column coords, features)."""
    c = voxels.coords.long()
    cols, col = torch.unique(c[:, [0, 2, 3]], return_inverse=True, dim=0)
    P, C = pool.stride[2], voxels.feats.shape[1]
    dense = voxels.feats.new_zeros(cols.shape[0], P, C)
    dense[col, c[:, 1]] = voxels.feats
    mask = torch.ones(cols.shape[0], P, dtype=torch.bool)
    mask[col, c[:, 1]] = False
    query = torch.full((cols.shape[0], C), -torch.inf, dtype=voxels.feats.dtype)
    query = query.scatter_reduce(0, col[:, None].expand(-1, C), voxels.feats, "amax").clamp_min(0)
    out = pool.attn(query[:, None], dense + pool.pos_embedding, dense, key_padding_mask=mask)[0][:, 0]
    return cols, pool.norm(out + query)


def test_height_pool_scatterformer_mode_matches_multihead_reference():
    torch.manual_seed(0)
    pool = AttentionPool(16, (1, 1, 5), 4, mode="scatterformer").double()
    randomise_norms(pool)
    with torch.no_grad():
        pool.pos_embedding.normal_()
    pool.eval()
    x = random_voxels((5, 6, 6), 70, 16, seed=3)
    x = x.replace(x.feats - 1.0)  # mostly negative, so the 0 start of the max shows
    with torch.no_grad():
        got = pool(x)
        cols, ref = official_pillar_pool(pool, x)
    assert got.spatial_shape == (1, 6, 6)
    assert torch.equal(got.coords[:, [0, 2, 3]].long(), cols)  # pointwin's cells are sorted (b, y, x) too
    # AttentionPool runs its segment softmax in float32 whatever the input dtype (autocast safety), so a
    # float64 comparison is good to ~1e-7 here
    torch.testing.assert_close(got.feats, ref, atol=1e-6, rtol=1e-5)
    # the masked mode (pointwin's) is a different function: the reference flag matters
    masked = AttentionPool(16, (1, 1, 5), 4, mode="masked").double()
    masked.load_state_dict(pool.state_dict())
    with torch.no_grad():
        assert (masked.eval()(x).feats - ref).abs().max() > 1e-3


@pytest.mark.parametrize("path, grid, bev, slices", [
    ("nuscenes/scatterformer.yaml", (40, 360, 360), (1, 180, 180), 10),
    ("waymo/scatterformer.yaml", (32, 480, 480), (1, 240, 240), 8),
])
def test_shipped_configs_have_the_official_geometry(path, grid, bev, slices):
    cfg = load_config(CONFIGS / path)["model"]
    model = build_model(cfg)
    bb = model.backbone
    assert isinstance(bb, ScatterFormer) and model.vfe.spatial_shape == grid
    assert bb.output_grid(grid) == bev
    # the official AttnPillarPool has sparse_shape[0] // 4 = (Z + 1) // 4 slots: the z extent left here
    assert bb.height_pool.stride == (1, 1, slices) == (1, 1, (grid[0] + 1) // 4)
    assert (bb.num_heads, bb.cwi_kernel, bb.z_pad, bb.pool_mode) == (4, bb.window + 1, 1, "scatterformer")
    assert [len(s.layers) for s in bb.stages] == [3, 3]
    backbone_keys = [v for v in build_keymap(model, "openpcdet").to_reference.values() if v.startswith("backbone_3d.")]
    assert compatibility_problems(model, "openpcdet", backbone_keys) == []
    n = sum(p.numel() for p in bb.parameters())
    if path.startswith("nuscenes"):
        assert abs(n / 1e6 - 4.25) < 0.01  # the official nuScenes backbone's 4.25 M parameters


def test_backbone_forward_and_bev_stride_on_a_small_grid():
    torch.manual_seed(0)
    bb = ScatterFormer(4, 16, num_heads=2, num_layers=(1, 1), window=4, pool_heads=2)
    assert bb.output_grid((8, 12, 11)) == (1, 6, 6)
    assert bb.height_pool.stride == (1, 1, 2)  # z: 8 + 1 -> (9 - 3) // 2 + 1 = 4 -> 2
    x = random_voxels((8, 12, 11), 80, 4, seed=5, dtype=torch.float32)
    out = bb(x)
    assert out.spatial_shape == (1, 6, 6) and out.feats.shape[1] == 16 and torch.isfinite(out.feats).all()
    # the output columns are exactly those under the input voxels at BEV stride 2 (padding 1, kernel 3: a
    # voxel at y reaches y' with 2 y' - 1 <= y <= 2 y' + 1)
    reach = set()
    for b, _z, y, xx in x.coords.tolist():
        for yo in range(6):
            for xo in range(6):
                if 2 * yo - 1 <= y <= 2 * yo + 1 and 2 * xo - 1 <= xx <= 2 * xo + 1:
                    reach.add((b, yo, xo))
    assert {tuple(r) for r in out.coords[:, [0, 2, 3]].tolist()} == reach
    with pytest.raises(ValueError, match="Z \\+ z_pad >= 3"):
        ScatterFormer(4, 16, z_pad=0).output_grid((1, 8, 8))
    with pytest.raises(ValueError, match="pool_mode"):
        ScatterFormer(4, 16, pool_mode="reference")


def test_converter_names_layouts_and_settings():
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = ScatterFormer(8, 16, num_heads=4, num_layers=(2, 1), window=4, stem_blocks=3)
    model.backbone.output_grid((8, 8, 8))
    keymap = build_keymap(model, "openpcdet")
    assert keymap.pointwin_only == []
    ref = keymap.to_reference
    assert ref["backbone.stem.conv_in.weight"] == "backbone_3d.cpe.0.0.weight"
    assert ref["backbone.stem.blocks.2.norm2.running_var"] == "backbone_3d.cpe.3.bn2.running_var"
    assert ref["backbone.stem.down.weight"] == "backbone_3d.cpe.4.0.weight"
    assert ref["backbone.stem.norm_down.bias"] == "backbone_3d.cpe.4.1.bias"
    assert ref["backbone.stages.0.layers.1.cwi.conv_x.weight"] == "backbone_3d.stage1.0.cffn_layers.1.conv_h.weight"
    assert ref["backbone.stages.0.layers.1.cwi.conv_y.weight"] == "backbone_3d.stage1.0.cffn_layers.1.conv_w.weight"
    assert ref["backbone.stages.0.layers.1.norm_ffn.weight"] == "backbone_3d.stage1.0.cffn_layers.1.bn2.weight"
    assert ref["backbone.stages.0.down.weight"] == "backbone_3d.stage1.2.weight"
    assert ref["backbone.stages.1.norm.running_mean"] == "backbone_3d.stage2.1.running_mean"
    assert ref["backbone.height_pool.pos_embedding"] == "backbone_3d.app.pos_embedding.weight"
    assert ref["backbone.height_pool.attn.in_proj_weight"] == "backbone_3d.app.self_attn.in_proj_weight"

    # a state in the official layouts: depthwise (kz, ky, kx, C); dense convs in spconv 2.x layout, except
    # the stem conv stored spconv 1.x style (kz, ky, kx, C_in, C_out)
    official = to_reference(model.state_dict(), model, "openpcdet")
    assert official["backbone_3d.stage1.0.cffn_layers.0.conv_h.weight"].shape == (1, 1, 5, 4)
    official["backbone_3d.cpe.0.0.weight"] = official["backbone_3d.cpe.0.0.weight"].permute(1, 2, 3, 4, 0)
    result = from_reference(official, model, "openpcdet")
    assert result.clean, result.report()
    assert any("spconv 1.x" in r and "stem.conv_in" in r for r in result.relaid)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(result.state_dict[k], v), k

    # settings a state dict cannot show are named with the config change
    for kwargs, setting in [(dict(num_heads=2), "num_heads"), (dict(z_pad=0), "z_pad"),
                            (dict(pool_mode="masked"), "pool_mode"), (dict(pool_heads=4), "pool_heads"),
                            (dict(cwi_kernel=5, window=6), "window")]:
        other = nn.Module()
        other.backbone = ScatterFormer(8, 16, **{"num_layers": (2, 1), "window": 4, **kwargs})
        problems = compatibility_problems(other, "openpcdet", official)
        assert len(problems) == 1 and f"model.backbone.{setting}" in problems[0], problems
