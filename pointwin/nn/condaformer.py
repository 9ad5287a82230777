"""ConDaFormer block: disassembled tri-plane window attention with local structure enhancement.

Reference: Duan et al., "ConDaFormer: Disassembled Transformer with Local Structure Enhancement for 3D
Point Cloud Understanding" (NeurIPS 2023), and its public code (facts only).

- The heads are split into three equal groups; group p attends inside plane window p of
  :func:`pointwin.partition.planes.plane_windows` (xy, xz, yz), all through
  :func:`pointwin.ops.group_attention`.
- Contextual relative positions as in the paper (Stratified-Transformer style), with q, k and v tables of
  shape ``(2 w - 1, 3, heads / 3, head_dim)`` *shared by the three planes*::

      logit_ij = s q_i.k_j + sum_a (s q_i).Tq[r_a, a] + k_j.Tk[r_a, a],   r = p_i - p_j (window-local voxels)
      out_i    = sum_j softmax_j(logit_ij) (v_j + sum_a Tv[r_a, a])

  ``group_attention`` takes no per-pair term, so the tables are folded into extra q/k/v channels exactly:
  on the 2w - 1 integers r in [-(w-1), w-1] every table equals its real DFT,
  ``T[r] = sum_f A_f cos(omega_f r) + B_f sin(omega_f r)`` (omega_f = 2 pi f / (2w - 1), f < w), and
  ``cos/sin(omega (p_i - p_j))`` factor into a query part times a key part. No approximation is made; the
  cost is ``4 (wx + wy + wz)`` extra q/k channels and ``2 (wx + wy + wz)`` extra value channels per head.
- Local structure enhancement (LSE) before and after the attention: ``cat[1x1 branch, depthwise 3x3x3
  sparse-conv branch]`` (each C -> C/2). A 1x1 submanifold conv is a per-voxel linear map, so the 1x1
  branch is a ``Linear``.
- Pre-norm residual block; alternate blocks shift the in-plane axes by half a window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..ops import SubMConv3d, group_attention
from ..partition._common import check_window
from ..partition.base import Partition
from ..partition.planes import PLANES, plane_shift, plane_window, plane_windows, window_local_coords
from ..structures import SparseVoxels
from .layers import FFN


def drop_path(x: torch.Tensor, p: float, training: bool, batch_idx: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Stochastic depth per sample: zero the branch ``x`` (N, C) of a whole sample with probability p.

    Kept samples are scaled by 1 / (1 - p); the draw uses the global torch RNG (seeded by the trainer).
    """
    if p <= 0.0 or not training:
        return x
    keep = (torch.rand(batch_size, device=x.device) >= p).to(x.dtype) / (1.0 - p)
    return x * keep[batch_idx][:, None]


