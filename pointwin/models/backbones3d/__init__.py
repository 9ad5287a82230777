"""3D backbones on sparse voxels, one family per file."""

from .condaformer import ConDaFormerSeg
from .dsvt import DSVT
from .flatformer import FlatFormer
from .ptv3 import PTv3
from .scatterformer import ScatterFormer, ScatterFormerLite
from .sphereseg import SphereSeg

__all__ = ["ConDaFormerSeg", "DSVT", "FlatFormer", "PTv3", "ScatterFormer", "ScatterFormerLite", "SphereSeg"]
