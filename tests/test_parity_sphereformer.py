"""SphereFormer radial windows and relative-position index against the official code (fixture
``parity/sphereformer_windows``), the official exponential split against a float64 interval table, and the
batch (in)dependence of the two window origins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointwin.partition import (
    radial_rpe_index,
    radial_windows,
    sphereformer_range_bin,
    sphereformer_spherical,
)

from .conftest import SHARED_DATA

FIXTURE = SHARED_DATA / "parity" / "sphereformer_windows"
LEVELS = (1, 2, 3, 4, 5)

pytestmark = pytest.mark.usefixtures("one_thread")


def _fixture():
    if not FIXTURE.is_dir():
        pytest.skip(f"parity fixture {FIXTURE} not present (official SphereFormer windows, see ../shared/data/parity)")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    with np.load(FIXTURE / "inputs.npz", allow_pickle=False) as f:
        inputs = {k: torch.from_numpy(f[k]) for k in f.files}
    with np.load(FIXTURE / "outputs.npz", allow_pickle=False) as f:
        outputs = {k: torch.from_numpy(f[k]) for k in f.files}
    return cfg, inputs, outputs


def group_of_rows(partition, n: int) -> torch.Tensor:
    """(n,) group number of each row of a variable-length partition."""
    sizes = partition.offsets.diff()
    g = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    out = torch.full((n,), -1, dtype=torch.long)
    out[partition.index] = g
    assert bool((out >= 0).all())
    return out


def rows_in_different_groups(a: torch.Tensor, b: torch.Tensor) -> int:
    """Rows whose group under labelling ``a`` is not exactly their group under ``b`` (0 = same partition)."""
    a, b = a.long(), b.long()
    pair = torch.unique(torch.stack([a, b], 1), dim=0, return_inverse=True)[1]
    same_a = torch.unique(a, return_inverse=True)[1]
    same_b = torch.unique(b, return_inverse=True)[1]
    # a row is "identical" when its a-group and b-group hold exactly the same rows
    n_pair = torch.bincount(pair)[pair]
    return int(((n_pair != torch.bincount(same_a)[same_a]) | (n_pair != torch.bincount(same_b)[same_b])).sum())


def test_sphereseg_official_windows_per_level_match_fixture():
    """The shipped official config's radial window per level is the fixture's (2, 2, 120) x (2^(l-1), 2^(l-1), 1)."""
    cfg, _, _ = _fixture()
    from pointwin.config import load_config
    from pointwin.models.backbones3d.sphereseg import SphereSeg

    model_cfg = load_config("configs/nuscenes/sphereseg.yaml")["model"]["backbone"]
    kwargs = {k: v for k, v in model_cfg.items() if k != "type"}
    bb = SphereSeg(in_channels=4, **kwargs)
    for level in LEVELS:
        expected = tuple(cfg["window_size_sphere_per_level"][f"L{level}"])
        assert bb.radial_window_at(level - 1) == pytest.approx(expected), level
    assert bb.window_origin == "batch_min" and bb.rpe == "contextual" and bb.unet == "official"


@pytest.mark.parametrize("level", LEVELS)
def test_radial_windows_batch_min_equal_official(level):
    cfg, inputs, outputs = _fixture()
    xyz = inputs[f"xyz_L{level}"]
    window = cfg["window_size_sphere_per_level"][f"L{level}"]
    part = radial_windows(xyz, torch.zeros(xyz.shape[0], dtype=torch.long), window, origin="batch_min")
    ours = group_of_rows(part, xyz.shape[0])
    ref = outputs[f"ref_window_L{level}"]
    diff = rows_in_different_groups(ours, ref)
    print(f"L{level} batch_min: {diff} of {xyz.shape[0]} rows in a different window than the official grid "
          f"({int(ref.max()) + 1} official windows, {part.offsets.numel() - 1} ours)")
    assert diff == 0


@pytest.mark.parametrize("level", LEVELS)
def test_radial_windows_fixed_origin(level):
    """Fixed origin: pointwin's recorded grouping; differs from the official batch-min grid on most rows."""
    cfg, inputs, outputs = _fixture()
    xyz = inputs[f"xyz_L{level}"]
    window = cfg["window_size_sphere_per_level"][f"L{level}"]
    part = radial_windows(xyz, torch.zeros(xyz.shape[0], dtype=torch.long), window, origin="fixed")
    ours = group_of_rows(part, xyz.shape[0])
    assert rows_in_different_groups(ours, outputs[f"pw_window_L{level}"]) == 0
    moved = rows_in_different_groups(ours, outputs[f"ref_window_L{level}"])
    print(f"L{level} fixed origin vs official grid: {moved / xyz.shape[0]:.1%} of rows in another window")


