"""Validation helpers shared by the structures: every error names the tensor and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(name: str, t: object, ndim: int | None = None,
                 dtypes: Sequence[torch.dtype] | None = None, last_dim: Sequence[int] | int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({names}), got {str(t.dtype).removeprefix('torch.')}")
    if last_dim is not None:
        allowed = (last_dim,) if isinstance(last_dim, int) else tuple(last_dim)
        if t.shape[-1] not in allowed:
            raise ValueError(f"{name} must have last dimension in {allowed}, got shape {tuple(t.shape)}")


def check_finite(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or Inf (first at index {bad})")
