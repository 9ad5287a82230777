"""Models: VFE, 3D backbones, BEV neck, heads, and the Detector / Segmentor assemblers."""

from .builder import BACKBONES, HEADS, MODELS, NECKS, VFES, build_model
from .detector import Detector
from .segmentor import Segmentor

__all__ = ["BACKBONES", "HEADS", "MODELS", "NECKS", "VFES", "Detector", "Segmentor", "build_model"]