@pytest.mark.parametrize("level", LEVELS)
def test_radial_rpe_index_equal_official(level):
    cfg, inputs, outputs = _fixture()
    xyz = inputs[f"xyz_L{level}"]
    window = cfg["window_size_sphere_per_level"][f"L{level}"]
    q, k = inputs[f"pairs_q_L{level}"], inputs[f"pairs_k_L{level}"]
    idx = radial_rpe_index(xyz, q, k, window, cfg["quant_grid_length"], cfg["a"], origin="batch_min")
    ref = outputs[f"ref_rpi_L{level}"].long()
    bad = (idx != ref).sum(0).tolist()
    print(f"L{level}: {q.numel()} pairs, mismatching (azimuth, polar, range) index: {bad}")
    assert bad == [0, 0, 0]
    assert int(idx.min()) >= 0 and int(idx.max()) <= 2 * cfg["quant_grid_length"] - 1


def test_batch_min_depends_on_batch_fixed_does_not():
    """The official grid changes a sample's windows when another sample joins the batch; the fixed one never."""
    _, inputs, _ = _fixture()
    a = inputs["xyz_L1"]
    b = a[:500] + torch.tensor([0.0, 0.0, 37.3])  # a batch mate seen from below: its polar angles are smaller
    both = torch.cat([a, b])
    bidx = torch.cat([torch.zeros(len(a), dtype=torch.long), torch.ones(len(b), dtype=torch.long)])
    alone = {o: group_of_rows(radial_windows(a, torch.zeros(len(a), dtype=torch.long), (2, 2, 120), o), len(a))
             for o in ("fixed", "batch_min")}
    batched = {o: group_of_rows(radial_windows(both, bidx, (2, 2, 120), o), len(both))[: len(a)]
               for o in ("fixed", "batch_min")}
    assert rows_in_different_groups(alone["fixed"], batched["fixed"]) == 0
    moved = rows_in_different_groups(alone["batch_min"], batched["batch_min"])
    print(f"batch_min: {moved / len(a):.1%} of sample 0's rows change window when sample 1 joins the batch")
    assert moved > 0


def _naive_bin(d: float, a: float) -> int:
    """Signed official bin from the interval table (float64): edges 1, 2, 4, 6, 10, 14, ... (x a)."""
    edges = []
    j = 0
    while True:
        lo_odd = 3 * 2 ** j - 2  # start of bin 2j+1
        lo_even = 2 ** (j + 2) - 2  # start of bin 2j+2
        edges += [lo_odd, lo_even]
        if lo_even > 1e6:
            break
        j += 1
    m = sum(1 for e in edges if e * a <= abs(d))
    return m if d >= 0 else -m - 1


def test_sphereformer_range_bin_matches_interval_table():
    a = 0.0125
    g = torch.Generator().manual_seed(0)
    d = torch.cat([(torch.rand(4000, generator=g, dtype=torch.float64) - 0.5) * 4,
                   (torch.rand(4000, generator=g, dtype=torch.float64) - 0.5) * 200])
    edges = torch.tensor([1, 2, 4, 6, 10, 14, 22, 30, 46, 62, 94, 126, 190, 254, 382, 510, 766, 1022, 1534,
                          2046, 3070, 4094, 6142, 8190, 12286, 16382], dtype=torch.float64) * a
    near = ((d.abs()[:, None] - edges).abs() < 1e-9).any(1)
    d = d[~near]
    got = sphereformer_range_bin(d, a)
    want = torch.tensor([_naive_bin(float(x), a) for x in d])
    assert torch.equal(got, want)
    # the documented values at the small edges
    pts = torch.tensor([0.0, 0.5, 1.5, 3.0, 5.0, 8.0, 12.0, -0.5, -1.5, -3.0], dtype=torch.float64) * a
    assert sphereformer_range_bin(pts, a).tolist() == [0, 0, 1, 2, 3, 4, 5, -1, -2, -3]


def test_sphereformer_spherical_convention():
    xyz = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1e-9, 0.0], [0.0, 0.0, 2.0]])
    s = sphereformer_spherical(xyz)
    assert s.dtype == torch.float32
    assert s[:, 0].tolist() == pytest.approx([180.0, 270.0, 0.0, 180.0], abs=1e-4)
    assert s[:, 1].tolist() == pytest.approx([90.0, 90.0, 90.0, 0.0], abs=1e-4)
    assert s[:, 2].tolist() == pytest.approx([1.0, 1.0, 1.0, 2.0])


