"""Group softmax attention: dispatch between the exact torch paths and the Triton kernel."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...partition.base import Partition
from .policy import auto_uses_triton, unify_qkv
from .reference import check_qkv, group_attention_equal, group_attention_varlen

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """True when triton can be imported (it is optional: the torch paths run without it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def group_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                    scale: float | None = None, dropout_p: float = 0.0, backend: str = "auto",
                    pair_bias: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Softmax attention among the slots of each group of ``partition``.

    Args:
        q, k: (N, H, D) per-voxel queries and keys; v: (N, H, Dv) values. One dtype (float32, float16,
            bfloat16; float64 on the torch paths); under autocast a mix is cast to the autocast dtype,
            otherwise it raises (:func:`pointwin.ops.attention.policy.unify_qkv`).
        partition: which voxels attend to each other; keys at ``key_pad`` slots are ignored and voxel
            n's output is the output of its ``owner`` slot.
        scale: softmax scale, default 1/sqrt(D).
        dropout_p: attention dropout (torch paths only; the Triton path falls back to torch when > 0).
        backend: "auto" (equal-size groups -> one SDPA call; variable-length -> Triton on CUDA, bucketed
            torch elsewhere), "torch" (always the exact torch path) or "triton" (force the Triton kernel,
            also on CPU tensors under ``TRITON_INTERPRET=1``; for tests).
        pair_bias: optional additive bias on the attention logits of every (query, key) pair, e.g. a
            relative-position table: called as ``pair_bias(query_voxels (B, Lq), key_voxels (B, Lk))``
            with int64 voxel ids, it returns (B, H, Lq, Lk). Torch paths only for now ("auto" uses them
            when a bias is given; "triton" raises).

    Returns:
        (N, H, Dv) attention output per voxel.
    """
    if backend not in BACKENDS:
        raise ValueError(f"group_attention: backend must be one of {BACKENDS}, got {backend!r}")
    check_qkv(q, k, v, partition, "group_attention")
    q, k, v = unify_qkv(q, k, v, "group_attention")  # one dtype for every path (see policy.py)
    use_triton = backend == "triton" or (
        backend == "auto" and partition.size is None and auto_uses_triton(q) and dropout_p == 0.0 and pair_bias is None
        and triton_available())
    if use_triton:
        if dropout_p != 0.0:
            raise ValueError("group_attention: the Triton backend has no attention dropout; use backend='torch'")
        if pair_bias is not None:
            raise ValueError("group_attention: the Triton backend has no pair_bias yet; use backend='torch'")
        from .triton_group import group_attention_triton  # lazy: triton is optional

        return group_attention_triton(q, k, v, partition, scale)
    if partition.size is not None:
        return group_attention_equal(q, k, v, partition, scale, dropout_p, pair_bias)
    return group_attention_varlen(q, k, v, partition, scale, dropout_p, pair_bias)
