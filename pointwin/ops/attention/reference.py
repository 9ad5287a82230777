"""Exact PyTorch paths for group softmax attention and scattered linear attention.

These run anywhere (CPU, CUDA, float64 for gradcheck) and are the ground truth the Triton kernels are
tested against. They gather features per slot explicitly; the Triton kernels read through
``partition.index`` instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...partition.base import Partition

SLA_EPS = 1e-6

# Bucket lengths for variable-length groups: powers of two and 1.5x powers of two, so a group is padded
# by at most 1.5x per side (a pure power-of-two ladder would waste up to 4x of the attention work).
_MAX_BUCKET_ELEMS = 1 << 25  # score elements (groups x heads x L x L) per SDPA call, bounds peak memory
# Groups at least this long skip the buckets: one unmasked SDPA call each on their owner queries and
# non-pad keys (no padding waste, and SDPA can use its flash kernel). At most N / LONG_GROUP such calls.
LONG_GROUP = 512


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition, op: str) -> None:
    """Raise ValueError naming the tensor when q/k/v/partition disagree."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 3:
            raise ValueError(f"{op}: {name} must be a (N, H, D) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2] or q.shape[2] != k.shape[2]:
        raise ValueError(f"{op}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share N and H, "
                         f"and q, k must share D")
    if q.shape[0] != partition.num_voxels:
        raise ValueError(f"{op}: q has {q.shape[0]} voxels but partition.owner has {partition.num_voxels}")
    if partition.index.device != q.device:
        raise ValueError(f"{op}: partition is on {partition.index.device} but q is on {q.device}")


def bucket_length(sizes: torch.Tensor) -> torch.Tensor:
    """Padded length per group: the smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... that is >= size."""
    sizes = sizes.clamp(min=1)
    p = torch.floor(torch.log2(sizes.double())).long()
    low = torch.ones_like(sizes) << p  # largest power of two <= size
    mid = low + (low >> 1)
    return torch.where(sizes == low, low, torch.where((sizes <= mid) & (low >= 2), mid, low << 1))


def _sdpa(q, k, v, mask, scale, dropout_p, bias=None):
    """q (B, Lq, H, D), k, v (B, Lk, H, D), mask (B, Lk) keys to attend or None, bias (B, H, Lq, Lk)
    additive logits or None -> (B, Lq, H, Dv)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    attn_mask = None if mask is None else mask[:, None, None, :]
    if bias is not None:
        bias = bias.to(q.dtype)
        attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2)


def _pair_bias(pair_bias, query_voxels: torch.Tensor, key_voxels: torch.Tensor, heads: int) -> torch.Tensor | None:
    """Call the user's ``pair_bias`` and check its shape (B, H, Lq, Lk)."""
    if pair_bias is None:
        return None
    bias = pair_bias(query_voxels, key_voxels)
    want = (query_voxels.shape[0], heads, query_voxels.shape[1], key_voxels.shape[1])
    if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != want:
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"group_attention: pair_bias must return a (B, H, Lq, Lk) = {want} tensor, got {got}")
    return bias


def group_attention_equal(q, k, v, partition: Partition, scale=None, dropout_p=0.0, pair_bias=None) -> torch.Tensor:
    """Equal-size groups: gather to (G, S, H, D) and one SDPA call. Returns (N, H, Dv)."""
    S, G = int(partition.size), partition.num_groups
    idx = partition.index
    qg, kg, vg = (t[idx].view(G, S, *t.shape[1:]) for t in (q, k, v))
    mask = None if partition.key_pad is None else ~partition.key_pad.view(G, S)
    vox = idx.view(G, S)
    out = _sdpa(qg, kg, vg, mask, scale, dropout_p, _pair_bias(pair_bias, vox, vox, q.shape[1]))
    return out.reshape(G * S, *out.shape[2:])[partition.owner]


