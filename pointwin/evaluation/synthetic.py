"""Evaluation of the synthetic LiDAR dataset: Waymo-style AP/APH with BEV and 3D IoU.

The same matching and AP definition as :mod:`pointwin.evaluation.waymo` (Hungarian matching at the
101 score cut-offs, PR envelope, 0.05 recall steps), without difficulty levels. Defaults: IoU 0.5 for
every class, so the demo's headline number reads "Car AP (BEV IoU 0.5)" = ``metrics["Car/AP_BEV"]``.
"""

from __future__ import annotations

from .detection import evaluate_detections, format_ap_table

__all__ = ["evaluate_detections", "format_ap_table"]
