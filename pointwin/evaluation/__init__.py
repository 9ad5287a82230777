"""Evaluation: Waymo AP/APH (L1/L2), nuScenes mAP/NDS, KITTI 2D/BEV/3D AP and AOS, segmentation mIoU, generic
Waymo-style box AP.

Submodules are imported on use (``pointwin.evaluation.waymo``, ``.nuscenes``, ``.kitti``, ``.segmentation``,
``.detection``) so that ``import pointwin`` stays light.
"""
