"""Triton kernels for scattered linear attention (forward + backward).

Every group's slots are cut into chunks of CHUNK slots; one program handles one chunk and one head,
walking it in sub-blocks of BLOCK_S slots and reading q/k/v through ``partition.index``. Per-group
reductions (KV = sum phi(k)^T v, s = sum phi(k), and their gradients) are accumulated in fp32 per
chunk and combined per group with ``index_add_`` (split-K), so a window of thousands of voxels is
spread over many programs. Outputs are written by owner slots only. The backward runs three kernels:
dq (also storing each owner slot's den and dden), the chunk's dKV / ds partials from those scalars (kept
apart from dq so that no program holds two (D, Dv) fp32 matrices: that spilled at D = 64 on sm_80), and
per-slot dk / dv.

This module imports triton at import time; import it lazily (``scattered_linear_attention`` does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...partition.base import Partition
from .policy import (
    KERNEL_DTYPES,
    dot_precision,
    interpreted,
    interpreter_sla_launch,
    pow2,
    sla_backward_precision,
    sla_launch,
    sla_state_block,
    unify_qkv,
)
from .reference import SLA_EPS


def chunk_table(offsets: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunks of at most ``chunk`` slots inside groups: int32 first slot, int32 group end, int64 group id."""
    sizes = offsets[1:] - offsets[:-1]
    nblk = (sizes + chunk - 1) // chunk
    grp = torch.repeat_interleave(torch.arange(sizes.numel(), device=offsets.device), nblk)
    first = torch.cumsum(nblk, 0) - nblk
    start = offsets[grp] + (torch.arange(grp.numel(), device=offsets.device) - first[grp]) * chunk
    return start.to(torch.int32), offsets[grp + 1].to(torch.int32), grp


