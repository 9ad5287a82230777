"""ConDaFormer: tri-plane windows (golden), contextual RPE against float64 loops, block and backbone checks."""

from __future__ import annotations

import pytest
import torch

from pointwin.nn.condaformer import (
    ConDaFormerBlock,
    DisassembledAttention,
    contextual_rpe_attention,
    dft_basis,
)
from pointwin.partition import cubic_windows
from pointwin.partition.planes import plane_shift, plane_window, plane_windows, window_local_coords
from pointwin.structures import SparseVoxels
from tests.test_ptv3 import majority_accuracy, overfit

pytestmark = pytest.mark.usefixtures("one_thread")


def T(values):
    return torch.tensor(values, dtype=torch.int64)


# (b, z, y, x) of the hand-worked examples below
GOLDEN = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 2],
                       [1, 0, 0, 0]], dtype=torch.int32)


def test_plane_window_sizes_and_shifts():
    assert plane_window((4, 5, 6), "xy") == (4, 5, 1)
    assert plane_window((4, 5, 6), "xz") == (4, 1, 6)
    assert plane_window((4, 5, 6), "yz") == (1, 5, 6)
    assert plane_shift(5, "xz", True) == (2, 0, 2)
    assert plane_shift(5, "xz", False) == (0, 0, 0)
    with pytest.raises(ValueError, match="plane must be one of"):
        plane_window(4, "zz")


def test_plane_windows_golden():
    # Window (2, 2, 2), no shift. Window ids (b, z//wz, y//wy, x//wx), groups sorted by that key, voxels
    # inside a group by (z, y, x).
    # xy (2, 2, 1): ids 0,1,2 -> (0,0,0,0); 5 -> (0,0,0,1); 3,4 -> (0,1,0,0); 6 -> sample 1.
    # xz (2, 1, 2): ids 0,1,3 -> (0,0,0,0); 5 -> (0,0,0,1); 2,4 -> (0,0,1,0); 6.
    # yz (1, 2, 2): ids 0,2,3 -> x 0; 1,4 -> x 1; 5 -> x 2; 6.
    xy, xz, yz = (p.check() for p in plane_windows(GOLDEN, (2, 2, 4), 2))
    assert torch.equal(xy.index, T([0, 1, 2, 5, 3, 4, 6])) and torch.equal(xy.offsets, T([0, 3, 4, 6, 7]))
    assert torch.equal(xz.index, T([0, 1, 3, 5, 2, 4, 6])) and torch.equal(xz.offsets, T([0, 3, 4, 6, 7]))
    assert torch.equal(yz.index, T([0, 2, 3, 1, 4, 5, 6])) and torch.equal(yz.offsets, T([0, 3, 5, 6, 7]))


def test_plane_windows_shifted_golden():
    # Shifted: in-plane axes move by 1 (half of 2), the thin axis not.
    # xy key (b, z, (y+1)//2, (x+1)//2): 0 -> (0,0,0,0); 1 and 5 -> (0,0,0,1); 2 -> (0,0,1,0); 3 -> (0,1,0,0);
    # 4 -> (0,1,1,1); 6.
    xy, xz, yz = (p.check() for p in plane_windows(GOLDEN, (2, 2, 4), 2, shifted=True))
    assert torch.equal(xy.index, T([0, 1, 5, 2, 3, 4, 6])) and torch.equal(xy.offsets, T([0, 1, 3, 4, 5, 6, 7]))
    # xz key (b, (z+1)//2, y, (x+1)//2): 0 -> (0,0,0,0); 1,5 -> (0,0,0,1); 3 -> (0,1,0,0); 2 -> (0,0,1,0);
    # 4 -> (0,1,1,1). Sorted: [0], [1,5], [2], [3], [4], [6].
    assert torch.equal(xz.index, T([0, 1, 5, 2, 3, 4, 6])) and torch.equal(xz.offsets, T([0, 1, 3, 4, 5, 6, 7]))
    # yz key (b, (z+1)//2, (y+1)//2, x): 0 -> (0,0,0,0); 1 -> (0,0,0,1); 5 -> (0,0,0,2); 2 -> (0,0,1,0);
    # 3 -> (0,1,0,0); 4 -> (0,1,1,1). Sorted: [0], [1], [5], [2], [3], [4], [6].
    assert torch.equal(yz.index, T([0, 1, 5, 2, 3, 4, 6])) and torch.equal(yz.offsets, T([0, 1, 2, 3, 4, 5, 6, 7]))
    local = window_local_coords(GOLDEN, plane_window(2, "xy"), plane_shift(2, "xy", True))
    # ((x+1)%2, (y+1)%2, 0): id 5 at x = 2 -> 1; id 4 at (1, 1, 1) -> (0, 0, 0)
    assert local.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0], [1, 1, 0]]


