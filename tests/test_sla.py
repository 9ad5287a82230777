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
