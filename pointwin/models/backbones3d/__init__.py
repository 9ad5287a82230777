"""3D backbones on sparse voxels, one family per file."""

from .dsvt import DSVT
from .flatformer import FlatFormer

__all__ = ["DSVT", "FlatFormer"]