def test_plane_windows_are_cubic_windows_of_the_planes():
    g = torch.Generator().manual_seed(0)
    lin = torch.randperm(6 * 9 * 9, generator=g)[:150]
    coords = torch.stack([lin % 2, lin // 81, (lin // 9) % 9, lin % 9], 1).int()
    for shifted in (False, True):
        parts = plane_windows(coords, (6, 9, 9), (4, 3, 2), shifted)
        for p, part in zip(("xy", "xz", "yz"), parts, strict=True):
            ref = cubic_windows(coords, (6, 9, 9), plane_window((4, 3, 2), p), plane_shift((4, 3, 2), p, shifted))
            assert part.check().equal(ref)
    # one voxel thick: inside any xy group all voxels share z
    xy = plane_windows(coords, (6, 9, 9), 4)[0]
    gid = xy.slot_group()
    z = coords[xy.index, 1].long()
    assert torch.equal(z, z[xy.offsets[:-1]][gid])


def test_dft_basis_reconstructs_any_table():
    for w in (1, 2, 3, 6):
        omega, cm, sm = dft_basis(w, dtype=torch.float64)
        table = torch.randn(2 * w - 1, 5, dtype=torch.float64)
        A, B = cm @ table, sm @ table
        r = torch.arange(-(w - 1), w, dtype=torch.float64)
        rec = torch.cos(r[:, None] * omega) @ A + torch.sin(r[:, None] * omega) @ B
        torch.testing.assert_close(rec, table, atol=1e-12, rtol=0)


def naive_rpe_attention(q, k, v, coords, window, shift, tq, tk, tv, scale):
    """float64 loops: group by window id, softmax of s q.k + s q.Tq[r] + k.Tk[r], values v + Tv[r]."""
    q, k, v = q.double(), k.double(), v.double()
    N, H, D = q.shape
    c = (tq.shape[0] - 1) // 2
    groups: dict[tuple, list[int]] = {}
    xyz = coords[:, [3, 2, 1]].tolist()
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        key = (b,) + tuple((p + s) // w for p, s, w in zip((x, y, z), shift, window))
        groups.setdefault(key, []).append(i)
    out = torch.zeros(N, H, D, dtype=torch.float64)
    for members in groups.values():
        for i in members:
            for h in range(H):
                logits, vals = [], []
                for j in members:
                    r = [xyz[i][a] - xyz[j][a] for a in range(3)]
                    lg = scale * torch.dot(q[i, h], k[j, h])
                    val = v[j, h].clone()
                    for a in range(3):
                        lg = lg + scale * torch.dot(q[i, h], tq[r[a] + c, a, h].double()) + torch.dot(
                            k[j, h], tk[r[a] + c, a, h].double())
                        val = val + tv[r[a] + c, a, h].double()
                    logits.append(lg)
                    vals.append(val)
                a_ = torch.softmax(torch.stack(logits), 0)
                out[i, h] = (a_[:, None] * torch.stack(vals)).sum(0)
    return out


def random_grid(n, shape, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    Z, Y, X = shape
    lin = torch.randperm(batch * Z * Y * X, generator=g)[:n]
    b, rest = lin // (Z * Y * X), lin % (Z * Y * X)
    return torch.stack([b, rest // (Y * X), (rest // X) % Y, rest % X], 1).int()


@pytest.mark.parametrize("window,shift", [((3, 3, 3), (0, 0, 0)), ((3, 2, 4), (1, 1, 2)), ((4, 4, 1), (2, 2, 0))])
def test_contextual_rpe_matches_float64_loops(window, shift):
    coords = random_grid(90, (5, 7, 7), seed=sum(window))
    g = torch.Generator().manual_seed(1)
    N, H, D = coords.shape[0], 2, 4
    q, k, v = (torch.randn(N, H, D, generator=g) for _ in range(3))
    L = 2 * max(window) + 1  # tables may be larger than the window (centre-aligned)
    tq, tk, tv = (torch.randn(L, 3, H, D, generator=g) * 0.5 for _ in range(3))
    part = cubic_windows(coords, (5, 7, 7), window, shift)
    local = window_local_coords(coords, window, shift)
    out = contextual_rpe_attention(q, k, v, part, local, window, tq, tk, tv, scale=D ** -0.5)
    ref = naive_rpe_attention(q, k, v, coords, window, shift, tq, tk, tv, D ** -0.5)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    # without tables it is plain group attention
    plain = contextual_rpe_attention(q, k, v, part, local, window, None, None, None)
    zero = torch.zeros_like(tq)
    torch.testing.assert_close(plain.double(), naive_rpe_attention(q, k, v, coords, window, shift, zero, zero, zero,
                                                                   D ** -0.5), atol=2e-5, rtol=1e-5)


def test_disassembled_attention_heads_follow_their_planes():
    """Without LSE, head group p equals the float64 loop over plane p's windows with the shared tables."""
    torch.manual_seed(0)
    coords = random_grid(100, (4, 8, 8), seed=3)
    C, H = 24, 6
    for shifted in (False, True):
        attn = DisassembledAttention(C, H, window=(4, 3, 2), shifted=shifted, lse=False).double()
        x = torch.randn(coords.shape[0], C, dtype=torch.float64)
        vox = SparseVoxels(x, coords, (4, 8, 8), 2)
        with torch.no_grad():
            out = attn(vox)
            q, k, v = attn.qkv(x).view(-1, 3, H, C // H).unbind(1)
            heads = []
            for p_i, p in enumerate(("xy", "xz", "yz")):
                hs = slice(2 * p_i, 2 * p_i + 2)
                heads.append(naive_rpe_attention(q[:, hs], k[:, hs], v[:, hs], coords, plane_window((4, 3, 2), p),
                                                 plane_shift((4, 3, 2), p, shifted), attn.q_table, attn.k_table,
                                                 attn.v_table, (C // H) ** -0.5))
            ref = attn.proj(torch.cat(heads, 1).reshape(-1, C))
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def test_block_forward_backward_and_gradients():
    torch.manual_seed(0)
    coords = random_grid(120, (4, 10, 10), seed=4)
    blk = ConDaFormerBlock(24, 3, window=4, shifted=True, ffn_ratio=2.0)
    x = torch.randn(coords.shape[0], 24, requires_grad=True)
    out = blk(SparseVoxels(x, coords, (4, 10, 10), 2))
    assert out.feats.shape == x.shape and torch.isfinite(out.feats).all()
    (out.feats * torch.randn_like(out.feats)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in blk.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_block_eval_determinism_and_permutation():
    torch.manual_seed(0)
    coords = random_grid(150, (4, 10, 10), seed=5)
    blk = ConDaFormerBlock(24, 3, window=3, shifted=False).eval()
    x = torch.randn(coords.shape[0], 24)
    with torch.no_grad():
        a = blk(SparseVoxels(x, coords, (4, 10, 10), 2)).feats
        b = blk(SparseVoxels(x, coords, (4, 10, 10), 2)).feats
        perm = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(9))
        c = blk(SparseVoxels(x[perm], coords[perm], (4, 10, 10), 2)).feats
    assert torch.equal(a, b)
    torch.testing.assert_close(c, a[perm], atol=1e-5, rtol=1e-5)


def test_bad_head_count_raises():
    with pytest.raises(ValueError, match="multiple of 3"):
        DisassembledAttention(32, 4)
    with pytest.raises(ValueError, match="larger than the tables"):
        coords = random_grid(10, (4, 4, 4))
        q = torch.randn(10, 1, 2)
        contextual_rpe_attention(q, q, q, cubic_windows(coords, (4, 4, 4), 4), window_local_coords(coords, (4,) * 3,
                                 (0,) * 3), (4, 4, 4), torch.zeros(3, 3, 1, 2), None, None)



# -------------------------------------------------------------------------------------------------------
# Backbone
# -------------------------------------------------------------------------------------------------------
def tiny_condaformer(**kw):
    from pointwin.models.backbones3d import ConDaFormerSeg

    args = dict(base_channels=12, enc_channels=(12, 24), enc_depths=(2, 1), enc_num_heads=(3, 3),
                dec_channels=(12, 18), dec_depths=(1, 0), dec_num_heads=(3, 3), window=3, ffn_ratio=2.0,
                drop_path=0.0)
    args.update(kw)
    return ConDaFormerSeg(8, **args)


def test_backbone_forward_backward_permutation_and_determinism():
    torch.manual_seed(0)
    model = tiny_condaformer()
    coords = random_grid(110, (6, 10, 10), seed=6)
    x = torch.randn(coords.shape[0], 8, requires_grad=True)
    out = model(SparseVoxels(x, coords, (6, 10, 10), 2))
    assert out.feats.shape == (coords.shape[0], 12) and torch.equal(out.coords, coords)
    (out.feats * torch.randn_like(out.feats)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    perm = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = model(SparseVoxels(x.detach(), coords, (6, 10, 10), 2)).feats
        b = model(SparseVoxels(x.detach(), coords, (6, 10, 10), 2)).feats
        c = model(SparseVoxels(x.detach()[perm], coords[perm], (6, 10, 10), 2)).feats
        m = coords[:, 0] == 1
        coords1 = coords[m].clone()
        coords1[:, 0] = 0
        alone = model(SparseVoxels(x.detach()[m], coords1, (6, 10, 10), 1)).feats
    assert torch.equal(a, b)
    torch.testing.assert_close(c, a[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, a[m], atol=1e-5, rtol=1e-5)
    assert [blk.attn.shifted for blk in model.enc[0]] == [False, True]


def test_tiny_condaformer_segmentor_overfits_synthetic_frames():

    first, last, acc = overfit(dict(type="ConDaFormerSeg", base_channels=16, enc_channels=[24, 48],
                                    enc_depths=[1, 1], enc_num_heads=[3, 3], dec_channels=[16, 24],
                                    dec_depths=[0, 0], dec_num_heads=[3, 3], window=4, ffn_ratio=2.0,
                                    drop_path=0.0), steps=30)
    base = majority_accuracy()
    assert last < 0.35 * first, (first, last)
    assert acc > max(0.93, base + 0.1), (acc, base)


def test_contextual_rpe_through_the_triton_kernel():
    """The widened (non-power-of-two) q/k/v run through the Triton varlen kernel (interpreter on the CPU)."""
    pytest.importorskip("triton")
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not set (run through tests/conftest.py)")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    coords = random_grid(24, (2, 4, 4), seed=11).to(dev)
    window, shift = (3, 2, 1), (1, 1, 0)
    part = cubic_windows(coords, (2, 4, 4), window, shift)
    local = window_local_coords(coords, window, shift)
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(24, 1, 4, generator=g).to(dev).requires_grad_(True) for _ in range(3))
    tq, tk, tv = (torch.randn(5, 3, 1, 4, generator=g).to(dev).requires_grad_(True) for _ in range(3))
    dout = torch.randn(24, 1, 4, generator=g).to(dev)
    results = []
    for backend in ("torch", "triton"):
        out = contextual_rpe_attention(q, k, v, part, local, window, tq, tk, tv, backend=backend)
        grads = torch.autograd.grad(out, (q, k, v, tq, tk, tv), dout)
        results.append((out, grads))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
