"""scattered_linear_attention vs a float64 naive per-group loop, forward and gradcheck."""

from __future__ import annotations

import pytest
import torch

from pointwin.ops import scattered_linear_attention
from pointwin.partition import Partition
from tests.test_group_attention import (
    VARLEN_SIZES,
    partition_from_groups,
    random_equal_groups,
    random_varlen_groups,
)


def naive_sla(q, k, v, p: Partition, eps: float = 1e-6) -> torch.Tensor:
    """float64 loops: per voxel, sum phi(k)^T v and phi(k) over the distinct voxels of its owner's group."""
    q, k, v = q.double(), k.double(), v.double()
    offsets = p.offsets.tolist()
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    for n in range(q.shape[0]):
        slot = int(p.owner[n])
        g = max(i for i in range(len(offsets) - 1) if offsets[i] <= slot)
        keys = sorted({int(p.index[s]) for s in range(offsets[g], offsets[g + 1])})
        for h in range(q.shape[1]):
            kv = torch.zeros(k.shape[2], v.shape[2], dtype=torch.float64)
            s = torch.zeros(k.shape[2], dtype=torch.float64)
            for j in keys:
                pk = k[j, h].clamp(min=0)
                kv += pk[:, None] * v[j, h][None, :]
                s += pk
            pq = q[n, h].clamp(min=0)
            out[n, h] = (pq @ kv) / ((pq * s).sum() + eps)
    return out


def _qkv(n, h, d, dtype=torch.float32, dv=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, h, x, generator=gen, dtype=dtype) for x in (d, d, dv or d))


@pytest.mark.parametrize("seed", [0, 1])
def test_sla_forward_matches_naive(seed):
    gen = torch.Generator().manual_seed(seed)
    groups, n = random_varlen_groups(VARLEN_SIZES, gen)
    p = partition_from_groups(groups, n)
    q, k, v = _qkv(n, 2, 8, dv=4, seed=seed)
    out = scattered_linear_attention(q, k, v, p)
    torch.testing.assert_close(out.double(), naive_sla(q, k, v, p), atol=1e-5, rtol=1e-4)


def test_sla_equal_size_with_key_pad():
    gen = torch.Generator().manual_seed(2)
    p = partition_from_groups(random_equal_groups(13, 8, gen), 13, size=8)
    p5 = partition_from_groups(random_equal_groups(5, 8, gen), 5, size=8)
    assert bool(p5.key_pad.any())
    for part, n in ((p, 13), (p5, 5)):
        q, k, v = _qkv(n, 2, 4)
        torch.testing.assert_close(scattered_linear_attention(q, k, v, part).double(), naive_sla(q, k, v, part),
                                   atol=1e-5, rtol=1e-4)


def test_sla_chunking(monkeypatch):
    import pointwin.ops.attention.reference as ref_mod

    monkeypatch.setattr(ref_mod, "_MAX_BUCKET_ELEMS", 100)
    gen = torch.Generator().manual_seed(4)
    groups, n = random_varlen_groups([1, 7, 9, 3], gen)
    p = partition_from_groups(groups, n)
    q, k, v = _qkv(n, 2, 4)
    torch.testing.assert_close(scattered_linear_attention(q, k, v, p).double(), naive_sla(q, k, v, p),
                               atol=1e-5, rtol=1e-4)


def test_sla_independent_of_order_inside_group():
    gen = torch.Generator().manual_seed(3)
    groups, n = random_varlen_groups([5, 9, 1, 12], gen, extras=False)
    p = partition_from_groups(groups, n)
    shuffled = [[g[i] for i in torch.randperm(len(g), generator=gen).tolist()] for g in groups]
    p2 = partition_from_groups(shuffled[::-1], n)
    q, k, v = _qkv(n, 2, 4)
    torch.testing.assert_close(scattered_linear_attention(q, k, v, p), scattered_linear_attention(q, k, v, p2),
                               atol=1e-6, rtol=1e-5)


def test_sla_zero_query_gives_zero():
    groups, n = [[0, 1, 2]], 3
    p = partition_from_groups(groups, n)
    q, k, v = _qkv(n, 1, 4)
    q[0] = -q[0].abs()  # phi(q) = 0 -> numerator 0, denominator eps
    out = scattered_linear_attention(q, k, v, p)
    assert torch.equal(out[0], torch.zeros_like(out[0]))


def test_sla_gradcheck():
    gen = torch.Generator().manual_seed(5)
    groups, n = random_varlen_groups([1, 4, 5, 7], gen)
    p = partition_from_groups(groups, n)
    q, k, v = _qkv(n, 2, 3, dtype=torch.float64)
    # Keep values away from the ReLU kink so finite differences are well defined.
    q, k = (t + 0.05 * torch.sign(t) for t in (q, k))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: scattered_linear_attention(a, b, c, p), (q, k, v),
                                    eps=1e-7, fast_mode=True)


