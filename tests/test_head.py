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


# ---- configurable decoding / post-processing (official DSVT and FlatFormer heads) ---------------------------


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _multi_prediction(head: CenterPointHead, boxes: torch.Tensor, scores: list[float], classes: list[int],
                      iou: list[float] | None = None) -> CenterHeadOutput:
    """Hand-made output of a one-task head: box i encoded at its own cell (1 m cells over [-8, 8]) in heatmap
    channel classes[i] with sigmoid score scores[i]; IoU-branch value iou[i] there (if given)."""
    H, W = head.feature_shape()
    C = len(head.tasks[0])
    heat = torch.full((1, C, H, W), -20.0)
    code = torch.zeros(1, 10 if head.with_velocity else 8, H, W)
    iou_map = torch.zeros(1, 1, H, W) if iou is not None else None
    cells = torch.floor((boxes[:, :2] + 8) / 1.0)
    for i, (b, c) in enumerate(zip(boxes, cells, strict=True)):
        x, y = int(c[0]), int(c[1])
        assert heat[0, :, y, x].max() < 0, "one box per cell"
        heat[0, classes[i], y, x] = _logit(scores[i])
        code[0, :, y, x] = head.encode(b[None], c[None])[0]
        if iou_map is not None:
            iou_map[0, 0, y, x] = iou[i]
    vel = code[:, 8:10] if head.with_velocity else None
    return CenterHeadOutput([TaskPrediction(heat, code[:, 0:2], code[:, 2:3], code[:, 3:6], code[:, 6:8], vel,
                                            iou_map)])


def test_threshold_on_raw_vs_rectified():
    head_args = dict(class_names=["Car"], tasks=[["Car"]], with_iou=True, iou_rectifier=0.5, nms_type="none",
                     score_threshold=0.1)
    # box 0: raw 0.08, IoU branch p = 1 -> q = (1 + 1) / 2 = 1: rectified 0.08^0.5 * 1^0.5 = 0.2828
    #        -> kept when the rectified score is tested, dropped when the raw 0.08 is (0.08 <= 0.1)
    # box 1: raw 0.2, p = -0.96 -> q = 0.02: rectified sqrt(0.2 * 0.02) = sqrt(0.004) = 0.0632
    #        -> dropped when the rectified score is tested, kept when the raw 0.2 is
    boxes = torch.tensor([[1.5, 0.5, -1.0, 4.0, 1.8, 1.5, 0.0], [-4.5, 4.5, -1.0, 4.0, 1.8, 1.5, 0.0]])
    rect = make_head(**head_args)
    raw = make_head(threshold_on="raw", **head_args)
    out = _multi_prediction(rect, boxes, [0.08, 0.2], [0, 0], iou=[1.0, -0.96])
    c_rect = rect.candidates(out)[0][0]
    c_raw = raw.candidates(out)[0][0]
    assert c_rect.scores.tolist() == pytest.approx([math.sqrt(0.08)], rel=1e-5)
    assert c_rect.raw_scores.tolist() == pytest.approx([0.08], rel=1e-5)
    assert c_rect.cells.tolist() == [[0, 8, 9]]  # (class in task, y, x) of box 0
    assert c_raw.scores.tolist() == pytest.approx([math.sqrt(0.004)], rel=1e-4)
    assert c_raw.raw_scores.tolist() == pytest.approx([0.2], rel=1e-5)
    assert c_raw.iou.tolist() == pytest.approx([0.02], abs=1e-6)
    assert c_raw.cells.tolist() == [[0, 12, 3]]
    torch.testing.assert_close(c_raw.boxes, boxes[1:], atol=1e-5, rtol=0)
    # predict returns the same boxes (no NMS here), with the rectified scores
    det = raw.predict(out)[0]
    assert det.scores.tolist() == pytest.approx([math.sqrt(0.004)], rel=1e-4)


