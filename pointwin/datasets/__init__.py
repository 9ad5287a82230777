"""Datasets: synthetic LiDAR scenes (the embedded default), KITTI, nuScenes, Waymo; transforms; on-disk infos."""

from .base import DATASETS, InfoDataset, PointDataset, load_points, read_infos, save_points
from .kitti import KittiDataset
from .synthetic import (
    CLASS_NAMES,
    HDL32,
    HDL64,
    LidarConfig,
    SceneConfig,
    SyntheticDataset,
    SyntheticScene,
    create_synthetic,
    generate_scene,
)

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "HDL32",
    "HDL64",
    "InfoDataset",
    "KittiDataset",
    "LidarConfig",
    "PointDataset",
    "SceneConfig",
    "SyntheticDataset",
    "SyntheticScene",
    "create_synthetic",
    "generate_scene",
    "load_points",
    "read_infos",
    "save_points",
]
