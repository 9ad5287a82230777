"""One dtype and launch policy for the attention kernels (group attention and SLA).

Everything that decides *how* a kernel runs lives here, so that the launchers, the ahead-of-time
compile check (:mod:`pointwin.ops.attention.aot`) and the GPU acceptance script agree:

- :func:`unify_qkv`: q, k and v reach a kernel in exactly one dtype (float32, float16 or bfloat16; the
  torch paths also take float64). A mix is cast to the autocast dtype when autocast is on for the
  tensors' device (e.g. SphereSeg adds float32 positions to bf16 projections), and raises a ValueError
  naming the tensors otherwise. Triton's ``tl.dot`` rejects mixed operands at compile time ("Both
  operands must be same dtype"), so this is the one place where a mix is resolved.
- :func:`fp32_precision`: float32 inputs use TF32 tensor cores on the GPU by default (``"tf32"``); the
  exact ``"ieee"`` fp32 dot is kept for tests (``set_fp32_precision("ieee")`` or the launchers'
  ``precision=`` argument). SLA's backward never uses plain TF32: its key gradient is a difference of
  two large terms (see :mod:`pointwin.ops.attention.triton_sla`), so it uses ``"tf32x3"`` (three TF32
  passes, fp32 accuracy on tensor cores) unless ``"ieee"`` is asked for.
- :func:`group_launch` / :func:`sla_launch`: block sizes, ``num_warps`` and ``num_stages`` per head dim
  and dtype from a table measured with the AOT compile check (registers / spills / shared memory on
  sm_80 and sm_90; see BENCHMARKS.md, "Kernel resources").
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PRECISIONS = ("tf32", "ieee")

_fp32_precision = os.environ.get("POINTWIN_FP32_PRECISION", "tf32")
if _fp32_precision not in PRECISIONS:
    raise ValueError(f"POINTWIN_FP32_PRECISION must be one of {PRECISIONS}, got {_fp32_precision!r}")


def interpreted() -> bool:
    """True under the Triton interpreter (CPU tensors; its bf16/fp16 arithmetic is wrong, so the kernels
    compute in float32 there)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def set_fp32_precision(precision: str) -> None:
    """Dot precision for float32 inputs: "tf32" (default, tensor cores) or "ieee" (exact fp32 FMA)."""
    global _fp32_precision
    if precision not in PRECISIONS:
        raise ValueError(f"fp32 precision must be one of {PRECISIONS}, got {precision!r}")
    _fp32_precision = precision


def get_fp32_precision() -> str:
    return _fp32_precision


@contextmanager
def fp32_precision(precision: str):
    """Context manager: ``with fp32_precision("ieee"): ...`` runs float32 kernels with exact dots."""
    before = _fp32_precision
    set_fp32_precision(precision)
    try:
        yield
    finally:
        set_fp32_precision(before)


_triton_on_cpu = False


@contextmanager
def triton_on_cpu(enabled: bool = True):
    """Inside this context ``backend="auto"`` picks the Triton kernels for CPU tensors too when the Triton
    interpreter is on (tests run whole models through the kernels' code paths this way)."""
    global _triton_on_cpu
    before = _triton_on_cpu
    _triton_on_cpu = enabled
    try:
        yield
    finally:
        _triton_on_cpu = before


def auto_uses_triton(t: torch.Tensor) -> bool:
    """Whether ``backend="auto"`` may use a Triton kernel for tensors like ``t``: on CUDA, or on the CPU under
    the interpreter inside :func:`triton_on_cpu`."""
    return t.is_cuda or (_triton_on_cpu and interpreted())


def dot_precision(dtype: torch.dtype, precision: str | None = None) -> str:
    """``input_precision`` of the kernels' ``tl.dot`` calls for inputs of ``dtype``.

    fp16/bf16 operands are exact on tensor cores whatever the flag; for float32 operands the flag picks
    TF32 (default) or exact fp32.
    """
    p = _fp32_precision if precision is None else precision
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {p!r}")
    return p if dtype == torch.float32 else "tf32"


def sla_backward_precision(precision: str, block_d: int, block_dv: int) -> str:
    """SLA backward dots: ``"ieee"`` stays exact; TF32 becomes ``"tf32x3"`` (fp32-accurate, tensor cores).

    At head dims > 64 the three-pass operands of a (BLOCK_D, BLOCK_DV) fp32 state need ~270 KB of
    shared memory per block (over A100's 163 KB and H100's 227 KB), so those use exact fp32 FMA dots
    ("ieee", ~85 KB) instead.
    """
    if precision == "ieee" or max(block_d, block_dv) > 64:
        return "ieee"
    return "tf32x3"