def test_rot_order_round_trip_and_hand_values():
    cos_sin = make_head(rot_order="cos_sin", with_velocity=True)
    g = torch.Generator().manual_seed(3)
    t = torch.rand(40, 9, generator=g)
    t[:, :2] = t[:, :2] * 15 - 7.5
    t[:, 3:6] = t[:, 3:6] * 4 + 0.2
    t[:, 6] = (t[:, 6] * 2 - 1) * math.pi * 0.999
    cells = torch.floor((t[:, :2] + 8) / 1.0)
    code = cos_sin.encode(t, cells)
    torch.testing.assert_close(code[:, 6], torch.cos(t[:, 6]))  # (cos, sin) in the rot channels
    torch.testing.assert_close(code[:, 7], torch.sin(t[:, 6]))
    torch.testing.assert_close(cos_sin.decode(code, cells), t, atol=1e-5, rtol=1e-5)
    # the same channels (0, 1): (cos = 0, sin = 1) -> yaw pi/2; read as (sin = 0, cos = 1) -> yaw 0
    hand = torch.tensor([[0.5, 0.5, -1.0, 1.0, 0.5, 0.2, 0.0, 1.0]])
    assert make_head(rot_order="cos_sin").decode(hand, torch.zeros(1, 2))[0, 6].item() == pytest.approx(math.pi / 2)
    assert make_head().decode(hand, torch.zeros(1, 2))[0, 6].item() == pytest.approx(0.0, abs=1e-7)
    # targets use the order too
    gt = Boxes3D(torch.tensor([[2.3, -1.6, -1.0, 4.0, 2.0, 1.5, 0.3]]))
    tgt = make_head(rot_order="cos_sin").targets([gt], [torch.tensor([0])], torch.device("cpu"))[0]
    assert tgt.box_code[0, 0, 6:8].tolist() == pytest.approx([math.cos(0.3), math.sin(0.3)], abs=1e-6)


