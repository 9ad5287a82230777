"""Datasets: synthetic LiDAR scenes (the embedded default), KITTI, nuScenes, Waymo; transforms; on-disk infos."""

from .base import DATASETS, InfoDataset, PointDataset, load_points, read_infos, save_points
from .gt_sampling import GTSampling, build_gt_database
from .kitti import KittiDataset
from .nuscenes import NuScenesDataset
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
from .transforms import (
    TRANSFORMS,
    Compose,
    GlobalRotation,
    GlobalScaling,
    GlobalTranslation,
    PointRangeFilter,
    RandomFlip,
    ShufflePoints,
    build_transforms,
)
from .waymo.dataset import WaymoDataset

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "TRANSFORMS",
    "Compose",
    "GTSampling",
    "GlobalRotation",
    "GlobalScaling",
    "GlobalTranslation",
    "PointRangeFilter",
    "RandomFlip",
    "ShufflePoints",
    "build_gt_database",
    "build_transforms",
    "HDL32",
    "HDL64",
    "InfoDataset",
    "KittiDataset",
    "LidarConfig",
    "NuScenesDataset",
    "PointDataset",
    "SceneConfig",
    "SyntheticDataset",
    "SyntheticScene",
    "WaymoDataset",
    "create_synthetic",
    "generate_scene",
    "load_points",
    "read_infos",
    "save_points",
]
