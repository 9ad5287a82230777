"""Attention ops on partitions: group softmax attention and scattered linear attention."""

from .group_attention import group_attention
from .reference import group_attention_reference, scattered_linear_attention_reference
from .sla import scattered_linear_attention

__all__ = [
    "group_attention",
    "group_attention_reference",
    "scattered_linear_attention",
    "scattered_linear_attention_reference",
]
