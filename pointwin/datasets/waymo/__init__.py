"""Waymo Open Dataset without TensorFlow: v1 TFRecord + protobuf, v2 Parquet, range image -> points.

Submodules (import them directly; protobuf and pyarrow are imported only when needed):

- ``proto``: protobuf message classes (``Frame``, ``Label``, ``Objects``, ...) built without protoc.
"""
