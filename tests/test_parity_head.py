"""CenterPointHead decoding vs the official DSVT head (OpenPCDet CenterHead, parity/dsvt_p_detector).

The fixture holds the raw head maps of the official detector and the boxes its ``generate_predicted_boxes``
produced before NMS (see the ``dsvt_p_detector`` section of ../shared/data/parity/README.md). With the official
settings pointwin's :meth:`CenterPointHead.candidates` must give the same cells, labels, boxes and scores.
All kept cells lie on the map border and several scores are tied (README warning 6), so rows are matched by
heatmap cell, never by position.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointwin.models.heads.centerpoint import CenterHeadOutput, CenterPointHead, TaskPrediction

from .conftest import shared_file

FIXTURE = "parity/dsvt_p_detector"
CLASSES = ["Vehicle", "Pedestrian", "Cyclist"]
TOL = 1e-4  # README tolerance for decoded boxes / scores after matching rows by cell

pytestmark = pytest.mark.usefixtures("one_thread")


def official_head(**overrides) -> CenterPointHead:
    """pointwin's head with the settings of tools/cfgs/dsvt_models/dsvt_plain_1f_onestage.yaml."""
    args = dict(in_channels=96, class_names=CLASSES, tasks=[CLASSES], shared_channels=64, head_channels=64,
                shared_norm_eps=1e-3, head_norm_eps=1e-3, with_iou=True,
                point_cloud_range=[-74.88, -74.88, -2.0, 74.88, 74.88, 4.0], voxel_size=[0.32, 0.32],
                feature_stride=1, rot_order="cos_sin", max_log_dim=None, threshold_on="raw", topk_on="raw",
                pre_max=500, score_threshold=0.1, iou_rectifier=[0.68, 0.71, 0.65],
                post_center_range=[-80.0, -80.0, -10.0, 80.0, 80.0, 10.0], nms_iou_threshold=[0.7, 0.6, 0.55],
                nms_pre_max=4096, nms_post_max=500, nms_swap_dims=True, post_max=500)
    args.update(overrides)
    return CenterPointHead(**args)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    path = shared_file(f"{FIXTURE}/outputs.npz")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def head_output(ref: dict[str, np.ndarray]) -> CenterHeadOutput:
    t = {k: torch.from_numpy(ref[f"head_{k}"]) for k in ("hm", "center", "center_z", "dim", "rot", "iou")}
    return CenterHeadOutput([TaskPrediction(heatmap=t["hm"], center=t["center"], center_z=t["center_z"],
                                            dim=t["dim"], rot=t["rot"], iou=t["iou"])])


def match_rows(cells: torch.Tensor, ref_cells: np.ndarray) -> torch.Tensor:
    """Index into the reference rows for each of our rows, matched by (class, y, x); the sets must agree."""
    ours = [tuple(r) for r in cells.tolist()]
    theirs = {tuple(r): i for i, r in enumerate(ref_cells.tolist())}
    assert len(theirs) == len(ref_cells) and len(set(ours)) == len(ours)
    assert set(ours) == set(theirs), (f"cell sets differ: {len(set(ours) - set(theirs))} only ours, "
                                      f"{len(set(theirs) - set(ours))} only the reference's")
    return torch.tensor([theirs[c] for c in ours])


def test_candidates_match_official_prenms_boxes(ref):
    cand = official_head().candidates(head_output(ref))
    assert len(cand) == 1 and len(cand[0]) == 1
    c = cand[0][0]
    assert len(c.boxes) == len(ref["prenms_boxes"]) == 347
    perm = match_rows(c.cells, ref["decode_cells"])
    # labels: ours 0-based indices into class_names, the reference's 1-based
    assert torch.equal(c.labels, torch.from_numpy(ref["decode_class_ids"])[perm])
    assert torch.equal(c.labels + 1, torch.from_numpy(ref["prenms_labels"])[perm])
    assert torch.equal(c.cells[:, 0], c.labels)  # one task of all classes: class in task = class index
    diffs = {
        "boxes": (c.boxes - torch.from_numpy(ref["prenms_boxes"])[perm]).abs().max().item(),
        "scores": (c.scores - torch.from_numpy(ref["prenms_scores"])[perm]).abs().max().item(),
        "raw_scores": (c.raw_scores - torch.from_numpy(ref["decode_raw_scores"])[perm]).abs().max().item(),
        "iou": (c.iou - torch.from_numpy(ref["decode_iou"])[perm]).abs().max().item(),
    }
    assert all(d <= TOL for d in diffs.values()), diffs
    assert bool((c.raw_scores > 0.1).all())  # the threshold tested the raw score


def test_topk_raw_scores_match_official(ref):
    head = official_head()
    heat = torch.from_numpy(ref["head_hm"]).sigmoid()
    top = heat.reshape(-1).topk(head.pre_max).values
    assert (top - torch.from_numpy(ref["topk_scores"])).abs().max().item() <= TOL
    # every official candidate is among the top-500 (its raw score is >= the 500th)
    assert float(ref["decode_raw_scores"].min()) >= float(ref["topk_scores"][-1])


def test_rectified_threshold_would_change_the_set(ref):
    """Thresholding the rectified score instead (pointwin's default) keeps a different set here: the predicted
    IoUs are high ((iou + 1) / 2 up to 1.18, clamped to 1), so raw^(1-a) * q^a > raw and all 500 top-K cells
    pass, including those the official head drops for a raw score <= 0.1."""
    c = official_head(threshold_on="rectified").candidates(head_output(ref))[0][0]
    assert len(c.boxes) == 500 > len(ref["prenms_boxes"])
    assert bool((c.scores > 0.1).all()) and bool((c.raw_scores <= 0.1).any())


def test_default_sin_cos_order_gets_yaw_wrong(ref):
    """The fixture's rot channels are (cos, sin): read as (sin, cos) the yaw becomes pi/2 - yaw."""
    c = official_head(rot_order="sin_cos").candidates(head_output(ref))[0][0]
    perm = match_rows(c.cells, ref["decode_cells"])
    yaw_ref = torch.from_numpy(ref["prenms_boxes"])[perm, 6].double()
    yaw = c.boxes[:, 6].double()
    err = torch.atan2(torch.sin(yaw - yaw_ref), torch.cos(yaw - yaw_ref)).abs()
    assert err.max().item() > 0.5 and (err > 1e-3).float().mean().item() > 0.9
    # and exactly as predicted: atan2(cos, sin) = pi/2 - atan2(sin, cos) (mod 2 pi)
    expected = math.pi / 2 - yaw_ref
    diff = torch.atan2(torch.sin(yaw - expected), torch.cos(yaw - expected)).abs()
    assert diff.max().item() < 1e-5
    # everything but the yaw is unaffected
    torch.testing.assert_close(c.boxes[:, :6], torch.from_numpy(ref["prenms_boxes"])[perm, :6], atol=TOL, rtol=0)


def test_predict_runs_nms_on_the_candidates(ref):
    head = official_head()
    out = head_output(ref)
    c = head.candidates(out)[0][0]
    det = head.predict(out)[0]
    assert 0 < len(det) <= len(c.boxes)
    # every detection is one of the candidates, with its score and label
    rows = {tuple(b): (s, lab) for b, s, lab in zip(c.boxes.tolist(), c.scores.tolist(), c.labels.tolist(),
                                                     strict=True)}
    for b, s, lab in zip(det.boxes.tensor.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
        assert rows[tuple(b)] == (s, lab)
