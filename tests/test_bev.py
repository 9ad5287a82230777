"""The 2D BEV backbone's block types against plain float64 re-computations of their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pointwin.models.bev import BEVBackbone


def _randomise_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
            m.bias.data = 0.1 * torch.randn(m.num_features, generator=g)
            m.running_mean = 0.2 * torch.randn(m.num_features, generator=g)
            m.running_var = 0.5 + torch.rand(m.num_features, generator=g)


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean.double(), bn.running_var.double(), bn.weight.double(), bn.bias.double(),
                        False, 0.0, bn.eps)


def _conv_bn_relu(x, seq):
    conv, bn = seq[0], seq[1]
    return F.relu(_bn(F.conv2d(x, conv.weight.double(), None, conv.stride, conv.padding), bn))


def test_conv_skip_is_the_flatformer_second():
    """Every conv-BN-ReLU layer whose output has its input's shape adds its input (here: all but the first
    of each level, and also the first of level 0 since it keeps 8 channels at stride 1)."""
    torch.manual_seed(0)
    model = BEVBackbone(8, [2, 1], [1, 2], [8, 16], [1, 2], [4, 4], block="conv_skip").eval()
    _randomise_bn(model)
    x = torch.randn(1, 8, 12, 12)
    levels = model.level_outputs(x)
    y = x.double()
    for level, expected in zip(model.blocks, levels, strict=True):
        for layer in level:
            z = _conv_bn_relu(y, layer)
            y = z + y if z.shape == y.shape else z
        torch.testing.assert_close(expected.double(), y, rtol=1e-5, atol=1e-5)
    plain = BEVBackbone(8, [2, 1], [1, 2], [8, 16], [1, 2], [4, 4], block="conv").eval()
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain.level_outputs(x)[0], levels[0])  # the skips change the numbers


def test_basic_blocks_project_the_first_block_of_every_level():
    """OpenPCDet's BaseBEVResBackbone: the first basic block of a level has a 1x1 conv + BN skip even when
    the shape does not change; the rest have identity skips."""
    model = BEVBackbone(16, [1, 1], [1, 2], [16, 32], [1, 2], [8, 8], block="basic").eval()
    _randomise_bn(model)
    assert model.blocks[0][0].skip is not None and model.blocks[0][1].skip is None
    assert model.blocks[1][0].skip is not None
    x = torch.randn(1, 16, 8, 8)
    block = model.blocks[0][0]
    xd = x.double()
    out = F.relu(_bn(F.conv2d(xd, block.conv1.weight.double(), None, 1, 1), block.bn1))
    out = _bn(F.conv2d(out, block.conv2.weight.double(), None, 1, 1), block.bn2)
    skip = _bn(F.conv2d(xd, block.skip[0].weight.double()), block.skip[1])
    torch.testing.assert_close(block(x).double(), F.relu(out + skip), rtol=1e-5, atol=1e-5)


def test_block_type_is_validated():
    with pytest.raises(ValueError, match="block must be one of"):
        BEVBackbone(8, [1], [1], [8], [1], [8], block="residual")
