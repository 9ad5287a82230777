"""Small building blocks: feed-forward network, norms, attention over a Partition."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..partition.base import Partition

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def build_activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def build_norm1d(name: str, channels: int) -> nn.Module:
    """Norm over the channel axis of (N, C) token features: "layernorm" or "batchnorm"."""
    if name == "layernorm":
        return nn.LayerNorm(channels)
    if name == "batchnorm":
        return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
    raise ValueError(f"unknown norm {name!r}; valid: ['batchnorm', 'layernorm']")


class FFN(nn.Module):
    """Token-wise MLP: (N, C) -> Linear(C, hidden) -> act -> dropout -> Linear(hidden, C) -> (N, C)."""

    def __init__(self, channels: int, hidden: int, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = build_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class PartitionAttention(nn.Module):
    """Multi-head attention among the voxels of each group of a :class:`Partition`.

    ``kind="softmax"`` calls :func:`pointwin.ops.group_attention`, ``kind="linear"`` calls
    :func:`pointwin.ops.scattered_linear_attention` (ScatterFormer's SLA). A positional encoding, when
    given, is added to the queries and keys only (values stay position-free), as in SST/FlatFormer/DSVT.

    Shapes: x (N, C), pos (N, C) or None -> (N, C).
    """

    def __init__(self, channels: int, num_heads: int, kind: Literal["softmax", "linear"] = "softmax",
                 dropout: float = 0.0, qkv_bias: bool = True) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"PartitionAttention: channels={channels} not divisible by num_heads={num_heads}")
        if kind not in ("softmax", "linear"):
            raise ValueError(f"PartitionAttention kind must be 'softmax' or 'linear', got {kind!r}")
        self.channels, self.num_heads, self.kind, self.dropout = channels, num_heads, kind, dropout
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, partition: Partition, pos: torch.Tensor | None = None) -> torch.Tensor:
        from ..ops import group_attention, scattered_linear_attention

        n, c = x.shape
        h = self.num_heads
        w_q, w_k, w_v = self.qkv.weight.chunk(3, 0)
        b_q, b_k, b_v = self.qkv.bias.chunk(3, 0) if self.qkv.bias is not None else (None, None, None)
        qk_in = x if pos is None else x + pos
        q = nn.functional.linear(qk_in, w_q, b_q).view(n, h, c // h)
        k = nn.functional.linear(qk_in, w_k, b_k).view(n, h, c // h)
        v = nn.functional.linear(x, w_v, b_v).view(n, h, c // h)
        if self.kind == "softmax":
            out = group_attention(q, k, v, partition, dropout_p=self.dropout if self.training else 0.0)
        else:
            out = scattered_linear_attention(q, k, v, partition)
        return self.proj(out.reshape(n, c))
