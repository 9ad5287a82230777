"""Window partitions: every scheme returns a :class:`Partition`."""

from .base import Partition

__all__ = ["Partition"]
