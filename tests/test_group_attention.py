"""group_attention vs a float64 naive per-voxel loop, forward and gradcheck, on random partitions."""

from __future__ import annotations

import math

import pytest
import torch

from pointwin.ops import group_attention
from pointwin.ops.attention.reference import bucket_length, group_attention_varlen
from pointwin.partition import Partition


def partition_from_groups(groups: list[list[int]], num_voxels: int, size: int | None = None) -> Partition:
    """Partition from explicit voxel lists: a voxel repeated inside a group is key_pad after its first slot;
    a voxel's owner is its first non-pad slot over all groups (later groups only borrow it)."""
    index, offsets, key_pad = [], [0], []
    owner = [-1] * num_voxels
    for g in groups:
        seen = set()
        for vox in g:
            slot = len(index)
            index.append(vox)
            key_pad.append(vox in seen)
            if vox not in seen and owner[vox] < 0:
                owner[vox] = slot
            seen.add(vox)
        offsets.append(len(index))
    p = Partition(torch.tensor(index), torch.tensor(offsets), torch.tensor(owner), size,
                  torch.tensor(key_pad) if any(key_pad) else None)
    return p.check()


def random_varlen_groups(sizes: list[int], gen: torch.Generator, extras: bool = True) -> tuple[list[list[int]], int]:
    """Disjoint groups of the given sizes over a random voxel order; with ``extras`` some groups also
    borrow a voxel of another group and repeat one of their own (key_pad)."""
    n = sum(sizes)
    perm = torch.randperm(n, generator=gen).tolist()
    groups, start = [], 0
    for s in sizes:
        groups.append(perm[start:start + s])
        start += s
    if extras:
        for gi, g in enumerate(groups):
            r = int(torch.randint(0, 3, (1,), generator=gen))
            if r == 1 and len(groups) > 1:  # borrow a voxel owned elsewhere
                other = groups[(gi + 1) % len(groups)]
                g.insert(int(torch.randint(0, len(g) + 1, (1,), generator=gen)), other[0])
            elif r == 2:  # repeat a voxel of its own (a key_pad slot, placed after the original)
                g.append(g[int(torch.randint(0, len(g), (1,), generator=gen))])
    return groups, n


def random_equal_groups(n: int, size: int, gen: torch.Generator) -> list[list[int]]:
    """FlatFormer/DSVT-like equal-size groups: cut a random order into groups of ``size``; the last group
    overlaps the previous one, and a too-short sample is filled by repeats (key_pad)."""
    perm = torch.randperm(n, generator=gen).tolist()
    if n < size:
        return [perm + [perm[i % n] for i in range(size - n)]]
    groups = [perm[i:i + size] for i in range(0, n - size + 1, size)]
    if n % size:
        groups.append(perm[n - size:])
    return groups


def naive_group_attention(q, k, v, p: Partition, scale: float, bias=None) -> torch.Tensor:
    """float64 per-voxel loop: voxel n attends to the distinct voxels of its owner slot's group;
    ``bias(n, j, h)`` is added to the logit of query voxel n and key voxel j at head h."""
    q, k, v = q.double(), k.double(), v.double()
    offsets = p.offsets.tolist()
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    for n in range(q.shape[0]):
        slot = int(p.owner[n])
        g = max(i for i in range(len(offsets) - 1) if offsets[i] <= slot)
        keys = []
        for s in range(offsets[g], offsets[g + 1]):
            if p.key_pad is None or not bool(p.key_pad[s]):
                keys.append(int(p.index[s]))
        for h in range(q.shape[1]):
            logits = torch.stack([(q[n, h] * k[j, h]).sum() * scale + (0.0 if bias is None else bias(n, j, h))
                                  for j in keys])
            w = torch.softmax(logits, 0)
            out[n, h] = sum(w[i] * v[j, h] for i, j in enumerate(keys))
    return out


VARLEN_SIZES = [1, 16, 17, 45, 2, 8, 1, 5]


def _qkv(n, h, d, dtype=torch.float32, dv=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, h, d, generator=gen, dtype=dtype), torch.randn(n, h, d, generator=gen, dtype=dtype),
            torch.randn(n, h, dv or d, generator=gen, dtype=dtype))


