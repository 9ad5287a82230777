"""Convolution / linear layers followed by BatchNorm, with the norm folded into the weights at inference.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one conv with scaled
weights and a bias. Folding it on every eval call (the weights are tiny next to the feature maps) saves a
full pass over the output, which on the 2D BEV maps and the per-point VFE features is a large share of a
CPU forward. In training mode, or when the norm keeps no running statistics, the layers run unfolded.
The parameters and their state-dict names are those of the plain ``nn.Sequential(conv, bn, act)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_BatchNorm = nn.modules.batchnorm._BatchNorm


def foldable(bn: nn.Module) -> bool:
    """True when ``bn`` acts as a fixed affine map (eval mode with running statistics)."""
    return isinstance(bn, _BatchNorm) and not bn.training and bn.running_mean is not None


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: _BatchNorm,
                   out_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the layer ``bn(layer(x))`` for an eval-mode ``bn``.

    ``out_dim`` is the output-channel dimension of ``weight`` (0 for Linear / Conv, 1 for ConvTranspose
    with groups = 1). Differentiable in all inputs, so gradients still reach the conv and the norm's affine.
    """
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    shape = [1] * weight.dim()
    shape[out_dim] = -1
    return weight * scale.view(shape), shift


def conv_norm(x: torch.Tensor, conv: nn.Module, bn: nn.Module) -> torch.Tensor:
    """``bn(conv(x))`` for Conv1d/2d/3d, ConvTranspose2d or Linear, folded when ``bn`` is :func:`foldable`."""
    if not foldable(bn):
        return bn(conv(x))
    if isinstance(conv, nn.ConvTranspose2d):
        if conv.groups != 1:
            return bn(conv(x))
        w, b = fold_batchnorm(conv.weight, conv.bias, bn, out_dim=1)
        return F.conv_transpose2d(x, w, b, conv.stride, conv.padding, conv.output_padding, 1, conv.dilation)
    w, b = fold_batchnorm(conv.weight, conv.bias, bn)
    if isinstance(conv, nn.Linear):
        return F.linear(x, w, b)
    if isinstance(conv, nn.modules.conv._ConvNd) and not conv.transposed:
        return conv._conv_forward(x, w, b)
    return bn(conv(x))


_FOLDS_INTO = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


class FoldingSequential(nn.Sequential):
    """``nn.Sequential`` that folds every (conv or linear, BatchNorm) pair of adjacent modules at inference.

    A drop-in for the plain Sequential: same modules, same state-dict keys, same results up to rounding.
    Shapes: those of the wrapped modules.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modules = list(self)
        i = 0
        while i < len(modules):
            layer = modules[i]
            if i + 1 < len(modules) and isinstance(layer, _FOLDS_INTO) and foldable(modules[i + 1]):
                x = conv_norm(x, layer, modules[i + 1])
                i += 2
            else:
                x = layer(x)
                i += 1
        return x