# ---------------------------------------------------------------- the official model's pieces, float64 references
def _naive_official_attention(x, positions, batch, attn, voxel_size, origin="batch_min"):
    """SphereFormer's attention (cubic + radial heads, contextual RPE) by loops in float64, from the official
    formulas: windows floor((v - batch min) / w), in-window index floor(((v - min) mod w) / (w / L)) difference
    + L - 1, range index split(r_q - r_k) + L clamped to [0, 2L - 1]. ``origin="fixed"``: start 0 and azimuth
    atan2 mod 360 instead (pointwin's batch-independent grid)."""
    import math

    L, H, C = attn.quant_grid_length, attn.num_heads, attn.channels
    h, d = H // 2, C // H
    xd = x.double()
    W = {k: v.double() for k, v in attn.state_dict().items()}
    qkv = xd @ W["qkv.weight"].T + W["qkv.bias"]
    q = qkv[:, :C].reshape(-1, H, d) * d ** -0.5
    k, v = qkv[:, C:2 * C].reshape(-1, H, d), qkv[:, 2 * C:].reshape(-1, H, d)
    p = positions.double()
    sph = []
    for px, py, pz in p.tolist():
        az = math.degrees(math.atan2(py, px) + math.pi) if origin == "batch_min" else \
            math.degrees(math.atan2(py, px)) % 360.0
        sph.append([az, math.degrees(math.atan2(math.hypot(px, py), pz)), math.sqrt(px * px + py * py + pz * pz)])
    sph = torch.tensor(sph, dtype=torch.float64)
    out = torch.zeros(len(x), H, d, dtype=torch.float64)
    for heads, vals, window, name in ((slice(0, h), p, [c * s for c, s in zip(attn.cubic_window, voxel_size)], "cubic"),
                                      (slice(h, H), sph, list(attn.radial_window), "radial")):
        lo = vals.min(0).values if origin == "batch_min" else torch.zeros(3, dtype=torch.float64)
        w = torch.tensor(window, dtype=torch.float64)
        cell = torch.floor((vals - lo) / w).long()
        local = torch.floor(torch.remainder(vals - lo, w) / (w / L)).long()
        groups = {}
        for i in range(len(x)):
            groups.setdefault((int(batch[i]), *cell[i].tolist()), []).append(i)
        tq, tk, tv = (W[f"{name}_table_{t}"][:, :, :, :] for t in "qkv")
        for members in groups.values():
            for i in members:
                scores, values = [], []
                for j in members:
                    idx = (local[i] - local[j] + L - 1).tolist()
                    if name == "radial":
                        idx[2] = _naive_bin(float(vals[i, 2] - vals[j, 2]), attn.range_a) + L
                        idx = [min(max(a, 0), 2 * L - 1) for a in idx]
                    eq = sum(tq[idx[a], a] for a in range(3))
                    ek = sum(tk[idx[a], a] for a in range(3))
                    ev = sum(tv[idx[a], a] for a in range(3))
                    qi, kj = q[i, heads], k[j, heads]
                    scores.append((qi * (kj + eq)).sum(-1) + (kj * ek).sum(-1))
                    values.append(v[j, heads] + ev)
                wts = torch.softmax(torch.stack(scores), 0)  # (n, h)
                out[i, heads] = (wts[..., None] * torch.stack(values)).sum(0)
    return out.reshape(len(x), C) @ W["proj.weight"].T + W["proj.bias"]


def _shell_voxels(n=120, seed=0, batch_size=2):
    """Voxels of a ring of returns 3-12 m around the sensor (0.1 m grid), features and mean positions."""
    from pointwin.structures import SparseVoxels

    g = torch.Generator().manual_seed(seed)
    r = 3 + 9 * torch.rand(n, generator=g)
    az = torch.rand(n, generator=g) * 6.283
    z = -1.5 + 2 * torch.rand(n, generator=g)
    xyz = torch.stack([r * torch.cos(az), r * torch.sin(az), z], 1)
    origin = (-12.8, -12.8, -2.0)
    coords = torch.floor((xyz - torch.tensor(origin)) / 0.1).long()
    b = torch.arange(n) % batch_size
    rows = torch.cat([b[:, None], coords.flip(1)], 1)
    rows, first = np.unique(rows.numpy(), axis=0, return_index=True)
    rows, xyz = torch.from_numpy(rows).int(), xyz[torch.from_numpy(first)]
    feats = torch.cat([xyz, torch.randn(len(xyz), 5, generator=g)], 1)
    return SparseVoxels(feats, rows, (40, 256, 256), batch_size, (0.1, 0.1, 0.1), origin), xyz


