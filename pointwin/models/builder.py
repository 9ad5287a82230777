"""Registries that let configs name model parts (``type: DSVT``), and :func:`build_model`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..config import ConfigError
from ..registry import Registry
from . import backbones3d, bev, heads, vfe
from .detector import Detector
from .segmentor import Segmentor

MODELS = Registry("model")
VFES = Registry("vfe")
BACKBONES = Registry("backbone")
NECKS = Registry("backbone_2d")
HEADS = Registry("head")

MODELS.register()(Detector)
MODELS.register()(Segmentor)
VFES.register()(vfe.DynamicVFE)
VFES.register()(vfe.DynamicPillarVFE)
VFES.register()(vfe.MeanVFE)
for _name in backbones3d.__all__:
    BACKBONES.register()(getattr(backbones3d, _name))
NECKS.register()(bev.BEVBackbone)
HEADS.register()(heads.CenterPointHead)
HEADS.register()(heads.SegHead)


def build_model(cfg_model: Mapping[str, Any]) -> nn.Module:
    """Build a :class:`Detector` or :class:`Segmentor` from the ``model`` section of a config.

    Keys other than ``type`` and the model's parameters raise a ConfigError naming the valid ones.
    """
    if not isinstance(cfg_model, Mapping):
        raise ConfigError(f"model: expected a mapping, got {type(cfg_model).__name__}")
    return MODELS.build(cfg_model, "model")
