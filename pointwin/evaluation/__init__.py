"""Evaluation: Waymo AP/APH (L1/L2), nuScenes mAP/NDS, segmentation mIoU, generic Waymo-style box AP.

Submodules are imported on use (``pointwin.evaluation.waymo``, ``.nuscenes``, ``.segmentation``,
``.detection``) so that ``import pointwin`` stays light.
"""