def test_mmdet3d_legacy_box_convention():
    head = make_head(box_convention="mmdet3d_legacy")
    # an mmdetection3d < 1.0 box (width 2 along x, length 4 along y, angle 0 = heading -y) is pointwin's
    # (dx = 4, dy = 2, yaw = -pi/2): channels dim (log 2, log 4, log 1.5), rot (sin 0, cos 0) = (0, 1)
    code = torch.tensor([[0.5, 0.5, -1.0, math.log(2.0), math.log(4.0), math.log(1.5), 0.0, 1.0]])
    box = head.decode(code, torch.tensor([[9.0, 8.0]]))[0]
    assert box.tolist() == pytest.approx([1.5, 0.5, -1.0, 4.0, 2.0, 1.5, -math.pi / 2], abs=1e-6)
    # angle -pi/2 (sin -1, cos 0) is heading +x: yaw 0
    code[0, 6:8] = torch.tensor([-1.0, 0.0])
    assert head.decode(code, torch.tensor([[9.0, 8.0]]))[0, 6].item() == pytest.approx(0.0, abs=1e-6)
    # encode is the inverse, for training targets: pointwin (dx 4, dy 2, yaw 0.3) -> dims (log 2, log 4, .),
    # angle -0.3 - pi/2: (sin, cos) = (-cos 0.3, -sin 0.3)
    gt = Boxes3D(torch.tensor([[2.3, -1.6, -1.0, 4.0, 2.0, 1.5, 0.3]]))
    tgt = head.targets([gt], [torch.tensor([0])], torch.device("cpu"))[0]
    expected = [0.3, 0.4, -1.0, math.log(2), math.log(4), math.log(1.5), -math.cos(0.3), -math.sin(0.3)]
    torch.testing.assert_close(tgt.box_code[0, 0], torch.tensor(expected), atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(4)
    t = torch.rand(40, 7, generator=g)
    t[:, :2] = t[:, :2] * 15 - 7.5
    t[:, 3:6] = t[:, 3:6] * 4 + 0.2
    t[:, 6] = (t[:, 6] * 2 - 1) * math.pi * 0.999
    cells = torch.floor((t[:, :2] + 8) / 1.0)
    for rot_order in ("sin_cos", "cos_sin"):
        h = make_head(box_convention="mmdet3d_legacy", rot_order=rot_order)
        torch.testing.assert_close(h.decode(h.encode(t, cells), cells), t, atol=1e-5, rtol=1e-5)


def test_max_log_dim_clamp_and_no_clamp():
    code = torch.tensor([[0.5, 0.5, 0.0, 12.0, 1.0, 0.5, 0.0, 1.0]])
    cells = torch.zeros(1, 2)
    assert make_head().decode(code, cells)[0, 3].item() == pytest.approx(math.exp(10), rel=1e-6)  # default 10
    assert make_head(max_log_dim=None).decode(code, cells)[0, 3].item() == pytest.approx(math.exp(12), rel=1e-6)
    assert make_head(max_log_dim=0.5).decode(code, cells)[0, 4].item() == pytest.approx(math.exp(0.5), rel=1e-6)


def test_norm_eps_reaches_the_batchnorms():
    head = make_head(shared_norm_eps=1e-3, head_norm_eps=2e-4, with_iou=True)
    shared = [m for m in head.shared_conv.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    branches = [m for m in head.heads.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(shared) == 1 and shared[0].eps == 1e-3
    assert len(branches) == 2 * 6 and all(m.eps == 2e-4 for m in branches)  # 2 tasks x 6 branches
    assert all(m.eps == 1e-5 for m in make_head().modules() if isinstance(m, torch.nn.BatchNorm2d))
    # the eval-mode (conv-BN folded) forward uses it: running var 1e-3, eps 1e-3 -> scale 1 / sqrt(2e-3)
    head.eval()
    bn = shared[0]
    bn.running_var.fill_(1e-3)
    bn.running_mean.zero_()
    x = torch.randn(1, 8, 16, 16)
    conv = head.shared_conv[0]
    ref = torch.relu(conv(x) / math.sqrt(2e-3) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
    torch.testing.assert_close(head.shared_conv(x), ref, atol=1e-4, rtol=1e-4)


def _nms_case_head(**kw) -> CenterPointHead:
    args = dict(class_names=["Car", "Pedestrian"], tasks=[["Car", "Pedestrian"]], score_threshold=0.05,
                post_max=None)
    return make_head(**{**args, **kw})


# cars (class 0): A and B 4 x 2 m, 1 m apart along x: BEV overlap 3 x 2 = 6, union 8 + 8 - 6 = 10 -> IoU 0.6;
# C and D far away. Pedestrians (class 1): E and F 1 x 1 m, 0.6 m apart: overlap 0.4, union 1.6 -> IoU 0.25.
# Every box has its own 1 m cell.
NMS_BOXES = torch.tensor([
    [0.5, 0.5, -1.0, 4.0, 2.0, 1.5, 0.0],   # A  car 0.9
    [1.5, 0.5, -1.0, 4.0, 2.0, 1.5, 0.0],   # B  car 0.8
    [5.5, 5.5, -1.0, 4.0, 2.0, 1.5, 0.0],   # C  car 0.7
    [-5.5, -5.5, -1.0, 4.0, 2.0, 1.5, 0.0],  # D  car 0.6
    [4.9, -5.0, -1.0, 1.0, 1.0, 1.7, 0.0],  # E  pedestrian 0.95
    [5.5, -5.0, -1.0, 1.0, 1.0, 1.7, 0.0],  # F  pedestrian 0.85
])
NMS_SCORES = [0.9, 0.8, 0.7, 0.6, 0.95, 0.85]
NMS_CLASSES = [0, 0, 0, 0, 1, 1]


def _nms_case(head: CenterPointHead) -> list[float]:
    det = head.predict(_multi_prediction(head, NMS_BOXES, NMS_SCORES, NMS_CLASSES))[0]
    assert det.scores.tolist() == sorted(det.scores.tolist(), reverse=True)
    return [round(s, 4) for s in det.scores.tolist()]


def test_per_class_nms_thresholds():
    from pointwin.ops import boxes_iou_bev

    assert boxes_iou_bev(NMS_BOXES[:1], NMS_BOXES[1:2]).item() == pytest.approx(0.6, abs=1e-5)
    assert boxes_iou_bev(NMS_BOXES[4:5], NMS_BOXES[5:6]).item() == pytest.approx(0.25, abs=1e-5)
    # one threshold for all: 0.5 drops B (0.6 > 0.5), keeps F (0.25)
    assert _nms_case(_nms_case_head(nms_iou_threshold=0.5)) == [0.95, 0.9, 0.85, 0.7, 0.6]
    # per class [0.65, 0.2]: B survives (0.6 <= 0.65), F is dropped (0.25 > 0.2)
    assert _nms_case(_nms_case_head(nms_iou_threshold=[0.65, 0.2])) == [0.95, 0.9, 0.8, 0.7, 0.6]


def test_per_class_nms_pre_and_post_max():
    # pre-max [2, none]: only the 2 best cars (A, B) enter NMS, so C and D are gone; B falls to A at 0.5
    assert _nms_case(_nms_case_head(nms_iou_threshold=0.5, nms_pre_max=[2, 5])) == [0.95, 0.9, 0.85]
    # post-max [3, 1]: at most 3 cars (A, C, D once B is suppressed) and 1 pedestrian (E) are kept
    assert _nms_case(_nms_case_head(nms_iou_threshold=0.5, nms_post_max=[3, 1])) == [0.95, 0.9, 0.7, 0.6]
    assert _nms_case(_nms_case_head(nms_iou_threshold=0.5, nms_post_max=[1, 1])) == [0.95, 0.9]
    # one int is every class's limit; the task-level post_max caps the merged list
    assert _nms_case(_nms_case_head(nms_iou_threshold=0.5, nms_pre_max=1)) == [0.95, 0.9]
    assert _nms_case(_nms_case_head(nms_iou_threshold=0.5, post_max=2)) == [0.95, 0.9]


def test_nms_swap_dims_is_dsvts_footprint():
    # two 4 x 1 m cars side by side, centres 1.2 m apart along y: true footprints do not overlap; turned 90
    # degrees (1 x 4 m) they overlap 1 x 2.8 = 2.8 m^2, union 4 + 4 - 2.8 = 5.2 -> IoU 0.538 > 0.5
    boxes = torch.tensor([[0.5, 0.5, -1.0, 4.0, 1.0, 1.5, 0.0], [0.5, 1.7, -1.0, 4.0, 1.0, 1.5, 0.0]])
    args = dict(class_names=["Car"], tasks=[["Car"]], nms_iou_threshold=0.5)
    plain = make_head(**args)
    swapped = make_head(nms_swap_dims=True, **args)
    out = _multi_prediction(plain, boxes, [0.9, 0.8], [0, 0])
    assert len(plain.predict(out)[0]) == 2
    det = swapped.predict(out)[0]
    assert len(det) == 1 and det.scores.item() == pytest.approx(0.9)
    torch.testing.assert_close(det.boxes.tensor, boxes[:1], atol=1e-5, rtol=0)  # the boxes keep their dims
    assert len(make_head(nms_swap_dims=True, nms_iou_threshold=0.55, class_names=["Car"],
                         tasks=[["Car"]]).predict(out)[0]) == 2  # 0.538 <= 0.55


def test_flatformer_iou_pow_scoring():
    args = dict(class_names=["Car"], tasks=[["Car"]], with_iou=True, iou_range="unit", iou_pow=2.0,
                nms_type="none", score_threshold=0.1)
    # FlatFormer fork: score = sigmoid * clamp(p, 0, 1)^2. Box 0: 0.6 * 0.5^2 = 0.15 (kept);
    # box 1: 0.9 * 0.2^2 = 0.036 (dropped; its raw 0.9 would pass); box 2: 0.3 * clamp(1.3)^2 = 0.3
    boxes = torch.tensor([[1.5, 0.5, -1.0, 4.0, 1.8, 1.5, 0.0], [-4.5, 4.5, -1.0, 4.0, 1.8, 1.5, 0.0],
                          [4.5, -4.5, -1.0, 4.0, 1.8, 1.5, 0.0]])
    head = make_head(topk_on="rectified", threshold_on="rectified", **args)
    out = _multi_prediction(head, boxes, [0.6, 0.9, 0.3], [0, 0, 0], iou=[0.5, 0.2, 1.3])
    c = head.candidates(out)[0][0]
    assert c.scores.tolist() == pytest.approx([0.3, 0.15], rel=1e-5)
    assert c.iou.tolist() == pytest.approx([1.3, 0.5], rel=1e-6)  # as read (unit: p itself), unclamped
    # the same maps read as signed IoU: q = (p + 1) / 2 = 0.75, 0.6, 1.15 -> 1: scores 0.6 * 0.5625 = 0.3375,
    # 0.9 * 0.36 = 0.324, 0.3 (in top-K order)
    signed = make_head(topk_on="rectified", **{**args, "iou_range": "signed"})
    assert signed.candidates(out)[0][0].scores.tolist() == pytest.approx([0.3375, 0.324, 0.3], rel=1e-5)
    # top-K on the scored map (the fork) vs on the raw sigmoid: with pre_max 1 the fork takes box 2 (0.3);
    # the raw top-1 is box 1 (0.9), whose score 0.036 then fails the threshold
    assert make_head(topk_on="rectified", pre_max=1, **args).candidates(out)[0][0].scores.tolist() == \
        pytest.approx([0.3], rel=1e-5)
    assert len(make_head(topk_on="raw", pre_max=1, **args).candidates(out)[0][0].scores) == 0


def test_iou_loss_target_follows_iou_range():
    from pointwin.models.heads.centerpoint import gather_cells
    from pointwin.ops import boxes_iou3d

    gt = torch.tensor([[1.5, 0.5, -1.0, 4.0, 1.8, 1.5, 0.0]])
    pred_box = gt.clone()
    pred_box[0, 0] += 0.5
    iou = boxes_iou3d(pred_box, gt)[0, 0].item()  # 3.5 / 4.5
    for iou_range, target in (("signed", 2 * iou - 1), ("unit", iou)):
        head = make_head(class_names=["Car"], tasks=[["Car"]], with_iou=True, iou_range=iou_range)
        H, W = head.feature_shape()
        out = _prediction(head, gt, [0.0])
        out.tasks[0].center[0, 0, 8, 9] += 0.5
        out.tasks[0].iou = torch.full((1, 1, H, W), 0.25)
        tgt = head.targets([Boxes3D(gt)], [torch.tensor([0])], torch.device("cpu"))[0]
        loss = head._iou_loss(out.tasks[0], tgt, gather_cells(out.tasks[0].box_code(), tgt.index))
        assert loss.item() == pytest.approx(abs(0.25 - target) / (1 + 1e-4), rel=1e-5)  # mean over 1 + 1e-4


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(rot_order="xy"), "rot_order must be one of 'sin_cos', 'cos_sin'"),
    (dict(box_convention="mmdet3d"), "box_convention must be one of 'pointwin', 'mmdet3d_legacy'"),
    (dict(threshold_on="sigmoid"), "threshold_on must be one of 'rectified', 'raw'"),
    (dict(topk_on="final"), "topk_on must be one of 'raw', 'rectified'"),
    (dict(iou_range="01"), "iou_range must be one of 'signed', 'unit'"),
    (dict(max_log_dim="10"), "max_log_dim must be a float or None"),
    (dict(shared_norm_eps=0.0), "shared_norm_eps must be a positive float"),
    (dict(head_norm_eps=-1e-3), "head_norm_eps must be a positive float"),
    (dict(nms_pre_max=[10]), r"nms_pre_max needs one value per class \(2\), got 1"),
    (dict(nms_post_max=0), "nms_post_max must be None, a positive int or one positive int per class"),
    (dict(nms_post_max=[5, 2.5]), "nms_post_max must be None, a positive int"),
    (dict(nms_type="circle", nms_pre_max=10), "nms_pre_max, nms_post_max and nms_swap_dims apply to nms_type"),
    (dict(nms_type="none", nms_swap_dims=True), "apply to nms_type 'rotate' only"),
    (dict(nms_iou_threshold=[0.5, 0.5, 0.5]), r"nms_iou_threshold needs one value per class \(2\)"),
    (dict(iou_rectifier=[0.5]), r"iou_rectifier needs one value per class \(2\)"),
    (dict(iou_pow=2.0), "iou_pow scores with the IoU branch: it needs with_iou=True"),
    (dict(iou_pow=2.0, with_iou=True, iou_rectifier=0.5), "iou_pow and a non-zero iou_rectifier"),
    (dict(iou_pow=-1.0, with_iou=True), "iou_pow must be a float >= 0 or None"),
    (dict(pre_max=0), "pre_max must be a positive int"),
    (dict(post_max=0), "post_max must be a positive int or None"),
    (dict(post_center_range=[-80, -80, 80, 80, 10]), "post_center_range needs 6 values"),
])
def test_new_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_head(**kwargs)
