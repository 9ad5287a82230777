"""3D backbones on sparse voxels, one family per file."""

from .dsvt import DSVT
from .flatformer import FlatFormer
from .scatterformer import ScatterFormer
from .sphereseg import SphereSeg

__all__ = ["DSVT", "FlatFormer", "ScatterFormer", "SphereSeg"]
