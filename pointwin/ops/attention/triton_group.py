"""Triton flash-style kernel for group softmax attention on variable-length groups (forward + backward).

The kernels read q/k/v rows through ``partition.index`` (no gathered copy of the features) and write
each voxel's output from its ``owner`` slot only. Work is split into blocks of slots: a program owns
one block of BLOCK_M query slots of one group and walks that group's keys with an online softmax, so
a group of thousands of voxels is spread over many programs. Backward follows FlashAttention-2: one
kernel for dQ (per query block), one for dK/dV (per key block); per-slot dK/dV are summed per voxel
with ``index_add_`` because a voxel may sit in several groups.

This module imports triton at import time; import it lazily (``group_attention`` does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...partition.base import Partition
from .policy import KERNEL_DTYPES, dot_precision, group_launch, interpreted, interpreter_group_launch, pow2, unify_qkv
from .reference import default_scale

LOG2E = 1.4426950408889634


def block_table(offsets: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split every group into blocks of ``block`` slots.

    Returns int32 (B,) tensors: first slot of each block, end slot of its group, first slot of its group.
    """
    sizes = offsets[1:] - offsets[:-1]
    nblk = (sizes + block - 1) // block
    grp = torch.repeat_interleave(torch.arange(sizes.numel(), device=offsets.device), nblk)
    first = torch.cumsum(nblk, 0) - nblk
    start = offsets[grp] + (torch.arange(grp.numel(), device=offsets.device) - first[grp]) * block
    return start.to(torch.int32), offsets[grp + 1].to(torch.int32), offsets[grp].to(torch.int32)


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, INDEX, OWNER, KEYPAD, BSTART, BEND, BGROUP,
                stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
                stride_lm, qk_scale, D, DV,
                HAS_PAD: tl.constexpr, F32: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                PREC: tl.constexpr):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(BSTART + pid)
    end = tl.load(BEND + pid)
    gstart = tl.load(BGROUP + pid)
    offs_m = start + tl.arange(0, BLOCK_M)
    m_mask = offs_m < end
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    e_mask = offs_e < DV
    qvox = tl.load(INDEX + offs_m, mask=m_mask, other=0).to(tl.int64)
    q = tl.load(Q + qvox[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if F32:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for kstart in range(gstart, end, BLOCK_N):
        offs_n = kstart + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        kvox = tl.load(INDEX + offs_n, mask=n_mask, other=0).to(tl.int64)
        if HAS_PAD:
            n_mask = n_mask & (tl.load(KEYPAD + offs_n, mask=n_mask, other=1) == 0)
        kt = tl.load(K + kvox[None, :] * stride_kn + h * stride_kh + offs_d[:, None],
                     mask=d_mask[:, None] & n_mask[None, :], other=0.0)
        v = tl.load(V + kvox[:, None] * stride_vn + h * stride_vh + offs_e[None, :],
                    mask=n_mask[:, None] & e_mask[None, :], other=0.0)
        if F32:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PREC) * qk_scale  # log2 domain
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    out = acc / l_i[:, None]
    is_owner = tl.load(OWNER + qvox, mask=m_mask, other=-1) == offs_m
    tl.store(O + qvox[:, None] * stride_on + h * stride_oh + offs_e[None, :], out.to(O.dtype.element_ty),
             mask=(m_mask & is_owner)[:, None] & e_mask[None, :])
    tl.store(LSE + offs_m * stride_lm + h, m_i + tl.log2(l_i), mask=m_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, INDEX, OWNER, KEYPAD, BSTART, BEND, BGROUP,
                   stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_don, stride_doh,
                   stride_dqn, stride_dqh, stride_lm, stride_deltan, qk_scale, sm_scale, D, DV,
                   HAS_PAD: tl.constexpr, F32: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                PREC: tl.constexpr):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(BSTART + pid)
    end = tl.load(BEND + pid)
    gstart = tl.load(BGROUP + pid)
    offs_m = start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    e_mask = offs_e < DV
    m_in = offs_m < end
    qvox = tl.load(INDEX + offs_m, mask=m_in, other=0).to(tl.int64)
    # Only owner slots carry an output gradient; the others contribute nothing.
    m_mask = m_in & (tl.load(OWNER + qvox, mask=m_in, other=-1) == offs_m)
    q = tl.load(Q + qvox[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    do = tl.load(DO + qvox[:, None] * stride_don + h * stride_doh + offs_e[None, :],
                 mask=m_mask[:, None] & e_mask[None, :], other=0.0)
    if F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + offs_m * stride_lm + h, mask=m_mask, other=0.0)
    delta = tl.load(DELTA + qvox * stride_deltan + h, mask=m_mask, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for kstart in range(gstart, end, BLOCK_N):
        offs_n = kstart + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        kvox = tl.load(INDEX + offs_n, mask=n_mask, other=0).to(tl.int64)
        if HAS_PAD:
            n_mask = n_mask & (tl.load(KEYPAD + offs_n, mask=n_mask, other=1) == 0)
        k = tl.load(K + kvox[:, None] * stride_kn + h * stride_kh + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        vt = tl.load(V + kvox[None, :] * stride_vn + h * stride_vh + offs_e[:, None],
                     mask=e_mask[:, None] & n_mask[None, :], other=0.0)
        if F32:
            k = k.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(m_mask[:, None] & n_mask[None, :], p, 0.0)
        dp = tl.dot(do, vt, input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + qvox[:, None] * stride_dqn + h * stride_dqh + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV_, LSE, DELTA, INDEX, OWNER, KEYPAD, BSTART, BEND, BGROUP,
                     stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_don, stride_doh,
                     stride_dkm, stride_dkh, stride_dvm, stride_dvh, stride_lm, stride_deltan, qk_scale, sm_scale,
                     D, DV, HAS_PAD: tl.constexpr, F32: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_DV: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(BSTART + pid)
    end = tl.load(BEND + pid)
    gstart = tl.load(BGROUP + pid)
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    e_mask = offs_e < DV
    n_in = offs_n < end
    kvox = tl.load(INDEX + offs_n, mask=n_in, other=0).to(tl.int64)
    n_mask = n_in
    if HAS_PAD:
        n_mask = n_mask & (tl.load(KEYPAD + offs_n, mask=n_in, other=1) == 0)
    k = tl.load(K + kvox[:, None] * stride_kn + h * stride_kh + offs_d[None, :],
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    v = tl.load(V + kvox[:, None] * stride_vn + h * stride_vh + offs_e[None, :],
                mask=n_mask[:, None] & e_mask[None, :], other=0.0)
    if F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for qstart in range(gstart, end, BLOCK_M):
        offs_m = qstart + tl.arange(0, BLOCK_M)
        m_in = offs_m < end
        qvox = tl.load(INDEX + offs_m, mask=m_in, other=0).to(tl.int64)
        m_mask = m_in & (tl.load(OWNER + qvox, mask=m_in, other=-1) == offs_m)
        qt = tl.load(Q + qvox[None, :] * stride_qn + h * stride_qh + offs_d[:, None],
                     mask=d_mask[:, None] & m_mask[None, :], other=0.0)
        do = tl.load(DO + qvox[:, None] * stride_don + h * stride_doh + offs_e[None, :],
                     mask=m_mask[:, None] & e_mask[None, :], other=0.0)
        if F32:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + offs_m * stride_lm + h, mask=m_mask, other=0.0)
        delta = tl.load(DELTA + qvox * stride_deltan + h, mask=m_mask, other=0.0)
        st = tl.dot(k, qt, input_precision=PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        pt = tl.exp2(st - lse[None, :])
        pt = tl.where(n_mask[:, None] & m_mask[None, :], pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PREC)
    tl.store(DK + offs_n[:, None] * stride_dkm + h * stride_dkh + offs_d[None, :], dk * sm_scale,
             mask=n_in[:, None] & d_mask[None, :])
    tl.store(DV_ + offs_n[:, None] * stride_dvm + h * stride_dvh + offs_e[None, :], dv,
             mask=n_in[:, None] & e_mask[None, :])


def _config(q: torch.Tensor, offsets: torch.Tensor, block_m: int | None, block_n: int | None,
            precision: str) -> tuple[int, int, bool, str, int, int]:
    """Launch of the three kernels: (BLOCK_M, BLOCK_N, F32, PREC, num_warps, num_stages).

    F32 (cast loaded values to fp32) is set for float32 inputs and always under the interpreter, whose
    bf16/fp16 arithmetic is wrong. Block sizes come from :func:`policy.group_launch` (per head dim and
    dtype), or from ``block_m``/``block_n`` when given (tests use small ones).
    """
    f32 = q.dtype == torch.float32 or interpreted()
    prec = dot_precision(q.dtype, precision)
    if interpreted():
        cfg = interpreter_group_launch(block_m, block_n)
    else:
        # Short groups waste most of a 64-slot block: use 32-slot blocks when the mean group is short.
        mean_size = int(offsets[-1]) / max(offsets.numel() - 1, 1)
        cfg = group_launch(q.dtype, pow2(q.shape[-1]), pow2(q.shape[-1]), mean_size <= 48, prec)
    return block_m or cfg.block_m, block_n or cfg.block_n, f32, prec, cfg.num_warps, cfg.num_stages


class _GroupAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, index, owner, key_pad, offsets, scale, block_m, block_n, precision):
        if not q.dtype == k.dtype == v.dtype:  # group_attention_triton unifies them; guard direct callers
            raise ValueError(f"_GroupAttention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        N, H, D = q.shape
        DV = v.shape[2]
        M = index.numel()
        block_m, block_n, f32, prec, warps, stages = _config(q, offsets, block_m, block_n, precision)
        bs, be, bg = block_table(offsets, block_m)
        out = torch.zeros(N, H, DV, device=q.device, dtype=q.dtype)
        lse = torch.empty(M, H, device=q.device, dtype=torch.float32)
        has_pad = key_pad is not None
        kp = key_pad.to(torch.int8) if has_pad else index  # dummy pointer when no padding
        BD, BDV = pow2(D), pow2(DV)
        launch = dict(num_warps=warps, num_stages=stages)
        if bs.numel():
            _fwd_kernel[(bs.numel(), H)](
                q, k, v, out, lse, index, owner, kp, bs, be, bg,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                out.stride(0), out.stride(1), lse.stride(0), scale * LOG2E, D, DV,
                HAS_PAD=has_pad, F32=f32, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=BD, BLOCK_DV=BDV,
                PREC=prec, **launch)
        ctx.save_for_backward(q, k, v, out, lse, index, owner, kp, offsets)
        ctx.cfg = (scale, block_m, block_n, f32, has_pad, prec, launch)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, index, owner, kp, offsets = ctx.saved_tensors
        scale, block_m, block_n, f32, has_pad, prec, launch = ctx.cfg
        dout = dout.contiguous()
        N, H, D = q.shape
        DV = v.shape[2]
        M = index.numel()
        BD, BDV = pow2(D), pow2(DV)
        delta = (dout.float() * out.float()).sum(-1).contiguous()  # (N, H): rowsum(dO * O) at owner slots
        dq = torch.zeros_like(q)
        dk_slot = torch.zeros(M, H, D, device=q.device, dtype=torch.float32)
        dv_slot = torch.zeros(M, H, DV, device=q.device, dtype=torch.float32)
        bs, be, bg = block_table(offsets, block_m)
        if bs.numel():
            _bwd_dq_kernel[(bs.numel(), H)](
                q, k, v, dout, dq, lse, delta, index, owner, kp, bs, be, bg,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                dout.stride(0), dout.stride(1), dq.stride(0), dq.stride(1), lse.stride(0), delta.stride(0),
                scale * LOG2E, scale, D, DV,
                HAS_PAD=has_pad, F32=f32, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=BD, BLOCK_DV=BDV,
                PREC=prec, **launch)
        ks, ke, kg = block_table(offsets, block_n)
        if ks.numel():
            _bwd_dkdv_kernel[(ks.numel(), H)](
                q, k, v, dout, dk_slot, dv_slot, lse, delta, index, owner, kp, ks, ke, kg,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                dout.stride(0), dout.stride(1), dk_slot.stride(0), dk_slot.stride(1),
                dv_slot.stride(0), dv_slot.stride(1), lse.stride(0), delta.stride(0), scale * LOG2E, scale, D, DV,
                HAS_PAD=has_pad, F32=f32, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=BD, BLOCK_DV=BDV,
                PREC=prec, **launch)
        # A voxel can sit in several groups (borrowed or repeated slots): sum its slot gradients.
        dk = torch.zeros(N, H, D, device=q.device, dtype=torch.float32).index_add_(0, index, dk_slot)
        dv = torch.zeros(N, H, DV, device=q.device, dtype=torch.float32).index_add_(0, index, dv_slot)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None, None, None


def group_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                           scale: float | None = None, block_m: int | None = None,
                           block_n: int | None = None, precision: str | None = None) -> torch.Tensor:
    """Group attention with the Triton kernels (any partition, equal-size or not). Returns (N, H, Dv).

    q, k, v are brought to one dtype by :func:`policy.unify_qkv` (float32, float16 or bfloat16; a mix
    is cast to the autocast dtype under autocast and raises otherwise). ``block_m``/``block_n`` (powers
    of two) override the query/key block sizes (tests use small ones). ``precision``: dot precision of
    float32 inputs, "tf32" or "ieee" (default: :func:`policy.get_fp32_precision`, "tf32").
    """
    q, k, v = unify_qkv(q, k, v, "group_attention_triton", KERNEL_DTYPES)
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if b is not None and (b < 1 or b & (b - 1)):
            raise ValueError(f"group_attention_triton: {name} must be a power of two, got {b}")
    return _GroupAttention.apply(q, k, v, partition.index, partition.owner, partition.key_pad,
                                 partition.offsets, default_scale(q, scale), block_m, block_n, precision)
