"""Space-filling-curve patches (PTv3-style serialisation): z-order or Hilbert codes, patches of K."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import check_coords, check_shape, equal_groups, sample_sizes_of, stable_order
from .base import Partition

CURVES = ("z", "z-trans", "hilbert", "hilbert-trans")


def spread_bits(v: torch.Tensor) -> torch.Tensor:
    """int64: bit i of ``v`` (< 2**21) moved to bit 3i (the "part1by2" magic-mask shuffle)."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    return (v | (v << 2)) & 0x1249249249249249


def interleave3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """int64 code with bit i of a, b, c at bits 3i+2, 3i+1, 3i."""
    return (spread_bits(a.long()) << 2) | (spread_bits(b.long()) << 1) | spread_bits(c.long())


def z_order_encode(xyz: torch.Tensor, depth: int) -> torch.Tensor:
    """int64 (N,) Morton code of int (N, 3) ``(x, y, z)`` with ``depth`` (<= 21) bits per axis.

    Bit i of x goes to code bit 3i+2, of y to 3i+1, of z to 3i (x most significant at every level).
    """
    if depth > 21:
        raise ValueError(f"z_order_encode supports at most 21 bits per axis, got depth {depth}")
    return interleave3(xyz[:, 0], xyz[:, 1], xyz[:, 2])


def hilbert_encode(xyz: torch.Tensor, depth: int) -> torch.Tensor:
    """int64 (N,) 3-D Hilbert index of int (N, 3) ``(x, y, z)`` with ``depth`` (<= 21) bits per axis.

    Skilling's "axes to transpose" (AIP Conf. Proc. 707, 2004), vectorised over points: undo the
    excess work level by level (invert or exchange low bits against axis 0), Gray-encode across
    axes, then interleave the transposed bits MSB first with x first. Consecutive indices are
    face-adjacent cells, and index 0 is the origin.
    """
    if depth > 21:
        raise ValueError(f"hilbert_encode supports at most 21 bits per axis, got depth {depth}")
    X = [xyz[:, a].long() for a in range(3)]
    if depth < 1:
        return torch.zeros(xyz.shape[0], dtype=torch.int64, device=xyz.device)
    # Branch-free: `bit(v, q)` is all ones where bit q of v is set, else 0 (cheaper than torch.where).
    def bit(v: torch.Tensor, q: int) -> torch.Tensor:
        return -((v >> q) & 1)

    for q in range(depth - 1, 0, -1):  # Q = 2**q from the top bit down to 2
        P = (1 << q) - 1
        for i in range(3):
            has = bit(X[i], q)
            t = (X[0] ^ X[i]) & P & ~has  # exchange low bits where bit q of X[i] is clear
            if i != 0:
                X[i] = X[i] ^ t
            X[0] = X[0] ^ (P & has) ^ t  # invert low bits of X[0] where bit q of X[i] is set
    for i in range(1, 3):
        X[i] = X[i] ^ X[i - 1]
    t = torch.zeros_like(X[0])
    for q in range(depth - 1, 0, -1):
        t = t ^ (((1 << q) - 1) & bit(X[2], q))
    X = [v ^ t for v in X]
    return interleave3(X[0], X[1], X[2])  # MSB first, x first at every level


def curve_depth(coords: torch.Tensor, spatial_shape: Sequence[int] | None) -> int:
    """Bits per axis: enough for the grid extent (or for the largest coordinate when no grid is given)."""
    if spatial_shape is not None:
        hi = max(int(s) for s in spatial_shape) - 1
    else:
        hi = int(coords[:, 1:].max()) if coords.shape[0] else 0
    return max(int(hi).bit_length(), 1)


def data_depth(coords: torch.Tensor) -> int:
    """Pointcept's serialization depth: bit length of (largest x/y/z coordinate + 1) over all rows.

    One more than :func:`curve_depth` without a grid when the largest coordinate is ``2**k - 1``.
    """
    hi = int(coords[:, 1:].max()) if coords.shape[0] else 0
    return max(int(hi + 1).bit_length(), 1)


def serialize(coords: torch.Tensor, curve: str = "z", spatial_shape: Sequence[int] | None = None,
              depth: int | None = None) -> torch.Tensor:
    """int64 (N,) code ``b << (3 * depth) | curve_code(x, y, z)`` (the "-trans" curves swap x and y).

    ``depth`` (bits per axis) defaults to :func:`curve_depth`; an explicit one must hold every coordinate.
    Raises ValueError, naming the coordinate range, when batch and code do not fit in 63 bits.
    """
    if curve not in CURVES:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")
    shape = None if spatial_shape is None else check_shape(spatial_shape)
    c = check_coords("curve_patches coords", coords, shape)
    if depth is None:
        depth = curve_depth(c, shape)
    else:
        depth = int(depth)
        hi = int(c[:, 1:].max()) if c.shape[0] else 0
        if depth < 1 or hi >= (1 << depth):
            raise ValueError(f"serialize: depth {depth} bits per axis cannot hold the largest coordinate {hi} "
                             f"(needs {max(hi.bit_length(), 1)})")
    B = int(c[:, 0].max()) + 1 if c.shape[0] else 1
    batch_bits = max(B - 1, 0).bit_length()
    if 3 * depth + batch_bits > 63:
        lo = c[:, 1:].amin(0).tolist() if c.shape[0] else []
        hi = c[:, 1:].amax(0).tolist() if c.shape[0] else []
        raise ValueError(f"curve_patches: coordinates (z, y, x) in [{lo}, {hi}] need {depth} bits per axis "
                         f"(3 * {depth} = {3 * depth}) plus {batch_bits} batch bits for {B} samples, more than the "
                         f"63 bits of an int64 code; use a coarser grid or fewer samples per call")
    x, y, z = c[:, 3], c[:, 2], c[:, 1]
    if curve.endswith("-trans"):
        x, y = y, x
    xyz = torch.stack([x, y, z], 1)
    code = z_order_encode(xyz, depth) if curve.startswith("z") else hilbert_encode(xyz, depth)
    return (c[:, 0] << (3 * depth)) | code


def curve_patches(coords: torch.Tensor, curve: str = "z", patch_size: int = 1024,
                  spatial_shape: Sequence[int] | None = None, depth: int | None = None) -> Partition:
    """Serialise voxels along a space-filling curve and cut each sample into patches of K.

    Args:
        coords: int32 (N, 4) rows ``(b, z, y, x)``.
        curve: ``"z"``, ``"z-trans"``, ``"hilbert"`` or ``"hilbert-trans"`` (trans = x and y swapped).
        patch_size: K, slots per patch.
        spatial_shape: optional ``(Z, Y, X)``; when given the code depth follows the grid (so the order
            never depends on which voxels are present, which matters for Hilbert); otherwise the
            largest coordinate sets it.
        depth: bits per axis, overriding both (e.g. Pointcept's :func:`data_depth`).

    Returns:
        Partition with ``size = K``. A sample's last partial patch takes, for its missing slots, the
        voxels K positions earlier (tokens of the patch before it); a sample with fewer than K voxels
        forms one patch repeating its voxels (``key_pad`` marks repeats). Patches never mix samples.
    """
    K = int(patch_size)
    if K < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    with torch.no_grad():
        code = serialize(coords, curve, spatial_shape, depth)
        _, order = stable_order(code)
        sizes = sample_sizes_of(coords[order, 0].long())
        return equal_groups(order, sizes, K, tail="borrow")