def iter_buckets(partition: Partition, heads: int, max_elems: int | None = None, max_size: int | None = None):
    """Yield ``(pos, valid)`` per bucket chunk: (B, L) slot of each padded place and whether it is real.

    Groups are padded to :func:`bucket_length`; each yielded chunk holds groups of one padded length L,
    at most ``max_elems // (heads * L * L)`` of them. Padding places repeat the group's first slot.
    Groups longer than ``max_size`` are left out.
    """
    max_elems = _MAX_BUCKET_ELEMS if max_elems is None else max_elems
    offsets = partition.offsets
    sizes = partition.group_sizes()
    lengths = bucket_length(sizes)
    if max_size is not None:
        lengths = torch.where(sizes > max_size, torch.zeros_like(lengths), lengths)
    device = offsets.device
    for L in torch.unique(lengths).tolist():
        if L == 0:
            continue
        groups = (lengths == L).nonzero().squeeze(1)
        chunk = max(1, max_elems // (heads * L * L))
        ar = torch.arange(L, device=device)[None, :]
        for c0 in range(0, groups.numel(), chunk):
            g = groups[c0:c0 + chunk]
            valid = ar < sizes[g][:, None]
            pos = torch.where(valid, offsets[g][:, None] + ar, offsets[g][:, None])
            yield pos, valid


def _owner_mask(partition: Partition) -> torch.Tensor:
    is_owner = torch.zeros(partition.num_slots, dtype=torch.bool, device=partition.device)
    is_owner[partition.owner] = True
    return is_owner


def group_attention_varlen(q, k, v, partition: Partition, scale=None, dropout_p=0.0, pair_bias=None) -> torch.Tensor:
    """Variable-length groups: bucket groups by padded length, one masked SDPA call per bucket (and chunk).

    The number of SDPA calls is the number of distinct bucket lengths (logarithmic in the longest
    group), not the number of groups; groups of ``LONG_GROUP`` slots or more (at most N / LONG_GROUP
    of them) get one unpadded call each. Returns (N, H, Dv).
    """
    H = q.shape[1]
    idx = partition.index
    # Only the owner slots' outputs are kept: write them into a per-slot buffer, then read by owner.
    out_slots = q.new_zeros(partition.num_slots, H, v.shape[2])
    is_owner = _owner_mask(partition)
    key_ok = None if partition.key_pad is None else ~partition.key_pad
    for pos, valid in iter_buckets(partition, H, max_size=LONG_GROUP - 1):
        vox = idx[pos]
        mask = valid if key_ok is None else valid & key_ok[pos]
        if bool(mask.all()):
            mask = None
        o = _sdpa(q[vox], k[vox], v[vox], mask, scale, dropout_p, _pair_bias(pair_bias, vox, vox, H))
        keep = valid & is_owner[pos]
        out_slots.index_put_((pos[keep],), o[keep])
    long_groups = (partition.group_sizes() >= LONG_GROUP).nonzero().squeeze(1).tolist()
    if long_groups:
        bounds = partition.offsets.tolist()
        for g in long_groups:
            slots = torch.arange(bounds[g], bounds[g + 1], device=q.device)
            qs = slots[is_owner[slots]]
            if qs.numel() == 0:  # every voxel of this group is owned elsewhere
                continue
            ks = slots if key_ok is None else slots[key_ok[slots]]
            bias = _pair_bias(pair_bias, idx[qs][None], idx[ks][None], H)
            o = _sdpa(q[idx[qs]][None], k[idx[ks]][None], v[idx[ks]][None], None, scale, dropout_p, bias)[0]
            out_slots.index_put_((qs,), o)
    return out_slots[partition.owner]


def group_attention_reference(q, k, v, partition: Partition, scale=None, dropout_p=0.0,
                              pair_bias=None) -> torch.Tensor:
    """Exact torch group attention: equal-size path when ``partition.size`` is set, else bucketed."""
    if partition.size is not None:
        return group_attention_equal(q, k, v, partition, scale, dropout_p, pair_bias)
    return group_attention_varlen(q, k, v, partition, scale, dropout_p, pair_bias)


def scattered_linear_attention_reference(q, k, v, partition: Partition, eps: float = SLA_EPS) -> torch.Tensor:
    """ScatterFormer's scattered linear attention (exact torch path). Returns (N, H, Dv).

    Per group g (key_pad slots excluded): KV_g = sum phi(k_i)^T v_i, s_g = sum phi(k_i), phi = ReLU;
    y_n = phi(q_n) KV_g / (phi(q_n) . s_g + eps) with g the group of voxel n's owner slot. Groups are
    bucketed by length like :func:`group_attention_varlen`, so every reduction is a batched GEMM (no
    per-slot D x Dv outer products are materialised).

    float16/bfloat16 inputs are computed in float32 (autocast off) and the output cast back, like the
    Triton kernels do. In float16 the eps (1e-6) is subnormal and den**2 underflows to 0 for a query
    whose phi(q) is 0 or tiny, so autograd's division backward (-grad * num / den**2 = 0/0) and
    grad / den (1e6 > 65504 = inf, times phi(q) = 0) put NaN into the group's s and KV gradients, i.e.
    into dk and dv of every key of the group (dq stays finite: ReLU's backward masks q <= 0). In bfloat16
    the group sums and dk = (v dKV^T + ds) [k > 0], a difference of two large terms when v has a common
    offset, lose most of their 8 mantissa bits (0.3-0.6 relative dk error).
    """
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        with torch.autocast(q.device.type, enabled=False):
            out = scattered_linear_attention_reference(q.float(), k.float(), v.float(), partition, eps)
        return out.to(dtype)
    if torch.is_autocast_enabled(q.device.type):  # einsum would run in the autocast dtype
        with torch.autocast(q.device.type, enabled=False):
            return scattered_linear_attention_reference(q, k, v, partition, eps)
    H, Dv = q.shape[1], v.shape[2]
    idx = partition.index
    out_slots = q.new_zeros(partition.num_slots, H, Dv)
    is_owner = _owner_mask(partition)
    key_ok = None if partition.key_pad is None else ~partition.key_pad
    # Budget per chunk: B * L * H * max(D, Dv) elements, expressed through iter_buckets' H * L * L rule.
    for pos, valid in iter_buckets(partition, H, _MAX_BUCKET_ELEMS * 4):
        vox = idx[pos]
        key_mask = valid if key_ok is None else valid & key_ok[pos]
        pk = F.relu(k[vox]) * key_mask[:, :, None, None].to(k.dtype)  # (B, L, H, D)
        kv = torch.einsum("blhd,blhe->bhde", pk, v[vox])
        s = pk.sum(1)  # (B, H, D)
        pq = F.relu(q[vox])
        num = torch.einsum("blhd,bhde->blhe", pq, kv)
        den = torch.einsum("blhd,bhd->blh", pq, s)[..., None] + eps
        keep = valid & is_owner[pos]
        out_slots.index_put_((pos[keep],), (num / den)[keep])
    return out_slots[partition.owner]


def default_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
