"""CenterPoint head: targets, encode/decode, losses and NMS against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from pointwin.models.heads.centerpoint import (
    CenterHeadOutput,
    CenterPointHead,
    TaskPrediction,
    draw_gaussian,
    focal_loss,
    gaussian_radius,
)
from pointwin.structures import Boxes3D

RANGE = [-8.0, -8.0, -3.0, 8.0, 8.0, 3.0]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_head(**kw) -> CenterPointHead:
    args = dict(in_channels=8, class_names=["Car", "Pedestrian"], point_cloud_range=RANGE, voxel_size=[0.5, 0.5],
                feature_stride=2, tasks=[["Car"], ["Pedestrian"]], shared_channels=8, head_channels=8,
                score_threshold=0.05)
    args.update(kw)
    return CenterPointHead(**args)


def test_gaussian_radius_hand_worked():
    # h = w = 2, overlap 0.5: r1 = (4 + sqrt(16 - 16/3)) / 2 = 3.63, r2 = (8 + sqrt(64 - 32)) / 2 = 6.83,
    # r3 = (-4 + sqrt(16 + 4 * 2 * 2)) / 2 = 0.828 (a3 = 2, b3 = -4, c3 = -2)
    r = gaussian_radius(torch.tensor([2.0]), torch.tensor([2.0]), 0.5)
    assert r.item() == pytest.approx((-4 + math.sqrt(32)) / 2, abs=1e-6)
    r_big = gaussian_radius(torch.tensor([2.0]), torch.tensor([2.0]), 0.1)
    assert r_big.item() > r.item()


def test_draw_gaussian_values_and_clipping():
    heat = torch.zeros(5, 6)
    draw_gaussian(heat, (0, 1), 1)  # x = 0, y = 1 at the left border
    sigma = 3 / 6
    assert heat[1, 0] == 1.0
    assert heat[1, 1].item() == pytest.approx(math.exp(-1 / (2 * sigma ** 2)))
    assert heat[0, 1].item() == pytest.approx(math.exp(-2 / (2 * sigma ** 2)))
    assert heat[3:, :].abs().sum() == 0 and heat[:, 2:].abs().sum() == 0
    draw_gaussian(heat, (1, 1), 1)  # max-paste keeps both peaks at 1
    assert heat[1, 0] == 1.0 and heat[1, 1] == 1.0


def test_targets_peak_at_the_right_cells():
    head = make_head()
    # feature cell = 1 m; car centre (2.3, -1.6) -> cell x = floor(10.3) = 10, y = floor(6.4) = 6
    boxes = Boxes3D(torch.tensor([[2.3, -1.6, -1.0, 4.0, 2.0, 1.5, 0.3], [-5.5, 4.2, -1.2, 0.6, 0.6, 1.7, 0.0]]))
    labels = torch.tensor([0, 1])
    t_car, t_ped = head.targets([boxes], [labels], torch.device("cpu"))
    assert t_car.heatmap.shape == (1, 1, 16, 16)
    peaks = (t_car.heatmap[0, 0] == 1).nonzero().tolist()
    assert peaks == [[6, 10]]
    assert (t_ped.heatmap[0, 0] == 1).nonzero().tolist() == [[12, 2]]  # x = floor(2.5), y = floor(12.2)
    assert t_car.mask[0].sum() == 1 and t_car.index[0, 0] == 6 * 16 + 10
    code = t_car.box_code[0, 0]
    expected = torch.tensor([0.3, 0.4, -1.0, math.log(4), math.log(2), math.log(1.5), math.sin(0.3), math.cos(0.3)])
    torch.testing.assert_close(code, expected, atol=1e-5, rtol=0)
    # the Gaussian radius follows the CenterPoint rule with min_radius 2
    r = max(2, int(gaussian_radius(torch.tensor([2.0]), torch.tensor([4.0]), 0.1).item()))
    row = t_car.heatmap[0, 0, 6]
    assert (row > 0).sum() == min(10, r) + 1 + min(16 - 10 - 1, r)


def test_decode_inverts_encode():
    head = make_head(with_velocity=True)
    g = torch.Generator().manual_seed(0)
    n = 50
    t = torch.rand(n, 9, generator=g)
    t[:, :2] = t[:, :2] * 15 - 7.5
    t[:, 3:6] = t[:, 3:6] * 4 + 0.2
    t[:, 6] = (t[:, 6] * 2 - 1) * math.pi * 0.999
    cells = torch.floor((t[:, :2] + 8) / 1.0)
    back = head.decode(head.encode(t, cells), cells)
    torch.testing.assert_close(back, t, atol=1e-5, rtol=1e-5)


def test_focal_loss_matches_naive():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64)
    target = torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64) * 0.9
    target[0, 0, 1, 2] = 1
    target[0, 1, 3, 4] = 1
    total, npos = 0.0, 0
    for p_logit, y in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True):
        p = min(max(1 / (1 + math.exp(-p_logit)), 1e-4), 1 - 1e-4)
        if y == 1:
            total += -((1 - p) ** 2) * math.log(p)
            npos += 1
        else:
            total += -((1 - y) ** 4) * p ** 2 * math.log(1 - p)
    assert focal_loss(logits, target).item() == pytest.approx(total / npos, rel=1e-9)


def _prediction(head: CenterPointHead, boxes: torch.Tensor, logits: list[float]) -> CenterHeadOutput:
    """Hand-made head output: box i decoded from its own cell with heatmap logit logits[i]."""
    H, W = head.feature_shape()
    heat = torch.full((1, 1, H, W), -20.0)
    code = torch.zeros(1, 8, H, W)
    cells = torch.floor((boxes[:, :2] + 8) / 1.0)
    for i, (b, c) in enumerate(zip(boxes, cells, strict=True)):
        x, y = int(c[0]), int(c[1])
        heat[0, 0, y, x] = logits[i]
        code[0, :, y, x] = head.encode(b[None], c[None])[0]
    return CenterHeadOutput([TaskPrediction(heat, code[:, 0:2], code[:, 2:3], code[:, 3:6], code[:, 6:8])])


@pytest.mark.parametrize("nms_type", ["rotate", "circle"])
def test_nms_removes_exact_duplicates(nms_type):
    head = make_head(class_names=["Car"], tasks=[["Car"]], nms_type=nms_type, nms_iou_threshold=0.5,
                     circle_radius=[1.0])
    # boxes 0 and 1 are the same box predicted from two neighbouring cells; box 2 is elsewhere
    car = [1.49, 0.2, -1.0, 4.0, 1.8, 1.5, 0.1]
    boxes = torch.tensor([car, car, [-4.0, 5.0, -1.0, 4.0, 1.8, 1.5, 1.2]])
    H, W = head.feature_shape()
    out = _prediction(head, boxes[[0, 2]], [3.0, 1.0])
    # the duplicate: cell x = 8 (centre 1.49 lies in cell 9) with a larger offset, lower score
    heat, center = out.tasks[0].heatmap, out.tasks[0].center
    heat[0, 0, 8, 8] = 2.0
    for name in ("center_z", "dim", "rot"):
        getattr(out.tasks[0], name)[0, :, 8, 8] = getattr(out.tasks[0], name)[0, :, 8, 9]
    center[0, :, 8, 8] = center[0, :, 8, 9] + torch.tensor([1.0, 0.0])
    det = head.predict(out)[0]
    assert len(det) == 2
    order = det.scores.argsort(descending=True)
    torch.testing.assert_close(det.boxes.tensor[order], boxes[[0, 2]], atol=1e-5, rtol=0)
    assert det.scores[order].tolist() == pytest.approx([1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))])
    head_none = make_head(class_names=["Car"], tasks=[["Car"]], nms_type="none")
    assert len(head_none.predict(out)[0]) == 3


def test_iou_rectified_scores():
    head = make_head(class_names=["Car"], tasks=[["Car"]], with_iou=True, iou_rectifier=0.5, nms_type="none")
    boxes = torch.tensor([[1.5, 0.5, -1.0, 4.0, 1.8, 1.5, 0.0]])
    out = _prediction(head, boxes, [0.0])
    H, W = head.feature_shape()
    out.tasks[0].iou = torch.full((1, 1, H, W), -0.2)  # IoU (-0.2 + 1) / 2 = 0.4
    det = head.predict(out)[0]
    assert det.scores.tolist() == pytest.approx([math.sqrt(0.5 * 0.4)])


def test_loss_is_zero_for_perfect_regression_and_finite():
    head = make_head()
    boxes = Boxes3D(torch.tensor([[2.3, -1.6, -1.0, 4.0, 2.0, 1.5, 0.3]]))
    H, W = head.feature_shape()
    torch.manual_seed(0)
    out = head(torch.randn(1, 8, H, W))
    losses = head.loss(out, [boxes], [torch.tensor([0])])
    assert torch.isfinite(losses["loss"]) and set(losses) >= {"loss", "task0.heatmap", "task0.reg", "task1.heatmap"}
    # a prediction that equals the targets has zero regression loss
    tgt = head.targets([boxes], [torch.tensor([0])], torch.device("cpu"))[0]
    code = torch.zeros(1, 8, H, W)
    code.view(1, 8, -1)[0, :, tgt.index[0, 0]] = tgt.box_code[0, 0]
    perfect = CenterHeadOutput([TaskPrediction(out.tasks[0].heatmap, code[:, :2], code[:, 2:3], code[:, 3:6],
                                               code[:, 6:8]), out.tasks[1]])
    assert head.loss(perfect, [boxes], [torch.tensor([0])])["task0.reg"].item() == pytest.approx(0, abs=1e-6)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="not in class_names"):
        make_head(tasks=[["Truck"]])
    with pytest.raises(ValueError, match="nms_type"):
        make_head(nms_type="soft")


def test_iou_branch_target_is_iou_of_decoded_box():
    from pointwin.ops import boxes_iou3d

    head = make_head(class_names=["Car"], tasks=[["Car"]], with_iou=True)
    gt = torch.tensor([[1.5, 0.5, -1.0, 4.0, 1.8, 1.5, 0.0]])
    H, W = head.feature_shape()
    out = _prediction(head, gt, [0.0])
    # shift the predicted centre by 0.5 m along x, so the predicted box overlaps the GT partially
    out.tasks[0].center[0, 0, 8, 9] += 0.5
    pred_box = gt.clone()
    pred_box[0, 0] += 0.5
    iou = boxes_iou3d(pred_box, gt)[0, 0].item()
    out.tasks[0].iou = torch.zeros(1, 1, H, W)
    tgt = head.targets([Boxes3D(gt)], [torch.tensor([0])], torch.device("cpu"))[0]
    code = out.tasks[0].box_code()
    from pointwin.models.heads.centerpoint import gather_cells

    loss = head._iou_loss(out.tasks[0], tgt, gather_cells(code, tgt.index))
    # predicted IoU 0 (i.e. (0 + 1) / 2 = 0.5 in [0, 1]) vs target 2 * iou - 1
    assert iou == pytest.approx(3.5 / 4.5, rel=1e-5)
    assert loss.item() == pytest.approx(abs(0 - (2 * iou - 1)), rel=1e-4)
