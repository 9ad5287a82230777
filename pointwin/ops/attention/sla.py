"""Scattered linear attention (ScatterFormer): dispatch between the torch reference and Triton."""

from __future__ import annotations

import torch

from ...partition.base import Partition
from .group_attention import triton_available
from .policy import auto_uses_triton, unify_qkv
from .reference import SLA_EPS, check_qkv, scattered_linear_attention_reference

BACKENDS = ("auto", "torch", "triton")


def scattered_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                               eps: float = SLA_EPS, backend: str = "auto") -> torch.Tensor:
    """Linear attention inside each (variable-length) group, phi = ReLU.

    KV_g = sum_{i in g} phi(k_i)^T v_i and s_g = sum_{i in g} phi(k_i) per head over the group's slots
    (key_pad slots excluded); y_n = phi(q_n) KV_g / (phi(q_n) . s_g + eps) with g the group of voxel
    n's owner slot. The result does not depend on the order of voxels inside a group.

    Args:
        q, k: (N, H, D); v: (N, H, Dv).
        partition: the groups.
        backend: "auto" (Triton on CUDA, torch elsewhere), "torch", or "triton" (also on CPU tensors
            under ``TRITON_INTERPRET=1``; for tests).

    Returns:
        (N, H, Dv).
    """
    if backend not in BACKENDS:
        raise ValueError(f"scattered_linear_attention: backend must be one of {BACKENDS}, got {backend!r}")
    check_qkv(q, k, v, partition, "scattered_linear_attention")
    q, k, v = unify_qkv(q, k, v, "scattered_linear_attention")  # one dtype for every path (policy.py)
    if backend == "triton" or (backend == "auto" and auto_uses_triton(q) and triton_available()):
        from .triton_sla import scattered_linear_attention_triton  # lazy: triton is optional

        return scattered_linear_attention_triton(q, k, v, partition, eps)
    return scattered_linear_attention_reference(q, k, v, partition, eps)
