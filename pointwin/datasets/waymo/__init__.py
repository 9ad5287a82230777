"""Waymo Open Dataset without TensorFlow: v1 TFRecord + protobuf, v2 Parquet, range image -> points.

Submodules (protobuf and pyarrow, the ``waymo`` extra, are imported only when needed):

- ``proto``: protobuf message classes (``Frame``, ``Label``, ``Objects``, ...) built without protoc.
- ``tfrecord``: TFRecord reader/writer with CRC-32C checks (``iter_records``, ``TFRecordCorruptError``).
- ``range_image``: range image <-> points for all lidars and returns (``frame_to_points``).
- ``v2``: Parquet component readers.
- ``convert``: ``create_waymo_infos(src, out, shard=(i, n), workers=...)`` to pointwin's on-disk format.
- ``dataset``: ``WaymoDataset`` over converted frames.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "create_waymo_infos": "convert", "merge_waymo_infos": "convert", "WaymoDataset": "dataset",
    "iter_records": "tfrecord", "TFRecordCorruptError": "tfrecord", "frame_to_points": "range_image",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