def unify_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, op: str,
              allowed: tuple[torch.dtype, ...] = KERNEL_DTYPES + (torch.float64,)
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return q, k, v in one dtype, or raise a ValueError that names the tensors and the dtypes.

    Mixed inputs are cast to the autocast dtype when autocast is enabled for their device type (the mix
    then comes from autocast itself: a float32 positional term added to a bf16 projection); outside
    autocast a mix is a bug in the caller and raises.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in allowed:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}; expected one of "
                             f"{', '.join(str(d) for d in allowed)}")
    if q.dtype == k.dtype == v.dtype:
        return q, k, v
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        target = torch.get_autocast_dtype(dev)
        if target not in allowed:
            raise ValueError(f"{op}: autocast dtype {target} is not one of {allowed}")
        return q.to(target), k.to(target), v.to(target)
    raise ValueError(f"{op}: q ({q.dtype}), k ({k.dtype}) and v ({v.dtype}) must share one dtype "
                     f"(cast them, or run under torch.autocast, which casts them to its dtype)")


@dataclass(frozen=True)
class Launch:
    """Constexprs and launch options of one kernel launch."""

    block_m: int  # group: query slots per program; SLA: slots per inner step (BLOCK_S)
    block_n: int  # group: key slots per inner step; SLA: slots per program (CHUNK)
    num_warps: int
    num_stages: int


def pow2(n: int, lo: int = 16) -> int:
    """Smallest power of two >= n and >= lo (tl.dot needs dims >= 16; block shapes are powers of two)."""
    n = max(int(n), lo)
    return 1 << (n - 1).bit_length()


def group_launch(dtype: torch.dtype, block_d: int, block_dv: int, short_groups: bool,
                 precision: str = "tf32") -> Launch:
    """Block sizes for the group-attention kernels (fwd, dq, dkdv share them).

    ``short_groups``: the mean group has <= 48 slots, so 32-slot blocks waste less than 64-slot ones.
    Measured with :mod:`pointwin.ops.attention.aot` (Triton 3.9, sm_80 and sm_90): 64-slot blocks spill
    at head dim 64 (fp16/bf16 and fp32) and at 32 (fp32); 32-slot blocks with 4 warps spill at 128, 8
    warps do not; exact fp32 ("ieee") dots are FMA in registers and need 16-slot blocks from head dim 32.
    """
    wide = max(block_d, block_dv)
    if dtype == torch.float32 and precision == "ieee":
        b = 32 if wide <= 16 else 16
        return Launch(b, b, 4, 2 if wide <= 64 else 1)
    if wide <= 16 or (wide <= 32 and dtype != torch.float32):
        b = 32 if short_groups else 64
        return Launch(b, b, 4, 2)
    if wide <= 64:
        return Launch(32, 32, 4, 2)
    return Launch(32, 32, 8, 1)


def sla_launch(dtype: torch.dtype, block_d: int, block_dv: int) -> Launch:
    """Block sizes for the SLA kernels: BLOCK_S slots per step, CHUNK slots per program.

    The per-program state is a (BLOCK_D, BLOCK_DV) fp32 matrix (two in the backward's dq kernel), so the
    step shrinks and the warps grow with the head dim (measured like :func:`group_launch`). Known
    remainder: at head dim 128 the dq kernel's exact-fp32 dots spill ~600 B/thread for fp16/bf16 (see
    BENCHMARKS.md, "Kernel resources").
    """
    wide = max(block_d, block_dv)
    if wide <= 16:
        return Launch(64, 256, 4, 1)
    if wide <= 32:
        return Launch(32, 256, 4, 1)
    return Launch(16, 256, 8, 1)


def sla_state_block(block_s: int) -> int:
    """BLOCK_S of SLA's backward dKV/ds kernel: at most 32 (64 spills 16 B on sm_80 in bf16 at head dim 16)."""
    return min(block_s, 32)


def interpreter_group_launch(block_m: int | None, block_n: int | None) -> Launch:
    return Launch(block_m or 16, block_n or 16, 1, 1)


def interpreter_sla_launch(chunk: int | None, block_s: int | None) -> Launch:
    block_s = block_s or 16
    return Launch(block_s, chunk or 2 * block_s, 1, 1)