def dft_basis(w: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real-DFT matrices of a table over r in [-(w-1), w-1].

    Returns ``omega`` (w,), ``cos_mat`` (w, 2w-1), ``sin_mat`` (w, 2w-1) such that with
    ``A = cos_mat @ T``, ``B = sin_mat @ T`` (T indexed by r + w - 1):
    ``T[r] = sum_f A[f] cos(omega[f] r) + B[f] sin(omega[f] r)`` exactly.
    """
    L = 2 * w - 1
    r = torch.arange(-(w - 1), w, device=device, dtype=torch.float64)
    omega = 2 * math.pi * torch.arange(w, device=device, dtype=torch.float64) / L
    ang = omega[:, None] * r[None, :]
    coef = torch.full((w, 1), 2.0 / L, device=device, dtype=torch.float64)
    coef[0] = 1.0 / L
    return omega.to(dtype), (coef * torch.cos(ang)).to(dtype), (coef * torch.sin(ang)).to(dtype)


def contextual_rpe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                             local: torch.Tensor, window: Sequence[int], q_table: torch.Tensor | None,
                             k_table: torch.Tensor | None, v_table: torch.Tensor | None,
                             scale: float | None = None, dropout_p: float = 0.0, backend: str = "auto"
                             ) -> torch.Tensor:
    """Group attention with contextual relative-position tables (see the module docstring).

    Args:
        q, k, v: (N, H, D).
        partition: windows whose voxels differ by at most ``w_a - 1`` along axis a (x, y, z).
        local: int (N, 3) window-local ``(x, y, z)`` (:func:`~pointwin.partition.planes.window_local_coords`).
        window: ``(wx, wy, wz)`` of the partition.
        q_table, k_table, v_table: (2 wmax - 1, 3, H, D) tables indexed by ``r + wmax - 1`` (r = p_i - p_j)
            and axis; any may be None (no such term). wmax >= every window side.
        scale: logit scale on q, default 1/sqrt(D).
        dropout_p, backend: passed to :func:`~pointwin.ops.group_attention` (the widened q/k/v need no
            power-of-two width: the kernels pad and mask).

    Returns:
        (N, H, D).
    """
    N, H, D = q.shape
    s = D ** -0.5 if scale is None else scale
    q = q * s
    tables = [t for t in (q_table, k_table, v_table) if t is not None]
    if not tables:
        return group_attention(q, k, v, partition, scale=1.0, dropout_p=dropout_p, backend=backend)
    centre = (tables[0].shape[0] - 1) // 2
    q_parts, k_parts, v_parts = [q], [k], [v]
    v_terms = []  # (A_v, B_v, cos, sin, first value channel) per axis
    used = D
    for a in range(3):
        w = int(window[a])
        if w > centre + 1:
            raise ValueError(f"contextual_rpe_attention: window {tuple(window)} is larger than the tables "
                             f"(2 * {centre + 1} - 1 entries)")
        omega, cos_mat, sin_mat = dft_basis(w, q.device, q.dtype)
        ang = local[:, a].to(q.dtype)[:, None] * omega  # (N, F)
        cs = torch.cos(ang)[:, None, :].expand(N, H, w)
        sn = torch.sin(ang)[:, None, :].expand(N, H, w)

        def coeffs(t: torch.Tensor, a: int = a, w: int = w, cos_mat=cos_mat, sin_mat=sin_mat):
            sl = t[centre - (w - 1): centre + w, a].to(q.dtype)  # (2w-1, H, D)
            return torch.einsum("fl,lhd->fhd", cos_mat, sl), torch.einsum("fl,lhd->fhd", sin_mat, sl)

        if q_table is not None:  # q_i . Tq[p_i - p_j]: query side carries q, key side cos/sin(p_j)
            A, B = coeffs(q_table)
            u, t = torch.einsum("nhd,fhd->nhf", q, A), torch.einsum("nhd,fhd->nhf", q, B)
            q_parts += [u * cs + t * sn, u * sn - t * cs]
            k_parts += [cs, sn]
        if k_table is not None:  # k_j . Tk[p_i - p_j]: key side carries k, query side cos/sin(p_i)
            A, B = coeffs(k_table)
            u, t = torch.einsum("nhd,fhd->nhf", k, A), torch.einsum("nhd,fhd->nhf", k, B)
            q_parts += [cs, sn]
            k_parts += [u * cs - t * sn, u * sn + t * cs]
        if v_table is not None:  # sum_j a_ij Tv[p_i - p_j] from the attention-weighted cos/sin(p_j)
            A, B = coeffs(v_table)
            v_parts += [cs, sn]
            v_terms.append((A, B, cs, sn, used))
            used += 2 * w
    out = group_attention(torch.cat(q_parts, 2), torch.cat(k_parts, 2), torch.cat(v_parts, 2), partition,
                          scale=1.0, dropout_p=dropout_p, backend=backend)
    y = out[..., :D]
    for A, B, cs, sn, c0 in v_terms:
        w = A.shape[0]
        C, S = out[..., c0: c0 + w], out[..., c0 + w: c0 + 2 * w]  # (N, H, F) weighted cos / sin
        y = y + torch.einsum("nhf,fhd->nhd", cs * C + sn * S, A) + torch.einsum("nhf,fhd->nhd", sn * C - cs * S, B)
    return y


class LocalStructureEnhancement(nn.Module):
    """LSE: ``cat[BN(Linear(x)), BN(Linear(GELU(BN(DWConv3x3x3(x)))))]``, each branch C -> C/2.

    Shapes: SparseVoxels (N, C) -> (N, C) tensor (C even).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"LocalStructureEnhancement needs an even channel count, got {channels}")
        half = channels // 2
        self.point = nn.Linear(channels, half, bias=False)
        self.point_bn = nn.BatchNorm1d(half)
        self.dw = SubMConv3d(channels, channels, 3, bias=False, depthwise=True)
        self.dw_bn = nn.BatchNorm1d(channels)
        self.dw_proj = nn.Linear(channels, half)
        self.dw_proj_bn = nn.BatchNorm1d(half)

    def forward(self, x: SparseVoxels) -> torch.Tensor:
        a = self.point_bn(self.point(x.feats))
        b = nn.functional.gelu(self.dw_bn(self.dw(x).feats))
        return torch.cat([a, self.dw_proj_bn(self.dw_proj(b))], 1)


