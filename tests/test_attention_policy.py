"""The kernels' dtype and launch policy (pointwin/ops/attention/policy.py).

q, k, v reach a kernel in one dtype: a mix raises a ValueError naming the tensors outside autocast and is
cast to the autocast dtype inside it (SphereSeg adds float32 positions to bf16 projections under
autocast, which Triton rejected at compile time: "Both operands must be same dtype").
"""

from __future__ import annotations

import os

import pytest
import torch

from pointwin.ops import group_attention, scattered_linear_attention
from pointwin.ops.attention import policy
from pointwin.ops.attention.reference import group_attention_reference, scattered_linear_attention_reference
from tests.test_group_attention import partition_from_groups, random_varlen_groups

triton = pytest.importorskip("triton")
INTERP = os.environ.get("TRITON_INTERPRET") == "1"
needs_kernels = pytest.mark.skipif(not (INTERP or torch.cuda.is_available()),
                                   reason="Triton kernels need a GPU or TRITON_INTERPRET=1")


def _part():
    groups, n = random_varlen_groups([3, 17, 5, 1], torch.Generator().manual_seed(1))
    return partition_from_groups(groups, n)


def _qkv(n, dtypes=(torch.float32,) * 3, h=2, d=16):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, h, d, generator=gen).to(dt) for dt in dtypes]


@pytest.mark.parametrize("op", [group_attention, scattered_linear_attention])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mixed_dtypes_raise_outside_autocast(op, backend):
    if backend == "triton" and not (INTERP or torch.cuda.is_available()):
        pytest.skip("no Triton execution here")
    p = _part()
    q, k, v = _qkv(p.num_voxels, (torch.bfloat16, torch.float32, torch.float32))
    with pytest.raises(ValueError, match=r"q \(torch.bfloat16\), k \(torch.float32\) and v \(torch.float32\)"):
        op(q, k, v, p, backend=backend)


def test_unsupported_dtype_names_the_tensor():
    p = _part()
    q, k, v = _qkv(p.num_voxels)
    with pytest.raises(ValueError, match="k has dtype torch.int64"):
        policy.unify_qkv(q, k.long(), v, "op")
    with pytest.raises(ValueError, match="q has dtype torch.float64"):
        policy.unify_qkv(q.double(), k, v, "op", policy.KERNEL_DTYPES)


@needs_kernels
@pytest.mark.parametrize("op,ref", [(group_attention, group_attention_reference),
                                    (scattered_linear_attention, scattered_linear_attention_reference)])
def test_mix_under_autocast_is_cast_to_autocast_dtype(op, ref):
    """bf16 q + float32 k/v under bf16 autocast: one bf16 kernel launch, output bf16, matches the float64
    reference on the bf16-rounded inputs."""
    p = _part()
    q, k, v = _qkv(p.num_voxels, (torch.bfloat16, torch.float32, torch.float32))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (t.to(dev) for t in (q, k, v))
    with torch.autocast(dev, dtype=torch.bfloat16):
        out = op(q, k, v, p.to(dev) if hasattr(p, "to") else p, backend="triton")
    assert out.dtype == torch.bfloat16
    want = ref(*(t.to(torch.bfloat16).double().cpu() for t in (q, k, v)), p)
    torch.testing.assert_close(out.double().cpu(), want, atol=2e-2, rtol=2e-2)


def test_fp32_precision_setting():
    assert policy.get_fp32_precision() == "tf32"
    assert policy.dot_precision(torch.float32) == "tf32"
    with policy.fp32_precision("ieee"):
        assert policy.dot_precision(torch.float32) == "ieee"
        assert policy.dot_precision(torch.bfloat16) == "tf32"  # bf16/fp16 dots are exact on tensor cores
    assert policy.get_fp32_precision() == "tf32"
    with pytest.raises(ValueError, match="precision must be one of"):
        policy.set_fp32_precision("fp64")
    assert policy.sla_backward_precision("tf32", 16, 16) == "tf32x3"
    assert policy.sla_backward_precision("tf32", 128, 128) == "ieee"
    assert policy.sla_backward_precision("ieee", 16, 16) == "ieee"


def test_launch_table_shapes():
    """Block sizes are powers of two, shrink with the head dim and with exact fp32 dots."""
    for dt in policy.KERNEL_DTYPES:
        for bd in (16, 32, 64, 128):
            for short in (True, False):
                for prec in ("tf32", "ieee"):
                    cfg = policy.group_launch(dt, bd, bd, short, prec)
                    for b in (cfg.block_m, cfg.block_n):
                        assert b >= 16 and b & (b - 1) == 0
            s = policy.sla_launch(dt, bd, bd)
            assert s.block_n % s.block_m == 0 and s.block_m & (s.block_m - 1) == 0
    assert policy.group_launch(torch.float32, 64, 64, False, "ieee").block_m < \
        policy.group_launch(torch.float16, 64, 64, False, "tf32").block_m
    assert [policy.pow2(d) for d in (1, 8, 16, 17, 34, 52, 64, 65)] == [16, 16, 16, 32, 64, 64, 64, 128]
