"""Sparse conv vs dense torch conv3d / conv_transpose3d on a densified small grid, masked to active sites."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pointwin.ops import SparseConv3d, SparseInverseConv3d, SubMConv3d
from pointwin.ops.sparse_conv import sparse_conv3d, sparse_inverse_conv3d, subm_conv3d
from pointwin.structures import SparseVoxels

SHAPE = (5, 6, 7)


def random_voxels(channels: int, seed: int = 0, batch: int = 2, density: float = 0.3, shape=SHAPE,
                  dtype=torch.float32) -> SparseVoxels:
    gen = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, *shape, generator=gen) < density
    coords = occ.nonzero().to(torch.int32)
    coords = coords[torch.randperm(coords.shape[0], generator=gen)]  # order must not matter
    feats = torch.randn(coords.shape[0], channels, generator=gen, dtype=dtype)
    return SparseVoxels(feats, coords, shape, batch)


def at_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(B, C, Z, Y, X) dense tensor -> (N, C) rows at (b, z, y, x) coords."""
    c = coords.long()
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def dense_weight(w: torch.Tensor) -> torch.Tensor:
    """(C_out, kz, ky, kx, C_in) -> conv3d's (C_out, C_in, kz, ky, kx)."""
    return w.permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize("kernel,dilation", [((3, 3, 3), 1), ((1, 3, 5), 1), ((3, 3, 3), 2)])
def test_submanifold_matches_dense(kernel, dilation):
    x = random_voxels(4)
    w = torch.randn(6, *kernel, 4, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    xd = x.replace(x.feats.double())
    out = subm_conv3d(xd, w, b, dilation=dilation)
    pad = tuple(dilation * (k // 2) for k in kernel)
    ref = F.conv3d(xd.dense(), dense_weight(w), b, padding=pad, dilation=dilation)
    assert torch.equal(out.coords, x.coords)
    torch.testing.assert_close(out.feats, at_sites(ref, x.coords))


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (2, 2, 0), ((1, 3, 3), (1, 2, 2), (0, 1, 1))])
def test_strided_matches_dense(kernel, stride, padding):
    x = random_voxels(3, seed=1)
    ks = (kernel,) * 3 if isinstance(kernel, int) else kernel
    w = torch.randn(5, *ks, 3, dtype=torch.float64)
    xd = x.replace(x.feats.double())
    out = sparse_conv3d(xd, w, None, stride=stride, padding=padding)
    ref = F.conv3d(xd.dense(), dense_weight(w), stride=stride, padding=padding)
    # Output sites: exactly those that some active input reaches.
    occ = (xd.dense().abs().sum(1, keepdim=True) > 0).double()
    reach = F.conv3d(occ, torch.ones(1, 1, *ks, dtype=torch.float64), stride=stride, padding=padding)[:, 0] > 0
    assert tuple(out.spatial_shape) == tuple(ref.shape[2:])
    assert torch.equal(out.coords.long(), reach.nonzero())
    torch.testing.assert_close(out.feats, at_sites(ref, out.coords))


def test_inverse_matches_conv_transpose():
    x = random_voxels(3, seed=2)
    xd = x.replace(x.feats.double())
    w_down = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64)
    down = sparse_conv3d(xd, w_down, None, stride=2, padding=1, indice_key="d1")
    w_up = torch.randn(2, 3, 3, 3, 4, dtype=torch.float64)  # (C_out, k, k, k, C_in) like every conv here
    up = sparse_inverse_conv3d(down, w_up, "d1")
    assert torch.equal(up.coords, x.coords) and up.spatial_shape == x.spatial_shape
    coarse = down.dense()
    base = tuple((c - 1) * 2 - 2 * 1 + 3 for c in coarse.shape[2:])
    out_pad = tuple(s - b for s, b in zip(SHAPE, base))
    ref = F.conv_transpose3d(coarse, w_up.permute(4, 0, 1, 2, 3), stride=2, padding=1, output_padding=out_pad)
    torch.testing.assert_close(up.feats, at_sites(ref, x.coords))
    with pytest.raises(ValueError, match="indice_key='nope'"):
        sparse_inverse_conv3d(down, w_up, "nope")


