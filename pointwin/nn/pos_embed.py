"""Positional encodings for voxel tokens."""

from __future__ import annotations

import torch
from torch import nn


def sinusoidal_encoding(pos: torch.Tensor, channels: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sine/cosine encoding of per-token positions.

    Args:
        pos: float (N, A), one column per axis (e.g. voxel x and y).
        channels: output width C; each axis gets ``C // A`` channels (rounded down to an even number),
            any remainder is zero-filled.
        temperature: the wavelength base (10000 as in the Transformer / SST / FlatFormer).

    Returns:
        (N, C): per axis ``[sin(p / t^(0/d)), cos(p / t^(0/d)), sin(p / t^(2/d)), cos(p / t^(2/d)), ...]``
        with ``d`` the per-axis width, the axes concatenated in column order.
    """
    if pos.ndim != 2:
        raise ValueError(f"sinusoidal_encoding: pos must be (N, A), got shape {tuple(pos.shape)}")
    n, axes = pos.shape
    per_axis = (channels // axes) // 2 * 2
    if per_axis == 0:
        raise ValueError(f"sinusoidal_encoding: channels={channels} is too small for {axes} axes")
    i = torch.arange(per_axis // 2, dtype=torch.float32, device=pos.device)
    inv_freq = temperature ** (-2.0 * i / per_axis)  # (d/2,)
    ang = pos.float()[:, :, None] * inv_freq  # (N, A, d/2)
    enc = torch.stack([ang.sin(), ang.cos()], dim=-1).reshape(n, axes * per_axis)
    if enc.shape[1] < channels:
        enc = torch.cat([enc, enc.new_zeros(n, channels - enc.shape[1])], 1)
    return enc


class SinusoidalPositionEncoding(nn.Module):
    """Module form of :func:`sinusoidal_encoding` (no parameters): (N, A) positions -> (N, C)."""

    def __init__(self, channels: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.channels = channels
        self.temperature = temperature

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return sinusoidal_encoding(pos, self.channels, self.temperature)


class LearnedPositionEncoding(nn.Module):
    """DSVT-style learned position embedding: Linear -> BatchNorm -> ReLU -> Linear.

    Shapes: (N, A) float positions (window-relative coordinates) -> (N, C).
    """

    def __init__(self, in_dim: int, channels: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, channels), nn.BatchNorm1d(channels), nn.ReLU(inplace=True),
                                 nn.Linear(channels, channels))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        if pos.ndim != 2 or pos.shape[1] != self.in_dim:
            raise ValueError(f"LearnedPositionEncoding expects positions (N, {self.in_dim}), got {tuple(pos.shape)}")
        return self.mlp(pos.float())