@pytest.mark.parametrize("case", range(8))
def test_sla_real_schemes_forward_and_gradcheck(case):
    from tests.partition_cases import random_partitions

    name, coords, _, p = list(random_partitions(0))[case]
    q, k, v = _qkv(coords.shape[0], 2, 3, dtype=torch.float64, seed=case)
    torch.testing.assert_close(scattered_linear_attention(q, k, v, p), naive_sla(q, k, v, p), msg=name)
    q, k = (t + 0.05 * torch.sign(t) for t in (q, k))
    leaves = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: scattered_linear_attention(a, b, c, p), leaves, eps=1e-7,
                                    fast_mode=True)


# --- fp16 NaN in dk/dv and bf16 dk error (seen on an H200, H=8, D=16) --------------------------------

def _cancellation_case(seed: int = 0):
    """H=8, D=16 groups of 37-120 voxels; one voxel/head with phi(q) = 0 (den = eps) and values with a
    common offset, so that dk = (v dKV^T + ds) [k > 0] is a difference of two large terms."""
    gen = torch.Generator().manual_seed(seed)
    groups, n = random_varlen_groups([90, 37, 120], gen, extras=False)
    p = partition_from_groups(groups, n)
    q, k, v, dout = (torch.randn(n, 8, 16, generator=gen) for _ in range(4))
    q[5, 3] = -q[5, 3].abs()
    return p, q, k - 2.0, v + 4.0, dout


def _grads(fn, p, q, k, v, dout, dtype):
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, p)
    return [out.double()] + [g.double() for g in torch.autograd.grad(out, leaves, dout.to(dtype))]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sla_low_precision_gradients_finite_and_accurate(dtype, backend):
    """The torch path used to compute in the input dtype: in fp16, den = eps = 1e-6 is subnormal and
    den**2 underflows to 0, so the division's backward gives 0/0 and grad/den overflows (inf * phi(q)=0):
    NaN in s's and KV's gradients, i.e. in dk and dv of the whole group (dq stays finite through ReLU's
    masked backward). In bf16 its group sums and dk's cancellation lost 0.28 relative dk error here.
    Both paths now compute in fp32 and must match the float64 path to the input dtype's resolution."""
    import os

    if backend == "triton" and not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    from pointwin.ops.attention.reference import scattered_linear_attention_reference

    p, q, k, v, dout = _cancellation_case()
    want = _grads(scattered_linear_attention_reference, p, q, k, v, dout, torch.float64)

    def fn(a, b, c, part):
        return scattered_linear_attention(a, b, c, part, backend=backend)

    got = _grads(fn, p, q, k, v, dout, dtype)
    tol = 3e-3 if dtype == torch.float16 else 2e-2
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(g).all(), f"{backend} {dtype}: {name} has NaN/inf"
        rel = ((g - w).norm() / w.norm()).item()
        assert rel < tol, f"{backend} {dtype}: {name} relative error {rel:.3g} >= {tol}"


def test_fp16_den_squared_underflows():
    """The arithmetic behind the fp16 NaN: eps^2 is below fp16's smallest subnormal (6e-8)."""
    eps = torch.tensor(1e-6, dtype=torch.float16)
    assert eps > 0 and eps * eps == 0 and torch.isinf(torch.tensor(1.0, dtype=torch.float16) / eps)


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 (10 mantissa bits, round to nearest), what tl.dot(input_precision='tf32') does."""
    b = x.float().contiguous().view(torch.int32)
    return ((b + 0x1000) & ~0x1FFF).view(torch.float32)


def test_sla_backward_needs_fp32_accurate_dots():
    """The kernel's dk = v dKV^T + ds cancels: with TF32 operands (the former default for fp16/bf16 and the
    tf32 default for fp32) the product's rounding is amplified; the 3-pass split that
    input_precision='tf32x3' uses (hi*hi + hi*lo + lo*hi) is as accurate as fp32. This emulates both on
    the CPU (the interpreter does not round to TF32) for one group of the cancellation case."""
    import torch.nn.functional as F

    p, q, k, v, dout = _cancellation_case()
    vox = p.index[p.offsets[0]:p.offsets[1]]
    kk, vv, qq, dd = (t[vox, 0].double() for t in (k, v, q, dout))
    pk, pq = F.relu(kk), F.relu(qq)
    kv, s = pk.T @ vv, pk.sum(0)
    num, den = pq @ kv, pq @ s + 1e-6
    dkv = pq.T @ (dd / den[:, None])
    ds = ((-(dd * num).sum(1) / den ** 2)[:, None] * pq).sum(0)
    exact = (vv @ dkv.T + ds) * (kk > 0)

    def dk(prod):
        return (prod.double() + ds.float().double()) * (kk > 0)

    a, b = vv.float(), dkv.T.float()
    ha, hb = _tf32(a), _tf32(b)
    err = {name: ((dk(prod) - exact).norm() / exact.norm()).item() for name, prod in (
        ("tf32", ha @ hb), ("tf32x3", ha @ hb + ha @ _tf32(b - hb) + _tf32(a - ha) @ hb), ("fp32", a @ b))}
    assert err["tf32x3"] < 3 * err["fp32"] + 1e-7
    assert err["tf32"] > 100 * err["tf32x3"]