def test_depthwise_matches_grouped_dense():
    x = random_voxels(4, seed=3)
    xd = x.replace(x.feats.double())
    w = torch.randn(4, 3, 3, 3, 1, dtype=torch.float64)
    out = subm_conv3d(xd, w, depthwise=True)
    ref = F.conv3d(xd.dense(), dense_weight(w), padding=1, groups=4)
    torch.testing.assert_close(out.feats, at_sites(ref, x.coords))
    out = sparse_conv3d(xd, w, stride=2, padding=1, depthwise=True, indice_key="dw")
    ref = F.conv3d(xd.dense(), dense_weight(w), stride=2, padding=1, groups=4)
    torch.testing.assert_close(out.feats, at_sites(ref, out.coords))
    up = sparse_inverse_conv3d(out, w, "dw", depthwise=True)
    base = tuple((c - 1) * 2 - 2 + 3 for c in out.spatial_shape)
    ref = F.conv_transpose3d(out.dense(), w.permute(0, 4, 1, 2, 3), stride=2, padding=1, groups=4,
                             output_padding=tuple(s - b for s, b in zip(SHAPE, base)))
    torch.testing.assert_close(up.feats, at_sites(ref, x.coords))


def test_gradcheck_subm_strided_inverse():
    x = random_voxels(2, seed=4, batch=1, density=0.2, shape=(3, 4, 4), dtype=torch.float64)
    feats = x.feats.clone().requires_grad_()
    w1 = torch.randn(3, 3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 2, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    w3 = torch.randn(2, 2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    wd = torch.randn(2, 3, 3, 3, 1, dtype=torch.float64, requires_grad=True)

    def net(f, a, b, c, d):
        y = subm_conv3d(x.replace(f), a)
        z = sparse_conv3d(y, b, stride=2, indice_key="k")
        z = subm_conv3d(z, d, depthwise=True)
        return sparse_inverse_conv3d(z, c, "k").feats

    assert torch.autograd.gradcheck(net, (feats, w1, w2, w3, wd), fast_mode=True)


def test_modules_cache_and_layout():
    x = random_voxels(4, seed=5)
    conv = SubMConv3d(4, 8, 3)
    assert tuple(conv.weight.shape) == (8, 3, 3, 3, 4)
    y = conv(x)
    torch.testing.assert_close(y.feats, subm_conv3d(x, conv.weight, conv.bias).feats)
    kmap = x.cache[("sparse_conv.subm", (3, 3, 3), (1, 1, 1))]
    conv(x)
    assert x.cache[("sparse_conv.subm", (3, 3, 3), (1, 1, 1))] is kmap  # built once, reused
    down = SparseConv3d(8, 16, 3, stride=2, padding=1, indice_key="s1")
    up = SparseInverseConv3d(16, 8, 3, indice_key="s1")
    dw = SubMConv3d(16, 16, 3, depthwise=True)
    assert tuple(dw.weight.shape) == (16, 3, 3, 3, 1)
    z = up(dw(down(y)))
    assert torch.equal(z.coords, x.coords) and z.feats.shape == (x.num_voxels, 8)
    z.feats.sum().backward()
    assert all(p.grad is not None for p in (*conv.parameters(), *down.parameters(), *up.parameters()))
    with pytest.raises(ValueError, match="expected 8"):
        down(x)
    with pytest.raises(ValueError, match="indice_key"):
        SparseInverseConv3d(4, 4, 3)
    with pytest.raises(ValueError, match="odd kernel"):
        SubMConv3d(4, 4, 2)(x)


def test_depthwise_kernels_gradcheck_and_match_the_generic_path(monkeypatch):
    """The CPU depthwise kernels (neighbour tables, numba) in every map kind: autograd's numerical Jacobian,
    and the same values and gradients as the generic gather-scatter path."""
    import pointwin.ops.sparse_conv as sc

    x = random_voxels(3, seed=6, batch=2, density=0.3, shape=(4, 5, 5), dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    shapes = [(3, 1, 3, 5, 1), (3, 3, 3, 3, 1), (3, 3, 3, 3, 1)]
    weights = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]

    def net(f, a, b, c):
        y = subm_conv3d(x.replace(f), a, depthwise=True)
        z = sparse_conv3d(y, b, stride=2, padding=1, depthwise=True, indice_key="dwk")
        return sparse_inverse_conv3d(z, c, "dwk", depthwise=True).feats

    feats = x.feats.clone().requires_grad_()
    assert torch.autograd.gradcheck(net, (feats, *weights))

    def value_and_grads():
        x.cache.clear()
        out = net(feats, *weights)
        return [out, *torch.autograd.grad(out.square().sum(), [feats, *weights])]

    fast = value_and_grads()
    monkeypatch.setattr(sc, "_numba_depthwise", lambda feats: False)
    generic = value_and_grads()
    for a, b in zip(fast, generic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --- one output-metadata contract for every backend -----------------------------------------------------

def _backend_available(backend: str) -> str | None:
    """None when ``backend`` can run here, else the reason it cannot."""
    if backend == "numba":
        try:
            import numba  # noqa: F401
        except ImportError:
            return "numba is not installed"
    if backend == "spconv":
        try:
            import spconv.pytorch  # noqa: F401
        except ImportError:
            return "spconv is not installed (the `cuda` extra); its CPU build is also wrong with >1 thread"
        if not torch.cuda.is_available():
            return "spconv runs on CUDA only in pointwin (no GPU here)"
    return None


@pytest.mark.parametrize("backend", ["torch", "numba", "spconv"])
def test_sparse_conv_metadata_contract(backend, monkeypatch):
    """SubM -> strided (indice_key) -> SubM -> inverse on one backend: coords int32 (b, z, y, x), spatial
    shapes, voxel_size scaled by the stride, origin/batch kept, the inverse returns the source's coords (same
    order), metadata and cache; features equal the torch path's (rows matched by coords)."""
    reason = _backend_available(backend)
    if reason:
        pytest.skip(reason)
    from pointwin.ops import sparse_conv

    device = "cuda" if backend == "spconv" else "cpu"
    depthwise = backend == "numba"  # the numba kernels serve depthwise convs on CPU float32/float64
    if backend == "torch":
        monkeypatch.setattr(sparse_conv, "_numba_depthwise", lambda feats: False)
    x = random_voxels(4, seed=3)
    x = SparseVoxels(x.feats.to(device), x.coords.to(device), x.spatial_shape, x.batch_size, (0.1, 0.2, 0.4),
                     (-1.0, -2.0, -3.0))
    torch.manual_seed(0)
    mods = [SubMConv3d(4, 4, 3, depthwise=depthwise), SparseConv3d(4, 4, 3, stride=(1, 2, 2), padding=1,
                                                                     indice_key="d"),
            SubMConv3d(4, 4, 3, depthwise=depthwise), SparseInverseConv3d(4, 4, 3, indice_key="d")]
    for m in mods:
        m.to(device)
        m.use_spconv = backend == "spconv"
    a = mods[0](x)
    b = mods[1](a)
    c = mods[2](b)
    d = mods[3](c)
    # submanifold: same sites, metadata and cache
    for y, src in ((a, x), (c, b)):
        assert y.coords is src.coords and y.cache is src.cache
        assert (y.spatial_shape, y.voxel_size, y.origin, y.batch_size) == (src.spatial_shape, src.voxel_size,
                                                                           src.origin, src.batch_size)
    # strided: int32 (b, z, y, x) unique rows inside the output shape, scaled voxel size
    assert b.coords.dtype == torch.int32 and b.coords.shape[1] == 4
    assert b.spatial_shape == sparse_conv.strided_output_shape(x.spatial_shape, (3, 3, 3), (1, 2, 2), (1, 1, 1),
                                                               (1, 1, 1))
    assert all(isinstance(s, int) for s in b.spatial_shape)
    assert torch.unique(b.coords, dim=0).shape[0] == b.coords.shape[0]
    hi = torch.tensor([b.batch_size, *b.spatial_shape], device=device)
    assert bool(((b.coords >= 0) & (b.coords < hi)).all())
    assert b.voxel_size == pytest.approx((0.2, 0.4, 0.4)) and b.origin == x.origin and b.batch_size == x.batch_size
    assert b.cache is not x.cache
    # inverse: exactly the source sites, metadata and cache
    assert d.coords is a.coords and d.cache is a.cache
    assert (d.spatial_shape, d.voxel_size, d.origin, d.batch_size) == (x.spatial_shape, x.voxel_size, x.origin,
                                                                       x.batch_size)
    # the features agree with the functional torch path
    wa = sparse_conv.subm_conv3d(_cpu(x), mods[0].weight.cpu(),
                                 mods[0].bias.cpu(), depthwise=depthwise)
    wb = sparse_conv.sparse_conv3d(wa, mods[1].weight.cpu(), mods[1].bias.cpu(), (1, 2, 2), 1, indice_key="d")
    order = _match_rows(b.coords.cpu(), wb.coords)
    torch.testing.assert_close(b.feats.cpu().float(), wb.feats[order], atol=1e-4, rtol=1e-4)
    wc = sparse_conv.subm_conv3d(wb, mods[2].weight.cpu(), mods[2].bias.cpu(), depthwise=depthwise)
    wd = sparse_conv.sparse_inverse_conv3d(wc, mods[3].weight.cpu(), "d", mods[3].bias.cpu())
    torch.testing.assert_close(d.feats.cpu().float(), wd.feats, atol=1e-4, rtol=1e-4)


def _cpu(x: SparseVoxels) -> SparseVoxels:
    return SparseVoxels(x.feats.detach().cpu().float(), x.coords.cpu(), x.spatial_shape, x.batch_size, x.voxel_size,
                        x.origin)


def _match_rows(coords: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Index into ``ref`` of each row of ``coords`` (both unique int (b, z, y, x) rows, same set)."""
    key = {tuple(r): i for i, r in enumerate(ref.tolist())}
    assert len(key) == coords.shape[0]
    return torch.tensor([key[tuple(r)] for r in coords.tolist()])


def test_inverse_of_a_spconv_strided_conv_on_the_torch_path_says_so():
    x = random_voxels(4, seed=1)
    out = sparse_conv3d(x, torch.randn(4, 3, 3, 3, 4), stride=2, padding=1, indice_key="k")
    entry = out.cache[("sparse_conv.inverse", "k")]
    out.cache[("sparse_conv.inverse", "k")] = (None, *entry[1:])  # what the spconv path registers
    with pytest.raises(ValueError, match="ran on spconv"):
        sparse_inverse_conv3d(out, torch.randn(4, 3, 3, 3, 4), "k")
    with pytest.raises(ValueError, match=r"no strided sparse conv with indice_key='nope'.*\['k'\]"):
        sparse_inverse_conv3d(out, torch.randn(4, 3, 3, 3, 4), "nope")


class _FakeSpconv:
    """A stand-in for ``spconv.pytorch`` built on pointwin's torch path, so that the spconv branch of the
    modules (output metadata, inverse bookkeeping, the bf16-autocast guard) runs without spconv or a GPU.
    It records the feature dtype and autocast state each conv sees."""

    class ConvAlgo:
        MaskImplicitGemm = "MaskImplicitGemm"

    seen: list = []

    class SparseConvTensor:
        def __init__(self, features, indices, spatial_shape, batch_size):
            self.features, self.indices, self.spatial_shape, self.batch_size = (features, indices,
                                                                                 list(spatial_shape), batch_size)
            self.indice_dict = {}

    def __init__(self):
        fake = self

        class _Conv(torch.nn.Module):
            kind = ""

            def __init__(self, cin, cout, kernel_size, bias=False, indice_key=None, algo=None, stride=1, padding=0,
                         dilation=1):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.empty(cout, *kernel_size, cin))
                self.key, self.stride, self.padding, self.dilation = indice_key, stride, padding, dilation

            def forward(self, t):
                fake.seen.append((t.features.dtype, torch.is_autocast_enabled("cpu")))
                from pointwin.ops import sparse_conv as sc

                w = self.weight.to(t.features.dtype)
                if self.kind == "inverse":
                    src = t.indice_dict[self.key]
                    x = SparseVoxels(t.features, t.indices, tuple(t.spatial_shape), t.batch_size, cache=src.cache)
                    y = sc.sparse_inverse_conv3d(x, w, self.key)
                else:
                    x = SparseVoxels(t.features, t.indices, tuple(t.spatial_shape), t.batch_size)
                    y = (sc.subm_conv3d(x, w) if self.kind == "subm" else
                         sc.sparse_conv3d(x, w, None, self.stride, self.padding, self.dilation, indice_key=self.key))
                out = _FakeSpconv.SparseConvTensor(y.feats, y.coords, y.spatial_shape, y.batch_size)
                out.indice_dict = t.indice_dict
                if self.kind == "strided":
                    out.indice_dict[self.key] = y
                return out

        self.SubMConv3d = type("SubMConv3d", (_Conv,), {"kind": "subm"})
        self.SparseConv3d = type("SparseConv3d", (_Conv,), {"kind": "strided"})
        self.SparseInverseConv3d = type("SparseInverseConv3d", (_Conv,), {"kind": "inverse"})


def test_spconv_branch_contract_and_bf16_guard(monkeypatch):
    """The modules' spconv branch (emulated): same metadata and features as the torch path; under bf16
    autocast spconv runs in fp32 with autocast off (spconv itself would cast to fp16)."""
    import sys
    import types

    from pointwin.ops import sparse_conv

    fake = _FakeSpconv()
    pkg = types.ModuleType("spconv")
    pkg.pytorch = fake
    monkeypatch.setitem(sys.modules, "spconv", pkg)
    monkeypatch.setitem(sys.modules, "spconv.pytorch", fake)
    x0 = random_voxels(4, seed=4)
    x = SparseVoxels(x0.feats, x0.coords, x0.spatial_shape, x0.batch_size, (0.1, 0.2, 0.4), (1.0, 2.0, 3.0))
    torch.manual_seed(0)
    mods = [SubMConv3d(4, 4, 3), SparseConv3d(4, 6, 3, stride=(1, 2, 2), padding=1, indice_key="d"),
            SparseInverseConv3d(6, 4, 3, indice_key="d")]

    def run(use):
        monkeypatch.setattr(sparse_conv, "_spconv_available", lambda v: use)
        y, outs = x, []
        for m in mods:
            y = m(y)
            outs.append(y)
        return outs

    ref, got = run(False), run(True)
    assert len(fake.seen) == 3
    for a, b in zip(got, ref):
        assert (a.spatial_shape, a.voxel_size, a.origin, a.batch_size) == (b.spatial_shape, b.voxel_size, b.origin,
                                                                           b.batch_size)
        torch.testing.assert_close(a.feats, b.feats)
    assert got[1].voxel_size == pytest.approx((0.2, 0.4, 0.4))  # was None on the spconv path
    assert got[2].coords is x.coords and got[2].cache is x.cache  # the source's sites and cache
    assert ("spconv.indice_dict",) in got[1].cache
    fake.seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run(True)
    assert fake.seen == [(torch.float32, False)] * 3