@pytest.mark.parametrize("seed", [0, 1])
def test_varlen_forward_matches_naive(seed):
    gen = torch.Generator().manual_seed(seed)
    groups, n = random_varlen_groups(VARLEN_SIZES, gen)
    p = partition_from_groups(groups, n)
    assert p.size is None
    q, k, v = _qkv(n, 2, 8, dv=6, seed=seed)
    out = group_attention(q, k, v, p)
    ref = naive_group_attention(q, k, v, p, 1 / math.sqrt(8))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_varlen_bucket_chunking_matches_naive(monkeypatch):
    # Force several SDPA chunks per bucket so the chunk loop is exercised.
    import pointwin.ops.attention.reference as ref_mod

    monkeypatch.setattr(ref_mod, "_MAX_BUCKET_ELEMS", 64)
    gen = torch.Generator().manual_seed(3)
    groups, n = random_varlen_groups([3, 3, 4, 2, 6, 5, 1, 1], gen)
    p = partition_from_groups(groups, n)
    q, k, v = _qkv(n, 2, 4)
    out = group_attention_varlen(q, k, v, p, scale=0.7)
    torch.testing.assert_close(out.double(), naive_group_attention(q, k, v, p, 0.7), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n,size", [(37, 8), (5, 8), (32, 8)])
def test_equal_size_forward_matches_naive(n, size):
    gen = torch.Generator().manual_seed(n)
    p = partition_from_groups(random_equal_groups(n, size, gen), n, size=size)
    q, k, v = _qkv(n, 3, 4)
    out = group_attention(q, k, v, p, scale=0.5)
    torch.testing.assert_close(out.double(), naive_group_attention(q, k, v, p, 0.5), atol=1e-5, rtol=1e-5)
    # The variable-length path must agree on the same partition with size information dropped.
    p_var = Partition(p.index, p.offsets, p.owner, None, p.key_pad)
    torch.testing.assert_close(group_attention(q, k, v, p_var, scale=0.5), out, atol=1e-5, rtol=1e-5)


def test_gradcheck_varlen_and_equal():
    gen = torch.Generator().manual_seed(5)
    groups, n = random_varlen_groups([1, 4, 5, 9, 2], gen)
    p = partition_from_groups(groups, n)
    q, k, v = (t.requires_grad_() for t in _qkv(n, 2, 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b, c: group_attention(a, b, c, p), (q, k, v), fast_mode=True)
    pe = partition_from_groups(random_equal_groups(11, 4, gen), 11, size=4)
    q, k, v = (t.requires_grad_() for t in _qkv(11, 2, 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b, c: group_attention(a, b, c, pe), (q, k, v), fast_mode=True)


def test_gradient_matches_naive():
    gen = torch.Generator().manual_seed(7)
    groups, n = random_varlen_groups([1, 6, 7, 3], gen)
    p = partition_from_groups(groups, n)
    q, k, v = _qkv(n, 2, 4, dtype=torch.float64)
    w = torch.randn(n, 2, 4, dtype=torch.float64, generator=gen)
    grads = []
    for fn in (lambda a, b, c: group_attention(a, b, c, p), lambda a, b, c: naive_group_attention(a, b, c, p, 0.5)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        (fn(*leaves) * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_bucket_length_ladder():
    sizes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 17, 24, 25, 4096, 4097])
    expect = [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 16, 24, 24, 32, 4096, 6144]
    assert bucket_length(sizes).tolist() == expect


def test_bad_inputs_raise_clear_errors():
    gen = torch.Generator().manual_seed(0)
    groups, n = random_varlen_groups([2, 3], gen, extras=False)
    p = partition_from_groups(groups, n)
    q, k, v = _qkv(n, 2, 4)
    with pytest.raises(ValueError, match="q has 4 voxels"):
        group_attention(q[:4], k[:4], v[:4], p)
    with pytest.raises(ValueError, match=r"\(N, H, D\)"):
        group_attention(q[:, 0], k, v, p)
    with pytest.raises(ValueError, match="backend"):
        group_attention(q, k, v, p, backend="cuda")


def _scheme_partitions():
    from tests.partition_cases import random_partitions

    return list(random_partitions(0))


@pytest.mark.parametrize("case", range(8))
def test_real_schemes_forward_and_gradcheck(case):
    name, coords, _, p = _scheme_partitions()[case]
    n = coords.shape[0]
    q, k, v = _qkv(n, 2, 3, dtype=torch.float64, seed=case)
    out = group_attention(q, k, v, p)
    torch.testing.assert_close(out, naive_group_attention(q, k, v, p, 1 / math.sqrt(3)), msg=name)
    if p.size is not None:  # the bucketed path must agree on equal-size partitions too
        p_var = Partition(p.index, p.offsets, p.owner, None, p.key_pad)
        torch.testing.assert_close(group_attention(q, k, v, p_var), out, msg=name)
    leaves = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: group_attention(a, b, c, p), leaves, fast_mode=True)


def test_long_group_path_matches_naive(monkeypatch):
    # Groups at or above LONG_GROUP run one SDPA each on owner queries / non-pad keys: lower the threshold.
    import pointwin.ops.attention.reference as ref_mod

    monkeypatch.setattr(ref_mod, "LONG_GROUP", 9)
    gen = torch.Generator().manual_seed(11)
    groups, n = random_varlen_groups([1, 8, 9, 30, 12, 2], gen)
    p = partition_from_groups(groups, n)
    assert p.key_pad is not None
    q, k, v = _qkv(n, 2, 4, dtype=torch.float64)
    out = group_attention_varlen(q, k, v, p, scale=0.6)
    torch.testing.assert_close(out, naive_group_attention(q, k, v, p, 0.6))
    leaves = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: group_attention_varlen(a, b, c, p), leaves, fast_mode=True)


def _table_bias(pos: torch.Tensor, table: torch.Tensor):
    """A relative-position table bias: table[pos_q - pos_k + R, h] (pos int (N,), table (2R+1, H))."""
    R = (table.shape[0] - 1) // 2

    def pair_bias(qv: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        rel = (pos[qv][:, :, None] - pos[kv][:, None, :]).clamp(-R, R) + R  # (B, Lq, Lk)
        return table[rel].permute(0, 3, 1, 2)  # (B, H, Lq, Lk)

    return pair_bias, (lambda n, j, h: table[int((pos[n] - pos[j]).clamp(-R, R)) + R, h].double())


@pytest.mark.parametrize("kind", ["varlen", "equal", "long"])
def test_pair_bias_matches_naive_and_gradcheck(kind, monkeypatch):
    import pointwin.ops.attention.reference as ref

    gen = torch.Generator().manual_seed(5)
    if kind == "equal":
        n = 23
        p = partition_from_groups(random_equal_groups(n, 8, gen), n, size=8)
    else:
        if kind == "long":  # route the 45-slot group through the unpadded long-group path
            monkeypatch.setattr(ref, "LONG_GROUP", 40)
        groups, n = random_varlen_groups(VARLEN_SIZES, gen)
        p = partition_from_groups(groups, n)
    H, D = 2, 4
    q, k, v = _qkv(n, H, D, dtype=torch.float64, seed=7)
    pos = torch.randint(-6, 7, (n,), generator=gen)
    table = torch.randn(9, H, generator=gen, dtype=torch.float64, requires_grad=True)
    pair_bias, naive_bias = _table_bias(pos, table)
    out = group_attention(q, k, v, p, pair_bias=pair_bias)
    torch.testing.assert_close(out, naive_group_attention(q, k, v, p, D ** -0.5, naive_bias))
    # the bias changes the result (the test would notice a dropped bias)
    assert (out - group_attention(q, k, v, p)).abs().max() > 1e-3
    assert torch.autograd.gradcheck(lambda t: group_attention(q, k, v, p, pair_bias=_table_bias(pos, t)[0]),
                                    (table,))


def test_pair_bias_errors():
    p = partition_from_groups([[0, 1], [2]], 3)
    q, k, v = _qkv(3, 2, 4)
    with pytest.raises(ValueError, match="pair_bias must return"):
        group_attention(q, k, v, p, pair_bias=lambda qv, kv: torch.zeros(1))
    with pytest.raises(ValueError, match="no pair_bias"):
        group_attention(q, k, v, p, backend="triton", pair_bias=lambda qv, kv: torch.zeros(1))
