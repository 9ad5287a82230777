"""BatchNorm folding at inference (pointwin.nn.conv) and the split two-part PFN layers of the VFE.

References are the plain unfused modules (``bn(conv(x))``) and a float64 per-voxel loop written from the
PointPillars/DynamicVFE definition (concatenate the voxel max to every point, Linear, BN, ReLU, max).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pointwin.models.vfe import DynamicVFE
from pointwin.nn.conv import FoldingSequential, conv_norm, fold_batchnorm
from pointwin.structures import Points


def _randomize_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    """Non-trivial statistics and affine (including negative scales), so folding is really exercised."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=bn.running_mean.dtype))
        bn.running_var.copy_(torch.rand(c, generator=gen, dtype=bn.running_var.dtype) * 2 + 0.1)
        bn.weight.copy_(torch.randn(c, generator=gen, dtype=bn.weight.dtype))
        bn.bias.copy_(torch.randn(c, generator=gen, dtype=bn.bias.dtype))


LAYERS = {
    "conv2d": (lambda: nn.Conv2d(5, 7, 3, 2, 1, bias=False), lambda: nn.BatchNorm2d(7), (2, 5, 9, 8)),
    "conv2d_bias": (lambda: nn.Conv2d(5, 7, 1, bias=True), lambda: nn.BatchNorm2d(7, eps=1e-3), (2, 5, 4, 4)),
    "deconv2d": (lambda: nn.ConvTranspose2d(5, 7, 2, 2, bias=False), lambda: nn.BatchNorm2d(7), (1, 5, 4, 6)),
    "conv1d": (lambda: nn.Conv1d(5, 7, 3, padding=1), lambda: nn.BatchNorm1d(7), (3, 5, 10)),
    "linear": (lambda: nn.Linear(5, 7, bias=False), lambda: nn.BatchNorm1d(7, eps=1e-3), (11, 5)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_conv_norm_matches_unfolded_in_eval_and_train(name):
    make_conv, make_bn, shape = LAYERS[name]
    gen = torch.Generator().manual_seed(0)
    conv, bn = make_conv().double(), make_bn().double()
    _randomize_bn(bn, gen)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    conv.eval(), bn.eval()
    ref = bn(conv(x))
    out = conv_norm(x, conv, bn)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # gradients through the folded weights equal those of the unfolded layers
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, [x, conv.weight, bn.weight, bn.bias], g)
    grads = torch.autograd.grad(out, [x, conv.weight, bn.weight, bn.bias], g)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

    # training mode: batch statistics, running statistics updated exactly as by the plain layers
    bn_ref = make_bn().double()
    bn_ref.load_state_dict(bn.state_dict())
    bn.train(), bn_ref.train()
    torch.testing.assert_close(conv_norm(x, conv, bn), bn_ref(conv(x)))
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var)


def test_fold_batchnorm_hand_worked():
    # one channel: w = 2, b = 1; bn: mean 3, var 4 - eps, gamma 5, beta -1
    # bn(w x + b) = 5 (2x + 1 - 3) / 2 - 1 = 5x - 6
    bn = nn.BatchNorm1d(1, eps=0.25).eval()
    with torch.no_grad():
        bn.running_mean.fill_(3.0), bn.running_var.fill_(4.0 - 0.25), bn.weight.fill_(5.0), bn.bias.fill_(-1.0)
    w, b = fold_batchnorm(torch.tensor([[2.0]]), torch.tensor([1.0]), bn)
    assert w.tolist() == [[5.0]] and b.tolist() == [-6.0]


def test_folding_sequential_is_a_drop_in_for_sequential():
    gen = torch.Generator().manual_seed(1)
    layers = [nn.Conv2d(4, 6, 3, 1, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
              nn.ConvTranspose2d(6, 3, 2, 2), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1)]
    plain = nn.Sequential(*layers).double()
    for m in plain:
        if isinstance(m, nn.BatchNorm2d):
            _randomize_bn(m, gen)
    folding = FoldingSequential(*[m for m in plain])
    assert list(folding.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 4, 5, 7, generator=gen, dtype=torch.float64)
    plain.eval(), folding.eval()
    torch.testing.assert_close(folding(x), plain(x), rtol=1e-12, atol=1e-12)
    # channels_last input gives the same numbers
    torch.testing.assert_close(folding(x.to(memory_format=torch.channels_last)), plain(x), rtol=1e-12, atol=1e-12)


def _vfe_reference(vfe: DynamicVFE, points: Points) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Float64 loop over voxels: PFN layers on the concatenation, as written in the PointPillars paper."""
    vox = vfe.voxelize(points)
    feats = vfe.point_features(points, vox).double()
    pv = vox.point_voxel[vox.kept]
    x = feats
    for i, layer in enumerate(vfe.layers):
        bn = layer.norm
        y = x @ layer.linear.weight.double().t()
        if bn.training:
            mean, var = y.mean(0), y.var(0, unbiased=False)
        else:
            mean, var = bn.running_mean.double(), bn.running_var.double()
        y = ((y - mean) / torch.sqrt(var + bn.eps) * bn.weight.double() + bn.bias.double()).relu()
        pooled = torch.stack([y[pv == v].max(0).values for v in range(vox.num_voxels)])
        if i + 1 < len(vfe.layers):
            x = torch.cat([y, pooled[pv]], 1)
    return [tuple(c) for c in vox.coords.tolist()], pooled


@pytest.mark.parametrize("training", [False, True])
def test_two_layer_vfe_matches_concatenation_reference(training):
    gen = torch.Generator().manual_seed(2)
    n = 300
    xyz = torch.rand(n, 3, generator=gen) * torch.tensor([4.0, 4.0, 2.0])
    data = torch.cat([xyz, torch.rand(n, 1, generator=gen)], 1)
    points = Points.from_list([data[:200], data[200:]])
    vfe = DynamicVFE([1.0, 1.0, 2.0], [0, 0, 0, 4, 4, 2], num_point_features=4, feat_channels=[8, 16, 6])
    for layer in vfe.layers:
        _randomize_bn(layer.norm, gen)
    vfe.train(training)
    coords, expected = _vfe_reference(vfe, points)
    out = vfe(points)
    assert [tuple(c) for c in out.coords.tolist()] == coords
    torch.testing.assert_close(out.feats.double(), expected, rtol=1e-4, atol=1e-4)
    if training:  # gradients reach every layer through the split linear map
        out.feats.sum().backward()
        assert all(layer.linear.weight.grad.abs().sum() > 0 for layer in vfe.layers)
