"""pointwin: window attention on sparse voxels for LiDAR 3D perception."""

__version__ = "0.1.0"