@triton.jit
def _state_kernel(K, V, PKV, PS, INDEX, KEYPAD, CSTART, CEND,
                  stride_kn, stride_kh, stride_vn, stride_vh, D, DV,
                  HAS_PAD: tl.constexpr, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr):
    """Partial KV (D, DV) and s (D,) of one chunk and head -> PKV[pid, h], PS[pid, h]."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    start = tl.load(CSTART + pid)
    stop = tl.minimum(start + CHUNK, tl.load(CEND + pid))
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    e_mask = offs_e < DV
    kv = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    s = tl.zeros([BLOCK_D], tl.float32)
    for sstart in range(start, stop, BLOCK_S):
        offs = sstart + tl.arange(0, BLOCK_S)
        mask = offs < stop
        vox = tl.load(INDEX + offs, mask=mask, other=0).to(tl.int64)
        if HAS_PAD:
            mask = mask & (tl.load(KEYPAD + offs, mask=mask, other=1) == 0)
        kt = tl.load(K + vox[None, :] * stride_kn + h * stride_kh + offs_d[:, None],
                     mask=d_mask[:, None] & mask[None, :], other=0.0).to(tl.float32)
        v = tl.load(V + vox[:, None] * stride_vn + h * stride_vh + offs_e[None, :],
                    mask=mask[:, None] & e_mask[None, :], other=0.0).to(tl.float32)
        pkt = tl.maximum(kt, 0.0)
        kv += tl.dot(pkt, v, input_precision=PREC)
        s += tl.sum(pkt, 1)
    base = pid * H + h
    tl.store(PKV + base * BLOCK_D * BLOCK_DV + offs_d[:, None] * BLOCK_DV + offs_e[None, :], kv)
    tl.store(PS + base * BLOCK_D + offs_d, s)


@triton.jit
def _out_kernel(Q, KV, S, O, INDEX, OWNER, CSTART, CEND, CGROUP, stride_qn, stride_qh, stride_on, stride_oh,
                eps, D, DV, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, PREC: tl.constexpr):
    """y = phi(q) KV_g / (phi(q) . s_g + eps) for the owner slots of one chunk and head."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    start = tl.load(CSTART + pid)
    stop = tl.minimum(start + CHUNK, tl.load(CEND + pid))
    g = tl.load(CGROUP + pid)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    e_mask = offs_e < DV
    base = g * H + h
    kv = tl.load(KV + base * BLOCK_D * BLOCK_DV + offs_d[:, None] * BLOCK_DV + offs_e[None, :])
    s = tl.load(S + base * BLOCK_D + offs_d)
    for sstart in range(start, stop, BLOCK_S):
        offs = sstart + tl.arange(0, BLOCK_S)
        mask = offs < stop
        vox = tl.load(INDEX + offs, mask=mask, other=0).to(tl.int64)
        mask = mask & (tl.load(OWNER + vox, mask=mask, other=-1) == offs)
        q = tl.load(Q + vox[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                    mask=mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        pq = tl.maximum(q, 0.0)
        num = tl.dot(pq, kv, input_precision=PREC)
        den = tl.sum(pq * s[None, :], 1) + eps
        y = num / den[:, None]
        tl.store(O + vox[:, None] * stride_on + h * stride_oh + offs_e[None, :], y.to(O.dtype.element_ty),
                 mask=mask[:, None] & e_mask[None, :])


@triton.jit
def _bwd_q_kernel(Q, KV, S, DO, DQ, SCAL, INDEX, OWNER, CSTART, CEND, CGROUP,
                  stride_qn, stride_qh, stride_don, stride_doh, stride_dqn, stride_dqh, eps, D, DV,
                  CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  PREC: tl.constexpr):
    """dq at owner slots, and per slot den = phi(q) . s + eps and dden = -(do . num) / den^2 -> SCAL[slot, h].

    The chunk's dKV / ds partials are summed by _bwd_state_kernel from these two scalars: one kernel
    holding both the group's KV and a dKV accumulator (two (D, DV) fp32 matrices) spilled at D = 64.
    """
    pid = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    start = tl.load(CSTART + pid)
    stop = tl.minimum(start + CHUNK, tl.load(CEND + pid))
    g = tl.load(CGROUP + pid)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    e_mask = offs_e < DV
    gbase = g * H + h
    kv = tl.load(KV + gbase * BLOCK_D * BLOCK_DV + offs_d[:, None] * BLOCK_DV + offs_e[None, :])
    s = tl.load(S + gbase * BLOCK_D + offs_d)
    for sstart in range(start, stop, BLOCK_S):
        offs = sstart + tl.arange(0, BLOCK_S)
        mask = offs < stop
        vox = tl.load(INDEX + offs, mask=mask, other=0).to(tl.int64)
        mask = mask & (tl.load(OWNER + vox, mask=mask, other=-1) == offs)
        q = tl.load(Q + vox[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                    mask=mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        do = tl.load(DO + vox[:, None] * stride_don + h * stride_doh + offs_e[None, :],
                     mask=mask[:, None] & e_mask[None, :], other=0.0).to(tl.float32)
        pq = tl.maximum(q, 0.0)
        num = tl.dot(pq, kv, input_precision=PREC)
        den = tl.sum(pq * s[None, :], 1) + eps
        dnum = do / den[:, None]
        dden = -tl.sum(do * num, 1) / (den * den)
        dpq = tl.dot(dnum, tl.trans(kv), input_precision=PREC) + dden[:, None] * s[None, :]
        dq = tl.where(q > 0, dpq, 0.0)
        tl.store(DQ + vox[:, None] * stride_dqn + h * stride_dqh + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=mask[:, None] & d_mask[None, :])
        tl.store(SCAL + (offs * H + h) * 2, den, mask=mask)
        tl.store(SCAL + (offs * H + h) * 2 + 1, dden, mask=mask)


@triton.jit
def _bwd_state_kernel(Q, DO, SCAL, PDKV, PDS, INDEX, OWNER, CSTART, CEND,
                      stride_qn, stride_qh, stride_don, stride_doh, D, DV,
                      CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                      PREC: tl.constexpr):
    """The chunk's partial dKV = sum phi(q)^T (do / den) and ds = sum dden phi(q) over its owner slots."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    start = tl.load(CSTART + pid)
    stop = tl.minimum(start + CHUNK, tl.load(CEND + pid))
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    e_mask = offs_e < DV
    dkv = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    ds = tl.zeros([BLOCK_D], tl.float32)
    for sstart in range(start, stop, BLOCK_S):
        offs = sstart + tl.arange(0, BLOCK_S)
        mask = offs < stop
        vox = tl.load(INDEX + offs, mask=mask, other=0).to(tl.int64)
        mask = mask & (tl.load(OWNER + vox, mask=mask, other=-1) == offs)
        qt = tl.load(Q + vox[None, :] * stride_qn + h * stride_qh + offs_d[:, None],
                     mask=d_mask[:, None] & mask[None, :], other=0.0).to(tl.float32)
        do = tl.load(DO + vox[:, None] * stride_don + h * stride_doh + offs_e[None, :],
                     mask=mask[:, None] & e_mask[None, :], other=0.0).to(tl.float32)
        den = tl.load(SCAL + (offs * H + h) * 2, mask=mask, other=1.0)
        dden = tl.load(SCAL + (offs * H + h) * 2 + 1, mask=mask, other=0.0)
        pqt = tl.maximum(qt, 0.0)
        dkv += tl.dot(pqt, do / den[:, None], input_precision=PREC)
        ds += tl.sum(pqt * dden[None, :], 1)
    base = pid * H + h
    tl.store(PDKV + base * BLOCK_D * BLOCK_DV + offs_d[:, None] * BLOCK_DV + offs_e[None, :], dkv)
    tl.store(PDS + base * BLOCK_D + offs_d, ds)


@triton.jit
def _bwd_kv_kernel(K, V, DKV, DS, DK, DV_, INDEX, KEYPAD, CSTART, CEND, CGROUP,
                   stride_kn, stride_kh, stride_vn, stride_vh, stride_dkm, stride_dkh, stride_dvm, stride_dvh,
                   D, DV, HAS_PAD: tl.constexpr, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr):
    """Per-slot dk = (v dKV^T + ds) * [k > 0] and dv = phi(k) dKV (zero at key_pad slots)."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    start = tl.load(CSTART + pid)
    stop = tl.minimum(start + CHUNK, tl.load(CEND + pid))
    g = tl.load(CGROUP + pid)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    e_mask = offs_e < DV
    gbase = g * H + h
    dkv = tl.load(DKV + gbase * BLOCK_D * BLOCK_DV + offs_d[:, None] * BLOCK_DV + offs_e[None, :])
    ds = tl.load(DS + gbase * BLOCK_D + offs_d)
    for sstart in range(start, stop, BLOCK_S):
        offs = sstart + tl.arange(0, BLOCK_S)
        in_range = offs < stop
        mask = in_range
        vox = tl.load(INDEX + offs, mask=mask, other=0).to(tl.int64)
        if HAS_PAD:
            mask = mask & (tl.load(KEYPAD + offs, mask=mask, other=1) == 0)
        k = tl.load(K + vox[:, None] * stride_kn + h * stride_kh + offs_d[None, :],
                    mask=mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        v = tl.load(V + vox[:, None] * stride_vn + h * stride_vh + offs_e[None, :],
                    mask=mask[:, None] & e_mask[None, :], other=0.0).to(tl.float32)
        pk = tl.maximum(k, 0.0)
        dpk = tl.dot(v, tl.trans(dkv), input_precision=PREC) + ds[None, :]
        dk = tl.where((k > 0) & mask[:, None], dpk, 0.0)
        dv = tl.dot(pk, dkv, input_precision=PREC)
        tl.store(DK + offs[:, None] * stride_dkm + h * stride_dkh + offs_d[None, :], dk,
                 mask=in_range[:, None] & d_mask[None, :])
        tl.store(DV_ + offs[:, None] * stride_dvm + h * stride_dvh + offs_e[None, :], dv,
                 mask=in_range[:, None] & e_mask[None, :])


def _config(dtype: torch.dtype, D: int, DV: int, chunk: int | None,
            block_s: int | None) -> tuple[int, int, dict]:
    """(CHUNK, BLOCK_S, launch options) from :func:`policy.sla_launch`, or the test overrides."""
    if interpreted():
        cfg = interpreter_sla_launch(chunk, block_s)
    else:
        cfg = sla_launch(dtype, pow2(D), pow2(DV))
    block_s = block_s or cfg.block_m
    chunk = chunk or max(cfg.block_n, block_s)
    if chunk % block_s:
        raise ValueError(f"scattered_linear_attention_triton: chunk {chunk} must be a multiple of block_s {block_s}")
    return chunk, block_s, dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _combine(partial: torch.Tensor, grp: torch.Tensor, G: int) -> torch.Tensor:
    """Sum per-chunk partials (C, H, ...) into per-group totals (G, H, ...)."""
    return torch.zeros(G, *partial.shape[1:], device=partial.device, dtype=partial.dtype).index_add_(0, grp, partial)


class _SLA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, index, owner, key_pad, offsets, eps, chunk, block_s, precision):
        if not q.dtype == k.dtype == v.dtype:  # scattered_linear_attention_triton unifies them
            raise ValueError(f"_SLA: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        N, H, D = q.shape
        DV = v.shape[2]
        G = offsets.numel() - 1
        chunk, block_s, launch = _config(q.dtype, D, DV, chunk, block_s)
        cs, ce, grp = chunk_table(offsets, chunk)
        C = cs.numel()
        BD, BDV = pow2(D), pow2(DV)
        has_pad = key_pad is not None
        kp = key_pad.to(torch.int8) if has_pad else index
        # The kernels load q/k/v and compute in fp32; fp32 inputs use TF32 dots unless precision="ieee".
        prec = dot_precision(q.dtype, precision)
        pkv = torch.empty(C, H, BD, BDV, device=q.device, dtype=torch.float32)
        ps = torch.empty(C, H, BD, device=q.device, dtype=torch.float32)
        out = torch.zeros(N, H, DV, device=q.device, dtype=q.dtype)
        if C:
            _state_kernel[(C, H)](k, v, pkv, ps, index, kp, cs, ce, k.stride(0), k.stride(1), v.stride(0),
                                  v.stride(1), D, DV, HAS_PAD=has_pad, CHUNK=chunk, BLOCK_S=block_s,
                                  BLOCK_D=BD, BLOCK_DV=BDV,
                                   PREC=prec, **launch)
        kv, s = _combine(pkv, grp, G), _combine(ps, grp, G)
        if C:
            _out_kernel[(C, H)](q, kv, s, out, index, owner, cs, ce, grp, q.stride(0), q.stride(1),
                                out.stride(0), out.stride(1), eps, D, DV, CHUNK=chunk, BLOCK_S=block_s,
                                BLOCK_D=BD, BLOCK_DV=BDV,
                                   PREC=prec, **launch)
        ctx.save_for_backward(q, k, v, kv, s, index, owner, kp, cs, ce, grp)
        ctx.cfg = (eps, chunk, block_s, has_pad, G, sla_backward_precision(prec, BD, BDV), launch)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, kv, s, index, owner, kp, cs, ce, grp = ctx.saved_tensors
        eps, chunk, block_s, has_pad, G, prec, launch = ctx.cfg
        dout = dout.contiguous()
        N, H, D = q.shape
        DV = v.shape[2]
        M, C = index.numel(), cs.numel()
        BD, BDV = pow2(D), pow2(DV)
        dq = torch.zeros_like(q)
        pdkv = torch.empty(C, H, BD, BDV, device=q.device, dtype=torch.float32)
        pds = torch.empty(C, H, BD, device=q.device, dtype=torch.float32)
        dk_slot = torch.zeros(M, H, D, device=q.device, dtype=torch.float32)
        dv_slot = torch.zeros(M, H, DV, device=q.device, dtype=torch.float32)
        scal = torch.empty(M, H, 2, device=q.device, dtype=torch.float32)  # den, dden per slot and head
        if C:
            _bwd_q_kernel[(C, H)](q, kv, s, dout, dq, scal, index, owner, cs, ce, grp,
                                  q.stride(0), q.stride(1), dout.stride(0), dout.stride(1), dq.stride(0),
                                  dq.stride(1), eps, D, DV, CHUNK=chunk, BLOCK_S=block_s, BLOCK_D=BD,
                                  BLOCK_DV=BDV, PREC=prec, **launch)
            _bwd_state_kernel[(C, H)](q, dout, scal, pdkv, pds, index, owner, cs, ce, q.stride(0), q.stride(1),
                                      dout.stride(0), dout.stride(1), D, DV, CHUNK=chunk,
                                      BLOCK_S=sla_state_block(block_s), BLOCK_D=BD, BLOCK_DV=BDV, PREC=prec,
                                      **launch)
            dkv, ds = _combine(pdkv, grp, G), _combine(pds, grp, G)
            _bwd_kv_kernel[(C, H)](k, v, dkv, ds, dk_slot, dv_slot, index, kp, cs, ce, grp,
                                   k.stride(0), k.stride(1), v.stride(0), v.stride(1), dk_slot.stride(0),
                                   dk_slot.stride(1), dv_slot.stride(0), dv_slot.stride(1), D, DV,
                                   HAS_PAD=has_pad, CHUNK=chunk, BLOCK_S=block_s, BLOCK_D=BD, BLOCK_DV=BDV,
                                   PREC=prec, **launch)
        # A voxel can sit in several groups: sum its per-slot key/value gradients.
        dk = torch.zeros(N, H, D, device=q.device, dtype=torch.float32).index_add_(0, index, dk_slot)
        dv = torch.zeros(N, H, DV, device=q.device, dtype=torch.float32).index_add_(0, index, dv_slot)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None, None, None


def scattered_linear_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                                      eps: float = SLA_EPS, chunk: int | None = None,
                                      block_s: int | None = None, precision: str | None = None) -> torch.Tensor:
    """Scattered linear attention with the Triton kernels. Returns (N, H, Dv).

    q, k, v are brought to one dtype by :func:`policy.unify_qkv`; ``precision`` is the dot precision of
    float32 inputs ("tf32" default, or "ieee"); the backward uses fp32-accurate dots either way.

    ``chunk`` (slots per program) and ``block_s`` (slots per inner step, a power of two) override the
    defaults; tests use small ones so that long groups span several programs.
    """
    if block_s is not None and (block_s < 1 or block_s & (block_s - 1)):
        raise ValueError(f"scattered_linear_attention_triton: block_s must be a power of two, got {block_s}")
    q, k, v = unify_qkv(q, k, v, "scattered_linear_attention_triton", KERNEL_DTYPES)
    return _SLA.apply(q, k, v, partition.index, partition.owner, partition.key_pad, partition.offsets,
                      float(eps), chunk, block_s, precision)
