"""Triton kernels (group attention, SLA) vs the exact torch paths, forward and backward.

Without a GPU they run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
triton is imported); with a GPU the same tests run compiled on CUDA. Shapes are tiny and block sizes
small (16) so that groups of size 1, exactly a block, block + 1 and a long group spanning several
programs all occur.
"""

from __future__ import annotations

import os

import pytest
import torch

from pointwin.ops import group_attention, scattered_linear_attention
from pointwin.ops.attention.reference import group_attention_reference, scattered_linear_attention_reference
from pointwin.partition import Partition
from tests.test_group_attention import partition_from_groups, random_equal_groups, random_varlen_groups

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not set (run through tests/conftest.py)", allow_module_level=True)

from pointwin.ops.attention.triton_group import group_attention_triton  # noqa: E402
from pointwin.ops.attention.triton_sla import scattered_linear_attention_triton  # noqa: E402

BLOCK = 16


def _partitions() -> dict[str, Partition]:
    gen = torch.Generator().manual_seed(0)
    groups, n = random_varlen_groups([1, BLOCK, BLOCK + 1, 3 * BLOCK + 5, 2, 1], gen)
    parts = {"varlen": partition_from_groups(groups, n)}
    assert parts["varlen"].key_pad is not None  # the extras include repeats
    groups, n = random_varlen_groups([5, 9, 16, 1], gen, extras=False)
    parts["varlen_nopad"] = partition_from_groups(groups, n)
    parts["equal_keypad"] = partition_from_groups(random_equal_groups(5, BLOCK, gen), 5, size=BLOCK)
    parts["equal_overlap"] = partition_from_groups(random_equal_groups(37, BLOCK, gen), 37, size=BLOCK)
    return parts


PARTS = _partitions()


def _inputs(p: Partition, h: int, d: int, dv: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n = p.num_voxels
    tensors = [torch.randn(n, h, x, generator=gen) for x in (d, d, dv)]
    dout = torch.randn(n, h, dv, generator=gen)
    return [t.to(DEVICE, dtype).requires_grad_() for t in tensors], dout.to(DEVICE, dtype)


def _fwd_bwd(fn, leaves, dout):
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, dout)
    return out, grads


@pytest.mark.parametrize("name", list(PARTS))
def test_group_attention_kernel_matches_reference(name):
    p = PARTS[name].to(DEVICE)
    leaves, dout = _inputs(p, 2, 6, 5)  # D, Dv not powers of two: exercises the masked head dims
    out, grads = _fwd_bwd(lambda a, b, c: group_attention_triton(a, b, c, p, 0.4, BLOCK, BLOCK), leaves, dout)
    ref, ref_grads = _fwd_bwd(lambda a, b, c: group_attention_reference(a, b, c, p, 0.4), leaves, dout)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("name", ["varlen", "equal_keypad"])
def test_sla_kernel_matches_reference(name):
    p = PARTS[name].to(DEVICE)
    leaves, dout = _inputs(p, 2, 6, 5, seed=1)
    # chunk = block: the long group is split across several programs and combined per group.
    out, grads = _fwd_bwd(lambda a, b, c: scattered_linear_attention_triton(a, b, c, p, chunk=BLOCK, block_s=BLOCK),
                          leaves, dout)
    ref, ref_grads = _fwd_bwd(lambda a, b, c: scattered_linear_attention_reference(a, b, c, p), leaves, dout)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=2e-4)


def test_sla_multi_step_chunks():
    p = PARTS["varlen_nopad"].to(DEVICE)
    leaves, dout = _inputs(p, 1, 4, 4, seed=2)
    out, grads = _fwd_bwd(lambda a, b, c: scattered_linear_attention(a, b, c, p, backend="triton"), leaves, dout)
    ref, ref_grads = _fwd_bwd(lambda a, b, c: scattered_linear_attention_reference(a, b, c, p), leaves, dout)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=2e-4)


def test_dispatch_backend_triton_and_bf16_inputs():
    p = PARTS["varlen"].to(DEVICE)
    leaves, dout = _inputs(p, 2, 8, 8, seed=3)
    out = group_attention(*leaves, p, backend="triton")
    torch.testing.assert_close(out, group_attention_reference(*leaves, p), atol=2e-5, rtol=2e-5)
    # Low-precision inputs: loaded, computed in fp32, stored back in bf16.
    low = [t.detach().to(torch.bfloat16) for t in leaves]
    out16 = group_attention(*low, p, backend="triton")
    assert out16.dtype == torch.bfloat16
    ref = group_attention_reference(*(t.float() for t in low), p)
    torch.testing.assert_close(out16.float(), ref, atol=2e-2, rtol=2e-2)
    sla16 = scattered_linear_attention(*low, p, backend="triton")
    torch.testing.assert_close(sla16.float(), scattered_linear_attention_reference(*(t.float() for t in low), p),
                               atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="dropout"):
        group_attention(*leaves, p, dropout_p=0.1, backend="triton")



def _real_scheme(name: str) -> Partition:
    from tests.partition_cases import random_partitions

    return next(part for n, _, _, part in random_partitions(1) if n == name)


# One partition of each of the five schemes (all eight variants would only add interpreter time).
@pytest.mark.parametrize("name", ["flattened_y_shift", "rotated_x", "bev", "radial", "curve_z"])
@pytest.mark.parametrize("op", ["group_attention", "sla"])
def test_kernels_on_real_schemes(name, op):
    p = _real_scheme(name).to(DEVICE)
    leaves, dout = _inputs(p, 2, 4, 4, seed=4)
    if op == "group_attention":
        out, grads = _fwd_bwd(lambda a, b, c: group_attention_triton(a, b, c, p, None, BLOCK, BLOCK), leaves, dout)
        ref, ref_grads = _fwd_bwd(lambda a, b, c: group_attention_reference(a, b, c, p), leaves, dout)
    else:
        out, grads = _fwd_bwd(lambda a, b, c: scattered_linear_attention_triton(a, b, c, p, chunk=BLOCK,
                                                                                block_s=BLOCK), leaves, dout)
        ref, ref_grads = _fwd_bwd(lambda a, b, c: scattered_linear_attention_reference(a, b, c, p), leaves, dout)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=2e-4)