class DisassembledAttention(nn.Module):
    """Tri-plane window attention (ConDaFormer), LSE around it.

    Args:
        channels: C (even).
        num_heads: H, a multiple of 3 dividing C; heads [pH/3, (p+1)H/3) attend in plane p of :data:`PLANES`.
        window: ``(wx, wy, wz)`` of the disassembled cube (an int means a cube).
        shifted: shift the in-plane axes by half a window.
        rpe: contextual relative-position tables (q, k, v), shared across the three planes.
        lse: local structure enhancement before and after the attention.

    Shapes: SparseVoxels (N, C) -> (N, C) tensor.
    """

    def __init__(self, channels: int, num_heads: int, window: int | Sequence[int] = 8, shifted: bool = False,
                 rpe: bool = True, lse: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if num_heads < 3 or num_heads % 3 or channels % num_heads:
            raise ValueError(f"DisassembledAttention needs num_heads a multiple of 3 dividing channels, got "
                             f"{num_heads} heads for {channels} channels")
        self.channels, self.num_heads, self.shifted, self.attn_drop = channels, num_heads, shifted, attn_drop
        self.window = check_window("DisassembledAttention window", window, 3)
        self.head_dim = channels // num_heads
        self.lse_pre = LocalStructureEnhancement(channels) if lse else None
        self.lse_post = LocalStructureEnhancement(channels) if lse else None
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        if rpe:
            shape = (2 * max(self.window) - 1, 3, num_heads // 3, self.head_dim)
            self.q_table, self.k_table, self.v_table = (nn.Parameter(torch.empty(shape)) for _ in range(3))
            for t in (self.q_table, self.k_table, self.v_table):
                nn.init.trunc_normal_(t, std=0.02)
        else:
            self.q_table = self.k_table = self.v_table = None

    def planes(self, voxels: SparseVoxels) -> list[tuple[Partition, torch.Tensor, tuple[int, int, int]]]:
        """Per plane: (partition, window-local xyz, plane window), cached on the voxels."""

        def build():
            parts = plane_windows(voxels.coords, voxels.spatial_shape, self.window, self.shifted)
            out = []
            for p, part in zip(PLANES, parts, strict=True):
                w = plane_window(self.window, p)
                out.append((part, window_local_coords(voxels.coords, w, plane_shift(self.window, p, self.shifted)), w))
            return out

        return voxels.cached(("condaformer.planes", self.window, self.shifted), build)

    def forward(self, voxels: SparseVoxels) -> torch.Tensor:
        x = voxels.feats if self.lse_pre is None else self.lse_pre(voxels)
        n, c = x.shape
        g = self.num_heads // 3
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)
        drop = self.attn_drop if self.training else 0.0
        outs = []
        for i, (part, local, w) in enumerate(self.planes(voxels)):
            hs = slice(i * g, (i + 1) * g)
            outs.append(contextual_rpe_attention(q[:, hs], k[:, hs], v[:, hs], part, local, w, self.q_table,
                                                 self.k_table, self.v_table, dropout_p=drop))
        y = torch.cat(outs, 1).reshape(n, c)
        if self.lse_post is not None:
            y = self.lse_post(voxels.replace(y))
        return self.proj(y)


class ConDaFormerBlock(nn.Module):
    """Pre-norm block: f += DropPath(DisassembledAttention(LN f)); f += DropPath(FFN(LN f)).

    Shapes: SparseVoxels (N, C) -> SparseVoxels (N, C), same sites.
    """

    def __init__(self, channels: int, num_heads: int, window: int | Sequence[int] = 8, shifted: bool = False,
                 ffn_ratio: float = 4.0, drop_path: float = 0.0, rpe: bool = True, lse: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, eps=1e-6)
        self.attn = DisassembledAttention(channels, num_heads, window, shifted, rpe, lse)
        self.norm2 = nn.LayerNorm(channels, eps=1e-6)
        self.ffn = FFN(channels, int(channels * ffn_ratio), "gelu")
        self.drop_path = drop_path

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        f = x.feats
        b, B = x.batch_idx, x.batch_size
        f = f + drop_path(self.attn(x.replace(self.norm1(f))), self.drop_path, self.training, b, B)
        f = f + drop_path(self.ffn(self.norm2(f)), self.drop_path, self.training, b, B)
        return x.replace(f)