@pytest.mark.parametrize("origin", ["batch_min", "fixed"])
def test_contextual_sphere_attention_matches_float64_loops(origin):
    from pointwin.models.backbones3d.sphereseg import SphereAttention

    torch.manual_seed(0)
    vox, xyz = _shell_voxels()
    attn = SphereAttention(8, 4, (6, 6, 6), (20.0, 20.0, 120.0), rpe="contextual", window_origin=origin,
                           quant_grid_length=6, range_a=0.05)
    for t in attn.parameters():
        torch.nn.init.normal_(t, std=0.3)
    x = torch.randn(len(xyz), 8)
    with torch.no_grad():
        got = attn(vox, x, xyz)
    want = _naive_official_attention(x, xyz, vox.batch_idx, attn, vox.voxel_size, origin)
    diff = float((got.double() - want).abs().max())
    print(f"contextual SphereAttention ({origin}) vs float64 loops: max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_group_pairs_and_parent_positions():
    from pointwin.models.backbones3d.sphereseg import group_pairs, parent_positions
    from pointwin.ops import SparseConv3d

    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 7, (40,), generator=g)
    part = radial_windows(torch.randn(40, 3, generator=g), labels % 2, (90.0, 90.0, 1.0))
    qr, kr = group_pairs(part)
    rows = group_of_rows(part, 40)
    want = {(i, j) for i in range(40) for j in range(40) if rows[i] == rows[j]}
    assert set(zip(qr.tolist(), kr.tolist(), strict=True)) == want and len(qr) == len(want)

    vox, xyz = _shell_voxels(300, seed=4)
    y = SparseConv3d(8, 8, 2, stride=2, bias=False, indice_key="t")(vox)
    got = parent_positions(vox, y, xyz.double())
    buckets: dict = {}
    for (b, z, yy, x), p in zip(vox.coords.tolist(), xyz.double(), strict=True):
        buckets.setdefault((b, z // 2, yy // 2, x // 2), []).append(p)
    for row, key in enumerate(map(tuple, y.coords.tolist())):
        assert torch.allclose(got[row], torch.stack(buckets[key]).mean(0))


def test_mean_vfe_is_the_voxel_mean():
    from pointwin.models.vfe import MeanVFE
    from pointwin.structures import Points

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(500, 4, generator=g) * torch.tensor([4.0, 4.0, 2.0, 255.0])
    vfe = MeanVFE((0.5, 0.5, 0.5), (0.0, 0.0, 0.0, 4.0, 4.0, 2.0), 4)
    vox = vfe(Points(pts, torch.zeros(500, dtype=torch.long), 1))
    cell = torch.floor(pts[:, :3] / 0.5).long()
    for row, (_, z, y, x) in enumerate(vox.coords.tolist()):
        m = (cell[:, 0] == x) & (cell[:, 1] == y) & (cell[:, 2] == z)
        assert torch.allclose(vox.feats[row], pts[m].mean(0), atol=1e-4)
    scaled = MeanVFE((0.5, 0.5, 0.5), (0.0, 0.0, 0.0, 4.0, 4.0, 2.0), 4, feature_scale=(1, 1, 1, 1 / 255))
    out = scaled(Points(pts, torch.zeros(500, dtype=torch.long), 1))
    assert torch.allclose(out.feats, vox.feats * torch.tensor([1, 1, 1, 1 / 255]))
    with pytest.raises(ValueError, match="feature_scale"):
        MeanVFE((0.5, 0.5, 0.5), (0.0, 0.0, 0.0, 4.0, 4.0, 2.0), 4, feature_scale=(1, 1))


def _official_segmentor(**backbone):
    from pointwin.config import load_config
    from pointwin.models import build_model

    cfg = load_config("configs/nuscenes/sphereseg.yaml")["model"]
    cfg["backbone"].update(backbone)
    return build_model(cfg)


def test_sphereformer_converter_key_map_and_refusals():
    from pointwin.export.converters import build_keymap, from_reference, to_reference

    model = _official_segmentor()
    km = build_keymap(model, "sphereformer")
    assert km.pointwin_only == []
    ref = to_reference(model.state_dict(), model, "sphereformer")
    # names of the official Semantic model (model/unet_spherical_transformer.py), 5 nested UBlocks
    for key in ("input_conv.0.weight", "unet.blocks.block0.conv_branch.0.running_var",
                "unet.blocks.block1.conv_branch.5.weight", "unet.u.u.u.u.blocks.block1.conv_branch.2.weight",
                "unet.transformer_block.attn.relative_pos_query_table",
                "unet.u.u.u.u.transformer_block.attn.relative_pos_value_table_sphere",
                "unet.u.transformer_block.mlp.fc2.bias", "unet.conv.0.weight", "unet.u.u.u.conv.2.weight",
                "unet.deconv.2.weight", "unet.blocks_tail.block0.i_branch.0.weight",
                "unet.u.u.u.blocks_tail.block1.conv_branch.3.bias", "output_layer.0.running_mean", "linear.weight"):
        assert key in ref, key
    assert not any(k.startswith("unet.u.u.u.u.conv.") or k.startswith("unet.u.u.u.u.blocks_tail") for k in ref)
    assert ref["unet.transformer_block.attn.relative_pos_query_table"].shape == (47, 3, 1, 16)
    assert ref["unet.transformer_block.attn.relative_pos_query_table_sphere"].shape == (48, 3, 1, 16)
    w = model.backbone.stem_conv.weight
    assert torch.equal(ref["input_conv.0.weight"], w.permute(0, 3, 2, 1, 4))
    back = from_reference(ref, model, "sphereformer")
    assert back.clean, back.report()
    assert torch.equal(back.state_dict["backbone.stem_conv.weight"], w)
    pw = _official_segmentor(window_origin="fixed", positions="centre")
    problems = from_reference(ref, pw, "sphereformer").incompatible
    assert any("window_origin" in p for p in problems) and any("positions" in p for p in problems)


def test_official_sphereseg_forward_backward():
    from pointwin.models.backbones3d.sphereseg import SphereSeg

    torch.manual_seed(0)
    vox, _ = _shell_voxels(250, seed=5)
    vox = vox.replace(vox.feats[:, :4])
    kw = dict(channels=(8, 16, 16), num_heads=(2, 2, 2), cubic_window=(6, 6, 6), radial_window=(8.0, 8.0, 120.0),
              radial_window_scale=(2.0, 2.0), rpe="contextual", window_origin="batch_min", unet="official",
              positions="input_mean", ffn_ratio=4.0, drop_path=0.3)
    net = SphereSeg(4, **kw)
    out = net(vox)
    assert out.feats.shape == (vox.num_voxels, 8) and torch.equal(out.coords, vox.coords)
    out.feats.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.enc_attn[0].attn.radial_table_q.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        a = net(vox).feats
        b = net(vox).feats
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unet"):
        SphereSeg(4, unet="other")
    with pytest.raises(ValueError, match="window_origin"):
        SphereSeg(4, window_origin="mean")


def test_shipped_vfe_voxels_equal_official_level1_positions():
    """The shipped config's MeanVFE (cells from the cloud minimum) gives the official level-1 voxels: the same
    count and the same mean positions (``xyz_L1``) on the real keyframe."""
    _, inputs, _ = _fixture()
    from pointwin.config import load_config
    from pointwin.models import build_model
    from pointwin.structures import Points

    frame = SHARED_DATA / "nuscenes" / "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
    if not frame.exists():
        pytest.skip(f"{frame} not present")
    pts = torch.from_numpy(np.fromfile(frame, dtype=np.float32).reshape(-1, 5)[:, :4].copy())
    vfe = build_model(load_config("configs/nuscenes/sphereseg.yaml")["model"]).vfe
    vox = vfe(Points(pts, torch.zeros(len(pts), dtype=torch.long), 1))
    # an official voxel's mean position lies inside its cell: map each to pointwin's cell of that level (cells
    # from the range minimum, the sample shifted as MeanVFE does) and compare positions cell by cell
    r0 = torch.tensor(vfe.point_cloud_range[:3], dtype=torch.float64)
    v = torch.tensor(vfe.voxel_size, dtype=torch.float64)
    shift = torch.remainder(pts[:, :3].double().amin(0) - r0, v * vfe.cell_align)

    def compare(level, x, pos):
        ref = inputs[f"xyz_L{level}"].double()
        size = v * 2 ** (level - 1)
        cell = torch.floor((ref - r0 - shift) / size).long().flip(1)  # (z, y, x)
        ours = {tuple(c): i for i, c in enumerate(x.coords[:, 1:].tolist())}
        rows = [ours.get(tuple(c), -1) for c in cell.tolist()]
        missing = rows.count(-1)
        found = torch.tensor([r for r in rows if r >= 0])
        err = (pos[found].double() - ref[torch.tensor(rows) >= 0]).abs().amax(1)
        off = int((err > 1e-4).sum())
        print(f"level {level}: {len(pos)} voxels ours, {len(ref)} official, {missing} official cells not ours, "
              f"{off} positions off by > 1e-4 m (max {float(err.max()):.1e}), the rest within "
              f"{float(err[err <= 1e-4].max()):.1e} m")
        # a point within float32 rounding of a cell border may join the neighbouring voxel (parity README)
        assert abs(len(pos) - len(ref)) <= 1 and missing <= 1 and off <= 4

    compare(1, vox, vox.feats[:, :3])
    # deeper levels: the U-Net's stride-2 convs and parent positions (mean of the children) give xyz_L2..L5
    from pointwin.models.backbones3d.sphereseg import parent_positions
    from pointwin.ops import SparseConv3d

    x, pos = vox, vox.feats[:, :3].double()
    for level in (2, 3, 4, 5):
        y = SparseConv3d(4, 4, 2, stride=2, bias=False, indice_key=f"l{level}")(x)
        pos = parent_positions(x, y, pos)
        compare(level, y, pos)
        x = y
    vfe.cell_origin = "range"
    n_range = vfe(Points(pts, torch.zeros(len(pts), dtype=torch.long), 1)).num_voxels
    print(f"cells from the range minimum instead: {n_range} voxels (official {len(inputs['xyz_L1'])})")
    assert n_range != len(inputs["xyz_L1"])


def test_contextual_rpe_attention_gradients():
    """float64 gradcheck of the pair attention (q, k, v and the three tables), with chunking of the gathers."""
    from pointwin.models.backbones3d.sphereseg import contextual_rpe_attention, group_pairs

    g = torch.Generator().manual_seed(2)
    n, h, d, L = 9, 2, 3, 4
    part = radial_windows(torch.randn(n, 3, generator=g, dtype=torch.float64), torch.zeros(n, dtype=torch.long),
                          (180.0, 90.0, 100.0))
    qr, kr = group_pairs(part)
    rel = torch.randint(0, L, (len(qr), 3), generator=g)
    args = [torch.randn(n, h, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    tables = [torch.randn(L, 3, h, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]

    def f(q, k, v, tq, tk, tv):
        return contextual_rpe_attention(q, k, v, qr, kr, rel, tq, tk, tv, chunk=7)

    assert torch.autograd.gradcheck(f, (*args, *tables))


@pytest.mark.parametrize("cin,cout", [(6, 6), (12, 6)])
def test_preact_residual_block_matches_dense_float64(cin, cout):
    """The official ResidualBlock wiring (BN-ReLU-conv twice, 1x1 conv on the identity when the width changes)
    against dense float64 conv3d on the zero-filled grid, read at the active sites."""
    import torch.nn.functional as F

    from pointwin.models.backbones3d.sphereseg import PreActResBlock
    from tests.test_models import random_voxels

    torch.manual_seed(0)
    vox = random_voxels((5, 9, 9), (90, 40), cin, seed=cin)
    vox = vox.replace(vox.feats.double())
    blk = PreActResBlock(cin, cout).double().eval()
    for bn in (blk.bn1, blk.bn2):
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.2)
    with torch.no_grad():
        got = blk(vox).feats
    c = vox.coords.long()

    def at_sites(dense):  # (B, C, Z, Y, X) -> (N, C)
        return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]

    def dense_of(feats):
        return vox.replace(feats).dense()

    def conv(feats, w):
        k = w.shape[1]
        return at_sites(F.conv3d(dense_of(feats), w.permute(0, 4, 1, 2, 3), padding=k // 2))

    def bn(x, m):
        return (x - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias

    with torch.no_grad():
        y = conv(torch.relu(bn(vox.feats, blk.bn1)), blk.conv1.weight)
        y = conv(torch.relu(bn(y, blk.bn2)), blk.conv2.weight)
        ident = vox.feats if blk.skip is None else conv(vox.feats, blk.skip.weight)
    assert (blk.skip is None) == (cin == cout)
    assert blk.bn1.eps == pytest.approx(1e-4)
    torch.testing.assert_close(got, y + ident)


def _official_semantic_forward(W, feats, coords, batch_size, cfg):
    """The official ``Semantic`` forward written against its checkpoint names, float64, dense convs on an
    (x, y, z)-ordered grid with the spconv (C_out, kx, ky, kz, C_in) kernels as stored, submanifold = dense conv
    read at the active sites; attention by :func:`_naive_official_attention`. ``coords`` (N, 4) = (b, x, y, z)."""
    import types

    import torch.nn.functional as F

    def dense(f, c, shape):
        out = f.new_zeros(batch_size, f.shape[1], *shape)
        out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = f
        return out

    def subm(f, c, shape, w):
        k = w.shape[1]
        y = F.conv3d(dense(f, c, shape), w.permute(0, 4, 1, 2, 3), padding=k // 2)
        return y[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]

    def bn(f, p):
        return (f - W[p + "running_mean"]) / torch.sqrt(W[p + "running_var"] + cfg["bn_eps"]) * W[p + "weight"] \
            + W[p + "bias"]

    def ln(f, p):
        return F.layer_norm(f, f.shape[1:], W[p + "weight"], W[p + "bias"])

    def res(f, c, shape, p):
        y = subm(torch.relu(bn(f, p + "conv_branch.0.")), c, shape, W[p + "conv_branch.2.weight"])
        y = subm(torch.relu(bn(y, p + "conv_branch.3.")), c, shape, W[p + "conv_branch.5.weight"])
        ident = subm(f, c, shape, W[p + "i_branch.0.weight"]) if p + "i_branch.0.weight" in W else f
        return y + ident

    def ublock(level, f, c, shape, pos, vsize):
        p = "unet." + "u." * level
        for r in range(cfg["block_reps"]):
            f = res(f, c, shape, p + f"blocks.block{r}.")
        t = p + "transformer_block."
        names = {"qkv.weight": "attn.qkv.weight", "qkv.bias": "attn.qkv.bias", "proj.weight": "attn.proj.weight",
                 "proj.bias": "attn.proj.bias"}
        for kind, suffix in (("cubic", ""), ("radial", "_sphere")):
            for short, full in (("q", "query"), ("k", "key"), ("v", "value")):
                names[f"{kind}_table_{short}"] = f"attn.relative_pos_{full}_table{suffix}"
        window = (cfg["radial_window"][0] * 2 ** level, cfg["radial_window"][1] * 2 ** level, cfg["radial_window"][2])
        attn = types.SimpleNamespace(quant_grid_length=24, num_heads=cfg["num_heads"][level], channels=f.shape[1],
                                     cubic_window=(6, 6, 6), radial_window=window, range_a=0.0125,
                                     state_dict=lambda: {k: W[t + v] for k, v in names.items()})
        h = _naive_official_attention(ln(f, t + "norm1."), pos, c[:, 0], attn, vsize)
        f = f + h.to(f.dtype)
        m = ln(f, t + "norm2.") @ W[t + "mlp.fc1.weight"].T + W[t + "mlp.fc1.bias"]
        f = f + F.gelu(m) @ W[t + "mlp.fc2.weight"].T + W[t + "mlp.fc2.bias"]
        if p + "conv.2.weight" not in W:
            return f
        w = W[p + "conv.2.weight"]
        down = F.conv3d(dense(torch.relu(bn(f, p + "conv.0.")), c, shape), w.permute(0, 4, 1, 2, 3), stride=2)
        occ = F.conv3d(dense(f.new_ones(len(c), 1), c, shape), f.new_ones(1, 1, 2, 2, 2), stride=2)
        pc = torch.nonzero(occ[:, 0] > 0)  # (b, x, y, z), sorted
        pshape = tuple(occ.shape[2:])
        g = down[pc[:, 0], :, pc[:, 1], pc[:, 2], pc[:, 3]]
        key = {tuple(r): i for i, r in enumerate(pc.tolist())}
        parent = torch.tensor([key.get((b, x // 2, y // 2, z // 2), -1) for b, x, y, z in c.tolist()])
        ok = parent >= 0
        ppos = torch.zeros(len(pc), 3, dtype=pos.dtype).index_add_(0, parent[ok], pos[ok])
        ppos /= torch.zeros(len(pc), dtype=pos.dtype).index_add_(0, parent[ok], torch.ones(int(ok.sum()),
                                                                  dtype=pos.dtype))[:, None]
        g = ublock(level + 1, g, pc, pshape, ppos, tuple(2 * v for v in vsize))
        wi = W[p + "deconv.2.weight"]  # (C_out, kx, ky, kz, C_in): out[2p + k] += W[k] x[p]
        up = F.conv_transpose3d(dense(torch.relu(bn(g, p + "deconv.0.")), pc, pshape), wi.permute(4, 0, 1, 2, 3),
                                stride=2)
        up = F.pad(up, [0, shape[2] - up.shape[4], 0, shape[1] - up.shape[3], 0, shape[0] - up.shape[2]])
        f = torch.cat([f, up[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]], 1)
        for r in range(cfg["block_reps"]):
            f = res(f, c, shape, p + f"blocks_tail.block{r}.")
        return f

    shape = tuple(int(v) + 1 for v in coords[:, 1:].amax(0))
    f = subm(feats, coords, shape, W["input_conv.0.weight"])
    f = ublock(0, f, coords, shape, feats[:, :3], cfg["voxel_size"])
    f = torch.relu(bn(f, "output_layer.0."))
    return f @ W["linear.weight"].T + W["linear.bias"]


def test_official_network_through_converter_matches_float64_reference():
    """Random weights under the official names -> ``pointwin convert --from sphereformer`` -> SphereSeg's logits
    equal an independent float64 forward of the official network written against those names (dense convs with
    the spconv kernels as stored, so the kernel-axis swap, inverse conv, concat order and table names are all
    checked)."""
    from pointwin.export.converters import load_reference_state, to_reference
    from pointwin.models import build_model

    torch.manual_seed(0)
    cfg = {"block_reps": 2, "bn_eps": 1e-4, "num_heads": (2, 2, 2), "radial_window": (40.0, 40.0, 120.0),
           "voxel_size": (0.1, 0.1, 0.1)}
    model_cfg = {"type": "Segmentor", "class_names": ["a", "b", "c"], "point_cloud_range": [0, 0, 0, 1.2, 1.2, 0.8],
                 "voxel_size": list(cfg["voxel_size"]), "vfe": {"type": "MeanVFE", "num_point_features": 4},
                 "backbone": {"type": "SphereSeg", "channels": [8, 16, 16], "num_heads": list(cfg["num_heads"]),
                              "attention_levels": [0, 1, 2], "cubic_window": [6, 6, 6],
                              "radial_window": list(cfg["radial_window"]), "radial_window_scale": [2.0, 2.0],
                              "rpe": "contextual", "window_origin": "batch_min", "unet": "official", "block_reps": 2,
                              "bn_eps": 1e-4, "ffn_ratio": 4.0, "drop_path": 0.3, "positions": "input_mean"},
                 "head": {"type": "SegHead", "ignore_index": -1}}
    model = build_model(model_cfg).double().eval()
    g = torch.Generator().manual_seed(7)
    ref = {k: (torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.3 if v.is_floating_point() else v)
           for k, v in to_reference(model.state_dict(), model, "sphereformer").items()}
    for k in ref:
        if k.endswith("running_var"):
            ref[k] = ref[k].abs() + 0.5
    load_reference_state(model, ref, "sphereformer")
    # 2 samples of voxels on a 12 x 12 x 8 grid; the first three feature channels (the positions) lie on a ring
    # 3-6 m around the sensor, independent of the grid cell, so radial windows hold several voxels
    coords = torch.cat([torch.stack([torch.full((n,), b), *(torch.randperm(12 * 12 * 8, generator=g)[:n]
                                                             .div(d, rounding_mode="floor") % m for d, m in
                                                             ((96, 12), (8, 12), (1, 8)))], 1)
                        for b, n in ((0, 70), (1, 50))])  # (b, x, y, z)
    coords = torch.unique(coords, dim=0)
    n = len(coords)
    r, az, z, inten = torch.rand(4, n, generator=g, dtype=torch.float64)
    r, az, z = 3 + 3 * r, az * 6.28, z - 0.5
    pos = torch.stack([r * torch.cos(az), r * torch.sin(az), z], 1)
    feats = torch.cat([pos, inten[:, None]], 1)
    from pointwin.structures import SparseVoxels

    vox = SparseVoxels(feats, torch.cat([coords[:, :1], coords[:, 1:].flip(1)], 1).int(), (8, 12, 12), 2,
                       (0.1, 0.1, 0.1), (0.0, 0.0, 0.0))
    with torch.no_grad():
        ours = model.head.cls(model.backbone(vox).feats)
        want = _official_semantic_forward(ref, feats, coords.long(), 2, cfg)
    diff = float((ours - want).abs().max())
    print(f"official SphereFormer network (3 levels, random weights) vs float64 reference: max abs diff {diff:.1e} "
          f"(|logits| max {float(want.abs().max()):.2f})")
    assert diff < 1e-8 * max(1.0, float(want.abs().max()))
    # the checks bite: the stem kernel copied without the (kx, ky, kz) -> (kz, ky, kx) swap changes the logits
    with torch.no_grad():
        model.backbone.stem_conv.weight.copy_(ref["input_conv.0.weight"])
        assert float((model.head.cls(model.backbone(vox).feats) - want).abs().max()) > 1e-3
